// sgm_scores (OPS.md op 4) forward / backward and the selection part of sgm_mask (op 5).
//
// sgm_scores: tq = Σ_q temp_query, sq = mean_q spatial_query (at:: ops on [Q, C]); m = mean_n x (mean_mid_kernel);
// raw[g,t,n] = Σ_c x[g,t,n,c]·(x[g,t−1,n,c]·tq[c]·[t > 0] + m[g,t,c]·sq[c]) with one warp per token (16-byte
// loads when C allows); scores = min-max of raw over each clip's T·S tokens (minmax_rows_kernel).
// Backward: raw and m recomputed; draw = min-max backward; u[g,t,c] = Σ_n draw·x, v[g,t,c] = Σ_n draw·x·x_prev
// (wcolsum_kernel); dx elementwise (sgm_dx_kernel); dtemp = Σ_{g,t} v, dspatial = Σ_{g,t} u·m / Qs (at:: sums).
//
// sgm_mask: the noise comes from torch.rand on the Python side exactly as in the reference (same generator
// draw, so masks match bit for bit); sgm_mask_kernel ranks each token among its frame by a stable ascending
// sort (ties → lower index, NaN last, as torch.sort), keeps the n_pool lowest as candidates (candidate of rank r
// gets noise[r]), and masks the candidates whose noise rank (stable, ties → lower rank) is below n_mask.
#include <torch/library.h>

#include "scoring.cuh"

namespace vxlp_cuda {
namespace {

constexpr const char* OPS_ = "vxlp_ops::cuda_sgm_scores";
constexpr const char* OPM = "vxlp_ops::cuda_sgm_mask";

// raw[tok] for tok = (g·T + t)·S + n; 8 warps per block, one token per warp.
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) sgm_raw_kernel(const T* __restrict__ x, const float* __restrict__ m,
                                                              const float* __restrict__ tq,
                                                              const float* __restrict__ sq, float* __restrict__ raw,
                                                              int Tn, int S, int C, int ntok, bool vec) {
  const int tok = blockIdx.x * (SC_THREADS / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (tok >= ntok) return;  // whole warp
  const int r = tok / S;    // frame row g·T + t
  const bool has_prev = (r % Tn) != 0;
  const T* xc = x + static_cast<size_t>(tok) * C;
  const T* xp = xc - static_cast<size_t>(S) * C;  // same token, previous frame (only read when has_prev)
  const float* mr = m + static_cast<size_t>(r) * C;
  float acc = 0.f;
  if (vec) {
    constexpr int V = Vec<T>::n;
    for (int c0 = lane * V; c0 < C; c0 += 32 * V) {
      float a[V], b[V];
      unpack16<T>(*reinterpret_cast<const uint4*>(xc + c0), a);
      if (has_prev) unpack16<T>(*reinterpret_cast<const uint4*>(xp + c0), b);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float f = mr[c0 + i] * sq[c0 + i] + (has_prev ? b[i] * tq[c0 + i] : 0.f);
        acc = fmaf(a[i], f, acc);
      }
    }
  } else {
    for (int c = lane; c < C; c += 32) {
      const float f = mr[c] * sq[c] + (has_prev ? to_f(xp[c]) * tq[c] : 0.f);
      acc = fmaf(to_f(xc[c]), f, acc);
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) raw[tok] = acc;
}

// dx[tok, c] = draw[tok]·(x_prev·tq·[t>0] + m·sq) + draw[tok+S]·x_next·tq·[t<T−1] + u[r, c]·sq / S
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) sgm_dx_kernel(const T* __restrict__ x, const float* __restrict__ draw,
                                                             const float* __restrict__ m,
                                                             const float* __restrict__ u,
                                                             const float* __restrict__ tq,
                                                             const float* __restrict__ sq, T* __restrict__ dx, int Tn,
                                                             int S, int C, size_t total, float inv_s) {
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % C);
    const size_t tok = idx / C;
    const int r = static_cast<int>(tok / S);
    const int t = r % Tn;
    const size_t rc = static_cast<size_t>(r) * C + c;
    float f = m[rc] * sq[c];
    if (t > 0) f += to_f(x[idx - static_cast<size_t>(S) * C]) * tq[c];
    float val = draw[tok] * f + u[rc] * sq[c] * inv_s;
    if (t + 1 < Tn) val += draw[tok + S] * to_f(x[idx + static_cast<size_t>(S) * C]) * tq[c];
    dx[idx] = from_f<T>(val);
  }
}

// One block per (frame, 256 tokens). mask[f, i] for i in the block's range.
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) sgm_mask_kernel(const T* __restrict__ scores,
                                                               const float* __restrict__ noise,
                                                               bool* __restrict__ mask, int S, int n_pool,
                                                               int n_mask) {
  __shared__ float tile[SC_THREADS];
  const int f = blockIdx.x;
  const int i = blockIdx.y * SC_THREADS + threadIdx.x;
  const T* sc = scores + static_cast<size_t>(f) * S;
  const float si = i < S ? to_f(sc[i]) : 0.f;
  const bool nan_i = si != si;
  int rank = 0;
  for (int j0 = 0; j0 < S; j0 += SC_THREADS) {
    __syncthreads();
    if (j0 + threadIdx.x < S) tile[threadIdx.x] = to_f(sc[j0 + threadIdx.x]);
    __syncthreads();
    const int jn = min(SC_THREADS, S - j0);
    for (int jj = 0; jj < jn; ++jj) {
      const float sj = tile[jj];
      const bool nan_j = sj != sj;
      const bool lt = nan_i ? !nan_j : (sj < si);               // NaN sorts after every number
      const bool eq = nan_i ? nan_j : (sj == si);
      rank += (lt || (eq && j0 + jj < i)) ? 1 : 0;
    }
  }
  const bool cand = i < S && rank < n_pool;
  const float* nz = noise + static_cast<size_t>(f) * n_pool;
  const float ni = cand ? nz[rank] : 0.f;
  int nrank = 0;
  for (int p0 = 0; p0 < n_pool; p0 += SC_THREADS) {
    __syncthreads();
    if (p0 + threadIdx.x < n_pool) tile[threadIdx.x] = nz[p0 + threadIdx.x];
    __syncthreads();
    const int pn = min(SC_THREADS, n_pool - p0);
    for (int pp = 0; pp < pn; ++pp) {
      const float np = tile[pp];
      nrank += (np < ni || (np == ni && p0 + pp < rank)) ? 1 : 0;
    }
  }
  if (i < S) mask[static_cast<size_t>(f) * S + i] = cand && nrank < n_mask;
}

// ------------------------------------------------------------------------------------------------ host
void check_scores_args(const at::Tensor& x, const at::Tensor& tq, const at::Tensor& sq) {
  check_input(x, OPS_, "x", 4);
  check_input(tq, OPS_, "temp_query", 2);
  check_input(sq, OPS_, "spatial_query", 2);
  check_same(tq, OPS_, "temp_query", x, "x");
  check_same(sq, OPS_, "spatial_query", x, "x");
  TORCH_CHECK(x.numel() > 0 && tq.numel() > 0 && sq.numel() > 0, OPS_, ": x and the queries must be non-empty");
  TORCH_CHECK(tq.size(1) == x.size(3), OPS_, ": temp_query must have shape [Qt, C] with C = ", x.size(3), ", got ",
              tq.sizes());
  TORCH_CHECK(sq.size(1) == x.size(3), OPS_, ": spatial_query must have shape [Qs, C] with C = ", x.size(3),
              ", got ", sq.sizes());
}

struct SgmRaw {
  at::Tensor raw, m, tq, sq;  // fp32: [G, T·S], [G·T, C], [C], [C]
};

SgmRaw sgm_raw(const at::Tensor& x, const at::Tensor& temp_query, const at::Tensor& spatial_query,
               cudaStream_t stream) {
  const int G = x.size(0), Tn = x.size(1), S = x.size(2), C = x.size(3);
  SgmRaw o;
  o.tq = temp_query.to(at::kFloat).sum(0).contiguous();
  o.sq = spatial_query.to(at::kFloat).mean(0).contiguous();
  o.raw = at::empty({G, Tn * S}, x.options().dtype(at::kFloat));
  VXLP_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "cuda_sgm_scores", [&] {
    using T = dev_t<scalar_t>;
    o.m = mean_mid<scalar_t>(x.view({G * Tn, S, C}), stream);
    const int ntok = G * Tn * S;
    const bool vec = vec_ok<scalar_t>(C, {&x});
    sgm_raw_kernel<T><<<cdiv(ntok, SC_THREADS / 32), SC_THREADS, 0, stream>>>(
        dptr<scalar_t>(x), o.m.data_ptr<float>(), o.tq.data_ptr<float>(), o.sq.data_ptr<float>(),
        o.raw.data_ptr<float>(), Tn, S, C, ntok, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return o;
}

at::Tensor scores_forward(const at::Tensor& x, const at::Tensor& temp_query, const at::Tensor& spatial_query) {
  check_scores_args(x, temp_query, spatial_query);
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const SgmRaw r = sgm_raw(x, temp_query, spatial_query, stream);
  return minmax_rows(r.raw, stream).view({x.size(0), x.size(1), x.size(2)});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scores_backward(const at::Tensor& grad_scores, const at::Tensor& x,
                                                               const at::Tensor& temp_query,
                                                               const at::Tensor& spatial_query) {
  check_scores_args(x, temp_query, spatial_query);
  TORCH_CHECK(grad_scores.is_cuda() && grad_scores.device() == x.device(), OPS_,
              ": grad_scores must be on the device of x");
  TORCH_CHECK(grad_scores.sizes() == x.sizes().slice(0, 3), OPS_, ": grad_scores must have shape [G, T, S] = ",
              x.sizes().slice(0, 3), ", got ", grad_scores.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int G = x.size(0), Tn = x.size(1), S = x.size(2), C = x.size(3);
  const SgmRaw r = sgm_raw(x, temp_query, spatial_query, stream);
  const at::Tensor gs = grad_scores.to(at::kFloat).contiguous().view({G, Tn * S});
  const at::Tensor draw = minmax_backward(r.raw, gs, stream);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor u = at::empty({G * Tn, C}, f32), v = at::empty({G * Tn, C}, f32);
  at::Tensor dx = at::empty_like(x);
  VXLP_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "cuda_sgm_scores_backward", [&] {
    using T = dev_t<scalar_t>;
    wcolsum_kernel<T><<<dim3(G * Tn, cdiv(C, 64)), SC_THREADS, 0, stream>>>(
        dptr<scalar_t>(x), draw.data_ptr<float>(), u.data_ptr<float>(), v.data_ptr<float>(), S, C, Tn);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t total = static_cast<size_t>(x.numel());
    const int blocks = static_cast<int>(std::min<int64_t>(cdiv(total, SC_THREADS), 65535));
    sgm_dx_kernel<T><<<blocks, SC_THREADS, 0, stream>>>(dptr<scalar_t>(x), draw.data_ptr<float>(),
                                                        r.m.data_ptr<float>(), u.data_ptr<float>(),
                                                        r.tq.data_ptr<float>(), r.sq.data_ptr<float>(),
                                                        mptr<scalar_t>(dx), Tn, S, C, total,
                                                        1.f / static_cast<float>(S));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor dtq = v.sum(0);                                                   // [C]
  const at::Tensor dsq = (u * r.m).sum(0).div_(static_cast<double>(spatial_query.size(0)));  // [C]
  at::Tensor dtemp = dtq.unsqueeze(0).expand(temp_query.sizes()).to(temp_query.scalar_type()).contiguous();
  at::Tensor dspatial = dsq.unsqueeze(0).expand(spatial_query.sizes()).to(spatial_query.scalar_type()).contiguous();
  return {dx, dtemp, dspatial};
}

at::Tensor mask_forward(const at::Tensor& scores, const at::Tensor& noise, int64_t n_mask) {
  check_input(scores, OPM, "scores", 3);
  TORCH_CHECK(noise.is_cuda() && noise.device() == scores.device(), OPM, ": noise must be on the device of scores");
  TORCH_CHECK(noise.scalar_type() == at::kFloat && noise.is_contiguous() && noise.dim() == 3 &&
                  noise.size(0) == scores.size(0) && noise.size(1) == scores.size(1) &&
                  noise.size(2) <= scores.size(2),
              OPM, ": noise must be a contiguous float32 [G, T, n_pool] tensor with n_pool <= S, got ",
              noise.sizes(), " ", noise.scalar_type());
  TORCH_CHECK(n_mask >= 0 && n_mask <= noise.size(2), OPM, ": n_mask must be in [0, n_pool], got ", n_mask);
  const c10::cuda::CUDAGuard guard(scores.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int G = scores.size(0), Tn = scores.size(1), S = scores.size(2), n_pool = noise.size(2);
  at::Tensor mask = at::empty({G, Tn, S}, scores.options().dtype(at::kBool));
  if (mask.numel() == 0) return mask;
  VXLP_DISPATCH_FLOAT_HALF_BF16(scores.scalar_type(), "cuda_sgm_mask", [&] {
    using T = dev_t<scalar_t>;
    sgm_mask_kernel<T><<<dim3(G * Tn, cdiv(S, SC_THREADS)), SC_THREADS, 0, stream>>>(
        dptr<scalar_t>(scores), noise.data_ptr<float>(), mask.data_ptr<bool>(), S, n_pool,
        static_cast<int>(n_mask));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return mask;
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_sgm_scores", &vxlp_cuda::scores_forward);
  m.impl("cuda_sgm_scores_backward", &vxlp_cuda::scores_backward);
  m.impl("cuda_sgm_mask", &vxlp_cuda::mask_forward);
}
