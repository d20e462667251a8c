"""Eager PyTorch implementations of every vxlp_ops op: the CPU path, the fallback on any device, and the
oracle that the Triton and CUDA backends are tested against.

Every function computes softmax and reductions in float32 (float64 inputs stay float64), returns the dtype
of its first input, and is differentiable by autograd, which is how the ``*_backward`` ops of the
reference backend are computed (:func:`vjp`).
"""

from .frame_attention import frame_attention
from .query_topk_gather import query_topk_gather
from .sgm import sgm_mask, sgm_scores
from .temporal_attention import temporal_attention
from .temporal_merge_conv3d import temporal_merge_conv3d
from ._vjp import vjp

__all__ = [
    "frame_attention",
    "temporal_attention",
    "temporal_merge_conv3d",
    "sgm_scores",
    "sgm_mask",
    "query_topk_gather",
    "vjp",
]
