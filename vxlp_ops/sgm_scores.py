"""``sgm_scores``: Semantic-Guided Masking token scores (OPS.md op 4).

Source: Video-XL-Pro paper §3.2 "Semantic-Guided Masking" (Temp Query and Spatio Query); SPEC §3.
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "sgm_scores"


def check(x, temp_query, spatial_query) -> None:
    V.tensor("x", x, 4, "[G, T, S, C]")
    V.tensor("temp_query", temp_query, 2, "[Qt, C]")
    V.tensor("spatial_query", spatial_query, 2, "[Qs, C]")
    V.positive("x", x, "[G, T, S, C]")
    V.same("temp_query", temp_query, "x", x)
    V.same("spatial_query", spatial_query, "x", x)
    V.shape("temp_query", temp_query, (None, x.shape[3]), "[Qt, C]")
    V.shape("spatial_query", spatial_query, (None, x.shape[3]), "[Qs, C]")
    V.positive("temp_query", temp_query, "[Qt, C]")
    V.positive("spatial_query", spatial_query, "[Qs, C]")


def _score_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake(x, temp_query, spatial_query):
    return x.new_empty(x.shape[:3], dtype=_score_dtype(x))


def _backward_fake(grad_scores, x, temp_query, spatial_query):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (x, temp_query, spatial_query))


def _backward_forward_args(grad_scores, x, temp_query, spatial_query):
    return (x, temp_query, spatial_query)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_scores):
    return tuple(torch.ops.vxlp_ops.sgm_scores_backward(grad_scores.contiguous(), *ctx.saved_tensors))


register_op(
    NAME,
    check,
    _fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
    backward_forward_args=_backward_forward_args,
)
dispatch.register(NAME, "reference", ref.sgm_scores, ref.sgm_scores_backward)


def sgm_scores(x: torch.Tensor, temp_query: torch.Tensor, spatial_query: torch.Tensor) -> torch.Tensor:
    """Per-token saliency for Semantic-Guided Masking, min-max normalised per clip.

    ``st[g,t,n] = Σ_q Σ_c x[g,t,n,c]·x[g,t−1,n,c]·temp_query[q,c]`` (0 for t = 0);
    ``ss[g,t,n] = mean_q Σ_c x[g,t,n,c]·m[g,t,c]·spatial_query[q,c]`` with ``m[g,t] = mean_n x[g,t,n]``;
    scores = min-max of ``st + ss`` over each clip's T·S tokens to [0, 1] (a constant clip gives zeros).

    Args:
        x: ``[G, T, S, C]`` tokens (G clips, T frames, S tokens per frame, C channels).
        temp_query: ``[Qt, C]``, spatial_query: ``[Qs, C]`` learnable queries, dtype of x.

    Returns:
        float32 ``[G, T, S]`` in [0, 1] (float64 for float64 inputs).

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes or devices.

    Differentiable in x and both queries. Source: paper §3.2 SGM; SPEC §3; OPS.md op 4.
    """
    check(x, temp_query, spatial_query)
    return torch.ops.vxlp_ops.sgm_scores(x, temp_query, spatial_query)
