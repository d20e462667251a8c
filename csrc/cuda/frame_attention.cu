// frame_attention (OPS.md op 1): softmax(q kᵀ · scale) v per batch row, q, k, v [B, S, D], D up to any size.
//
// Forward (fa_fwd_kernel): one block of 8 warps per (batch row, 64 query rows, 256 output columns). For each
// tile of 64 keys: S = Q Kᵀ over the whole D in 64-wide chunks through shared memory (each warp a 16 × 32
// block of S), online softmax in fp32 (running max / sum per row, base-2 exponentials), then O = α·O + P V for
// the block's 256 output columns (each warp 16 rows × 128 columns, accumulators in registers). D is split
// over blockIdx.y because a 64 × D fp32 accumulator does not fit for D = 1152; the score tile is recomputed
// per 256-column chunk. fp16 / bf16 run on the tensor cores (mma.sync m16n8k16, fp32 accumulation, P rounded
// to the input dtype like FlashAttention); fp32 runs the same tiles with FMAs (exact fp32).
//
// Backward (FlashAttention-2 recomputation; the op receives only grad_out, q, k, v):
//  1. fa_fwd_kernel in "statistics" mode: LSE per row (log2 units) and partial Δ_i = Σ_d dO·O per 256-column
//     chunk (from the fp32 output before rounding), summed over chunks on the host (deterministic);
//  2. fa_bwd_dkdv_kernel: per (64 keys, 128 columns): over query tiles, Sᵀ = K Qᵀ and dPᵀ = V dOᵀ over the
//     whole D, Pᵀ = exp2(Sᵀ·c − LSE), dSᵀ = Pᵀ ∘ (dPᵀ − Δ), dV += Pᵀ dO, dK += dSᵀ Q (× scale at the end);
//  3. fa_bwd_dq_kernel: per (64 queries, 128 columns): over key tiles, the same P and dS, dQ += dS K.
// No atomics anywhere: every output element is written by one thread, so results are deterministic.
#include <torch/library.h>

#include <cmath>
#include <initializer_list>

#include "common.cuh"

namespace vxlp_cuda {
namespace {

constexpr int FA_THREADS = 256;  // 8 warps
constexpr int FA_BM = 64;        // query rows per tile
constexpr int FA_BN = 64;        // keys per tile
constexpr int FA_DK = 64;        // D chunk of the score products
constexpr int FA_DV = 256;       // output columns per forward block
constexpr int FA_DC = 128;       // output columns per backward block
constexpr int LDSF = FA_BN + 4;  // row stride of the fp32 score tile
constexpr double kLog2e = 1.4426950408889634;

template <typename T>
struct FaLayout {
  static constexpr int PAD = Vec<T>::n;  // 16 bytes of padding per row: conflict-free fragment loads
  static constexpr int LDK = FA_DK + PAD;
  static constexpr int LDV = FA_DV + PAD;
  static constexpr int LDP = FA_BN + PAD;
  static constexpr int LDC = FA_DC + PAD;
  // forward: sQ, sK [64][LDK]; sV [64][LDV]; sP [64][LDP] (T) ; sS [64][LDSF], sM, sL, sAlpha [64] (fp32)
  static constexpr size_t fwd_bytes =
      sizeof(T) * (2 * FA_BM * LDK + FA_BN * LDV + FA_BM * LDP) + sizeof(float) * (FA_BM * LDSF + 3 * FA_BM);
  // backward: four [64][LDK] tiles (aliased by two [64][LDC] tiles in the second phase), two [64][LDP] tiles,
  // two fp32 vectors [64]
  static constexpr size_t bwd_bytes = sizeof(T) * (4 * FA_BM * LDK + 2 * FA_BM * LDP) + sizeof(float) * 2 * FA_BM;
  static_assert(2 * LDC <= 4 * LDK, "phase-2 tiles must fit in the phase-1 region");
  static_assert((sizeof(T) * (2 * FA_BM * LDK + FA_BN * LDV + FA_BM * LDP)) % 16 == 0, "fp32 region alignment");
  static_assert((sizeof(T) * (4 * FA_BM * LDK + 2 * FA_BM * LDP)) % 16 == 0, "fp32 region alignment");
};

// grid: x = B · ceil(S / 64), y = ceil(D / 256). out may be null (statistics mode); lse2 (log2-domain LSE,
// [B, S]) is written by the y = 0 blocks when non-null; with dO non-null, delta_part [B, gridDim.y, S] gets
// Σ over this block's columns of dO · O.
template <typename T>
__global__ void __launch_bounds__(FA_THREADS, 1) fa_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                             const T* __restrict__ v, T* __restrict__ out,
                                                             float* __restrict__ lse2, const T* __restrict__ dO,
                                                             float* __restrict__ delta_part, int S, int D,
                                                             float c, bool vec) {
  using L = FaLayout<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + FA_BM * L::LDK;
  T* sV = sK + FA_BN * L::LDK;
  T* sP = sV + FA_BN * L::LDV;
  float* sS = reinterpret_cast<float*>(sP + FA_BM * L::LDP);
  float* sM = sS + FA_BM * LDSF;
  float* sL = sM + FA_BM;
  float* sAlpha = sL + FA_BM;

  const int nrt = (S + FA_BM - 1) / FA_BM;
  const int b = blockIdx.x / nrt;
  const int row0 = (blockIdx.x - b * nrt) * FA_BM;
  const int dv0 = blockIdx.y * FA_DV;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const size_t boff = static_cast<size_t>(b) * S * D;
  q += boff;
  k += boff;
  v += boff;

  if (tid < FA_BM) {
    sM[tid] = -INFINITY;
    sL[tid] = 0.f;
  }
  const int wr = 16 * (warp & 3);     // this warp's 16 query rows
  const int wcS = 32 * (warp >> 2);   // its 32 keys of the score tile
  const int wcO = 128 * (warp >> 2);  // its 128 output columns within the chunk
  const bool pv_active = dv0 + wcO < D;
  float accO[1][16][4];
  zero_acc(accO);

  for (int key0 = 0; key0 < S; key0 += FA_BN) {
    float accS[1][4][4];
    zero_acc(accS);
    for (int d0 = 0; d0 < D; d0 += FA_DK) {
      __syncthreads();  // previous readers of sQ / sK are done
      load_tile<T, FA_BM, FA_DK, FA_THREADS>(sQ, L::LDK, q, D, row0, S, d0, D, vec);
      load_tile<T, FA_BN, FA_DK, FA_THREADS>(sK, L::LDK, k, D, key0, S, d0, D, vec);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < FA_DK; kk += 16)
        warp_mma_k16<T, 1, 4, false, true>(accS, sQ, L::LDK, wr, sK, L::LDK, wcS, kk);
    }
    // scaled scores (log2 units) to shared memory; keys past S get −inf
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int col = wcS + 8 * nt + 2 * qd;
      const bool ok0 = key0 + col < S, ok1 = key0 + col + 1 < S;
      sS[(wr + g) * LDSF + col] = ok0 ? accS[0][nt][0] * c : -INFINITY;
      sS[(wr + g) * LDSF + col + 1] = ok1 ? accS[0][nt][1] * c : -INFINITY;
      sS[(wr + g + 8) * LDSF + col] = ok0 ? accS[0][nt][2] * c : -INFINITY;
      sS[(wr + g + 8) * LDSF + col + 1] = ok1 ? accS[0][nt][3] * c : -INFINITY;
    }
    load_tile<T, FA_BN, FA_DV, FA_THREADS>(sV, L::LDV, v, D, key0, S, dv0, D, vec);
    __syncthreads();
    // online softmax: warp w updates rows 8w .. 8w+7 (each key tile has at least one valid key)
#pragma unroll 1
    for (int rr = 0; rr < 8; ++rr) {
      const int r = 8 * warp + rr;
      const float m_old = sM[r];
      const float s0 = sS[r * LDSF + lane], s1 = sS[r * LDSF + lane + 32];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));
      const float p0 = exp2f(s0 - m_new), p1 = exp2f(s1 - m_new);
      const float sum = warp_sum(p0 + p1);
      sP[r * L::LDP + lane] = from_f<T>(p0);
      sP[r * L::LDP + lane + 32] = from_f<T>(p1);
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);
        sAlpha[r] = alpha;
        sL[r] = sL[r] * alpha + sum;
        sM[r] = m_new;
      }
    }
    __syncthreads();
    const float a_lo = sAlpha[wr + g], a_hi = sAlpha[wr + g + 8];
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) {
      accO[0][nt][0] *= a_lo;
      accO[0][nt][1] *= a_lo;
      accO[0][nt][2] *= a_hi;
      accO[0][nt][3] *= a_hi;
    }
    if (pv_active) {
#pragma unroll
      for (int kk = 0; kk < FA_BN; kk += 16)
        warp_mma_k16<T, 1, 16, false, false>(accO, sP, L::LDP, wr, sV, L::LDV, wcO, kk);
    }
    // the next tile's first __syncthreads() orders these reads before sP / sV are rewritten
  }

  // epilogue (sM / sL were last written before a __syncthreads())
  const float inv_lo = 1.f / sL[wr + g], inv_hi = 1.f / sL[wr + g + 8];
  const int r_lo = row0 + wr + g, r_hi = r_lo + 8;
  float dsum_lo = 0.f, dsum_hi = 0.f;
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
    const int col = dv0 + wcO + 8 * nt + 2 * qd;
    const float o0 = accO[0][nt][0] * inv_lo, o1 = accO[0][nt][1] * inv_lo;
    const float o2 = accO[0][nt][2] * inv_hi, o3 = accO[0][nt][3] * inv_hi;
    if (out != nullptr) {
      store_pair(out + boff, D, S, D, r_lo, col, o0, o1);
      store_pair(out + boff, D, S, D, r_hi, col, o2, o3);
    }
    if (dO != nullptr) {
      const T* go = dO + boff;
      if (r_lo < S) {
        if (col < D) dsum_lo += to_f(go[static_cast<size_t>(r_lo) * D + col]) * o0;
        if (col + 1 < D) dsum_lo += to_f(go[static_cast<size_t>(r_lo) * D + col + 1]) * o1;
      }
      if (r_hi < S) {
        if (col < D) dsum_hi += to_f(go[static_cast<size_t>(r_hi) * D + col]) * o2;
        if (col + 1 < D) dsum_hi += to_f(go[static_cast<size_t>(r_hi) * D + col + 1]) * o3;
      }
    }
  }
  if (lse2 != nullptr && blockIdx.y == 0 && tid < FA_BM && row0 + tid < S)
    lse2[static_cast<size_t>(b) * S + row0 + tid] = sM[tid] + log2f(sL[tid]);
  if (dO != nullptr) {
    dsum_lo += __shfl_xor_sync(0xffffffffu, dsum_lo, 1);
    dsum_lo += __shfl_xor_sync(0xffffffffu, dsum_lo, 2);
    dsum_hi += __shfl_xor_sync(0xffffffffu, dsum_hi, 1);
    dsum_hi += __shfl_xor_sync(0xffffffffu, dsum_hi, 2);
    float* sRed = sS;  // [2][64]; sS is no longer read after the last tile's __syncthreads()
    if (qd == 0) {
      sRed[(warp >> 2) * FA_BM + wr + g] = dsum_lo;
      sRed[(warp >> 2) * FA_BM + wr + g + 8] = dsum_hi;
    }
    __syncthreads();
    if (tid < FA_BM && row0 + tid < S)
      delta_part[(static_cast<size_t>(b) * gridDim.y + blockIdx.y) * S + row0 + tid] = sRed[tid] + sRed[FA_BM + tid];
  }
}

// Score-tile recomputation shared by both backward kernels: acc1 = A1 B1ᵀ and acc2 = A2 B2ᵀ (64 × 64 each,
// warp w: rows 16·(w % 4), columns 32·(w / 4)) over the whole D. A1/A2 rows start at ra, B1/B2 rows at rb.
template <typename T>
__device__ __forceinline__ void fa_dual_scores(float (&acc1)[1][4][4], float (&acc2)[1][4][4], T* sA1, T* sB1,
                                               T* sA2, T* sB2, const T* a1, const T* b1, const T* a2, const T* b2,
                                               int ra, int rb, int S, int D, bool vec) {
  using L = FaLayout<T>;
  const int warp = threadIdx.x >> 5;
  const int wr = 16 * (warp & 3), wc = 32 * (warp >> 2);
  zero_acc(acc1);
  zero_acc(acc2);
  for (int d0 = 0; d0 < D; d0 += FA_DK) {
    __syncthreads();
    load_tile<T, FA_BM, FA_DK, FA_THREADS>(sA1, L::LDK, a1, D, ra, S, d0, D, vec);
    load_tile<T, FA_BM, FA_DK, FA_THREADS>(sB1, L::LDK, b1, D, rb, S, d0, D, vec);
    load_tile<T, FA_BM, FA_DK, FA_THREADS>(sA2, L::LDK, a2, D, ra, S, d0, D, vec);
    load_tile<T, FA_BM, FA_DK, FA_THREADS>(sB2, L::LDK, b2, D, rb, S, d0, D, vec);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < FA_DK; kk += 16) {
      warp_mma_k16<T, 1, 4, false, true>(acc1, sA1, L::LDK, wr, sB1, L::LDK, wc, kk);
      warp_mma_k16<T, 1, 4, false, true>(acc2, sA2, L::LDK, wr, sB2, L::LDK, wc, kk);
    }
  }
  __syncthreads();  // callers overwrite the tiles next
}

// grid: x = B · ceil(S / 64) key tiles, y = ceil(D / 128) column chunks.
template <typename T>
__global__ void __launch_bounds__(FA_THREADS) fa_bwd_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                                  const T* __restrict__ v, const T* __restrict__ dO,
                                                                  const float* __restrict__ lse2,
                                                                  const float* __restrict__ delta, T* __restrict__ dk,
                                                                  T* __restrict__ dv, int S, int D, float c,
                                                                  float scale, bool vec) {
  using L = FaLayout<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sQ = sK + FA_BM * L::LDK;
  T* sV = sQ + FA_BM * L::LDK;
  T* sdO = sV + FA_BM * L::LDK;
  T* sQc = sK;                    // phase 2 aliases the phase-1 region: [64][LDC]
  T* sdOc = sQc + FA_BM * L::LDC;  // [64][LDC]
  T* sPt = sdO + FA_BM * L::LDK;   // Pᵀ [keys][queries]
  T* sdSt = sPt + FA_BM * L::LDP;  // dSᵀ
  float* sLse = reinterpret_cast<float*>(sdSt + FA_BM * L::LDP);
  float* sDelta = sLse + FA_BM;

  const int nrt = (S + FA_BM - 1) / FA_BM;
  const int b = blockIdx.x / nrt;
  const int key0 = (blockIdx.x - b * nrt) * FA_BM;
  const int dc0 = blockIdx.y * FA_DC;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const size_t boff = static_cast<size_t>(b) * S * D;
  q += boff;
  k += boff;
  v += boff;
  dO += boff;
  lse2 += static_cast<size_t>(b) * S;
  delta += static_cast<size_t>(b) * S;

  const int wr = 16 * (warp & 3), wcS = 32 * (warp >> 2), wcO = 64 * (warp >> 2);
  const bool active = dc0 + wcO < D;
  float accV[1][8][4], accK[1][8][4];
  zero_acc(accV);
  zero_acc(accK);

  for (int q0 = 0; q0 < S; q0 += FA_BM) {
    float accS[1][4][4], accP[1][4][4];
    // (fa_dual_scores starts with a __syncthreads(): previous readers of sLse / sDelta are done)
    fa_dual_scores<T>(accS, accP, sK, sQ, sV, sdO, k, q, v, dO, key0, q0, S, D, vec);
    if (tid < FA_BM) {
      const bool ok = q0 + tid < S;
      sLse[tid] = ok ? lse2[q0 + tid] : 0.f;
      sDelta[tid] = ok ? delta[q0 + tid] : 0.f;
    }
    load_tile<T, FA_BM, FA_DC, FA_THREADS>(sQc, L::LDC, q, D, q0, S, dc0, D, vec);
    load_tile<T, FA_BM, FA_DC, FA_THREADS>(sdOc, L::LDC, dO, D, q0, S, dc0, D, vec);
    __syncthreads();
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kr = wr + g + 8 * (e >> 1);
        const int qc = wcS + 8 * nt + 2 * qd + (e & 1);
        const float p = (q0 + qc < S) ? exp2f(accS[0][nt][e] * c - sLse[qc]) : 0.f;
        const float ds = p * (accP[0][nt][e] - sDelta[qc]);
        sPt[kr * L::LDP + qc] = from_f<T>(p);
        sdSt[kr * L::LDP + qc] = from_f<T>(ds);
      }
    }
    __syncthreads();
    if (active) {
#pragma unroll
      for (int kk = 0; kk < FA_BM; kk += 16) {
        warp_mma_k16<T, 1, 8, false, false>(accV, sPt, L::LDP, wr, sdOc, L::LDC, wcO, kk);
        warp_mma_k16<T, 1, 8, false, false>(accK, sdSt, L::LDP, wr, sQc, L::LDC, wcO, kk);
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int col = dc0 + wcO + 8 * nt + 2 * qd;
    store_pair(dv + boff, D, S, D, key0 + wr + g, col, accV[0][nt][0], accV[0][nt][1]);
    store_pair(dv + boff, D, S, D, key0 + wr + g + 8, col, accV[0][nt][2], accV[0][nt][3]);
    store_pair(dk + boff, D, S, D, key0 + wr + g, col, accK[0][nt][0] * scale, accK[0][nt][1] * scale);
    store_pair(dk + boff, D, S, D, key0 + wr + g + 8, col, accK[0][nt][2] * scale, accK[0][nt][3] * scale);
  }
}

// grid: x = B · ceil(S / 64) query tiles, y = ceil(D / 128) column chunks.
template <typename T>
__global__ void __launch_bounds__(FA_THREADS) fa_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                                const T* __restrict__ v, const T* __restrict__ dO,
                                                                const float* __restrict__ lse2,
                                                                const float* __restrict__ delta, T* __restrict__ dq,
                                                                int S, int D, float c, float scale, bool vec) {
  using L = FaLayout<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + FA_BM * L::LDK;
  T* sdO = sK + FA_BM * L::LDK;
  T* sV = sdO + FA_BM * L::LDK;
  T* sKc = sQ;                    // phase 2: [64][LDC], aliases the phase-1 region
  T* sdS = sV + FA_BM * L::LDK;   // dS [queries][keys]
  float* sLse = reinterpret_cast<float*>(sdS + 2 * FA_BM * L::LDP);
  float* sDelta = sLse + FA_BM;

  const int nrt = (S + FA_BM - 1) / FA_BM;
  const int b = blockIdx.x / nrt;
  const int row0 = (blockIdx.x - b * nrt) * FA_BM;
  const int dc0 = blockIdx.y * FA_DC;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const size_t boff = static_cast<size_t>(b) * S * D;
  q += boff;
  k += boff;
  v += boff;
  dO += boff;

  if (tid < FA_BM) {
    const bool ok = row0 + tid < S;
    sLse[tid] = ok ? lse2[static_cast<size_t>(b) * S + row0 + tid] : 0.f;
    sDelta[tid] = ok ? delta[static_cast<size_t>(b) * S + row0 + tid] : 0.f;
  }
  const int wr = 16 * (warp & 3), wcS = 32 * (warp >> 2), wcO = 64 * (warp >> 2);
  const bool active = dc0 + wcO < D;
  float accQ[1][8][4];
  zero_acc(accQ);

  for (int key0 = 0; key0 < S; key0 += FA_BN) {
    float accS[1][4][4], accP[1][4][4];
    fa_dual_scores<T>(accS, accP, sQ, sK, sdO, sV, q, k, dO, v, row0, key0, S, D, vec);
    load_tile<T, FA_BN, FA_DC, FA_THREADS>(sKc, L::LDC, k, D, key0, S, dc0, D, vec);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qr = wr + g + 8 * (e >> 1);
        const int kc = wcS + 8 * nt + 2 * qd + (e & 1);
        const float p = (key0 + kc < S) ? exp2f(accS[0][nt][e] * c - sLse[qr]) : 0.f;
        sdS[qr * L::LDP + kc] = from_f<T>(p * (accP[0][nt][e] - sDelta[qr]));
      }
    }
    __syncthreads();
    if (active) {
#pragma unroll
      for (int kk = 0; kk < FA_BN; kk += 16)
        warp_mma_k16<T, 1, 8, false, false>(accQ, sdS, L::LDP, wr, sKc, L::LDC, wcO, kk);
    }
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    const int col = dc0 + wcO + 8 * nt + 2 * qd;
    store_pair(dq + boff, D, S, D, row0 + wr + g, col, accQ[0][nt][0] * scale, accQ[0][nt][1] * scale);
    store_pair(dq + boff, D, S, D, row0 + wr + g + 8, col, accQ[0][nt][2] * scale, accQ[0][nt][3] * scale);
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

at::Tensor fa_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::optional<double> scale) {
  check_qkv(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int B = q.size(0), S = q.size(1), D = q.size(2);
  at::Tensor out = at::empty_like(q);
  const float c = static_cast<float>(resolve_scale(q, scale) * kLog2e);
  const dim3 grid(B * cdiv(S, FA_BM), cdiv(D, FA_DV));
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_frame_attention", [&] {
    using T = dev_t<scalar_t>;
    const bool vec = vec_ok<scalar_t>(D, {&q, &k, &v, &out});
    const size_t smem = FaLayout<T>::fwd_bytes;
    allow_smem(fa_fwd_kernel<T>, smem);
    fa_fwd_kernel<T><<<grid, FA_THREADS, smem, stream>>>(dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v),
                                                         mptr<scalar_t>(out), nullptr, nullptr, nullptr, S, D, c,
                                                         vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_backward(const at::Tensor& grad_out, const at::Tensor& q,
                                                           const at::Tensor& k, const at::Tensor& v,
                                                           std::optional<double> scale) {
  check_qkv(q, k, v);
  check_input(grad_out, OP, "grad_out", 3);
  check_same(grad_out, OP, "grad_out", q, "q");
  check_shape(grad_out, OP, "grad_out", q.sizes(), "[B, S, D]");
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int B = q.size(0), S = q.size(1), D = q.size(2);
  const double sc = resolve_scale(q, scale);
  const float c = static_cast<float>(sc * kLog2e);
  const auto f32 = q.options().dtype(at::kFloat);
  const int nchunk = cdiv(D, FA_DV);
  at::Tensor lse2 = at::empty({B, S}, f32);
  at::Tensor delta_part = at::empty({B, nchunk, S}, f32);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_frame_attention_backward", [&] {
    using T = dev_t<scalar_t>;
    const bool vec = vec_ok<scalar_t>(D, {&q, &k, &v, &grad_out});
    const size_t fsmem = FaLayout<T>::fwd_bytes;
    allow_smem(fa_fwd_kernel<T>, fsmem);
    fa_fwd_kernel<T><<<dim3(B * cdiv(S, FA_BM), nchunk), FA_THREADS, fsmem, stream>>>(
        dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v), nullptr, lse2.data_ptr<float>(),
        dptr<scalar_t>(grad_out), delta_part.data_ptr<float>(), S, D, c, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor delta = delta_part.sum(1);  // [B, S], a fixed-order (deterministic) reduction
    const size_t bsmem = FaLayout<T>::bwd_bytes;
    const dim3 grid(B * cdiv(S, FA_BM), cdiv(D, FA_DC));
    allow_smem(fa_bwd_dkdv_kernel<T>, bsmem);
    fa_bwd_dkdv_kernel<T><<<grid, FA_THREADS, bsmem, stream>>>(
        dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v), dptr<scalar_t>(grad_out), lse2.data_ptr<float>(),
        delta.data_ptr<float>(), mptr<scalar_t>(dk), mptr<scalar_t>(dv), S, D, c, static_cast<float>(sc), vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    allow_smem(fa_bwd_dq_kernel<T>, bsmem);
    fa_bwd_dq_kernel<T><<<grid, FA_THREADS, bsmem, stream>>>(
        dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v), dptr<scalar_t>(grad_out), lse2.data_ptr<float>(),
        delta.data_ptr<float>(), mptr<scalar_t>(dq), S, D, c, static_cast<float>(sc), vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv};
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_frame_attention", &vxlp_cuda::fa_forward);
  m.impl("cuda_frame_attention_backward", &vxlp_cuda::fa_backward);
}
