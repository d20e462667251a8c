// query_topk_gather (OPS.md op 6): raw[b,n] = visual[b,n]·mean_l query[b,l]; scores = per-row min-max (fp32);
// indices = the k highest scores (ties → lower index) sorted ascending; selected = visual[indices] (+ score).
//
// Forward: qm = mean_l query (mean_mid_kernel), raw (qtg_raw_kernel, one warp per token, 16-byte loads),
// scores (minmax_rows_kernel), top-k with at::sort(stable=true, descending) then at::sort of the first k indices
// (the reference's exact rule, so indices agree with it whenever the scores do), gather (qtg_gather_kernel,
// 16-byte loads / stores, score added in fp32 then rounded like the reference).
// Backward: qm and raw recomputed; dscores = grad_scores + Σ_d grad_selected at the kept tokens (qtg_rowsum_kernel,
// one warp per kept token; the kept indices of a row are distinct, so the scatter has no conflicts); draw =
// min-max backward; dvisual = draw ⊗ qm + grad_selected scattered back (qtg_dvisual_kernel with the inverse index
// map); dquery[b, l] = Σ_n draw[b,n]·visual[b,n] / L (wcolsum_kernel), the same for every l.
#include <torch/library.h>

#include "scoring.cuh"

namespace vxlp_cuda {
namespace {

constexpr const char* OP = "vxlp_ops::cuda_query_topk_gather";

template <typename T>
__global__ void __launch_bounds__(SC_THREADS) qtg_raw_kernel(const T* __restrict__ vis, const float* __restrict__ qm,
                                                              float* __restrict__ raw, int N, int D, int ntok,
                                                              bool vec) {
  const int tok = blockIdx.x * (SC_THREADS / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (tok >= ntok) return;  // whole warp
  const T* v = vis + static_cast<size_t>(tok) * D;
  const float* q = qm + static_cast<size_t>(tok / N) * D;
  float acc = 0.f;
  if (vec) {
    constexpr int V = Vec<T>::n;
    for (int c0 = lane * V; c0 < D; c0 += 32 * V) {
      float a[V];
      unpack16<T>(*reinterpret_cast<const uint4*>(v + c0), a);
#pragma unroll
      for (int i = 0; i < V; ++i) acc = fmaf(a[i], q[c0 + i], acc);
    }
  } else {
    for (int c = lane; c < D; c += 32) acc = fmaf(to_f(v[c]), q[c], acc);
  }
  acc = warp_sum(acc);
  if (lane == 0) raw[tok] = acc;
}

// selected[b, i, :] = visual[b, idx[b, i], :] (+ scores[b, idx[b, i]]); one thread per 16 bytes (vec) or element.
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) qtg_gather_kernel(const T* __restrict__ vis,
                                                                 const float* __restrict__ scores,
                                                                 const int64_t* __restrict__ idx,
                                                                 T* __restrict__ sel, int N, int K, int D,
                                                                 bool inject, bool vec) {
  constexpr int V = Vec<T>::n;
  const int per_row = vec ? D / V : D;
  const int b = blockIdx.y;
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < static_cast<size_t>(K) * per_row;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(e / per_row), c = static_cast<int>(e - static_cast<size_t>(i) * per_row);
    const int64_t n = idx[static_cast<size_t>(b) * K + i];
    const T* src = vis + (static_cast<size_t>(b) * N + n) * D;
    T* dst = sel + (static_cast<size_t>(b) * K + i) * D;
    const float s = inject ? scores[static_cast<size_t>(b) * N + n] : 0.f;
    if (vec) {
      const uint4 u = *reinterpret_cast<const uint4*>(src + c * V);
      if (inject) {
        float f[V];
        unpack16<T>(u, f);
#pragma unroll
        for (int j = 0; j < V; ++j) f[j] += s;
        *reinterpret_cast<uint4*>(dst + c * V) = pack16<T>(f);
      } else {
        *reinterpret_cast<uint4*>(dst + c * V) = u;
      }
    } else {
      dst[c] = inject ? from_f<T>(to_f(src[c]) + s) : src[c];
    }
  }
}

// dscores[b, idx[b, i]] += Σ_d gsel[b, i, d]; one warp per (b, i).
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) qtg_rowsum_kernel(const T* __restrict__ gsel,
                                                                 const int64_t* __restrict__ idx,
                                                                 float* __restrict__ dscores, int N, int K, int D,
                                                                 int nrows) {
  const int row = blockIdx.x * (SC_THREADS / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= nrows) return;
  const T* g = gsel + static_cast<size_t>(row) * D;
  float acc = 0.f;
  for (int c = lane; c < D; c += 32) acc += to_f(g[c]);
  acc = warp_sum(acc);
  if (lane == 0) {
    const int b = row / K;
    dscores[static_cast<size_t>(b) * N + idx[row]] += acc;
  }
}

// dvisual[b, n, d] = draw[b, n]·qm[b, d] + (inv[b, n] ≥ 0 ? gsel[b, inv[b, n], d] : 0)
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) qtg_dvisual_kernel(const float* __restrict__ draw,
                                                                  const float* __restrict__ qm,
                                                                  const T* __restrict__ gsel,
                                                                  const int64_t* __restrict__ inv,
                                                                  T* __restrict__ dvis, int N, int K, int D,
                                                                  size_t total) {
  for (size_t e = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(e % D);
    const size_t tok = e / D;  // b·N + n
    const int b = static_cast<int>(tok / N);
    float val = draw[tok] * qm[static_cast<size_t>(b) * D + d];
    const int64_t i = inv[tok];
    if (i >= 0) val += to_f(gsel[(static_cast<size_t>(b) * K + i) * D + d]);
    dvis[e] = from_f<T>(val);
  }
}

// ------------------------------------------------------------------------------------------------ host
void check_args(const at::Tensor& visual, const at::Tensor& query) {
  check_input(visual, OP, "visual", 3);
  check_input(query, OP, "query", 3);
  check_same(query, OP, "query", visual, "visual");
  TORCH_CHECK(visual.numel() > 0 && query.numel() > 0, OP, ": visual and query must be non-empty");
  TORCH_CHECK(query.size(0) == visual.size(0) && query.size(2) == visual.size(2), OP,
              ": query must have shape [B, L, D] with B = ", visual.size(0), ", D = ", visual.size(2), ", got ",
              query.sizes());
  TORCH_CHECK(visual.size(0) <= 65535, OP, ": B must be <= 65535, got ", visual.size(0));
}

// raw [B, N] fp32 and qm [B, D] fp32
std::pair<at::Tensor, at::Tensor> qtg_raw(const at::Tensor& visual, const at::Tensor& query, cudaStream_t stream) {
  const int B = visual.size(0), N = visual.size(1), D = visual.size(2);
  at::Tensor raw = at::empty({B, N}, visual.options().dtype(at::kFloat));
  at::Tensor qm;
  VXLP_DISPATCH_FLOAT_HALF_BF16(visual.scalar_type(), "cuda_query_topk_gather", [&] {
    using T = dev_t<scalar_t>;
    qm = mean_mid<scalar_t>(query, stream);
    const int ntok = B * N;
    const bool vec = vec_ok<scalar_t>(D, {&visual});
    qtg_raw_kernel<T><<<cdiv(ntok, SC_THREADS / 32), SC_THREADS, 0, stream>>>(
        dptr<scalar_t>(visual), qm.data_ptr<float>(), raw.data_ptr<float>(), N, D, ntok, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {raw, qm};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> qtg_forward(const at::Tensor& visual, const at::Tensor& query,
                                                           int64_t k, bool inject_scores) {
  check_args(visual, query);
  const int B = visual.size(0), N = visual.size(1), D = visual.size(2);
  TORCH_CHECK(k >= 1 && k <= N, OP, ": k must be in [1, N = ", N, "], got ", k);
  const c10::cuda::CUDAGuard guard(visual.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto rq = qtg_raw(visual, query, stream);
  const at::Tensor scores = minmax_rows(rq.first, stream);
  // the reference's rule: stable descending sort (ties → lower index), first k, then ascending
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1, /*descending=*/true));
  const at::Tensor indices = std::get<0>(at::sort(order.narrow(1, 0, k), /*stable=*/true, 1, false)).contiguous();
  at::Tensor selected = at::empty({B, k, D}, visual.options());
  VXLP_DISPATCH_FLOAT_HALF_BF16(visual.scalar_type(), "cuda_query_topk_gather", [&] {
    using T = dev_t<scalar_t>;
    const bool vec = vec_ok<scalar_t>(D, {&visual, &selected});
    const int64_t per_b = k * (vec ? D / Vec<T>::n : D);
    const dim3 grid(std::min<int64_t>(cdiv(per_b, SC_THREADS), 4096), B);
    qtg_gather_kernel<T><<<grid, SC_THREADS, 0, stream>>>(dptr<scalar_t>(visual), scores.data_ptr<float>(),
                                                         indices.data_ptr<int64_t>(), mptr<scalar_t>(selected), N,
                                                         static_cast<int>(k), D, inject_scores, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {selected, indices, scores};
}

std::tuple<at::Tensor, at::Tensor> qtg_backward(const at::Tensor& grad_selected, const at::Tensor& grad_scores,
                                                const at::Tensor& visual, const at::Tensor& query,
                                                const at::Tensor& indices, bool inject_scores) {
  check_args(visual, query);
  const int B = visual.size(0), N = visual.size(1), D = visual.size(2), L = query.size(1);
  TORCH_CHECK(indices.is_cuda() && indices.device() == visual.device() && indices.scalar_type() == at::kLong &&
                  indices.dim() == 2 && indices.size(0) == B && indices.size(1) >= 1 && indices.size(1) <= N,
              OP, ": indices must be an int64 [B, k] tensor on the device of visual, got ", indices.sizes(), " ",
              indices.scalar_type());
  const int K = indices.size(1);
  check_input(grad_selected, OP, "grad_selected", 3);
  check_same(grad_selected, OP, "grad_selected", visual, "visual");
  check_shape(grad_selected, OP, "grad_selected", {B, K, D}, "[B, k, D]");
  TORCH_CHECK(grad_scores.is_cuda() && grad_scores.device() == visual.device() && grad_scores.dim() == 2 &&
                  grad_scores.size(0) == B && grad_scores.size(1) == N,
              OP, ": grad_scores must be a [B, N] tensor on the device of visual, got ", grad_scores.sizes());
  const c10::cuda::CUDAGuard guard(visual.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor idx = indices.contiguous();
  const auto rq = qtg_raw(visual, query, stream);
  at::Tensor dscores = grad_scores.to(at::kFloat).contiguous().clone();
  at::Tensor dvisual = at::empty_like(visual);
  // inverse map: inv[b, n] = i if indices[b, i] = n, else −1 (distinct indices per row: no conflicts)
  at::Tensor inv = at::full({B, N}, -1, idx.options());
  inv.scatter_(1, idx, at::arange(K, idx.options()).unsqueeze(0).expand({B, K}).contiguous());
  at::Tensor draw;
  VXLP_DISPATCH_FLOAT_HALF_BF16(visual.scalar_type(), "cuda_query_topk_gather_backward", [&] {
    using T = dev_t<scalar_t>;
    if (inject_scores) {
      qtg_rowsum_kernel<T><<<cdiv(static_cast<int64_t>(B) * K, SC_THREADS / 32), SC_THREADS, 0, stream>>>(
          dptr<scalar_t>(grad_selected), idx.data_ptr<int64_t>(), dscores.data_ptr<float>(), N, K, D, B * K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    draw = minmax_backward(rq.first, dscores, stream);
    const size_t total = static_cast<size_t>(visual.numel());
    const int blocks = static_cast<int>(std::min<int64_t>(cdiv(total, SC_THREADS), 65535));
    qtg_dvisual_kernel<T><<<blocks, SC_THREADS, 0, stream>>>(draw.data_ptr<float>(), rq.second.data_ptr<float>(),
                                                             dptr<scalar_t>(grad_selected), inv.data_ptr<int64_t>(),
                                                             mptr<scalar_t>(dvisual), N, K, D, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor u = at::empty({B, D}, visual.options().dtype(at::kFloat));
  VXLP_DISPATCH_FLOAT_HALF_BF16(visual.scalar_type(), "cuda_query_topk_gather_backward", [&] {
    using T = dev_t<scalar_t>;
    wcolsum_kernel<T><<<dim3(B, cdiv(D, 64)), SC_THREADS, 0, stream>>>(dptr<scalar_t>(visual), draw.data_ptr<float>(),
                                                                       u.data_ptr<float>(), nullptr, N, D, 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor dquery =
      u.div_(static_cast<double>(L)).unsqueeze(1).expand({B, L, D}).to(query.scalar_type()).contiguous();
  return {dvisual, dquery};
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_query_topk_gather", &vxlp_cuda::qtg_forward);
  m.impl("cuda_query_topk_gather_backward", &vxlp_cuda::qtg_backward);
}
