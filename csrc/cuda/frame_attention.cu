// frame_attention (OPS.md op 1): softmax(q kᵀ · scale) v per batch row, q, k, v [B, S, D], any D; and the paired
// forward (out and the log-sum-exp) and the backward from the saved out and LSE.
//
// Design: no recomputation of any matrix product. The frame shapes of the DTS (S = 576 or 729 tokens, D = 1152)
// have S² < S·D, so the [S, S] score / probability tile of each batch row is cheaper to keep in global memory
// (a workspace, B·S² elements, padded rows) than to recompute, and every product runs as one GEMM over its
// whole reduction dimension:
//   forward  (2 units of B·S²·D multiply-adds):
//     fa_scores_kernel<T, false>   Sc = Q Kᵀ · scale·log2(e) over the whole D (fp32 workspace)
//     fa_softmax_kernel            per row: m, l, LSE2 = m + log2 l; P = exp2(Sc − LSE2) (input dtype)
//     fa_gemm_kernel<T, false>     O = P V
//   backward from (out, lse) (5 units):
//     fa_delta_kernel              Δ = rowsum(dO · O), LSE2 = LSE · log2(e)
//     fa_scores_kernel<T, true>    S = Q Kᵀ and dP = dO Vᵀ in one pass over D; P = exp2(S·c − LSE2),
//                                  dS = P ∘ (dP − Δ), both stored in the input dtype
//     fa_gemm_kernel<T, true>      dV = Pᵀ dO, dK = scale · dSᵀ Q (A read transposed from the workspace)
//     fa_gemm_kernel<T, false>     dQ = scale · dS K
// P and dS are rounded to the input dtype before the second products, as FlashAttention does. The steps, grids
// and problem sizes come from the launch plan of frame_attention_plan.h (the host code below launches exactly
// its steps), which the CPU build also exposes so that tests/test_ops.py pins the work per call.
//
// Workspace: the batch runs in chunks whose workspace fits fa_plan::kDefaultWorkspace (1 GiB; at least one
// batch row per chunk); rows have a pitch of round_up(S, 8) elements with zeros past S, so that the GEMMs read
// 16-byte vectors and reduce over the padding harmlessly. S is limited to fa_plan::kMaxS (the cuda backend
// refuses larger S with that reason; dispatch then takes the Triton flash-attention kernels, which keep
// everything on chip).
//
// Tiles: scores 64 × 64 per block of 8 warps (each 16 × 32), D in chunks of 64; GEMMs 64 × 128 per block (each
// warp 32 × 32), K in chunks of 32; mma.sync m16n8k16 for fp16 / bf16 with fp32 accumulation, FMAs for fp32
// (common.cuh). Loads are synchronous (global → shared → fragments), not yet pipelined with cp.async, and the
// transposed A operand of dV / dK is gathered 16 bits at a time: the performance work left for a GPU session.
// No atomics anywhere; every output element is written by one thread with a fixed reduction order, so results
// are deterministic.
#include <torch/library.h>

#include <cmath>
#include <initializer_list>
#include <string>

#include "common.cuh"
#include "cuda/frame_attention_plan.h"

namespace vxlp_cuda {
namespace {

using fa_plan::Step;
constexpr int FA_THREADS = fa_plan::kThreads;  // 8 warps
constexpr double kLog2e = 1.4426950408889634;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
struct ScoreTiles {
  static constexpr int BM = fa_plan::kScoreBM, BN = fa_plan::kScoreBN, BK = fa_plan::kScoreBK;
  static constexpr int LD = BK + Vec<T>::n;  // 16 bytes of padding per row: conflict-free fragment loads
  static constexpr size_t bytes(int products) { return sizeof(T) * products * (BM + BN) * LD; }
};

// grid: x = key tiles, y = query tiles, z = batch rows. Pointers start at the chunk's first batch row.
// BWD = false: ws_s[b, i, j] = (q_i · k_j) · c (fp32, c = scale · log2 e) for i, j < S.
// BWD = true: with s = q_i·k_j and dp = dO_i·v_j: ws_p[b, i, j] = p = exp2(s·c − lse2_i),
// ws_ds[b, i, j] = p · (dp − delta_i), in T, zeros for S ≤ j < pitch.
template <typename T, bool BWD>
__global__ void __launch_bounds__(FA_THREADS, 2) fa_scores_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ dO, const T* __restrict__ v,
    const float* __restrict__ lse2, const float* __restrict__ delta, float* __restrict__ ws_s, T* __restrict__ ws_p,
    T* __restrict__ ws_ds, int S, int D, int pitch, float c, bool vec) {
  using L = ScoreTiles<T>;
  constexpr int NP = BWD ? 2 : 1;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sA = reinterpret_cast<T*>(smem);  // [NP][BM][LD]: q (and dO) rows
  T* sB = sA + NP * L::BM * L::LD;     // [NP][BN][LD]: k (and v) rows
  const int b = blockIdx.z;
  const int key0 = blockIdx.x * L::BN, row0 = blockIdx.y * L::BM;
  const size_t boff = static_cast<size_t>(b) * S * D;
  const T* a_src[2] = {q + boff, BWD ? dO + boff : nullptr};
  const T* b_src[2] = {k + boff, BWD ? v + boff : nullptr};
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int wr = 16 * (warp & 3), wc = 32 * (warp >> 2);
  float acc[NP][1][4][4];
#pragma unroll
  for (int p = 0; p < NP; ++p) zero_acc(acc[p]);
  for (int d0 = 0; d0 < D; d0 += L::BK) {
    __syncthreads();  // the previous chunk's readers are done
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      load_tile<T, L::BM, L::BK, FA_THREADS>(sA + p * L::BM * L::LD, L::LD, a_src[p], D, row0, S, d0, D, vec);
      load_tile<T, L::BN, L::BK, FA_THREADS>(sB + p * L::BN * L::LD, L::LD, b_src[p], D, key0, S, d0, D, vec);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < L::BK; kk += 16)
#pragma unroll
      for (int p = 0; p < NP; ++p)
        warp_mma_k16<T, 1, 4, false, true>(acc[p], sA + p * L::BM * L::LD, L::LD, wr, sB + p * L::BN * L::LD, L::LD,
                                           wc, kk);
  }
  const size_t woff = static_cast<size_t>(b) * S * pitch;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = row0 + wr + g + 8 * h;
      const int col = key0 + wc + 8 * nt + 2 * qd;
      const float s0 = acc[0][0][nt][2 * h] * c, s1 = acc[0][0][nt][2 * h + 1] * c;
      if constexpr (!BWD) {
        store_pair(ws_s + woff, pitch, S, S, r, col, s0, s1);
      } else {
        if (r < S) {
          const float l2 = lse2[static_cast<size_t>(b) * S + r], dl = delta[static_cast<size_t>(b) * S + r];
          const float p0 = col < S ? exp2f(s0 - l2) : 0.f, p1 = col + 1 < S ? exp2f(s1 - l2) : 0.f;
          const float ds0 = p0 * (acc[NP - 1][0][nt][2 * h] - dl), ds1 = p1 * (acc[NP - 1][0][nt][2 * h + 1] - dl);
          store_pair(ws_p + woff, pitch, S, pitch, r, col, p0, p1);
          store_pair(ws_ds + woff, pitch, S, pitch, r, col, ds0, ds1);
        }
      }
    }
  }
}

// grid: x = blocks of 8 rows, z = batch rows; one warp per row. From the scaled scores of one row (log2 units):
// LSE2 = m + log2 Σ_j exp2(s_j − m); ws_p[j] = exp2(s_j − LSE2) (zeros for S ≤ j < pitch); lse (natural log)
// when non-null.
template <typename T>
__global__ void __launch_bounds__(FA_THREADS) fa_softmax_kernel(const float* __restrict__ ws_s, T* __restrict__ ws_p,
                                                                float* __restrict__ lse, int S, int pitch) {
  const int b = blockIdx.z;
  const int r = blockIdx.x * fa_plan::kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= S) return;  // a whole warp (no block-level synchronisation in this kernel)
  const size_t row = static_cast<size_t>(b) * S + r;
  const float* s = ws_s + row * pitch;
  T* p = ws_p + row * pitch;
  float m = -INFINITY;
  for (int j = lane; j < S; j += 32) m = fmaxf(m, s[j]);
  m = warp_max(m);
  float l = 0.f;
  for (int j = lane; j < S; j += 32) l += exp2f(s[j] - m);
  l = warp_sum(l);
  const float l2 = m + log2f(l);
  for (int j = lane; j < pitch; j += 32) p[j] = from_f<T>(j < S ? exp2f(s[j] - l2) : 0.f);
  if (lse != nullptr && lane == 0) lse[row] = l2 * kLn2;
}

// grid: x = blocks of 8 rows, z = batch rows; one warp per row: delta = Σ_d dO·O (fp32, from the saved output),
// lse2 = lse · log2(e).
template <typename T>
__global__ void __launch_bounds__(FA_THREADS) fa_delta_kernel(const T* __restrict__ out, const T* __restrict__ dO,
                                                              const float* __restrict__ lse,
                                                              float* __restrict__ delta, float* __restrict__ lse2,
                                                              int S, int D) {
  const int b = blockIdx.z;
  const int r = blockIdx.x * fa_plan::kRowsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= S) return;
  const size_t row = static_cast<size_t>(b) * S + r;
  const T* o = out + row * D;
  const T* go = dO + row * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += to_f(o[d]) * to_f(go[d]);
  acc = warp_sum(acc);
  if (lane == 0) {
    delta[row] = acc;
    lse2[row] = lse[row] * static_cast<float>(kLog2e);
  }
}

template <typename T, bool A_KMAJOR>
struct GemmTiles {
  static constexpr int BM = fa_plan::kGemmBM, BN = fa_plan::kGemmBN, BK = fa_plan::kGemmBK;
  static constexpr int PAD = Vec<T>::n;
  static constexpr int LDA = A_KMAJOR ? BM + PAD : BK + PAD;  // sA[k][m] or sA[m][k]
  static constexpr int A_ELEMS = A_KMAJOR ? BK * LDA : BM * LDA;
  static constexpr int LDB = BN + PAD;  // sB[k][n]
  static constexpr size_t bytes = sizeof(T) * (A_ELEMS + BK * LDB);
};

// C[b] (M × N, row pitch ldc) = alpha · A[b] · B[b], per batch row b = blockIdx.z (strides sa, sb, sc elements).
// A is [M, K] row-major (row pitch lda) or, with A_KMAJOR, stored transposed as [K, M]; its contiguous dimension
// is read up to a_ext (≥ K, resp. ≥ M; the workspace pitch, whose padding holds zeros). B is [K, N] row-major.
// grid: x = N tiles, y = M tiles. vec_a / vec_b: 16-byte loads (a_ext, lda / N, ldb multiples of the vector).
template <typename T, bool A_KMAJOR>
__global__ void __launch_bounds__(FA_THREADS, 2) fa_gemm_kernel(const T* __restrict__ A, int lda, int64_t sa,
                                                             const T* __restrict__ Bm, int ldb, int64_t sb,
                                                             T* __restrict__ C, int ldc, int64_t sc, int M, int N,
                                                             int K, int a_ext, float alpha, bool vec_a, bool vec_b) {
  using L = GemmTiles<T, A_KMAJOR>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sA = reinterpret_cast<T*>(smem);
  T* sB = sA + L::A_ELEMS;
  const int b = blockIdx.z;
  const int m0 = blockIdx.y * L::BM, n0 = blockIdx.x * L::BN;
  A += b * sa;
  Bm += b * sb;
  C += b * sc;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int wm = 32 * (warp & 1), wn = 32 * (warp >> 1);  // 2 × 4 warps of 32 × 32
  float acc[2][4][4];
  zero_acc(acc);
  for (int k0 = 0; k0 < K; k0 += L::BK) {
    __syncthreads();  // the previous step's readers are done
    if constexpr (A_KMAJOR)
      load_tile<T, L::BK, L::BM, FA_THREADS>(sA, L::LDA, A, lda, k0, K, m0, a_ext, vec_a);
    else
      load_tile<T, L::BM, L::BK, FA_THREADS>(sA, L::LDA, A, lda, m0, M, k0, a_ext, vec_a);
    load_tile<T, L::BK, L::BN, FA_THREADS>(sB, L::LDB, Bm, ldb, k0, K, n0, N, vec_b);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < L::BK; kk += 16)
      warp_mma_k16<T, 2, 4, A_KMAJOR, false>(acc, sA, L::LDA, wm, sB, L::LDB, wn, kk);
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int r = m0 + wm + 16 * mt + g, col = n0 + wn + 8 * nt + 2 * qd;
      store_pair(C, ldc, M, N, r, col, acc[mt][nt][0] * alpha, acc[mt][nt][1] * alpha);
      store_pair(C, ldc, M, N, r + 8, col, acc[mt][nt][2] * alpha, acc[mt][nt][3] * alpha);
    }
}

// ------------------------------------------------------------------------------------------------ host
constexpr const char* OP = "vxlp_ops::cuda_frame_attention";

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_input(q, OP, "q", 3);
  check_input(k, OP, "k", 3);
  check_input(v, OP, "v", 3);
  check_same(k, OP, "k", q, "q");
  check_same(v, OP, "v", q, "q");
  check_shape(k, OP, "k", q.sizes(), "[B, S, D]");
  check_shape(v, OP, "v", q.sizes(), "[B, S, D]");
  TORCH_CHECK(q.numel() > 0, OP, ": q must be non-empty, got shape ", q.sizes());
}

double resolve_scale(const at::Tensor& q, std::optional<double> scale) {
  return scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(2)));
}

fa_plan::Plan plan_for(const at::Tensor& q, bool backward) {
  fa_plan::Plan plan;
  std::string err;
  try {
    plan = fa_plan::make_plan(q.size(0), q.size(1), q.size(2), static_cast<int>(q.element_size()), backward);
  } catch (const std::invalid_argument& e) {
    err = e.what();
  }
  TORCH_CHECK(err.empty(), OP, ": ", err);
  return plan;
}

dim3 grid_of(const fa_plan::Launch& l) {
  return dim3(static_cast<unsigned>(l.gx), static_cast<unsigned>(l.gy), static_cast<unsigned>(l.batch));
}

// The forward plan: out [B, S, D]; lse [B, S] fp32 (natural log) when defined.
void fa_forward_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, at::Tensor& out,
                     at::Tensor* lse) {
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const fa_plan::Plan plan = plan_for(q, false);
  const int S = static_cast<int>(plan.S), D = static_cast<int>(plan.D), pitch = static_cast<int>(plan.pitch);
  const int64_t SD = plan.S * plan.D, SP = plan.S * plan.pitch;
  at::Tensor ws = at::empty({plan.workspace_bytes}, q.options().dtype(at::kByte));
  const float c = static_cast<float>(scale * kLog2e);
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_frame_attention", [&] {
    using T = dev_t<scalar_t>;
    const bool vec = vec_ok<scalar_t>(D, {&q, &k, &v, &out});
    float* ws_s = reinterpret_cast<float*>(ws.data_ptr());
    T* ws_p = reinterpret_cast<T*>(ws_s + plan.batch_chunk * SP);  // 32-byte aligned: SP is a multiple of 8
    const T *qp = dptr<scalar_t>(q), *kp = dptr<scalar_t>(k), *vp = dptr<scalar_t>(v);
    T* op = mptr<scalar_t>(out);
    float* lp = lse != nullptr ? lse->data_ptr<float>() : nullptr;
    for (const fa_plan::Launch& l : plan.launches) {
      const int64_t io = l.b0 * SD;
      switch (l.step) {
        case Step::kScores: {
          const size_t smem = ScoreTiles<T>::bytes(1);
          allow_smem(fa_scores_kernel<T, false>, smem);
          fa_scores_kernel<T, false><<<grid_of(l), FA_THREADS, smem, stream>>>(
              qp + io, kp + io, nullptr, nullptr, nullptr, nullptr, ws_s, nullptr, nullptr, static_cast<int>(l.m),
              static_cast<int>(l.k), pitch, c, vec);
          break;
        }
        case Step::kSoftmax:
          fa_softmax_kernel<T><<<grid_of(l), FA_THREADS, 0, stream>>>(ws_s, ws_p,
                                                                      lp != nullptr ? lp + l.b0 * S : nullptr, S,
                                                                      pitch);
          break;
        case Step::kPV: {
          const size_t smem = GemmTiles<T, false>::bytes;
          allow_smem(fa_gemm_kernel<T, false>, smem);
          fa_gemm_kernel<T, false><<<grid_of(l), FA_THREADS, smem, stream>>>(
              ws_p, pitch, SP, vp + io, D, SD, op + io, D, SD, static_cast<int>(l.m), static_cast<int>(l.n),
              static_cast<int>(l.k), pitch, 1.f, true, vec);
          break;
        }
        default:
          TORCH_CHECK(false, OP, ": step ", fa_plan::step_name(l.step), " in a forward plan");
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// The backward plan from (out, lse): dq, dk, dv.
void fa_backward_into(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& out, const at::Tensor& lse, double scale, at::Tensor& dq, at::Tensor& dk,
                      at::Tensor& dv) {
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const fa_plan::Plan plan = plan_for(q, true);
  const int S = static_cast<int>(plan.S), D = static_cast<int>(plan.D), pitch = static_cast<int>(plan.pitch);
  const int64_t SD = plan.S * plan.D, SP = plan.S * plan.pitch;
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor ws = at::empty({plan.workspace_bytes}, q.options().dtype(at::kByte));
  at::Tensor delta = at::empty({plan.B, plan.S}, f32), lse2 = at::empty({plan.B, plan.S}, f32);
  const float c = static_cast<float>(scale * kLog2e);
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_frame_attention_fwd_backward", [&] {
    using T = dev_t<scalar_t>;
    const bool vec = vec_ok<scalar_t>(D, {&q, &k, &v, &grad_out, &dq, &dk, &dv});
    T* ws_p = reinterpret_cast<T*>(ws.data_ptr());
    T* ws_ds = ws_p + plan.batch_chunk * SP;
    const T *qp = dptr<scalar_t>(q), *kp = dptr<scalar_t>(k), *vp = dptr<scalar_t>(v);
    const T *gp = dptr<scalar_t>(grad_out), *outp = dptr<scalar_t>(out);
    float *dl = delta.data_ptr<float>(), *l2 = lse2.data_ptr<float>();
    const float* lp = lse.data_ptr<float>();
    const float sc = static_cast<float>(scale);
    for (const fa_plan::Launch& l : plan.launches) {
      const int64_t io = l.b0 * SD, ro = l.b0 * plan.S;
      const int M = static_cast<int>(l.m), N = static_cast<int>(l.n), K = static_cast<int>(l.k);
      switch (l.step) {
        case Step::kDelta:
          fa_delta_kernel<T><<<grid_of(l), FA_THREADS, 0, stream>>>(outp + io, gp + io, lp + ro, dl + ro, l2 + ro,
                                                                    S, D);
          break;
        case Step::kBwdScores: {
          const size_t smem = ScoreTiles<T>::bytes(2);
          allow_smem(fa_scores_kernel<T, true>, smem);
          fa_scores_kernel<T, true><<<grid_of(l), FA_THREADS, smem, stream>>>(
              qp + io, kp + io, gp + io, vp + io, l2 + ro, dl + ro, nullptr, ws_p, ws_ds, M, K, pitch, c, vec);
          break;
        }
        case Step::kGemmDV:
        case Step::kGemmDK: {
          // dV = Pᵀ dO, dK = scale · dSᵀ Q: A is the [queries, keys] workspace read transposed
          const bool is_dv = l.step == Step::kGemmDV;
          const size_t smem = GemmTiles<T, true>::bytes;
          allow_smem(fa_gemm_kernel<T, true>, smem);
          fa_gemm_kernel<T, true><<<grid_of(l), FA_THREADS, smem, stream>>>(
              is_dv ? ws_p : ws_ds, pitch, SP, (is_dv ? gp : qp) + io, D, SD,
              (is_dv ? mptr<scalar_t>(dv) : mptr<scalar_t>(dk)) + io, D, SD, M, N, K, pitch, is_dv ? 1.f : sc, true,
              vec);
          break;
        }
        case Step::kGemmDQ: {
          const size_t smem = GemmTiles<T, false>::bytes;
          allow_smem(fa_gemm_kernel<T, false>, smem);
          fa_gemm_kernel<T, false><<<grid_of(l), FA_THREADS, smem, stream>>>(
              ws_ds, pitch, SP, kp + io, D, SD, mptr<scalar_t>(dq) + io, D, SD, M, N, K, pitch, sc, true, vec);
          break;
        }
        default:
          TORCH_CHECK(false, OP, ": step ", fa_plan::step_name(l.step), " in a backward plan");
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void check_saved(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse) {
  check_input(grad_out, OP, "grad_out", 3);
  check_same(grad_out, OP, "grad_out", q, "q");
  check_shape(grad_out, OP, "grad_out", q.sizes(), "[B, S, D]");
  check_input(out, OP, "out", 3);
  check_same(out, OP, "out", q, "q");
  check_shape(out, OP, "out", q.sizes(), "[B, S, D]");
  TORCH_CHECK(lse.device() == q.device(), OP, ": lse is on ", lse.device(), " but q is on ", q.device());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, OP, ": lse must be float32, got ", lse.scalar_type());
  TORCH_CHECK(lse.is_contiguous(), OP, ": lse must be contiguous");
  check_shape(lse, OP, "lse", {q.size(0), q.size(1)}, "[B, S]");
}

at::Tensor fa_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::optional<double> scale) {
  check_qkv(q, k, v);
  at::Tensor out = at::empty_like(q);
  fa_forward_into(q, k, v, resolve_scale(q, scale), out, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> fa_forward_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  std::optional<double> scale) {
  check_qkv(q, k, v);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  fa_forward_into(q, k, v, resolve_scale(q, scale), out, &lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_backward_lse(const at::Tensor& grad_out, const at::Tensor& q,
                                                               const at::Tensor& k, const at::Tensor& v,
                                                               const at::Tensor& out, const at::Tensor& lse,
                                                               std::optional<double> scale) {
  check_qkv(q, k, v);
  check_saved(grad_out, q, out, lse);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  fa_backward_into(grad_out, q, k, v, out, lse, resolve_scale(q, scale), dq, dk, dv);
  return {dq, dk, dv};
}

// The backward from the inputs only (frame_attention_backward): the forward with its LSE, then the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                           const at::Tensor& k, const at::Tensor& v,
                                                           std::optional<double> scale) {
  check_qkv(q, k, v);
  auto [out, lse] = fa_forward_lse(q, k, v, scale);
  return fa_backward_lse(grad_out, q, k, v, out, lse, scale);
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_frame_attention", &vxlp_cuda::fa_forward);
  m.impl("cuda_frame_attention_backward", &vxlp_cuda::fa_backward);
  m.impl("cuda_frame_attention_fwd", &vxlp_cuda::fa_forward_lse);
  m.impl("cuda_frame_attention_fwd_backward", &vxlp_cuda::fa_backward_lse);
}
