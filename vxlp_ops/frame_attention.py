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


# --------------------------------------------------------------------------------- the paired op (with the LSE)
FWD = "frame_attention_fwd"


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fwd_fake(q, k, v, scale=None):
    b, s, _ = q.shape
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty((b, s), dtype=_lse_dtype(q), device=q.device))


def check_fwd_backward(grad_out, q, k, v, out, lse, scale=None) -> None:
    """Arguments of ``frame_attention_fwd_backward``: the forward's plus its ``out`` and ``lse``."""
    check(q, k, v, scale)
    b, s, d = q.shape
    for name, t in (("grad_out", grad_out), ("out", out)):
        V.tensor(name, t, 3, "[B, S, D]")
        V.same(name, t, "q", q)
        V.shape(name, t, (b, s, d), "[B, S, D]")
    V.tensor("lse", lse, 2, "[B, S]", dtypes=(_lse_dtype(q),))
    V.same("lse", lse, "q", q, dtype=False)
    V.shape("lse", lse, (b, s), "[B, S]")


def _fwd_backward_fake(grad_out, q, k, v, out, lse, scale=None):
    return _backward_fake(grad_out, q, k, v, scale)


def _fwd_backward_forward_args(grad_out, q, k, v, out, lse, scale=None):
    return (q, k, v, scale)


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _fwd_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.vxlp_ops.frame_attention_fwd_backward(grad_out.contiguous(), q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


# --------------------------------------------------------------------------------- autograd of frame_attention
class _Recompute(torch.autograd.Function):
    """The gradient for backends without a paired forward (xformers): inputs saved, ``frame_attention_backward``
    recomputes what it needs."""

    @staticmethod
    def forward(ctx, q, k, v, scale, keyset):
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.vxlp_ops.frame_attention.default.redispatch(
                keyset & torch._C._after_autograd_keyset, q, k, v, scale
            )
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = torch.ops.vxlp_ops.frame_attention_backward(grad_out.contiguous(), q, k, v, ctx.scale)
        return dq, dk, dv, None, None


def _paired(args) -> bool:
    """Whether the backend that ``frame_attention`` dispatches these arguments to also serves the paired op."""
    try:
        backend = dispatch.select(NAME, args)[0]
    except dispatch.NoBackendError:
        return False  # the forward raises the dispatch error itself
    return dispatch.has_impl(FWD, backend)


def _autograd(keyset, q, k, v, scale=None):
    """The Autograd kernel of ``frame_attention``: with gradients wanted, the forward is ``frame_attention_fwd``
    (its autograd saves ``out`` and the log-sum-exp, so the backward recomputes no softmax); otherwise the plain
    forward kernel."""
    check(q, k, v, scale)
    if torch.is_grad_enabled() and torch._C._any_requires_grad(q, k, v):
        if _paired((q, k, v, scale)):
            return torch.ops.vxlp_ops.frame_attention_fwd(q, k, v, scale)[0]
        return _Recompute.apply(q, k, v, scale, keyset)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.vxlp_ops.frame_attention.default.redispatch(
            keyset & torch._C._after_autograd_keyset, q, k, v, scale
        )


register_op(NAME, check, _fake, backward_fake=_backward_fake, backward_forward_args=_backward_forward_args,
            autograd_kernel=_autograd)
dispatch.register(NAME, "reference", ref.frame_attention, ref.frame_attention_backward)
register_op(
    FWD,
    check,
    _fwd_fake,
    backward_fake=_fwd_backward_fake,
    setup_context=_fwd_setup_context,
    backward=_fwd_backward,
    backward_forward_args=_fwd_backward_forward_args,
    backward_check=check_fwd_backward,
)
dispatch.follow_priority(FWD, NAME)
dispatch.register(FWD, "reference", ref.frame_attention_fwd, ref.frame_attention_fwd_backward)


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


def frame_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`frame_attention` that also returns the log-sum-exp of each query row (the paired forward).

    Args:
        q, k, v: ``[B, S, D]``, one dtype (float32, float16, bfloat16 or float64), one device.
        scale: logit scale, default ``D ** -0.5``.

    Returns:
        ``(out, lse)``: ``out`` ``[B, S, D]`` in the dtype of ``q``, equal to :func:`frame_attention`;
        ``lse`` ``[B, S]`` float32 (float64 for float64 inputs), ``lse[b, i] = log Σ_j exp(scale · q_i·k_j)``
        (natural log). ``out`` is differentiable in q, k, v (its backward, ``frame_attention_fwd_backward``,
        takes ``out`` and ``lse`` and recomputes no softmax); ``lse`` is not differentiable.

    Raises:
        TypeError: a non-tensor or an unsupported / mismatched dtype (names the argument).
        ValueError: a shape other than ``[B, S, D]``, mismatched shapes or devices, an empty dim, non-finite
            ``scale``.
    """
    check(q, k, v, scale)
    return torch.ops.vxlp_ops.frame_attention_fwd(q, k, v, scale)
