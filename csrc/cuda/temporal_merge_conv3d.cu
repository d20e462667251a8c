// temporal_merge_conv3d (OPS.md op 3): channels-last 3×3×3 Conv3d, stride (st, 1, 1), replicate padding
// T 1/0, H 1/1, W 1/1, as implicit GEMMs; the padding is fused into the loads by clamping source coordinates.
//
// One GEMM kernel (gemm_kernel): 128 × 128 output tile per block of 8 warps (each warp 32 × 64, accumulators in
// the mma.m16n8k16 layout), K in steps of 32 (fp16 / bf16, tensor cores) or 16 (fp32, FMA), two shared-memory
// stages filled with cp.async (16-byte, zero-fill for padding / out-of-range) while the previous stage is
// multiplied; a scalar fallback fills the stages when the channel counts are not multiples of 16 bytes. The
// operands are gathered by a problem functor:
//  - forward (ConvFwd): out[m, co] = Σ_k im2col(x)[m, k] · w[co, k], m = (g, to, h, w), k = (kt, kh, kw, ci),
//    clamped source coordinates; split-K over blockIdx.z (fp32 partials summed on the host, fixed order) when
//    the output has too few tiles to fill the GPU;
//  - dx (ConvDgrad): the gradient of the *padded* input, one (g, tp) plane of (H+2)·(W+2) positions per
//    blockIdx.z, K = (valid kt for this tp, kh, kw, co) — only the kt with (tp − kt) divisible by st are
//    enumerated; then conv_fold_kernel folds the padded border onto the replicated source elements
//    (dx[t,h,w] = Σ of dxp over its preimages, fixed order). No atomics;
//  - dweight (ConvWgrad): dw[co, k] = Σ_m dout[m, co] · im2col(x)[m, k] (both operands k-major);
//  - dbias: a fixed-order at::sum of grad_out over (G, T_out, H, W).
// The weight enters the forward as [Cout, 27·Cin] rows and the input gradient as [Cin, 27·Cout]; the Python side
// passes both laid out once per weight state (weight_rows / weight_cols, vxlp_ops/_layout_cache.py), and
// laid_out() re-lays them here only when called without.
//
// Forward paths (fp16 / bf16; fp32 always takes the mma kernel): "cute_sm90" (wgmma + TMA, sm_90a) and
// "cute_sm80" (CuTe SM80 mma atoms + cp.async) in temporal_merge_conv3d_cute.cu, or "mma" (gemm_kernel above,
// with split-K). Chosen per call by forward_path() from the op argument forward_path = "auto" (default) |
// "cute_sm90" | "cute_sm80" | "mma" (set from Python by vxlp_ops.dispatch.use_conv_forward_path; nothing is read
// from the environment); auto takes cute_sm90, else cute_sm80, when the path supports the device and shape
// and its 128 × 128 output tiles fill the GPU (≥ one per SM), else mma (split-K). Forcing a path that cannot run
// is an error naming the reason. The backward always runs the mma kernel (dgrad / wgrad).
// cuda_temporal_merge_conv3d_forward_path(x, weight, bias, stride_t, forward_path) returns the name of the path a
// call would take (tests and benchmarks name it).
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "common.cuh"
#include "conv_geometry.cuh"
#include "temporal_merge_conv3d_cute.cuh"

namespace vxlp_cuda {
namespace {

constexpr int GM = 128, GN = 128, G_THREADS = 256;

template <typename T>
struct GemmCfg {
  static constexpr int GK = sizeof(T) == 2 ? 32 : 16;
  static constexpr int PAD = Vec<T>::n;
  // a [rows][k] tile stored row-major (row stride GK + PAD) or k-major (row stride 128 + PAD)
  template <bool KMAJOR>
  struct Tile {
    static constexpr int LD = KMAJOR ? 128 + PAD : GK + PAD;
    static constexpr int OUTER = KMAJOR ? GK : 128;
    static constexpr int INNER = KMAJOR ? 128 : GK;
    static constexpr int ELEMS = OUTER * LD;
  };
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if VXLP_HAS_SM80 && !defined(VXLP_EMULATE)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n) : "memory");
#else
  *reinterpret_cast<uint4*>(smem) = valid ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0u, 0u, 0u, 0u);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if VXLP_HAS_SM80 && !defined(VXLP_EMULATE)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_1() {
#if VXLP_HAS_SM80 && !defined(VXLP_EMULATE)
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

// Fill one stage of an operand tile. IS_A: operand A (rows m, cols k), else B (rows k, cols n). Elements with
// k ≥ k_end are zero (split-K); everything else the functor decides (nullptr = zero).
template <typename T, bool IS_A, bool KMAJOR, class Prob>
__device__ __forceinline__ void fill_stage(T* s, const Prob& p, int mn0, int k0, int k_end, bool vec) {
  using Tl = typename GemmCfg<T>::template Tile<KMAJOR>;
  constexpr int V = Vec<T>::n;
  // outer/inner -> (mn, k): A row-major: (m, k); A k-major: (k, m); B n-major: (n, k); B k-major: (k, n)
  // (for B, "KMAJOR" means stored [k][n]; B n-major is the transposed storage, i.e. not KMAJOR)
  auto src = [&](int o, int i) -> const T* {
    int mn, k;
    if constexpr (KMAJOR) {
      k = k0 + o;
      mn = mn0 + i;
    } else {
      mn = mn0 + o;
      k = k0 + i;
    }
    if (k >= k_end) return nullptr;
    if constexpr (IS_A) return p.a_ptr(mn, k);
    else return p.b_ptr(k, mn);
  };
  if (vec) {
    constexpr int CPO = Tl::INNER / V;
    for (int c = threadIdx.x; c < Tl::OUTER * CPO; c += G_THREADS) {
      const int o = c / CPO, i = (c - o * CPO) * V;
      const T* g = src(o, i);
      cp_async16(s + o * Tl::LD + i, g != nullptr ? g : p.dummy, g != nullptr);
    }
  } else {
    for (int c = threadIdx.x; c < Tl::OUTER * Tl::INNER; c += G_THREADS) {
      const int o = c / Tl::INNER, i = c - o * Tl::INNER;
      const T* g = src(o, i);
      s[o * Tl::LD + i] = g != nullptr ? *g : from_f<T>(0.f);
    }
  }
}

// C[m0:m0+128, n0:n0+128] = Σ_k A[m, k] B[k, n] with A, B gathered by Prob; k in [kz·kchunk, (kz+1)·kchunk) ∩ [0, K)
// where kz = blockIdx.z if ksplit, else the whole [0, K). Prob::begin() returns K (it may depend on blockIdx).
template <typename T, bool A_KMAJOR, bool B_KMAJOR, class Prob>
__global__ void __launch_bounds__(G_THREADS) gemm_kernel(Prob prob, int kchunk, bool ksplit, bool vec) {
  using Cfg = GemmCfg<T>;
  using TA = typename Cfg::template Tile<A_KMAJOR>;
  using TB = typename Cfg::template Tile<B_KMAJOR>;
  constexpr int GK = Cfg::GK;
  __shared__ __align__(16) T sA[2][TA::ELEMS];
  __shared__ __align__(16) T sB[2][TB::ELEMS];

  Prob p = prob;
  const int K = p.begin();
  const int m0 = blockIdx.x * GM, n0 = blockIdx.y * GN;
  const int k_begin = ksplit ? blockIdx.z * kchunk : 0;
  const int k_end = ksplit ? min(K, k_begin + kchunk) : K;
  const int nk = k_end > k_begin ? (k_end - k_begin + GK - 1) / GK : 0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
  const int wm = 32 * (warp & 3), wn = 64 * (warp >> 2);

  float acc[2][8][4];
  zero_acc(acc);

  if (nk > 0) {
    fill_stage<T, true, A_KMAJOR>(sA[0], p, m0, k_begin, k_end, vec);
    fill_stage<T, false, B_KMAJOR>(sB[0], p, n0, k_begin, k_end, vec);
  }
  cp_async_commit();
  for (int kt = 0; kt < nk; ++kt) {
    const int cur = kt & 1;
    if (kt + 1 < nk) {
      const int k0 = k_begin + (kt + 1) * GK;
      fill_stage<T, true, A_KMAJOR>(sA[cur ^ 1], p, m0, k0, k_end, vec);
      fill_stage<T, false, B_KMAJOR>(sB[cur ^ 1], p, n0, k0, k_end, vec);
    }
    cp_async_commit();
    cp_async_wait_1();  // every group but the newest has landed: stage `cur` is complete (for this thread)
    __syncthreads();    // ... and for every thread
#pragma unroll
    for (int kk = 0; kk < GK; kk += 16)
      warp_mma_k16<T, 2, 8, A_KMAJOR, !B_KMAJOR>(acc, sA[cur], TA::LD, wm, sB[cur], TB::LD, wn, kk);
    __syncthreads();  // stage `cur` is refilled in the next iteration
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int r = m0 + wm + 16 * mt + g, c = n0 + wn + 8 * nt + 2 * qd;
      p.store(r, c, acc[mt][nt][0], acc[mt][nt][1]);
      p.store(r + 8, c, acc[mt][nt][2], acc[mt][nt][3]);
    }
}

__device__ __forceinline__ int clampi(int v, int lo, int hi) { return min(max(v, lo), hi); }

struct ConvGeom {
  int G, T, H, W, Cin, Cout, To, st;
  int M;  // G · To · H · W output positions
};

// Address of im2col(x)[m, k] (a run of channels when vectorised: k..k+V−1 stay within one tap).
template <typename T>
__device__ __forceinline__ const T* im2col_ptr(const T* x, const ConvGeom& c, int m, int k) {
  const ConvRow o = conv_row(m, c.W, c.H, c.To);
  const ConvTap p = conv_tap(k, c.Cin);
  const int t = clampi(o.to * c.st + p.kt - 1, 0, c.T - 1);
  const int hh = clampi(o.h + p.kh - 1, 0, c.H - 1);
  const int ww = clampi(o.w + p.kw - 1, 0, c.W - 1);
  return x + (((static_cast<size_t>(o.g) * c.T + t) * c.H + hh) * c.W + ww) * c.Cin + p.ci;
}

template <typename T>
struct ConvFwd {
  const T* x;
  const T* wr;    // [Cout][27·Cin], k = (kt·9 + kh·3 + kw)·Cin + ci
  const T* bias;  // [Cout] or null
  T* out;         // [M][Cout]
  float* part;    // split-K partials [splits][M][Cout], or null
  const T* dummy;
  ConvGeom c;
  int K;
  __device__ int begin() const { return K; }
  __device__ const T* a_ptr(int m, int k) const {
    return (m < c.M && k < K) ? im2col_ptr(x, c, m, k) : nullptr;
  }
  __device__ const T* b_ptr(int k, int n) const {
    return (n < c.Cout && k < K) ? wr + static_cast<size_t>(n) * K + k : nullptr;
  }
  __device__ void store(int m, int n, float v0, float v1) const {
    if (m >= c.M) return;
    if (part != nullptr) {
      float* q = part + (static_cast<size_t>(blockIdx.z) * c.M + m) * c.Cout + n;
      if (n < c.Cout) q[0] = v0;
      if (n + 1 < c.Cout) q[1] = v1;
      return;
    }
    if (bias != nullptr) {
      if (n < c.Cout) v0 += to_f(bias[n]);
      if (n + 1 < c.Cout) v1 += to_f(bias[n + 1]);
    }
    store_pair(out, c.Cout, c.M, c.Cout, m, n, v0, v1);
  }
};

// Gradient of the padded input, plane (g, tp) = blockIdx.z: dxp[g, tp, hp, wp, ci] =
// Σ_{kt valid, kh, kw, co} dout[g, (tp − kt)/st, hp − kh, wp − kw, co] · w[co, ci, kt, kh, kw].
template <typename T>
struct ConvDgrad {
  const T* dout;  // [G][To][H][W][Cout]
  const T* wd;    // [Cin][27][Cout]
  float* dxp;     // [G][T+1][H+2][W+2][Cin]
  const T* dummy;
  ConvGeom c;
  // per block
  int g, tp, kt_pack, K;
  __device__ int begin() {
    const int plane = blockIdx.z;
    g = plane / (c.T + 1);
    tp = plane - g * (c.T + 1);
    int nvt = 0;
    kt_pack = 0;
    for (int kt = 0; kt < 3; ++kt) {
      const int d = tp - kt;
      if (d >= 0 && d % c.st == 0 && d / c.st < c.To) {
        kt_pack |= kt << (2 * nvt);
        ++nvt;
      }
    }
    K = nvt * 9 * c.Cout;
    return K;
  }
  __device__ const T* a_ptr(int m, int k) const {
    const int Wp = c.W + 2;
    if (m >= (c.H + 2) * Wp || k >= K) return nullptr;
    const int hp = m / Wp, wp = m - hp * Wp;
    const int j = k / (9 * c.Cout);
    const int rem = k - j * 9 * c.Cout;
    const int tap9 = rem / c.Cout, co = rem - tap9 * c.Cout;
    const int ho = hp - tap9 / 3, wo = wp - tap9 % 3;
    if (ho < 0 || ho >= c.H || wo < 0 || wo >= c.W) return nullptr;
    const int kt = (kt_pack >> (2 * j)) & 3;
    const int to = (tp - kt) / c.st;
    return dout + (((static_cast<size_t>(g) * c.To + to) * c.H + ho) * c.W + wo) * c.Cout + co;
  }
  __device__ const T* b_ptr(int k, int n) const {
    if (n >= c.Cin || k >= K) return nullptr;
    const int j = k / (9 * c.Cout);
    const int rem = k - j * 9 * c.Cout;
    const int tap9 = rem / c.Cout, co = rem - tap9 * c.Cout;
    const int kt = (kt_pack >> (2 * j)) & 3;
    return wd + (static_cast<size_t>(n) * 27 + kt * 9 + tap9) * c.Cout + co;
  }
  __device__ void store(int m, int n, float v0, float v1) const {
    const int Pp = (c.H + 2) * (c.W + 2);
    if (m >= Pp) return;
    float* q = dxp + (static_cast<size_t>(blockIdx.z) * Pp + m) * c.Cin + n;
    if (n < c.Cin) q[0] = v0;
    if (n + 1 < c.Cin) q[1] = v1;
  }
};

// dw[co, k] = Σ_m dout[m, co] · im2col(x)[m, k]: A = doutᵀ (k-major: A[co][m] at dout[m·Cout + co]),
// B = im2col(x) (k-major: B[m][k]).
template <typename T>
struct ConvWgrad {
  const T* x;
  const T* dout;
  T* dwr;  // [Cout][27·Cin]
  const T* dummy;
  ConvGeom c;
  int Kc;  // 27·Cin
  __device__ int begin() const { return c.M; }
  __device__ const T* a_ptr(int co, int m) const {
    return (co < c.Cout && m < c.M) ? dout + static_cast<size_t>(m) * c.Cout + co : nullptr;
  }
  __device__ const T* b_ptr(int m, int kc) const {
    return (kc < Kc && m < c.M) ? im2col_ptr(x, c, m, kc) : nullptr;
  }
  __device__ void store(int co, int kc, float v0, float v1) const { store_pair(dwr, Kc, c.Cout, Kc, co, kc, v0, v1); }
};

// dx[g, t, h, w, ci] = Σ dxp over the padded positions that replicate (t, h, w): tp ∈ {t+1} ∪ {0 if t = 0},
// hp ∈ {h+1} ∪ {0 if h = 0} ∪ {H+1 if h = H−1}, wp likewise.
template <typename T>
__global__ void __launch_bounds__(256) conv_fold_kernel(const float* __restrict__ dxp, T* __restrict__ dx,
                                                         ConvGeom c, size_t total) {
  const int Hp = c.H + 2, Wp = c.W + 2;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int ci = static_cast<int>(idx % c.Cin);
    size_t r = idx / c.Cin;
    const int w = static_cast<int>(r % c.W);
    r /= c.W;
    const int h = static_cast<int>(r % c.H);
    r /= c.H;
    const int t = static_cast<int>(r % c.T);
    const int g = static_cast<int>(r / c.T);
    float acc = 0.f;
    for (int a = 0; a < 2; ++a) {
      if (a == 1 && t != 0) break;
      const int tp = a == 0 ? t + 1 : 0;
      for (int b = 0; b < 3; ++b) {
        if ((b == 1 && h != 0) || (b == 2 && h != c.H - 1)) continue;
        const int hp = b == 0 ? h + 1 : (b == 1 ? 0 : c.H + 1);
        for (int e = 0; e < 3; ++e) {
          if ((e == 1 && w != 0) || (e == 2 && w != c.W - 1)) continue;
          const int wp = e == 0 ? w + 1 : (e == 1 ? 0 : c.W + 1);
          acc += dxp[(((static_cast<size_t>(g) * (c.T + 1) + tp) * Hp + hp) * Wp + wp) * c.Cin + ci];
        }
      }
    }
    dx[idx] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------------------------------------ host
constexpr const char* OP = "vxlp_ops::cuda_temporal_merge_conv3d";

ConvGeom make_geom(const at::Tensor& x, const at::Tensor& weight, int64_t stride_t) {
  ConvGeom c{};
  c.G = x.size(0);
  c.T = x.size(1);
  c.H = x.size(2);
  c.W = x.size(3);
  c.Cin = x.size(4);
  c.Cout = weight.size(0);
  c.st = static_cast<int>(stride_t);
  c.To = (c.T + 1 - 3) / c.st + 1;
  c.M = c.G * c.To * c.H * c.W;
  return c;
}

void check_args(const at::Tensor& x, const at::Tensor& weight, int64_t stride_t) {
  check_input(x, OP, "x", 5);
  check_input(weight, OP, "weight", 5);
  check_same(weight, OP, "weight", x, "x");
  TORCH_CHECK(x.numel() > 0, OP, ": x must be non-empty, got shape ", x.sizes());
  TORCH_CHECK(weight.size(0) > 0 && weight.size(1) == x.size(4) && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.size(4) == 3,
              OP, ": weight must have shape [Cout, Cin, 3, 3, 3] with Cin = ", x.size(4), ", got ", weight.sizes());
  TORCH_CHECK(stride_t >= 1 && stride_t < (1 << 20), OP, ": stride_t must be >= 1, got ", stride_t);
  TORCH_CHECK(x.size(1) >= 2, OP, ": x must have T >= 2 frames in [G, T, H, W, Cin], got T = ", x.size(1));
  TORCH_CHECK(x.size(0) * (x.size(1) + 1) <= 65535, OP, ": G·(T+1) must be <= 65535, got G = ", x.size(0),
              ", T = ", x.size(1));
  TORCH_CHECK(27 * x.size(4) * weight.size(0) < (int64_t{1} << 31) &&
                  x.size(0) * (x.size(1) + 1) * (x.size(2) + 2) * (x.size(3) + 2) * x.size(4) < (int64_t{1} << 31),
              OP, ": problem too large for 32-bit indexing");
}

// `weight` [Cout, Cin, 3, 3, 3] as the GEMM operand: [Cout, 27·Cin] (kt, kh, kw, ci) rows — or [Cin, 27·Cout]
// (kt, kh, kw, co) for the input gradient (`transposed`) — taken as given when the caller laid it out already.
at::Tensor laid_out(const at::Tensor& weight, const std::optional<at::Tensor>& given, bool transposed) {
  const int64_t cout = weight.size(0), cin = weight.size(1);
  const int64_t rows = transposed ? cin : cout, cols = 27 * (transposed ? cout : cin);
  if (given.has_value()) {
    const char* name = transposed ? "weight_cols" : "weight_rows";
    check_input(*given, OP, name, 2);
    check_same(*given, OP, name, weight, "weight");
    check_shape(*given, OP, name, {rows, cols}, transposed ? "[Cin, 27·Cout]" : "[Cout, 27·Cin]");
    return *given;
  }
  if (transposed) return weight.permute({1, 2, 3, 4, 0}).reshape({rows, cols}).contiguous();
  return weight.permute({0, 2, 3, 4, 1}).reshape({rows, cols}).contiguous();
}

// ------------------------------------------------------------------------------------------------ forward path
enum class FwdPath { kMma, kCuteSm80, kCuteSm90 };

const char* fwd_path_name(FwdPath p) {
  return p == FwdPath::kMma ? "mma" : (p == FwdPath::kCuteSm90 ? "cute_sm90" : "cute_sm80");
}

struct FwdChoice {
  FwdPath path;
  std::string why;  // for auto: why the faster paths were not taken
};

conv_cute::FwdProblem cute_problem(const at::Tensor& x, const ConvGeom& c, const at::Tensor& wr,
                                   const std::optional<at::Tensor>& bias, const at::Tensor& out) {
  conv_cute::FwdProblem p{};
  p.x = x.data_ptr();
  p.wr = wr.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.out = out.defined() ? out.data_ptr() : nullptr;
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.G = c.G, p.T = c.T, p.H = c.H, p.W = c.W, p.Cin = c.Cin, p.Cout = c.Cout, p.To = c.To, p.st = c.st;
  p.M = c.M, p.K = 27 * c.Cin;
  return p;
}

// The forward path of this call (see the top of the file). `out` may be undefined (path queries).
FwdChoice forward_path(const at::Tensor& x, const ConvGeom& c, const at::Tensor& wr,
                       const std::optional<at::Tensor>& bias, const at::Tensor& out, c10::string_view path_arg) {
  const std::string want(path_arg.data(), path_arg.size());
  TORCH_CHECK(want == "auto" || want == "cute_sm90" || want == "cute_sm80" || want == "mma", OP,
              ": forward_path must be one of auto, cute_sm90, cute_sm80, mma, got '", want, "'");
  if (want == "mma") return {FwdPath::kMma, "forced by forward_path"};
  const bool low = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const conv_cute::FwdProblem p = cute_problem(x, c, wr, bias, out);
  const int device = x.get_device();
  auto reason = [&](conv_cute::Path path) -> const char* {
    if (!low) return "needs float16 / bfloat16 (float32 takes the mma kernel)";
    return conv_cute::unsupported(path, p, device);
  };
  if (want == "cute_sm90" || want == "cute_sm80") {
    const conv_cute::Path path = want == "cute_sm90" ? conv_cute::Path::kSm90 : conv_cute::Path::kSm80;
    const char* r = reason(path);
    TORCH_CHECK(r == nullptr, OP, ": forward_path='", want, "' cannot run here: ", r);
    return {path == conv_cute::Path::kSm90 ? FwdPath::kCuteSm90 : FwdPath::kCuteSm80, "forced by forward_path"};
  }
  // auto
  const int64_t tiles = cdiv(c.M, 128) * cdiv(c.Cout, 128);
  if (low && tiles < num_sms(device)) return {FwdPath::kMma, "fewer 128 x 128 output tiles than SMs (split-K)"};
  const char* r90 = reason(conv_cute::Path::kSm90);
  if (r90 == nullptr) return {FwdPath::kCuteSm90, ""};
  const char* r80 = reason(conv_cute::Path::kSm80);
  if (r80 == nullptr) return {FwdPath::kCuteSm80, std::string("cute_sm90: ") + r90};
  return {FwdPath::kMma, std::string("cute_sm90: ") + r90 + "; cute_sm80: " + r80};
}

// "<path>" or "<path> (<why the faster paths were not taken>)" for cuda_temporal_merge_conv3d with these args.
std::string conv_forward_path(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              int64_t stride_t, c10::string_view path) {
  check_args(x, weight, stride_t);
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvGeom c = make_geom(x, weight, stride_t);
  // the laid-out weight the forward would use is a fresh contiguous tensor: 16-byte aligned like `weight`'s storage
  const FwdChoice ch = forward_path(x, c, weight, bias, at::Tensor(), path);
  std::string s = fwd_path_name(ch.path);
  if (!ch.why.empty()) s += " (" + ch.why + ")";
  return s;
}

at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t stride_t, const std::optional<at::Tensor>& weight_rows, c10::string_view path) {
  check_args(x, weight, stride_t);
  if (bias.has_value()) {
    check_input(*bias, OP, "bias", 1);
    check_same(*bias, OP, "bias", x, "x");
    check_shape(*bias, OP, "bias", {weight.size(0)}, "[Cout]");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const ConvGeom c = make_geom(x, weight, stride_t);
  const int K = 27 * c.Cin;
  at::Tensor out = at::empty({c.G, c.To, c.H, c.W, c.Cout}, x.options());
  const at::Tensor wr = laid_out(weight, weight_rows, false);
  const FwdChoice choice = forward_path(x, c, wr, bias, out, path);
  if (choice.path != FwdPath::kMma) {
    conv_cute::run(choice.path == FwdPath::kCuteSm90 ? conv_cute::Path::kSm90 : conv_cute::Path::kSm80,
                   cute_problem(x, c, wr, bias, out), stream);
    return out;
  }
  // split K when the output tiles alone cannot fill the GPU (≥ 8 k-steps per split, ≤ 16 splits)
  const int64_t tiles = cdiv(c.M, GM) * cdiv(c.Cout, GN);
  const int64_t want = 2 * num_sms(x.get_device());
  int64_t splits = 1;
  if (tiles < want) splits = std::min<int64_t>({cdiv(want, tiles), std::max<int64_t>(1, K / (8 * 32)), 16});
  VXLP_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "cuda_temporal_merge_conv3d", [&] {
    using T = dev_t<scalar_t>;
    constexpr int GK = GemmCfg<T>::GK;
    const int64_t kchunk = cdiv(cdiv(K, splits), GK) * GK;
    const int64_t nsplit = cdiv(K, kchunk);
    at::Tensor part;
    if (nsplit > 1) part = at::empty({nsplit, c.M, c.Cout}, x.options().dtype(at::kFloat));
    ConvFwd<T> p{};
    p.x = dptr<scalar_t>(x);
    p.wr = dptr<scalar_t>(wr);
    p.bias = bias.has_value() ? dptr<scalar_t>(*bias) : nullptr;
    p.out = mptr<scalar_t>(out);
    p.part = nsplit > 1 ? part.data_ptr<float>() : nullptr;
    p.dummy = p.x;
    p.c = c;
    p.K = K;
    const bool vec = vec_ok<scalar_t>(c.Cin, {&x, &wr});
    const dim3 grid(cdiv(c.M, GM), cdiv(c.Cout, GN), nsplit);
    gemm_kernel<T, false, false, ConvFwd<T>><<<grid, G_THREADS, 0, stream>>>(p, kchunk, nsplit > 1, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (nsplit > 1) {
      at::Tensor acc = part.sum(0);  // fixed-order reduction over the splits
      if (bias.has_value()) acc.add_(bias->to(at::kFloat));
      out.view({c.M, c.Cout}).copy_(acc);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                             const at::Tensor& weight, int64_t stride_t,
                                                             const std::optional<at::Tensor>& weight_cols) {
  check_args(x, weight, stride_t);
  const ConvGeom c = make_geom(x, weight, stride_t);
  check_input(grad_out, OP, "grad_out", 5);
  check_same(grad_out, OP, "grad_out", x, "x");
  check_shape(grad_out, OP, "grad_out", {c.G, c.To, c.H, c.W, c.Cout}, "[G, T_out, H, W, Cout]");
  const c10::cuda::CUDAGuard guard(x.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int Kc = 27 * c.Cin;
  const int Pp = (c.H + 2) * (c.W + 2);
  at::Tensor dx = at::empty_like(x);
  at::Tensor dxp = at::empty({c.G, c.T + 1, c.H + 2, c.W + 2, c.Cin}, x.options().dtype(at::kFloat));
  at::Tensor dwr = at::empty({c.Cout, Kc}, weight.options());
  const at::Tensor wd = laid_out(weight, weight_cols, true);
  VXLP_DISPATCH_FLOAT_HALF_BF16(x.scalar_type(), "cuda_temporal_merge_conv3d_backward", [&] {
    using T = dev_t<scalar_t>;
    {
      ConvDgrad<T> p{};
      p.dout = dptr<scalar_t>(grad_out);
      p.wd = dptr<scalar_t>(wd);
      p.dxp = dxp.data_ptr<float>();
      p.dummy = p.dout;
      p.c = c;
      const bool vec = vec_ok<scalar_t>(c.Cout, {&grad_out, &wd});
      const dim3 grid(cdiv(Pp, GM), cdiv(c.Cin, GN), c.G * (c.T + 1));
      gemm_kernel<T, false, false, ConvDgrad<T>><<<grid, G_THREADS, 0, stream>>>(p, 0, false, vec);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const size_t total = static_cast<size_t>(x.numel());
      const int blocks = static_cast<int>(std::min<int64_t>(cdiv(total, 256), 65535));
      conv_fold_kernel<T><<<blocks, 256, 0, stream>>>(dxp.data_ptr<float>(), mptr<scalar_t>(dx), c, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    {
      ConvWgrad<T> p{};
      p.x = dptr<scalar_t>(x);
      p.dout = dptr<scalar_t>(grad_out);
      p.dwr = mptr<scalar_t>(dwr);
      p.dummy = p.x;
      p.c = c;
      p.Kc = Kc;
      const bool vec = vec_ok<scalar_t>(c.Cout, {&grad_out}) && vec_ok<scalar_t>(c.Cin, {&x});
      const dim3 grid(cdiv(c.Cout, GM), cdiv(Kc, GN));
      gemm_kernel<T, true, true, ConvWgrad<T>><<<grid, G_THREADS, 0, stream>>>(p, 0, false, vec);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  at::Tensor dw = dwr.view({c.Cout, 3, 3, 3, c.Cin}).permute({0, 4, 1, 2, 3}).contiguous();
  at::Tensor db = grad_out.sum({0, 1, 2, 3}, false, at::kFloat).to(weight.scalar_type());
  return {dx, dw, db};
}

}  // namespace
}  // namespace vxlp_cuda

TORCH_LIBRARY_IMPL(vxlp_ops, CUDA, m) {
  m.impl("cuda_temporal_merge_conv3d", &vxlp_cuda::conv_forward);
  m.impl("cuda_temporal_merge_conv3d_backward", &vxlp_cuda::conv_backward);
  m.impl("cuda_temporal_merge_conv3d_forward_path", &vxlp_cuda::conv_forward_path);
}
