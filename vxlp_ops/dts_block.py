"""Fused DTS inference blocks: ``dts_spatial_block`` and ``dts_temporal_block`` (fused forms of OPS.md ops 1–2
with the GroupNorm and the 1×1 projections around them; inference only).

Source: SPEC §2 (SpatialAttn = the released ``AttnBlock3D``; TemporalAttn), RELEASED.md §2 (every 1×1 conv, the
temporal ``qkv`` and both ``proj_out`` carry a bias). Each op computes exactly what ``vxlp_model.dts``'s eager
``SpatialAttention`` / ``TemporalAttention`` compute, on channels-last ``x [G, T, H, W, C]``:

- spatial: ``h = GroupNorm(x)`` with statistics per sample g over (C/num_groups, T, H, W); ``q, k, v`` =
  rows ``[0, C)``, ``[C, 2C)``, ``[2C, 3C)`` of ``h @ qkv_weightᵀ + qkv_bias``; per frame
  ``a = softmax(q kᵀ/√C) v`` over the H·W tokens; ``out = x + a @ proj_weightᵀ + proj_bias``;
- temporal: statistics per position (g, h, w) over (C/num_groups, T); the same projection; at each position
  :func:`vxlp_ops.temporal_attention` over the T frames with the relative-position tables; same output.

Why fused ops: the eager blocks materialise a float32 copy of every activation in the GroupNorm, write q, k, v
and copy them again (``TemporalAttention``'s split + ``contiguous``), and add the residual in a separate pass.
The Triton backend (:mod:`vxlp_ops.triton.dts_block`) computes the GroupNorm statistics in one read of x,
normalises inside the projection GEMM's operand load, writes q, k, v straight in the layout the attention
kernel reads, and adds bias + residual in the output GEMM's epilogue. The attention itself is the public op
(:func:`vxlp_ops.frame_attention` / :func:`vxlp_ops.temporal_attention`, whatever backend it dispatches to).

No autograd: training uses the eager blocks (whose ops have backward formulas). The Python wrappers raise
``RuntimeError`` when called with a tensor that requires grad while grad mode is on.
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

SPATIAL = "dts_spatial_block"
TEMPORAL = "dts_temporal_block"


def _check_common(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps):
    V.tensor("x", x, 5, "[G, T, H, W, C]")
    V.positive("x", x, "[G, T, H, W, C]")
    c = x.shape[4]
    for name, t, nd, dims, shape in (
        ("norm_weight", norm_weight, 1, "[C]", (c,)),
        ("norm_bias", norm_bias, 1, "[C]", (c,)),
        ("qkv_weight", qkv_weight, 2, "[3C, C]", (3 * c, c)),
        ("qkv_bias", qkv_bias, 1, "[3C]", (3 * c,)),
        ("proj_weight", proj_weight, 2, "[C, C]", (c, c)),
        ("proj_bias", proj_bias, 1, "[C]", (c,)),
    ):
        V.tensor(name, t, nd, dims)
        V.same(name, t, "x", x)
        V.shape(name, t, shape, dims)
    V.integer("num_groups", num_groups, low=1)
    if c % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the channels C = {c} of x [G, T, H, W, C]")
    V.finite_number("eps", eps, low=0.0)


def check_spatial(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps):
    _check_common(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps)


def check_temporal(x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias,
                   num_groups, eps, transposed_rel_k=False):
    _check_common(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps)
    c = x.shape[4]
    V.tensor("rel_k", rel_k, 2, "[2R+1, C]")
    V.tensor("rel_v", rel_v, 2, "[2R+1, C]")
    V.same("rel_k", rel_k, "x", x)
    V.same("rel_v", rel_v, "x", x)
    V.shape("rel_k", rel_k, (None, c), "[2R+1, C]")
    if rel_k.shape[0] % 2 != 1:
        raise ValueError(f"rel_k must have an odd number 2R+1 of rows, got {rel_k.shape[0]}")
    V.shape("rel_v", rel_v, (rel_k.shape[0], c), "[2R+1, C]")
    from .temporal_attention import MAX_T  # noqa: PLC0415

    if x.shape[1] > MAX_T:
        raise ValueError(f"x must have T <= {MAX_T} frames in [G, T, H, W, C], got T = {x.shape[1]}")
    if not isinstance(transposed_rel_k, bool):
        raise TypeError(f"transposed_rel_k must be a bool, got {type(transposed_rel_k).__name__}")


def _fake(x, *args):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


register_op(SPATIAL, check_spatial, _fake)
register_op(TEMPORAL, check_temporal, _fake)
dispatch.register(SPATIAL, "reference", ref.dts_spatial_block)
dispatch.register(TEMPORAL, "reference", ref.dts_temporal_block)


def _no_grad_check(name: str, tensors) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(
            f"vxlp_ops.{name} is inference-only (no backward): call it under torch.no_grad() / "
            "torch.inference_mode(), or use the eager vxlp_model.dts blocks for training"
        )


def dts_spatial_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups: int,
                      eps: float) -> torch.Tensor:
    """The DTS spatial attention block (released ``AttnBlock3D``, SPEC §2), fused, inference only.

    Args:
        x: ``[G, T, H, W, C]`` channels-last tokens (float32 / float16 / bfloat16 / float64).
        norm_weight, norm_bias: GroupNorm affine ``[C]``; statistics per sample over (C/num_groups, T, H, W),
            float32 (float64 for float64 x).
        qkv_weight, qkv_bias: the q, k, v 1×1 convs stacked, ``[3C, C]`` and ``[3C]`` (rows q, then k, then v).
        proj_weight, proj_bias: ``proj_out``, ``[C, C]`` and ``[C]``.
        num_groups: GroupNorm groups (32; must divide C). eps: GroupNorm epsilon (1e-6).
        Every tensor in the dtype and on the device of x.

    Returns:
        ``x + proj_out(softmax(q kᵀ/√C) v)``, ``[G, T, H, W, C]`` in the dtype of x (per-frame attention over
        the H·W tokens; softmax and statistics in float32).

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes, devices, num_groups or eps;
        RuntimeError if an argument requires grad while grad mode is on (no backward).
    """
    args = (x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, float(eps))
    check_spatial(*args)
    _no_grad_check(SPATIAL, args[:7])
    return torch.ops.vxlp_ops.dts_spatial_block(*args)


def dts_temporal_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias,
                       num_groups: int, eps: float, transposed_rel_k: bool = False) -> torch.Tensor:
    """The DTS temporal attention block (SPEC §2 TemporalAttn), fused, inference only.

    Args:
        x: ``[G, T, H, W, C]`` channels-last tokens (T ≤ 64 frames).
        norm_weight, norm_bias: GroupNorm affine ``[C]``; statistics per position (g, h, w) over
            (C/num_groups, T).
        qkv_weight, qkv_bias: the ``qkv`` Conv1d as ``[3C, C]``, ``[3C]`` (output rows q, then k, then v).
        rel_k, rel_v: relative-position tables ``[2R+1, C]`` (R = 64 in the DTS).
        proj_weight, proj_bias: ``proj_out``, ``[C, C]`` and ``[C]``.
        num_groups, eps: as in :func:`dts_spatial_block`.
        transposed_rel_k: the released checkpoint's transposed key term (OPS.md op 2).
        Every tensor in the dtype and on the device of x.

    Returns:
        ``x + proj_out(temporal_attention(q, k, v, rel_k, rel_v))`` at each position, ``[G, T, H, W, C]``.

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes, devices, T > 64 or an even table;
        RuntimeError if an argument requires grad while grad mode is on (no backward).
    """
    args = (x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias, num_groups,
            float(eps), transposed_rel_k)
    check_temporal(*args)
    _no_grad_check(TEMPORAL, args[:9])
    return torch.ops.vxlp_ops.dts_temporal_block(*args)
