"""The op schemas of ``vxlp_ops`` (OPS.md), one source for Python and a check for C++.

``csrc/registration.cpp`` defines the same strings with ``TORCH_LIBRARY(vxlp_ops, m)``; when the compiled
extension is missing, :mod:`vxlp_ops._ext` defines them from this table instead, so the ops always exist.
``tests/test_registration.py`` asserts that the two agree.

The six public ops come first; each ``*_backward`` op is the gradient of the op of the same stem. The
:data:`FUSED_OPS` are inference-only fused forms of whole DTS blocks (OPS.md: "fused forms are welcome"; no
autograd), built from the six. Backward
ops take the forward inputs (and for ``query_topk_gather`` the chosen ``indices``) and recompute what they
need, so every backend is free to save or recompute its own intermediates.

``frame_attention_fwd`` is the paired form of ``frame_attention`` (PAIRED_OPS): it also returns the log-sum-exp of
each query row, and its backward ``frame_attention_fwd_backward`` takes the forward's ``out`` and ``lse`` instead
of recomputing them. The autograd formula of ``frame_attention`` runs through it.
"""

PUBLIC_OPS = (
    "frame_attention",
    "temporal_attention",
    "temporal_merge_conv3d",
    "sgm_scores",
    "sgm_mask",
    "query_topk_gather",
)

FUSED_OPS = (
    "dts_spatial_block",
    "dts_temporal_block",
)

# op -> the public op it is a form of (same inputs, same results, more outputs)
PAIRED_OPS = {"frame_attention_fwd": "frame_attention"}

SCHEMAS = {
    "frame_attention": "frame_attention(Tensor q, Tensor k, Tensor v, float? scale=None) -> Tensor",
    "frame_attention_backward": (
        "frame_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, float? scale=None)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "frame_attention_fwd": "frame_attention_fwd(Tensor q, Tensor k, Tensor v, float? scale=None) -> (Tensor, Tensor)",
    "frame_attention_fwd_backward": (
        "frame_attention_fwd_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " float? scale=None) -> (Tensor, Tensor, Tensor)"
    ),
    "temporal_attention": (
        "temporal_attention(Tensor q, Tensor k, Tensor v, Tensor rel_k, Tensor rel_v,"
        " bool transposed_rel_k=False) -> Tensor"
    ),
    "temporal_attention_backward": (
        "temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor rel_k,"
        " Tensor rel_v, bool transposed_rel_k=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "temporal_merge_conv3d": (
        "temporal_merge_conv3d(Tensor x, Tensor weight, Tensor? bias=None, int stride_t=2) -> Tensor"
    ),
    "temporal_merge_conv3d_backward": (
        "temporal_merge_conv3d_backward(Tensor grad_out, Tensor x, Tensor weight, int stride_t=2)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "sgm_scores": "sgm_scores(Tensor x, Tensor temp_query, Tensor spatial_query) -> Tensor",
    "sgm_scores_backward": (
        "sgm_scores_backward(Tensor grad_scores, Tensor x, Tensor temp_query, Tensor spatial_query)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "sgm_mask": (
        "sgm_mask(Tensor scores, float mask_ratio, float pool=0.75, Generator? generator=None) -> Tensor"
    ),
    "query_topk_gather": (
        "query_topk_gather(Tensor visual, Tensor query, int k, bool inject_scores=True)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "query_topk_gather_backward": (
        "query_topk_gather_backward(Tensor grad_selected, Tensor grad_scores, Tensor visual, Tensor query,"
        " Tensor indices, bool inject_scores=True) -> (Tensor, Tensor)"
    ),
    "dts_spatial_block": (
        "dts_spatial_block(Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, Tensor qkv_bias,"
        " Tensor proj_weight, Tensor proj_bias, int num_groups, float eps) -> Tensor"
    ),
    "dts_temporal_block": (
        "dts_temporal_block(Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, Tensor qkv_bias,"
        " Tensor rel_k, Tensor rel_v, Tensor proj_weight, Tensor proj_bias, int num_groups, float eps,"
        " bool transposed_rel_k=False) -> Tensor"
    ),
}
