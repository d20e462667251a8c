"""``query_topk_gather``: the Query-aware Selector's scoring, top-k and gather (OPS.md op 6).

Source: Video-XL-Pro paper §3.3 "Query-aware Selector"; SPEC §4 (released code injects the score into every
channel of the kept tokens, ``x += s``, as the gradient path, since top-k is not differentiable).
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "query_topk_gather"


def check(visual, query, k, inject_scores=True) -> None:
    V.tensor("visual", visual, 3, "[B, N, D]")
    V.tensor("query", query, 3, "[B, L, D]")
    V.positive("visual", visual, "[B, N, D]")
    V.positive("query", query, "[B, L, D]")
    V.same("query", query, "visual", visual)
    V.shape("query", query, (visual.shape[0], None, visual.shape[2]), "[B, L, D]")
    V.integer("k", k, low=1, high=visual.shape[1])
    if not isinstance(inject_scores, bool):
        raise TypeError(f"inject_scores must be a bool, got {type(inject_scores).__name__}")


def _score_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake(visual, query, k, inject_scores=True):
    b, n, d = visual.shape
    return (
        visual.new_empty((b, k, d)),
        visual.new_empty((b, k), dtype=torch.int64),
        visual.new_empty((b, n), dtype=_score_dtype(visual)),
    )


def _backward_fake(grad_selected, grad_scores, visual, query, indices, inject_scores=True):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (visual, query))


def _backward_forward_args(grad_selected, grad_scores, visual, query, indices, inject_scores=True):
    # the backward carries the chosen ``indices`` where the forward has ``k``
    return (visual, query, int(indices.shape[-1]), inject_scores)


def _setup_context(ctx, inputs, output):
    visual, query, k, inject_scores = inputs
    _, indices, _ = output
    ctx.save_for_backward(visual, query, indices)
    ctx.inject_scores = inject_scores
    ctx.mark_non_differentiable(indices)


def _backward(ctx, grad_selected, grad_indices, grad_scores):
    visual, query, indices = ctx.saved_tensors
    if grad_selected is None:
        grad_selected = torch.zeros(indices.shape + visual.shape[-1:], dtype=visual.dtype, device=visual.device)
    if grad_scores is None:
        grad_scores = visual.new_zeros(visual.shape[:2], dtype=_score_dtype(visual))
    dv, dq = torch.ops.vxlp_ops.query_topk_gather_backward(
        grad_selected.contiguous(), grad_scores.contiguous(), visual, query, indices, ctx.inject_scores
    )
    return dv, dq, None, None


register_op(
    NAME,
    check,
    _fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
    backward_forward_args=_backward_forward_args,
)
dispatch.register(NAME, "reference", ref.query_topk_gather, ref.query_topk_gather_backward)


def query_topk_gather(visual: torch.Tensor, query: torch.Tensor, k: int, inject_scores: bool = True):
    """Score visual tokens against a text query, keep the top ``k`` in temporal order, gather them.

    ``raw[b, n] = mean_l visual[b, n]·query[b, l]``; scores = per-row min-max of raw to [0, 1] (a constant row
    gives zeros); indices = the k highest scores (ties → lower index) sorted ascending;
    ``selected[b, i] = visual[b, indices[b, i]] (+ scores[b, indices[b, i]] over every channel if inject_scores)``.

    Args:
        visual: ``[B, N, D]`` visual tokens; query: ``[B, L, D]`` text tokens (same dtype, device, D).
        k: tokens to keep, ``1 ≤ k ≤ N``.
        inject_scores: add the score to the kept tokens (the gradient path to ``query``).

    Returns:
        ``(selected [B, k, D] dtype of visual, indices int64 [B, k], scores float32 [B, N])`` (scores float64
        for float64 inputs).

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes, devices or k.

    Differentiable in visual and query (through ``selected`` and ``scores``). Source: paper §3.3; SPEC §4;
    OPS.md op 6.
    """
    check(visual, query, k, inject_scores)
    return torch.ops.vxlp_ops.query_topk_gather(visual, query, k, inject_scores)
