"""``frame_attention``: single-head softmax attention over the tokens of one frame (OPS.md op 1).

Source: the DTS SpatialAttn block (SPEC §2; Video-XL-Pro paper §3.2, "Dynamic Token Synthesizer"), where each
of the 4 frames of a group attends over its own 576 tokens with one head of width 1152.
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "frame_attention"


def check(q, k, v, scale=None) -> None:
    V.tensor("q", q, 3, "[B, S, D]")
    V.tensor("k", k, 3, "[B, S, D]")
    V.tensor("v", v, 3, "[B, S, D]")
    V.positive("q", q, "[B, S, D]")
    V.same("k", k, "q", q)
    V.same("v", v, "q", q)
    b, s, d = q.shape
    V.shape("k", k, (b, s, d), "[B, S, D]")
    V.shape("v", v, (b, s, d), "[B, S, D]")
    if scale is not None:
        V.finite_number("scale", scale)


def _fake(q, k, v, scale=None):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _backward_fake(grad_out, q, k, v, scale=None):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _backward_forward_args(grad_out, q, k, v, scale=None):
    return (q, k, v, scale)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.save_for_backward(q, k, v)
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = torch.ops.vxlp_ops.frame_attention_backward(grad_out.contiguous(), q, k, v, ctx.scale)
    return dq, dk, dv, None


register_op(
    NAME,
    check,
    _fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
    backward_forward_args=_backward_forward_args,
)
dispatch.register(NAME, "reference", ref.frame_attention, ref.frame_attention_backward)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Single-head attention per batch row: ``out = softmax(q kᵀ · scale) v``.

    Args:
        q, k, v: ``[B, S, D]`` (B = clips·frames·heads, S tokens per frame, D head width, up to at least 1152),
            one dtype (float32, float16, bfloat16 or float64), one device.
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``[B, S, D]`` in the dtype of ``q``. Softmax and accumulation run in float32 (float64 for float64).

    Raises:
        TypeError: a non-tensor or an unsupported / mismatched dtype (names the argument).
        ValueError: a shape other than ``[B, S, D]``, mismatched shapes or devices, an empty dim, non-finite
            ``scale``.

    Differentiable in q, k and v. Source: SPEC §2 SpatialAttn; OPS.md op 1.
    """
    check(q, k, v, scale)
    return torch.ops.vxlp_ops.frame_attention(q, k, v, scale)
