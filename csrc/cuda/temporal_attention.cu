// temporal_attention (OPS.md op 2): attention over T ≤ 64 frames at each of N positions with relative-position
// tables rel_k, rel_v [2R+1, D], r(i, j) = clamp(j − i, −R, R) + R, s = D^−1/4:
//   w[i,j] = s²·q_i·k_j + s·E[i,j] (transposed_rel_k: s·E[j,i]),  E[a,b] = q_a·rel_k[r(a,b)],
//   p = softmax_j(w),  out_i = Σ_j p[i,j]·(v_j + rel_v[r(i,j)]).
//
// Forward (ta_fwd_kernel): one block (256 threads) per position. Phase 1 streams D in chunks through shared
// memory (q, k and the table rows actually used, fp32) and accumulates the T×T dot products q_i·k_j and E[i,j];
// each (i, j) pair is owned by `tpp` threads (a power of two ≤ 32 chosen so that small T still fills the block)
// that split the chunk and reduce with shuffles. Phase 2: softmax per row (one warp per row). Phase 3 streams
// v and rel_v chunks and writes out (one thread per (i, d)).
//
// Backward (ta_bwd_kernel): one block per `ppb` consecutive positions. Phase A (per position): the same D-streamed
// dot products plus dP[i,j] = dO_i·(v_j + rel_v[r(i,j)]), softmax, dw = p ∘ (dP − Σ_j p dP), kept in shared
// memory for all ppb positions. Phase B (per D chunk, then per position): dq, dk, dv written directly, and the
// table gradients drel_k / drel_v of the chunk accumulated over the block's positions in registers (one owner
// thread per (bucket, d)), then written as the block's partial sum [blocks, buckets used, D] in fp32; the host
// sums the partials over blocks (a fixed-order reduction: deterministic, unlike fp32 atomics) and casts.
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace vxlp_cuda {
namespace {

constexpr int TA_THREADS = 256;
constexpr int TA_MAXM = 16;    // (i, j) pairs per thread slot: T² ≤ 4096 = 16 · 256
constexpr int TA_MAXREL = 8;   // table-gradient entries per thread and chunk: buckets_used · dc ≤ 2048
constexpr int TA_MAX_T = 64;

struct TaGeom {
  int N, T, D, R;
  int blo, nbu;          // first bucket used, number of buckets used (r(i, j) ∈ [blo, blo + nbu))
  int dc;                // D chunk
  int tpp, nslots, mcount;  // threads per pair, pair slots (256 / tpp), pairs per slot
  int ppb;               // positions per block (backward)
  float s, s2;
  bool trans;
  bool vec;              // 16-byte loads (D a multiple of 16 bytes, every pointer 16-byte aligned)
};

__device__ __forceinline__ int ta_bucket(int i, int j, int R) { return min(max(j - i, -R), R) + R; }

// s[r·ldc + d] = float(g[r·D + d0 + d]) for r < nrows, d < dcur. With vec (D a multiple of 16 bytes, g 16-byte
// aligned) 16-byte loads; dc and hence d0 and dcur are multiples of the vector width then.
template <typename T>
__device__ __forceinline__ void ta_load(float* s, int ldc, const T* __restrict__ g, int D, int nrows, int d0,
                                        int dcur, bool vec) {
  constexpr int V = Vec<T>::n;
  if (vec) {
    const int cpr = dcur / V;
    for (int e = threadIdx.x; e < nrows * cpr; e += TA_THREADS) {
      const int r = e / cpr, c = (e - r * cpr) * V;
      float f[V];
      unpack16<T>(*reinterpret_cast<const uint4*>(g + static_cast<size_t>(r) * D + d0 + c), f);
#pragma unroll
      for (int i = 0; i < V; ++i) s[r * ldc + c + i] = f[i];
    }
  } else {
    for (int e = threadIdx.x; e < nrows * dcur; e += TA_THREADS) {
      const int r = e / dcur, d = e - r * dcur;
      s[r * ldc + d] = to_f(g[static_cast<size_t>(r) * D + d0 + d]);
    }
  }
}

// ------------------------------------------------------------------------------------------- forward
template <typename T>
__global__ void __launch_bounds__(TA_THREADS) ta_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                             const T* __restrict__ v, const T* __restrict__ rel_k,
                                                             const T* __restrict__ rel_v, T* __restrict__ out,
                                                             TaGeom G) {
  extern __shared__ __align__(16) float tsm[];
  const int Tn = G.T, D = G.D, ldc = G.dc + 1, ldt = G.T + 1, P = G.T * G.T;
  float* sW = tsm;               // [T][T+1] q·k, then p
  float* sE = sW + Tn * ldt;     // [T][T+1] E
  float* sQ = sE + Tn * ldt;     // phase 1: sQ, sK [T][ldc], sRk [nbu][ldc]
  float* sK = sQ + Tn * ldc;
  float* sRk = sK + Tn * ldc;
  float* sV = sQ;                // phase 3: sV [T][ldc], sRv [nbu][ldc]
  float* sRv = sV + Tn * ldc;

  const int tid = threadIdx.x, slot = tid / G.tpp, sub = tid - slot * G.tpp;
  const size_t base = static_cast<size_t>(blockIdx.x) * Tn * D;

  float accA[TA_MAXM], accE[TA_MAXM];
#pragma unroll
  for (int m = 0; m < TA_MAXM; ++m) accA[m] = accE[m] = 0.f;

  for (int d0 = 0; d0 < D; d0 += G.dc) {
    const int dcur = min(G.dc, D - d0);
    __syncthreads();
    ta_load(sQ, ldc, q + base, D, Tn, d0, dcur, G.vec);
    ta_load(sK, ldc, k + base, D, Tn, d0, dcur, G.vec);
    ta_load(sRk, ldc, rel_k + static_cast<size_t>(G.blo) * D, D, G.nbu, d0, dcur, G.vec);
    __syncthreads();
#pragma unroll
    for (int m = 0; m < TA_MAXM; ++m) {
      const int p = slot + m * G.nslots;
      if (m < G.mcount && p < P) {
        const int i = p / Tn, j = p - i * Tn;
        const float* qi = sQ + i * ldc;
        const float* kj = sK + j * ldc;
        const float* rk = sRk + (ta_bucket(i, j, G.R) - G.blo) * ldc;
        float a = 0.f, e = 0.f;
        for (int d = sub; d < dcur; d += G.tpp) {
          const float x = qi[d];
          a = fmaf(x, kj[d], a);
          e = fmaf(x, rk[d], e);
        }
        accA[m] += a;
        accE[m] += e;
      }
    }
  }
#pragma unroll
  for (int m = 0; m < TA_MAXM; ++m) {
    if (m < G.mcount) {  // uniform over the block
      for (int o = G.tpp >> 1; o > 0; o >>= 1) {
        accA[m] += __shfl_xor_sync(0xffffffffu, accA[m], o);
        accE[m] += __shfl_xor_sync(0xffffffffu, accE[m], o);
      }
      const int p = slot + m * G.nslots;
      if (sub == 0 && p < P) {
        const int i = p / Tn, j = p - i * Tn;
        sW[i * ldt + j] = accA[m];
        sE[i * ldt + j] = accE[m];
      }
    }
  }
  __syncthreads();
  // softmax over j, one warp per row i; p overwrites sW[i] (each element is read and written by one lane)
  const int warp = tid >> 5, lane = tid & 31;
  for (int i = warp; i < Tn; i += TA_THREADS / 32) {
    float w[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = lane + 32 * h;
      w[h] = j < Tn ? G.s2 * sW[i * ldt + j] + G.s * (G.trans ? sE[j * ldt + i] : sE[i * ldt + j]) : -INFINITY;
    }
    const float mx = warp_max(fmaxf(w[0], w[1]));
    const float e0 = expf(w[0] - mx), e1 = expf(w[1] - mx);
    const float inv = 1.f / warp_sum(e0 + e1);
    if (lane < Tn) sW[i * ldt + lane] = e0 * inv;
    if (lane + 32 < Tn) sW[i * ldt + lane + 32] = e1 * inv;
  }
  // out_i = Σ_j p[i,j] (v_j + rel_v[r(i,j)])
  for (int d0 = 0; d0 < D; d0 += G.dc) {
    const int dcur = min(G.dc, D - d0);
    __syncthreads();
    ta_load(sV, ldc, v + base, D, Tn, d0, dcur, G.vec);
    ta_load(sRv, ldc, rel_v + static_cast<size_t>(G.blo) * D, D, G.nbu, d0, dcur, G.vec);
    __syncthreads();
    for (int e = tid; e < Tn * dcur; e += TA_THREADS) {
      const int i = e / dcur, d = e - i * dcur;
      const float* pi = sW + i * ldt;
      float acc = 0.f;
      for (int j = 0; j < Tn; ++j)
        acc = fmaf(pi[j], sV[j * ldc + d] + sRv[(ta_bucket(i, j, G.R) - G.blo) * ldc + d], acc);
      out[base + static_cast<size_t>(i) * D + d0 + d] = from_f<T>(acc);
    }
  }
}

// ------------------------------------------------------------------------------------------- backward
template <typename T>
__global__ void __launch_bounds__(TA_THREADS, 1) ta_bwd_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ rel_k,
    const T* __restrict__ rel_v, const T* __restrict__ go, T* __restrict__ dq, T* __restrict__ dk,
    T* __restrict__ dv, float* __restrict__ drk_part, float* __restrict__ drv_part, TaGeom G) {
  extern __shared__ __align__(16) float tsm[];
  const int Tn = G.T, D = G.D, ldc = G.dc + 1, ldt = G.T + 1, P = G.T * G.T, tt = G.T * (G.T + 1);
  float* sE = tsm;                 // [T][T+1] scratch: E
  float* sPp = sE + tt;            // [ppb][T][T+1] p per position
  float* sDW = sPp + G.ppb * tt;   // [ppb][T][T+1] dw per position
  float* sX = sDW + G.ppb * tt;    // chunk buffers, (4T + 2·nbu) rows of ldc
  // phase A
  float* sQ = sX;
  float* sK = sQ + Tn * ldc;
  float* sG = sK + Tn * ldc;
  float* sV = sG + Tn * ldc;
  float* sRk = sV + Tn * ldc;
  float* sRv = sRk + G.nbu * ldc;
  // phase B uses sQ, sK, sG, sRk

  const int tid = threadIdx.x, slot = tid / G.tpp, sub = tid - slot * G.tpp;
  const int warp = tid >> 5, lane = tid & 31;
  const int n_first = blockIdx.x * G.ppb;

  // ---- phase A: p and dw of every position of the block
  for (int pp = 0; pp < G.ppb; ++pp) {
    const int n = n_first + pp;
    if (n >= G.N) break;  // uniform over the block
    const size_t base = static_cast<size_t>(n) * Tn * D;
    float accA[TA_MAXM], accE[TA_MAXM], accG1[TA_MAXM], accG2[TA_MAXM];
#pragma unroll
    for (int m = 0; m < TA_MAXM; ++m) accA[m] = accE[m] = accG1[m] = accG2[m] = 0.f;
    for (int d0 = 0; d0 < D; d0 += G.dc) {
      const int dcur = min(G.dc, D - d0);
      __syncthreads();
      ta_load(sQ, ldc, q + base, D, Tn, d0, dcur, G.vec);
      ta_load(sK, ldc, k + base, D, Tn, d0, dcur, G.vec);
      ta_load(sG, ldc, go + base, D, Tn, d0, dcur, G.vec);
      ta_load(sV, ldc, v + base, D, Tn, d0, dcur, G.vec);
      ta_load(sRk, ldc, rel_k + static_cast<size_t>(G.blo) * D, D, G.nbu, d0, dcur, G.vec);
      ta_load(sRv, ldc, rel_v + static_cast<size_t>(G.blo) * D, D, G.nbu, d0, dcur, G.vec);
      __syncthreads();
#pragma unroll
      for (int m = 0; m < TA_MAXM; ++m) {
        const int p = slot + m * G.nslots;
        if (m < G.mcount && p < P) {
          const int i = p / Tn, j = p - i * Tn;
          const int rr = ta_bucket(i, j, G.R) - G.blo;
          const float* qi = sQ + i * ldc;
          const float* kj = sK + j * ldc;
          const float* gi = sG + i * ldc;
          const float* vj = sV + j * ldc;
          const float* rk = sRk + rr * ldc;
          const float* rv = sRv + rr * ldc;
          float a = 0.f, e = 0.f, g1 = 0.f, g2 = 0.f;
          for (int d = sub; d < dcur; d += G.tpp) {
            const float x = qi[d], y = gi[d];
            a = fmaf(x, kj[d], a);
            e = fmaf(x, rk[d], e);
            g1 = fmaf(y, vj[d], g1);
            g2 = fmaf(y, rv[d], g2);
          }
          accA[m] += a;
          accE[m] += e;
          accG1[m] += g1;
          accG2[m] += g2;
        }
      }
    }
    float* W = sPp + pp * tt;
    float* DP = sDW + pp * tt;
#pragma unroll
    for (int m = 0; m < TA_MAXM; ++m) {
      if (m < G.mcount) {
        for (int o = G.tpp >> 1; o > 0; o >>= 1) {
          accA[m] += __shfl_xor_sync(0xffffffffu, accA[m], o);
          accE[m] += __shfl_xor_sync(0xffffffffu, accE[m], o);
          accG1[m] += __shfl_xor_sync(0xffffffffu, accG1[m], o);
          accG2[m] += __shfl_xor_sync(0xffffffffu, accG2[m], o);
        }
        const int p = slot + m * G.nslots;
        if (sub == 0 && p < P) {
          const int i = p / Tn, j = p - i * Tn;
          W[i * ldt + j] = accA[m];
          sE[i * ldt + j] = accE[m];
          DP[i * ldt + j] = accG1[m] + accG2[m];
        }
      }
    }
    __syncthreads();
    for (int i = warp; i < Tn; i += TA_THREADS / 32) {
      float w[2], dp[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int j = lane + 32 * h;
        const bool ok = j < Tn;
        w[h] = ok ? G.s2 * W[i * ldt + j] + G.s * (G.trans ? sE[j * ldt + i] : sE[i * ldt + j]) : -INFINITY;
        dp[h] = ok ? DP[i * ldt + j] : 0.f;
      }
      const float mx = warp_max(fmaxf(w[0], w[1]));
      const float e0 = expf(w[0] - mx), e1 = expf(w[1] - mx);
      const float inv = 1.f / warp_sum(e0 + e1);
      const float p0 = e0 * inv, p1 = e1 * inv;
      const float pdp = warp_sum(p0 * dp[0] + p1 * dp[1]);
      if (lane < Tn) {
        W[i * ldt + lane] = p0;
        DP[i * ldt + lane] = p0 * (dp[0] - pdp);
      }
      if (lane + 32 < Tn) {
        W[i * ldt + lane + 32] = p1;
        DP[i * ldt + lane + 32] = p1 * (dp[1] - pdp);
      }
    }
    // the next position's first __syncthreads() (or phase B's) orders these writes / the sE reads
  }

  // ---- phase B: gradients, chunk by chunk
  for (int d0 = 0; d0 < D; d0 += G.dc) {
    const int dcur = min(G.dc, D - d0);
    float accRk[TA_MAXREL], accRv[TA_MAXREL];
#pragma unroll
    for (int u = 0; u < TA_MAXREL; ++u) accRk[u] = accRv[u] = 0.f;
    for (int pp = 0; pp < G.ppb; ++pp) {
      const int n = n_first + pp;
      if (n >= G.N) break;
      const size_t base = static_cast<size_t>(n) * Tn * D;
      __syncthreads();  // previous readers of the chunk buffers are done
      ta_load(sQ, ldc, q + base, D, Tn, d0, dcur, G.vec);
      ta_load(sK, ldc, k + base, D, Tn, d0, dcur, G.vec);
      ta_load(sG, ldc, go + base, D, Tn, d0, dcur, G.vec);
      if (pp == 0) ta_load(sRk, ldc, rel_k + static_cast<size_t>(G.blo) * D, D, G.nbu, d0, dcur, G.vec);
      __syncthreads();
      const float* Pm = sPp + pp * tt;
      const float* DW = sDW + pp * tt;
      for (int e = tid; e < Tn * dcur; e += TA_THREADS) {
        const int i = e / dcur, d = e - i * dcur;
        float aq = 0.f, arel = 0.f, ak = 0.f, av = 0.f;
        for (int j = 0; j < Tn; ++j) {
          const float dwij = DW[i * ldt + j];
          const float mij = G.trans ? DW[j * ldt + i] : dwij;
          aq = fmaf(dwij, sK[j * ldc + d], aq);
          arel = fmaf(mij, sRk[(ta_bucket(i, j, G.R) - G.blo) * ldc + d], arel);
          ak = fmaf(DW[j * ldt + i], sQ[j * ldc + d], ak);   // Σ_a dw[a][i] q_a
          av = fmaf(Pm[j * ldt + i], sG[j * ldc + d], av);   // Σ_a p[a][i] dO_a
        }
        const size_t off = base + static_cast<size_t>(i) * D + d0 + d;
        dq[off] = from_f<T>(G.s2 * aq + G.s * arel);
        dk[off] = from_f<T>(G.s2 * ak);
        dv[off] = from_f<T>(av);
      }
      // table gradients of this chunk: bucket b collects the pairs with clamp(j − i, −R, R) = b − R
#pragma unroll
      for (int u = 0; u < TA_MAXREL; ++u) {
        const int e = tid + u * TA_THREADS;
        if (e < G.nbu * dcur) {
          const int rr = e / dcur, d = e - rr * dcur;
          const int bkt = G.blo + rr;
          int dlo = (bkt == 0) ? -(Tn - 1) : bkt - G.R;
          int dhi = (bkt == 2 * G.R) ? (Tn - 1) : bkt - G.R;
          dlo = max(dlo, -(Tn - 1));
          dhi = min(dhi, Tn - 1);
          float ak = 0.f, av = 0.f;
          for (int dl = dlo; dl <= dhi; ++dl) {
            const int i0 = max(0, -dl), i1 = min(Tn, Tn - dl);
            for (int i = i0; i < i1; ++i) {
              const int j = i + dl;
              const float mij = G.trans ? DW[j * ldt + i] : DW[i * ldt + j];
              ak = fmaf(mij, sQ[i * ldc + d], ak);
              av = fmaf(Pm[i * ldt + j], sG[i * ldc + d], av);
            }
          }
          accRk[u] += G.s * ak;
          accRv[u] += av;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < TA_MAXREL; ++u) {
      const int e = tid + u * TA_THREADS;
      if (e < G.nbu * dcur) {
        const int rr = e / dcur, d = e - rr * dcur;
        const size_t off = (static_cast<size_t>(blockIdx.x) * G.nbu + rr) * D + d0 + d;
        drk_part[off] = accRk[u];
        drv_part[off] = accRv[u];
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ host
constexpr const char* OP = "vxlp_ops::cuda_temporal_attention";

TaGeom make_geom(const at::Tensor& q, const at::Tensor& rel_k, bool trans) {
  TaGeom G{};
  G.N = q.size(0);
  G.T = q.size(1);
  G.D = q.size(2);
  G.R = (rel_k.size(0) - 1) / 2;
  const int lo = std::min(std::max(-(G.T - 1), -G.R), G.R) + G.R;
  const int hi = std::min(std::max(G.T - 1, -G.R), G.R) + G.R;
  G.blo = lo;
  G.nbu = hi - lo + 1;
  G.dc = G.T <= 8 ? 128 : G.T <= 16 ? 64 : G.T <= 32 ? 32 : 16;
  const int P = G.T * G.T;
  G.tpp = 1;
  while (G.tpp < 32 && 2 * G.tpp * P <= TA_THREADS) G.tpp *= 2;
  G.nslots = TA_THREADS / G.tpp;
  G.mcount = static_cast<int>(cdiv(P, G.nslots));
  G.ppb = 1;
  const double s = std::pow(static_cast<double>(G.D), -0.25);
  G.s = static_cast<float>(s);
  G.s2 = static_cast<float>(s * s);
  G.trans = trans;
  G.vec = false;
  TORCH_INTERNAL_ASSERT(G.mcount <= TA_MAXM && G.nbu * G.dc <= TA_MAXREL * TA_THREADS);
  return G;
}

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_k,
                const at::Tensor& rel_v) {
  check_input(q, OP, "q", 3);
  check_input(k, OP, "k", 3);
  check_input(v, OP, "v", 3);
  check_input(rel_k, OP, "rel_k", 2);
  check_input(rel_v, OP, "rel_v", 2);
  check_same(k, OP, "k", q, "q");
  check_same(v, OP, "v", q, "q");
  check_same(rel_k, OP, "rel_k", q, "q");
  check_same(rel_v, OP, "rel_v", q, "q");
  check_shape(k, OP, "k", q.sizes(), "[N, T, D]");
  check_shape(v, OP, "v", q.sizes(), "[N, T, D]");
  TORCH_CHECK(q.numel() > 0, OP, ": q must be non-empty, got shape ", q.sizes());
  TORCH_CHECK(q.size(1) <= TA_MAX_T, OP, ": q must have T <= ", TA_MAX_T, " in [N, T, D], got T = ", q.size(1));
  TORCH_CHECK(rel_k.size(0) % 2 == 1 && rel_k.size(1) == q.size(2), OP, ": rel_k must have shape [2R+1, D] with D = ",
              q.size(2), ", got ", rel_k.sizes());
  check_shape(rel_v, OP, "rel_v", rel_k.sizes(), "[2R+1, D]");
}

size_t fwd_smem(const TaGeom& G) {
  return sizeof(float) * (2 * G.T * (G.T + 1) + (2 * G.T + G.nbu) * (G.dc + 1));
}
size_t bwd_smem(const TaGeom& G) {
  return sizeof(float) * ((1 + 2 * G.ppb) * G.T * (G.T + 1) + (4 * G.T + 2 * G.nbu) * (G.dc + 1));
}

at::Tensor ta_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_k,
                      const at::Tensor& rel_v, bool transposed_rel_k) {
  check_args(q, k, v, rel_k, rel_v);
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  TaGeom G = make_geom(q, rel_k, transposed_rel_k);
  at::Tensor out = at::empty_like(q);
  const size_t smem = fwd_smem(G);
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_temporal_attention", [&] {
    using T = dev_t<scalar_t>;
    G.vec = vec_ok<scalar_t>(G.D, {&q, &k, &v, &rel_k, &rel_v});
    allow_smem(ta_fwd_kernel<T>, smem);
    ta_fwd_kernel<T><<<G.N, TA_THREADS, smem, stream>>>(dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v),
                                                        dptr<scalar_t>(rel_k), dptr<scalar_t>(rel_v),
                                                        mptr<scalar_t>(out), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ta_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& rel_k, const at::Tensor& rel_v, bool transposed_rel_k) {
  check_args(q, k, v, rel_k, rel_v);
  check_input(grad_out, OP, "grad_out", 3);
  check_same(grad_out, OP, "grad_out", q, "q");
  check_shape(grad_out, OP, "grad_out", q.sizes(), "[N, T, D]");
  const c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  TaGeom G = make_geom(q, rel_k, transposed_rel_k);
  // positions per block: bounded by shared memory (p and dw per position) and by keeping ≥ 2 blocks per SM
  const int ppb_smem = std::max(1, 6144 / (2 * G.T * (G.T + 1)));
  const int ppb_par = std::max<int>(1, G.N / (2 * num_sms(q.get_device())));
  G.ppb = std::min({16, ppb_smem, ppb_par});
  const int nblk = static_cast<int>(cdiv(G.N, G.ppb));
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  at::Tensor drk_part = at::empty({nblk, G.nbu, G.D}, f32);
  at::Tensor drv_part = at::empty({nblk, G.nbu, G.D}, f32);
  const size_t smem = bwd_smem(G);
  VXLP_DISPATCH_FLOAT_HALF_BF16(q.scalar_type(), "cuda_temporal_attention_backward", [&] {
    using T = dev_t<scalar_t>;
    G.vec = vec_ok<scalar_t>(G.D, {&q, &k, &v, &rel_k, &rel_v, &grad_out});
    allow_smem(ta_bwd_kernel<T>, smem);
    ta_bwd_kernel<T><<<nblk, TA_THREADS, smem, stream>>>(
        dptr<scalar_t>(q), dptr<scalar_t>(k), dptr<scalar_t>(v), dptr<scalar_t>(rel_k), dptr<scalar_t>(rel_v),
        dptr<scalar_t>(grad_out), mptr<scalar_t>(dq), mptr<scalar_t>(dk), mptr<scalar_t>(dv),
        drk_part.data_ptr<float>(), drv_part.data_ptr<float>(), G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  at::Tensor drk = at::zeros(rel_k.sizes(), f32);
  at::Tensor drv = at::zeros(rel_v.sizes(), f32);
  drk.narrow(0, G.blo, G.nbu).copy_(drk_part.sum(0));
  drv.narrow(0, G.blo, G.nbu).copy_(drv_part.sum(0));
  return {dq, dk, dv, drk.to(rel_k.scalar_type()), drv.to(rel_v.scalar_type())};
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_temporal_attention", &vxlp_cuda::ta_forward);
  m.impl("cuda_temporal_attention_backward", &vxlp_cuda::ta_backward);
}
