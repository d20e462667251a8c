// Schemas of the CUDA kernels of vxlp_ops (internal ops vxlp_ops::cuda_*, called by the `cuda` backend of
// vxlp_ops/_cuda.py, never directly by users) and their Meta (shape-only) implementations. The CUDA
// implementations live in the .cu file of each op family. Compiled only in CUDA builds (setup.py).
//
// cuda_temporal_merge_conv3d(_backward) take the weight optionally already laid out for the GEMM (weight_rows
// [Cout, 27·Cin], weight_cols [Cin, 27·Cout], (kt, kh, kw, channel) order), so that the Python side can lay a
// weight out once per weight state (vxlp_ops/_layout_cache.py) instead of on every call;
// Their forward_path argument ("auto" | "cute_sm90" | "cute_sm80" | "mma") picks the forward kernel
// (temporal_merge_conv3d.cu); cuda_temporal_merge_conv3d_forward_path names the path such a call takes (no Meta
// implementation: it is never traced).
//
// cuda_sgm_mask takes the uniform noise [G, T, n_pool] drawn on the Python side with torch.rand exactly as the
// reference does (so that masks match it bit for bit) and the masked count n_mask.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

TORCH_LIBRARY_FRAGMENT(vxlp_ops, m) {
  m.def("cuda_frame_attention(Tensor q, Tensor k, Tensor v, float? scale=None) -> Tensor");
  m.def(
      "cuda_frame_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, float? scale=None)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("cuda_frame_attention_fwd(Tensor q, Tensor k, Tensor v, float? scale=None) -> (Tensor, Tensor)");
  m.def(
      "cuda_frame_attention_fwd_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
      " float? scale=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "cuda_temporal_attention(Tensor q, Tensor k, Tensor v, Tensor rel_k, Tensor rel_v,"
      " bool transposed_rel_k=False) -> Tensor");
  m.def(
      "cuda_temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor rel_k,"
      " Tensor rel_v, bool transposed_rel_k=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "cuda_temporal_merge_conv3d(Tensor x, Tensor weight, Tensor? bias=None, int stride_t=2,"
      " Tensor? weight_rows=None, str forward_path=\"auto\") -> Tensor");
  m.def(
      "cuda_temporal_merge_conv3d_backward(Tensor grad_out, Tensor x, Tensor weight, int stride_t=2,"
      " Tensor? weight_cols=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "cuda_temporal_merge_conv3d_forward_path(Tensor x, Tensor weight, Tensor? bias=None, int stride_t=2,"
      " str forward_path=\"auto\") -> str");
  m.def("cuda_sgm_scores(Tensor x, Tensor temp_query, Tensor spatial_query) -> Tensor");
  m.def(
      "cuda_sgm_scores_backward(Tensor grad_scores, Tensor x, Tensor temp_query, Tensor spatial_query)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("cuda_sgm_mask(Tensor scores, Tensor noise, int n_mask) -> Tensor");
  m.def(
      "cuda_query_topk_gather(Tensor visual, Tensor query, int k, bool inject_scores=True)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "cuda_query_topk_gather_backward(Tensor grad_selected, Tensor grad_scores, Tensor visual, Tensor query,"
      " Tensor indices, bool inject_scores=True) -> (Tensor, Tensor)");
}

namespace {

using at::Tensor;
using T2 = std::tuple<Tensor, Tensor>;
using T3 = std::tuple<Tensor, Tensor, Tensor>;
using T5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

Tensor like(const Tensor& t) { return at::empty(t.sizes(), t.options()); }

Tensor fa_meta(const Tensor& q, const Tensor&, const Tensor&, std::optional<double>) { return like(q); }
T3 fa_bwd_meta(const Tensor&, const Tensor& q, const Tensor& k, const Tensor& v, std::optional<double>) {
  return {like(q), like(k), like(v)};
}
T2 fa_fwd_meta(const Tensor& q, const Tensor&, const Tensor&, std::optional<double>) {
  return {like(q), at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat))};
}
T3 fa_fwd_bwd_meta(const Tensor&, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor&, const Tensor&,
                   std::optional<double>) {
  return {like(q), like(k), like(v)};
}
Tensor ta_meta(const Tensor& q, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool) { return like(q); }
T5 ta_bwd_meta(const Tensor&, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& rk, const Tensor& rv,
               bool) {
  return {like(q), like(k), like(v), like(rk), like(rv)};
}
Tensor conv_meta(const Tensor& x, const Tensor& w, const std::optional<Tensor>&, int64_t stride_t,
                 const std::optional<Tensor>&, c10::string_view) {
  TORCH_CHECK(x.dim() == 5 && w.dim() == 5 && stride_t >= 1, "cuda_temporal_merge_conv3d: bad arguments");
  const int64_t t_out = (x.size(1) + 1 - 3) / stride_t + 1;
  return at::empty({x.size(0), t_out, x.size(2), x.size(3), w.size(0)}, x.options());
}
T3 conv_bwd_meta(const Tensor&, const Tensor& x, const Tensor& w, int64_t, const std::optional<Tensor>&) {
  return {like(x), like(w), at::empty({w.size(0)}, w.options())};
}
Tensor sgm_meta(const Tensor& x, const Tensor&, const Tensor&) {
  return at::empty({x.size(0), x.size(1), x.size(2)}, x.options().dtype(at::kFloat));
}
T3 sgm_bwd_meta(const Tensor&, const Tensor& x, const Tensor& tq, const Tensor& sq) {
  return {like(x), like(tq), like(sq)};
}
Tensor mask_meta(const Tensor& scores, const Tensor&, int64_t) {
  return at::empty(scores.sizes(), scores.options().dtype(at::kBool));
}
T3 qtg_meta(const Tensor& visual, const Tensor&, int64_t k, bool) {
  const int64_t b = visual.size(0), n = visual.size(1), d = visual.size(2);
  return {at::empty({b, k, d}, visual.options()), at::empty({b, k}, visual.options().dtype(at::kLong)),
          at::empty({b, n}, visual.options().dtype(at::kFloat))};
}
T2 qtg_bwd_meta(const Tensor&, const Tensor&, const Tensor& visual, const Tensor& query, const Tensor&, bool) {
  return {like(visual), like(query)};
}

}  // namespace

TORCH_LIBRARY_IMPL(vxlp_ops, Meta, m) {
  m.impl("cuda_frame_attention", &fa_meta);
  m.impl("cuda_frame_attention_backward", &fa_bwd_meta);
  m.impl("cuda_frame_attention_fwd", &fa_fwd_meta);
  m.impl("cuda_frame_attention_fwd_backward", &fa_fwd_bwd_meta);
  m.impl("cuda_temporal_attention", &ta_meta);
  m.impl("cuda_temporal_attention_backward", &ta_bwd_meta);
  m.impl("cuda_temporal_merge_conv3d", &conv_meta);
  m.impl("cuda_temporal_merge_conv3d_backward", &conv_bwd_meta);
  m.impl("cuda_sgm_scores", &sgm_meta);
  m.impl("cuda_sgm_scores_backward", &sgm_bwd_meta);
  m.impl("cuda_sgm_mask", &mask_meta);
  m.impl("cuda_query_topk_gather", &qtg_meta);
  m.impl("cuda_query_topk_gather_backward", &qtg_bwd_meta);
}
