"""Eager reference of the fused DTS inference blocks (``dts_spatial_block``, ``dts_temporal_block``).

The same composition as ``vxlp_model.dts.SpatialAttention`` / ``TemporalAttention`` (SPEC §2): GroupNorm with
float32 statistics (float64 for float64 inputs) and the normalised activations rounded to the input dtype,
the 1×1 projections in the input dtype, the attention of :mod:`vxlp_ops.reference`, ``x + proj_out(·)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import compute_dtype
from .frame_attention import frame_attention
from .temporal_attention import temporal_attention


def group_norm_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
                             reduce_dims: tuple[int, ...]) -> torch.Tensor:
    """GroupNorm of channels-last ``x [..., C]``: statistics over ``reduce_dims`` and the C/num_groups channels of
    each group (float32; float64 for float64 x), per-channel affine ``weight``, ``bias [C]``; dtype of x."""
    c = x.shape[-1]
    ct = compute_dtype(x)
    xf = x.to(ct).reshape(*x.shape[:-1], num_groups, c // num_groups)
    dims = tuple(d if d >= 0 else d - 1 for d in reduce_dims) + (-1,)
    var, mean = torch.var_mean(xf, dim=dims, keepdim=True, correction=0)
    y = ((xf - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    return (y * weight.to(ct) + bias.to(ct)).to(x.dtype)


def dts_spatial_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps):
    """``x [G, T, H, W, C] → x + proj(frame_attention(q, k, v))``, q/k/v = rows [0, C), [C, 2C), [2C, 3C) of the
    ``[3C, C]`` projection of ``GroupNorm(x)`` (statistics per sample over (C/num_groups, T, H, W))."""
    g, t, hh, ww, c = x.shape
    h = group_norm_channels_last(x, norm_weight, norm_bias, num_groups, eps, (1, 2, 3))
    q, k, v = (F.linear(h, w, b).reshape(g * t, hh * ww, c)
               for w, b in zip(qkv_weight.split(c), qkv_bias.split(c)))
    a = frame_attention(q, k, v).reshape(x.shape)
    return x + F.linear(a, proj_weight, proj_bias)


def dts_temporal_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias,
                       num_groups, eps, transposed_rel_k=False):
    """``x [G, T, H, W, C] → x + proj(temporal_attention(q, k, v, rel_k, rel_v))`` over the T frames of each
    position; GroupNorm statistics per position over (C/num_groups, T)."""
    g, t, hh, ww, c = x.shape
    h = group_norm_channels_last(x, norm_weight, norm_bias, num_groups, eps, (1,))
    qkv = F.linear(h, qkv_weight, qkv_bias).permute(0, 2, 3, 1, 4).reshape(g * hh * ww, t, 3 * c)
    q, k, v = (z.contiguous() for z in qkv.split(c, dim=-1))
    a = temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k)
    a = a.reshape(g, hh, ww, t, c).permute(0, 3, 1, 2, 4)
    return x + F.linear(a, proj_weight, proj_bias)
