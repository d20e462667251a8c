// Op schemas of vxlp_ops (the contract is shared/design/OPS.md; vxlp_ops/_schemas.py holds the same
// strings and tests/test_registration.py checks that both agree).
//
// The CPU path is the eager reference, registered from Python (vxlp_ops/_register.py). CUDA kernels, when
// built, live under their own op names (vxlp_ops::cuda_*) with CUDA and Meta implementations, so that the
// public op's dispatch layer can choose between CUDA, Triton and the reference and explain its choice.
#include <torch/library.h>

TORCH_LIBRARY(vxlp_ops, m) {
  m.def("frame_attention(Tensor q, Tensor k, Tensor v, float? scale=None) -> Tensor");
  m.def(
      "frame_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, float? scale=None)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("frame_attention_fwd(Tensor q, Tensor k, Tensor v, float? scale=None) -> (Tensor, Tensor)");
  m.def(
      "frame_attention_fwd_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " float? scale=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "temporal_attention(Tensor q, Tensor k, Tensor v, Tensor rel_k, Tensor rel_v,"
      " bool transposed_rel_k=False) -> Tensor");
  m.def(
      "temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor rel_k,"
      " Tensor rel_v, bool transposed_rel_k=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("temporal_merge_conv3d(Tensor x, Tensor weight, Tensor? bias=None, int stride_t=2) -> Tensor");
  m.def(
      "temporal_merge_conv3d_backward(Tensor grad_out, Tensor x, Tensor weight, int stride_t=2)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("sgm_scores(Tensor x, Tensor temp_query, Tensor spatial_query) -> Tensor");
  m.def(
      "sgm_scores_backward(Tensor grad_scores, Tensor x, Tensor temp_query, Tensor spatial_query)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("sgm_mask(Tensor scores, float mask_ratio, float pool=0.75, Generator? generator=None) -> Tensor");
  m.def(
      "query_topk_gather(Tensor visual, Tensor query, int k, bool inject_scores=True)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "query_topk_gather_backward(Tensor grad_selected, Tensor grad_scores, Tensor visual, Tensor query,"
      " Tensor indices, bool inject_scores=True) -> (Tensor, Tensor)");
  // Inference-only fused DTS blocks (no autograd), built from the ops above.
  m.def(
      "dts_spatial_block(Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, Tensor qkv_bias,"
      " Tensor proj_weight, Tensor proj_bias, int num_groups, float eps) -> Tensor");
  m.def(
      "dts_temporal_block(Tensor x, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, Tensor qkv_bias,"
      " Tensor rel_k, Tensor rel_v, Tensor proj_weight, Tensor proj_bias, int num_groups, float eps,"
      " bool transposed_rel_k=False) -> Tensor");
}
