// Kernels shared by sgm.cu and query_topk_gather.cu (internal linkage: each file gets its own copy).
// All reductions have a fixed order (no atomics), so results are deterministic run to run.
#pragma once

#include "common.cuh"

namespace vxlp_cuda {
namespace {

constexpr int SC_THREADS = 256;

// Block-wide reduction of one float (op: 0 sum, 1 min, 2 max); every thread gets the result. `red` is a
// __shared__ float[32]. Contains __syncthreads(): call from every thread of the block.
template <int OPR>
__device__ __forceinline__ float block_reduce(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = OPR == 0 ? warp_sum(v) : (OPR == 1 ? warp_min(v) : warp_max(v));
  __syncthreads();  // `red` may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < nw; ++w) r = OPR == 0 ? r + red[w] : (OPR == 1 ? fminf(r, red[w]) : fmaxf(r, red[w]));
  return r;
}

// out[r, c] = scale · Σ_s x[r, s, c] (fp32); grid (R, ceil(C / 64)), 256 threads = 64 channels × 4 row groups.
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) mean_mid_kernel(const T* __restrict__ x, float* __restrict__ out, int S,
                                                               int C, float scale) {
  __shared__ float part[4][64];
  const int r = blockIdx.x, cl = threadIdx.x & 63, sg = threadIdx.x >> 6;
  const int c = blockIdx.y * 64 + cl;
  float acc = 0.f;
  if (c < C) {
    const T* xr = x + static_cast<size_t>(r) * S * C + c;
    for (int s = sg; s < S; s += 4) acc += to_f(xr[static_cast<size_t>(s) * C]);
  }
  part[sg][cl] = acc;
  __syncthreads();
  if (sg == 0 && c < C) out[static_cast<size_t>(r) * C + c] = scale * (((part[0][cl] + part[1][cl]) + part[2][cl]) + part[3][cl]);
}

// u[r, c] = Σ_s w[r, s] x[r, s, c]; with tper > 0 also v[r, c] = Σ_s w[r, s] x[r, s, c] x[r−1, s, c] for
// r % tper ≠ 0 (zero for r % tper = 0: the first frame of a clip). Grid / block as mean_mid_kernel.
template <typename T>
__global__ void __launch_bounds__(SC_THREADS) wcolsum_kernel(const T* __restrict__ x, const float* __restrict__ w,
                                                              float* __restrict__ u, float* __restrict__ v, int S,
                                                              int C, int tper) {
  __shared__ float part[2][4][64];
  const int r = blockIdx.x, cl = threadIdx.x & 63, sg = threadIdx.x >> 6;
  const int c = blockIdx.y * 64 + cl;
  const bool has_prev = tper > 0 && (r % tper) != 0;
  float au = 0.f, av = 0.f;
  if (c < C) {
    const T* xr = x + static_cast<size_t>(r) * S * C + c;
    const float* wr = w + static_cast<size_t>(r) * S;
    for (int s = sg; s < S; s += 4) {
      const float xv = to_f(xr[static_cast<size_t>(s) * C]);
      au = fmaf(wr[s], xv, au);
      if (has_prev) av = fmaf(wr[s] * xv, to_f(xr[static_cast<size_t>(s) * C - static_cast<size_t>(S) * C]), av);
    }
  }
  part[0][sg][cl] = au;
  part[1][sg][cl] = av;
  __syncthreads();
  if (sg == 0 && c < C) {
    u[static_cast<size_t>(r) * C + c] = ((part[0][0][cl] + part[0][1][cl]) + part[0][2][cl]) + part[0][3][cl];
    if (tper > 0)
      v[static_cast<size_t>(r) * C + c] = ((part[1][0][cl] + part[1][1][cl]) + part[1][2][cl]) + part[1][3][cl];
  }
}

// Range of one row x[0, L) of raw scores, shared by the min-max kernels: every thread gets lo = min and
// hi = max, and den = hi − lo (1 for a constant row, whose scores and gradient are zeros: ok = false).
// Block-wide (block_reduce): call from every thread of the block.
struct RowRange {
  float lo, hi, den;
  bool ok;
};
__device__ __forceinline__ RowRange row_range(const float* __restrict__ x, int L, float* red) {
  float lo = INFINITY, hi = -INFINITY;
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    lo = fminf(lo, x[i]);
    hi = fmaxf(hi, x[i]);
  }
  lo = block_reduce<1>(lo, red);
  hi = block_reduce<2>(hi, red);
  const float rng = hi - lo;
  const bool ok = rng > 0.f;
  return {lo, hi, ok ? rng : 1.f, ok};
}

// Row-wise min-max to [0, 1] (a constant row gives zeros), one block per row of raw [R, L] (fp32).
__global__ void __launch_bounds__(SC_THREADS) minmax_rows_kernel(const float* __restrict__ raw,
                                                                  float* __restrict__ out, int L) {
  __shared__ float red[32];
  const float* x = raw + static_cast<size_t>(blockIdx.x) * L;
  const RowRange r = row_range(x, L, red);
  float* o = out + static_cast<size_t>(blockIdx.x) * L;
  for (int i = threadIdx.x; i < L; i += blockDim.x) o[i] = r.ok ? (x[i] - r.lo) / r.den : 0.f;
}

// Gradient of the row-wise min-max w.r.t. raw, as autograd through the reference (amin / amax share their
// gradient equally among ties; a constant row gets zeros). raw, grad, draw: [R, L] fp32, one block per row.
__global__ void __launch_bounds__(SC_THREADS) minmax_bwd_kernel(const float* __restrict__ raw,
                                                                 const float* __restrict__ grad,
                                                                 float* __restrict__ draw, int L) {
  __shared__ float red[32];
  const size_t off = static_cast<size_t>(blockIdx.x) * L;
  const float* x = raw + off;
  const float* gr = grad + off;
  const RowRange r = row_range(x, L, red);
  const float lo = r.lo, hi = r.hi, den = r.den;
  const bool ok = r.ok;
  float s_lo = 0.f, s_hi = 0.f, n_lo = 0.f, n_hi = 0.f;
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    const float s = (x[i] - lo) / den;
    s_lo = fmaf(gr[i], s - 1.f, s_lo);
    s_hi = fmaf(gr[i], s, s_hi);
    n_lo += x[i] == lo ? 1.f : 0.f;
    n_hi += x[i] == hi ? 1.f : 0.f;
  }
  s_lo = block_reduce<0>(s_lo, red);
  s_hi = block_reduce<0>(s_hi, red);
  n_lo = block_reduce<0>(n_lo, red);
  n_hi = block_reduce<0>(n_hi, red);
  const float d_lo = s_lo / den / n_lo, d_hi = -s_hi / den / n_hi;
  float* o = draw + off;
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    float g = gr[i] / den;
    if (x[i] == lo) g += d_lo;
    if (x[i] == hi) g += d_hi;
    o[i] = ok ? g : 0.f;
  }
}

// ------------------------------------------------------------------------------------------------ host
template <typename S_>
at::Tensor mean_mid(const at::Tensor& x3, cudaStream_t stream) {  // x3 [R, S, C] contiguous -> fp32 [R, C]
  const int R = x3.size(0), S = x3.size(1), C = x3.size(2);
  at::Tensor out = at::empty({R, C}, x3.options().dtype(at::kFloat));
  mean_mid_kernel<dev_t<S_>><<<dim3(R, cdiv(C, 64)), SC_THREADS, 0, stream>>>(dptr<S_>(x3), out.data_ptr<float>(), S,
                                                                             C, 1.f / static_cast<float>(S));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

inline at::Tensor minmax_rows(const at::Tensor& raw, cudaStream_t stream) {  // fp32 [R, L] contiguous
  at::Tensor out = at::empty_like(raw);
  minmax_rows_kernel<<<raw.size(0), SC_THREADS, 0, stream>>>(raw.data_ptr<float>(), out.data_ptr<float>(),
                                                             raw.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

inline at::Tensor minmax_backward(const at::Tensor& raw, const at::Tensor& grad, cudaStream_t stream) {
  at::Tensor out = at::empty_like(raw);
  minmax_bwd_kernel<<<raw.size(0), SC_THREADS, 0, stream>>>(raw.data_ptr<float>(), grad.data_ptr<float>(),
                                                            out.data_ptr<float>(), raw.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace vxlp_cuda
