"""``sgm_mask``: Semantic-Guided Masking, random masking restricted to the low-score tokens (OPS.md op 5).

Source: Video-XL-Pro paper §3.2 (Algorithm 1 is not released; SPEC §3 gives this project's design).
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "sgm_mask"


def check(scores, mask_ratio, pool=0.75, generator=None) -> None:
    V.tensor("scores", scores, 3, "[G, T, S]")
    V.positive("scores", scores, "[G, T, S]")
    pool = V.finite_number("pool", pool, low=0.0, high=1.0)
    V.finite_number("mask_ratio", mask_ratio, low=0.0, high=pool)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != scores.device.type:
            raise ValueError(
                f"generator is on {generator.device} but scores is on {scores.device}; pass a generator of that device"
            )


def _fake(scores, mask_ratio, pool=0.75, generator=None):
    return scores.new_empty(scores.shape, dtype=torch.bool)


register_op(NAME, check, _fake)
dispatch.register(NAME, "reference", ref.sgm_mask)


def sgm_mask(scores: torch.Tensor, mask_ratio: float, pool: float = 0.75, generator: torch.Generator | None = None):
    """Mask ``round(mask_ratio·S)`` tokens per frame, drawn uniformly from its ``ceil(pool·S)`` lowest scores.

    Candidates are ranked by a stable ascending sort (ties → lower index); the masked subset is drawn
    uniformly without replacement with ``generator`` (``round`` is half-up). The same generator state and input
    give the same mask on the same device (every backend draws the same uniform noise the same way).

    Args:
        scores: ``[G, T, S]`` (any float dtype), e.g. from :func:`vxlp_ops.sgm_scores`.
        mask_ratio: fraction of each frame's tokens to mask, ``0 ≤ mask_ratio ≤ pool``.
        pool: fraction of each frame's tokens (lowest scores) eligible for masking, ``≤ 1``.
        generator: ``torch.Generator`` on the device of ``scores``, or None for the default generator.
            Under ``torch.compile(fullgraph=True)`` pass None (Dynamo cannot trace a Generator argument).

    Returns:
        bool ``[G, T, S]``, True = masked.

    Raises:
        TypeError / ValueError naming the argument (bad shape, ratios out of order or range, generator device).

    Not differentiable. Source: paper §3.2 SGM; SPEC §3; OPS.md op 5.
    """
    check(scores, mask_ratio, pool, generator)
    return torch.ops.vxlp_ops.sgm_mask(scores, mask_ratio, pool, generator)
