"""``temporal_merge_conv3d``: the DTS temporal merge, a replicate-padded 3×3×3 Conv3d with time stride 2
(OPS.md op 3).

Source: SPEC §2 TemporalMergeConv (released code: Conv3d 1152→1152, kernel 3, stride (2, 1, 1), replicate
padding T (1, 0), H (1, 1), W (1, 1)). Two of them merge 4 frames into 1 (paper §3.2, DTS).
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "temporal_merge_conv3d"


def out_frames(t: int, stride_t: int) -> int:
    """``T_out = (T + 1 − 3) // stride_t + 1`` (T is padded by one frame in front)."""
    return (t + 1 - 3) // stride_t + 1


def check(x, weight, bias=None, stride_t=2) -> None:
    V.tensor("x", x, 5, "[G, T, H, W, Cin]")
    V.tensor("weight", weight, 5, "[Cout, Cin, 3, 3, 3]")
    V.positive("x", x, "[G, T, H, W, Cin]")
    V.same("weight", weight, "x", x)
    V.shape("weight", weight, (None, x.shape[4], 3, 3, 3), "[Cout, Cin, 3, 3, 3]")
    if weight.shape[0] == 0:
        raise ValueError("weight must have Cout >= 1 in [Cout, Cin, 3, 3, 3], got 0")
    if bias is not None:
        V.tensor("bias", bias, 1, "[Cout]")
        V.same("bias", bias, "x", x)
        V.shape("bias", bias, (weight.shape[0],), "[Cout]")
    V.integer("stride_t", stride_t, low=1)
    if x.shape[1] < 2:
        raise ValueError(f"x must have T >= 2 frames in [G, T, H, W, Cin] (kernel 3, one padded frame), got T = {x.shape[1]}")


def _fake(x, weight, bias=None, stride_t=2):
    g, t, h, w, _ = x.shape
    return x.new_empty((g, out_frames(t, stride_t), h, w, weight.shape[0]))


def _backward_fake(grad_out, x, weight, stride_t=2):
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
        torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
        weight.new_empty((weight.shape[0],)),
    )


def _backward_forward_args(grad_out, x, weight, stride_t=2):
    # the backward has no bias argument (dbias does not depend on it); backends are chosen as for bias=None
    return (x, weight, None, stride_t)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride_t = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride_t = stride_t
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    dx, dw, db = torch.ops.vxlp_ops.temporal_merge_conv3d_backward(grad_out.contiguous(), x, weight, ctx.stride_t)
    return dx, dw, (db if ctx.has_bias else None), None


register_op(
    NAME,
    check,
    _fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
    backward_forward_args=_backward_forward_args,
)
dispatch.register(NAME, "reference", ref.temporal_merge_conv3d, ref.temporal_merge_conv3d_backward)


def temporal_merge_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride_t: int = 2):
    """Channels-last Conv3d, kernel 3×3×3, stride ``(stride_t, 1, 1)``, replicate padding T 1/0, H 1/1, W 1/1.

    Equals ``F.conv3d(F.pad(x_ncdhw, (1, 1, 1, 1, 1, 0), mode="replicate"), weight, bias, stride=(stride_t, 1, 1))``
    permuted back to channels-last.

    Args:
        x: ``[G, T, H, W, Cin]`` tokens (channels-last), T ≥ 2.
        weight: ``[Cout, Cin, 3, 3, 3]`` (PyTorch Conv3d layout), dtype of x.
        bias: ``[Cout]`` or None.
        stride_t: time stride ≥ 1 (2 in the DTS: 4 → 2 → 1 frames).

    Returns:
        ``[G, T_out, H, W, Cout]``, ``T_out = (T + 1 − 3) // stride_t + 1``, dtype of x (float32 accumulation).

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes, devices or stride.

    Differentiable in x, weight and bias. Source: SPEC §2 TemporalMergeConv; OPS.md op 3.

    The CUDA and Triton backends multiply with the weight re-laid out for their GEMMs (27·Cout·Cin elements);
    that layout is cached per weight (``vxlp_ops._layout_cache.CONV_WEIGHTS``) and redone only after an in-place
    update of the weight (its ``_version`` moves: optimizer steps, ``add_``, ``copy_``). After writing the weight
    in a way the version counter does not see (through ``weight.data`` or a NumPy / DLPack view), call
    ``vxlp_ops._layout_cache.CONV_WEIGHTS.clear()``.
    """
    check(x, weight, bias, stride_t)
    return torch.ops.vxlp_ops.temporal_merge_conv3d(x, weight, bias, stride_t)
