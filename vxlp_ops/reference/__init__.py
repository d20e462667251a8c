"""Eager PyTorch implementations of every vxlp_ops op: the CPU path, the fallback on any device, and the
oracle that the Triton and CUDA backends are tested against.

Every function computes softmax and reductions in float32 (float64 inputs stay float64) and returns the dtype
of its first input. Each differentiable op has an explicit ``*_backward`` (no autograd inside, so it also runs
under ``torch.inference_mode`` and inside compiled graphs); the tests check them with ``gradcheck``.
"""

from .dts_block import dts_spatial_block, dts_temporal_block, group_norm_channels_last
from .frame_attention import frame_attention, frame_attention_backward, frame_attention_fwd, frame_attention_fwd_backward
from .query_topk_gather import query_topk_gather, query_topk_gather_backward
from .sgm import sgm_mask, sgm_scores, sgm_scores_backward
from .temporal_attention import temporal_attention, temporal_attention_backward
from .temporal_merge_conv3d import temporal_merge_conv3d, temporal_merge_conv3d_backward

__all__ = [
    "frame_attention",
    "temporal_attention",
    "temporal_merge_conv3d",
    "sgm_scores",
    "sgm_mask",
    "query_topk_gather",
    "frame_attention_backward",
    "frame_attention_fwd",
    "frame_attention_fwd_backward",
    "temporal_attention_backward",
    "temporal_merge_conv3d_backward",
    "sgm_scores_backward",
    "query_topk_gather_backward",
    "dts_spatial_block",
    "dts_temporal_block",
    "group_norm_channels_last",
]
