// temporal_merge_conv3d forward (OPS.md op 3) as CUTLASS/CuTe implicit GEMMs, fp16 / bf16:
//   out[m, co] = bias[co] + Σ_k A[m, k] · B[co, k],  M = G·To·H·W, N = Cout, K = 27·Cin,
//   A = im2col(x) with k = (kt·9 + kh·3 + kw)·Cin + ci, gathered from x with *clamped* source coordinates
//   (t = clamp(to·st + kt − 1), h = clamp(h + kh − 1), w = clamp(w + kw − 1)): the replicate padding is fused into
//   the A loads; B = the weight laid out once as [Cout, 27·Cin] rows (vxlp_ops/_layout_cache.py).
//
// Two paths (selected at run time by temporal_merge_conv3d.cu; dgrad / wgrad stay on the hand-written mma.sync
// kernel of that file):
//  - cute_sm80 (sm_80 and newer): CTA tile 128 × 128 × 64, 4 warps (2 × 2, TiledMMA of SM80 m16n8k16 atoms,
//    fp32 accumulation), 3-stage cp.async pipeline (A: the clamped gather, B: dense rows; 16-byte copies, zero
//    fill past M / Cout / K), operands in 128-byte-swizzled shared memory (Swizzle<3,3,3>), fragments loaded with
//    ldmatrix (SM75_U32x4_LDSM_N); one __syncthreads per k-tile. 96 KiB dynamic shared memory.
//  - cute_sm90 (sm_90a only): CTA tile 256 × 128 × 64, 2 warpgroups (each 2 × wgmma m64n128k16 per k-step from
//    shared memory, fp32 accumulation), 4 stages: B (the dense weight) by TMA (one thread arms an mbarrier with the
//    transaction bytes; TMA zero-fills past Cout / K), A by the same clamped cp.async gather (TMA's im2col mode
//    only zero-fills out of bounds, it cannot replicate), made visible to wgmma's async proxy with
//    fence.proxy.async; both in the GMMA 128-byte-swizzled K-major layout. Loads run 2 k-tiles ahead, wgmma keeps
//    one batch in flight (warpgroup_wait<1>); one __syncthreads per k-tile. 193 KiB dynamic shared memory.
// Both: grid (Cout tiles, M tiles) with the Cout tiles of one M tile adjacent (the gathered A tile is shared in
// L2); no split-K (small problems keep the mma.sync kernel in "auto"); deterministic (no atomics); epilogue
// adds the bias in fp32 and stores element-wise with bounds checks. Requirements (else unsupported() says why):
// Cin % 8 == 0 (a 16-byte chunk of A stays within one tap), x / weight rows 16-byte aligned.
//
// Verification status: NEITHER PATH HAS RUN ON A GPU YET. Compile-checked for sm_80 and sm_90a
// (scripts/check_cuda_compile.sh; the sm_90a PTX has wgmma.mma_async m64n128k16, cp.async.bulk.tensor.2d with
// mbarrier complete_tx, fence.proxy.async). On the CPU (csrc/cuda/emu, VXLP_EMULATE): the cute_sm80 kernel
// code — the gather, the swizzled shared-memory layouts, the TiledMMA partitioning, the pipeline indexing, the
// epilogue — runs with the SM80 mma atom replaced by an atom of the same register layout whose fma is the
// emulator's mma.m16n8k16, the ldmatrix atom by a universal copy (same fragment contents), cp.async by plain
// copies; of cute_sm90 only the shared-memory layouts (gather targets = the canonical 128-byte swizzle the wgmma
// descriptors and TMA box assume) and the loader coverage are checked (layout_mismatches()). Not checked on the
// CPU: ldmatrix, cp.async / TMA / mbarrier timing and phases, wgmma, the proxy fence. tests/test_cuda_gpu.py
// forces each path against the float64 reference (and the compute-sanitizer script runs both) on a GPU.
#include "temporal_merge_conv3d_cute.cuh"
#include "conv_geometry.cuh"

#if VXLP_CONV_CUTE

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include <cute/tensor.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>  // host-compilable: the emulation checks the sm90 smem layouts
#if !defined(VXLP_EMULATE)
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define VXLP_CONV_SM90A_DEVICE 1
#else
#define VXLP_CONV_SM90A_DEVICE 0
#endif

namespace vxlp_cuda {
namespace conv_cute {

#if defined(VXLP_EMULATE)
// The SM80 m16n8k16 atom with the emulator's mma (same register fragments, PTX layout): lets the CPU emulation run
// the cute_sm80 kernel code unchanged apart from the instruction itself.
template <bool BF16>
struct EmuMma16816 {
  using DRegisters = float[4];
  using ARegisters = uint32_t[4];
  using BRegisters = uint32_t[2];
  using CRegisters = float[4];
  static void fma(float& d0, float& d1, float& d2, float& d3, uint32_t const& a0, uint32_t const& a1,
                  uint32_t const& a2, uint32_t const& a3, uint32_t const& b0, uint32_t const& b1, float const& c0,
                  float const& c1, float const& c2, float const& c3) {
    float c[4] = {c0, c1, c2, c3};
    const uint32_t a[4] = {a0, a1, a2, a3};
    const uint32_t b[2] = {b0, b1};
    vxlp_emu::mma16816<BF16>(c, a, b);
    d0 = c[0];
    d1 = c[1];
    d2 = c[2];
    d3 = c[3];
  }
};
#endif

}  // namespace conv_cute
}  // namespace vxlp_cuda

#if defined(VXLP_EMULATE)
namespace cute {
template <>
struct MMA_Traits<vxlp_cuda::conv_cute::EmuMma16816<true>> : MMA_Traits<SM80_16x8x16_F32BF16BF16F32_TN> {};
template <>
struct MMA_Traits<vxlp_cuda::conv_cute::EmuMma16816<false>> : MMA_Traits<SM80_16x8x16_F32F16F16F32_TN> {};
}  // namespace cute
#endif

namespace vxlp_cuda {
namespace conv_cute {
namespace {

using namespace cute;

template <typename E>
struct FwdArgs {
  const E* x;
  const E* wr;
  const E* bias;
  E* out;
  int G, T, H, W, Cin, Cout, To, st, M, K;
};

// ------------------------------------------------------------------------------------------ cp.async
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(VXLP_EMULATE)
  *reinterpret_cast<uint4*>(smem) = valid ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0u, 0u, 0u, 0u);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if !defined(VXLP_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(VXLP_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ int clampi(int v, int lo, int hi) { return min(max(v, lo), hi); }

// ------------------------------------------------------------------------------------------ operand loads
// The BM × BK tile of A = im2col(x) and the BN × BK tile of B = wr for k-tile kt, 16-byte chunks: thread tid
// owns chunk column tid % CPR of rows tid / CPR + RPP·i. The output position of each of its A rows is decoded once
// (constructor); per k-tile only the tap (kt, kh, kw) and channel ci of its column change, shared by all its rows.
template <typename E, int BM, int BN, int BK, int NTHR>
struct TileLoader {
  static constexpr int CPR = BK / 8;      // 16-byte chunks per row
  static constexpr int RPP = NTHR / CPR;  // rows per pass
  static constexpr int PA = BM / RPP;
  static_assert(BK % 8 == 0 && NTHR % CPR == 0 && BM % RPP == 0 && BN % RPP == 0 && PA <= 32, "tile loader");

  const FwdArgs<E>& a;
  int col, row0;
  int gt[PA], tb[PA], hh[PA], ww[PA];  // g·T, to·st − 1, h, w of row i (valid when bit i of a_ok)
  uint32_t a_ok = 0;

  __device__ TileLoader(const FwdArgs<E>& args, int m0, int tid) : a(args) {
    col = 8 * (tid % CPR);
    row0 = tid / CPR;
#pragma unroll
    for (int i = 0; i < PA; ++i) {
      const int m = m0 + row0 + RPP * i;
      const int mm = m < a.M ? m : 0;
      const ConvRow o = conv_row(mm, a.W, a.H, a.To);
      gt[i] = o.g * a.T;
      tb[i] = o.to * a.st - 1;
      hh[i] = o.h;
      ww[i] = o.w;
      if (m < a.M) a_ok |= 1u << i;
    }
  }

  // A chunk (row, col..col+7) of k-tile kt → dst(row, col) (a function returning the shared-memory address).
  template <class Dst>
  __device__ __forceinline__ void load_a(int kt, Dst dst) const {
    const int k = kt * BK + col;
    const bool k_ok = k < a.K;
    const ConvTap p = conv_tap(k, a.Cin);
#pragma unroll
    for (int i = 0; i < PA; ++i) {
      const bool ok = k_ok && ((a_ok >> i) & 1u);
      const int t = clampi(tb[i] + p.kt, 0, a.T - 1);
      const int h = clampi(hh[i] + p.kh - 1, 0, a.H - 1);
      const int w = clampi(ww[i] + p.kw - 1, 0, a.W - 1);
      const E* src = a.x + ((((gt[i] + t) * a.H + h) * a.W + w) * a.Cin + p.ci);
      cp_async16(dst(row0 + RPP * i, col), ok ? src : a.x, ok);
    }
  }

  // B chunk (row n, col..col+7) of k-tile kt, rows n0 + row.
  template <class Dst>
  __device__ __forceinline__ void load_b(int kt, int n0, Dst dst) const {
    const int k = kt * BK + col;
    const bool k_ok = k < a.K;
    constexpr int PB = BN / RPP;
#pragma unroll
    for (int i = 0; i < PB; ++i) {
      const int n = n0 + row0 + RPP * i;
      const bool ok = k_ok && n < a.Cout;
      cp_async16(dst(row0 + RPP * i, col), ok ? a.wr + (static_cast<size_t>(n) * a.K + k) : a.wr, ok);
    }
  }
};

// out[m0 + r, n0 + c] = acc + bias for every accumulator element of this thread (coordinates from the MMA's C
// partition of an identity tensor).
template <typename E, class Acc, class Coords>
__device__ __forceinline__ void store_tile(const FwdArgs<E>& a, const Acc& acc, const Coords& coords, int m0, int n0) {
#pragma unroll
  for (int i = 0; i < size(acc); ++i) {
    const int m = m0 + get<0>(coords(i)), n = n0 + get<1>(coords(i));
    if (m < a.M && n < a.Cout) {
      float v = acc(i);
      if (a.bias != nullptr) v += static_cast<float>(a.bias[n]);
      a.out[static_cast<size_t>(m) * a.Cout + n] = static_cast<E>(v);
    }
  }
}

// ------------------------------------------------------------------------------------------ cute_sm80
template <typename E>
struct Sm80Cfg {
  static constexpr int BM = 128, BN = 128, BK = 64, S = 3, NTHR = 128;
  static constexpr bool kBf16 = std::is_same_v<E, cutlass::bfloat16_t>;
  // 8 rows × 64 elements (128 bytes), 16-byte chunks XOR-swizzled by row: conflict-free cp.async and ldmatrix
  using SmemAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, Int<BK>>, Stride<Int<BK>, _1>>{}));
  using SmemA = decltype(tile_to_shape(SmemAtom{}, Shape<Int<BM>, Int<BK>, Int<S>>{}));
  using SmemB = decltype(tile_to_shape(SmemAtom{}, Shape<Int<BN>, Int<BK>, Int<S>>{}));
#if defined(VXLP_EMULATE)
  using MmaOp = EmuMma16816<kBf16>;
  using S2R = Copy_Atom<UniversalCopy<E>, E>;
#else
  using MmaOp = std::conditional_t<kBf16, SM80_16x8x16_F32BF16BF16F32_TN, SM80_16x8x16_F32F16F16F32_TN>;
  using S2R = Copy_Atom<SM75_U32x4_LDSM_N, E>;
#endif
  // 2 × 2 warps; each warp covers 16 × 16 of every 32 × 32 block (the 128 × 128 tile is 4 × 4 such blocks)
  using Mma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<_2, _2, _1>>, Tile<_32, _32, _16>>;
  static constexpr size_t kSmemBytes = (cosize_v<SmemA> + cosize_v<SmemB>) * sizeof(E);
};

template <typename E>
__global__ void __launch_bounds__(Sm80Cfg<E>::NTHR) conv_fwd_sm80(FwdArgs<E> a) {
#if defined(VXLP_EMULATE) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
  using Cfg = Sm80Cfg<E>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, S = Cfg::S;
  extern __shared__ __align__(128) unsigned char smem_sm80[];
  E* const pa = reinterpret_cast<E*>(smem_sm80);
  E* const pb = pa + cosize_v<typename Cfg::SmemA>;
  Tensor sA = make_tensor(make_smem_ptr(pa), typename Cfg::SmemA{});  // (BM, BK, S)
  Tensor sB = make_tensor(make_smem_ptr(pb), typename Cfg::SmemB{});  // (BN, BK, S)

  const int tid = threadIdx.x;
  const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
  const int KT = (a.K + BK - 1) / BK;
  const TileLoader<E, BM, BN, BK, Cfg::NTHR> ld(a, m0, tid);
  auto load = [&](int kt, int s) {
    ld.load_a(kt, [&](int r, int c) { return &sA(r, c, s); });
    ld.load_b(kt, n0, [&](int r, int c) { return &sB(r, c, s); });
  };

  typename Cfg::Mma mma;
  auto thr = mma.get_slice(tid);
  Tensor acc = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
  clear(acc);
  Tensor rA = thr.partition_fragment_A(sA(_, _, 0));  // (MMA, MMA_M, MMA_K)
  Tensor rB = thr.partition_fragment_B(sB(_, _, 0));
  auto s2r_a = make_tiled_copy_A(typename Cfg::S2R{}, mma);
  auto s2r_b = make_tiled_copy_B(typename Cfg::S2R{}, mma);
  auto s2r_a_thr = s2r_a.get_slice(tid);
  auto s2r_b_thr = s2r_b.get_slice(tid);
  Tensor sA_p = s2r_a_thr.partition_S(sA);  // (CPY, CPY_M, CPY_K, S)
  Tensor sB_p = s2r_b_thr.partition_S(sB);
  Tensor rA_v = s2r_a_thr.retile_D(rA);
  Tensor rB_v = s2r_b_thr.retile_D(rB);

#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<S - 2>();  // this thread's copies of k-tile kt have landed ...
    __syncthreads();         // ... everyone's; and everyone is done with k-tile kt − 1 (its stage is refilled now)
    if (kt + S - 1 < KT) load(kt + S - 1, (kt + S - 1) % S);
    cp_async_commit();
    const int s = kt % S;
#pragma unroll
    for (int kb = 0; kb < size<2>(rA); ++kb) {
      copy(s2r_a, sA_p(_, _, kb, s), rA_v(_, _, kb));
      copy(s2r_b, sB_p(_, _, kb, s), rB_v(_, _, kb));
      gemm(mma, rA(_, _, kb), rB(_, _, kb), acc);
    }
  }
  cp_async_wait<0>();

  Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
  store_tile(a, acc, coords, m0, n0);
#endif
}

// ------------------------------------------------------------------------------------------ cute_sm90
template <typename E>
struct Sm90Cfg {
  // 256 × 128 × 64: 48 KiB of operands per 4.2 MFLOP k-tile (128 × 128 would need 32 KiB per 2.1 MFLOP, more L2
  // traffic per FLOP than the tensor cores can be fed at)
  static constexpr int BM = 256, BN = 128, BK = 64, S = 4, D = S - 2, NTHR = 256;
  using SmemA = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, Shape<Int<BM>, Int<BK>, Int<S>>{}));
  using SmemB = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, Shape<Int<BN>, Int<BK>, Int<S>>{}));
  using Op = decltype(SM90::GMMA::ss_op_selector<E, E, float, Shape<_64, Int<BN>, _16>, GMMA::Major::K,
                                                 GMMA::Major::K>());
  // 2 warpgroups; warpgroup w computes rows 64·w + 128·j .. +63 (j = 0, 1) of the tile
  using Mma = decltype(make_tiled_mma(Op{}, Layout<Shape<_2, _1, _1>>{}));
  static constexpr size_t kTileBytesB = BN * BK * sizeof(E);
  // 1024-byte alignment for the 128-byte swizzle pattern, + S mbarriers
  static constexpr size_t kSmemBytes = 1024 + (cosize_v<SmemA> + cosize_v<SmemB>) * sizeof(E) + S * 8;
};

#if defined(VXLP_EMULATE)
// CPU check of what the emulation cannot run of cute_sm90 (run_emulation.py calls it through ctypes): with a
// 1024-byte aligned base, &sA(r, c, s) / &sB(r, c, s) — the addresses the clamped gather writes its 16-byte chunks
// to, and the layouts the wgmma descriptors and the TMA box are built from — are the canonical 128-byte-swizzled
// K-major layout (stage base + r·128 B + ((c / 8) XOR (r % 8))·16 B, 8 contiguous elements per chunk), and the
// tile loader's (row0 + RPP·i, col) cover every chunk of the 256 × 64 A tile exactly once (and likewise the
// cute_sm80 loader and its Swizzle<3,3,3> layout). Returns the number of mismatches.
template <typename Smem, int ROWS, int BK, int S, typename E>
int swizzle128_mismatches(E* base) {
  Tensor t = make_tensor(make_smem_ptr(base), Smem{});
  int bad = 0;
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < BK; c += 8) {
        const E* p = &t(r, c, s);
        const size_t want = static_cast<size_t>(s) * ROWS * BK + static_cast<size_t>(r) * BK + (((c / 8) ^ (r % 8)) * 8);
        bad += p != base + want;
        for (int j = 1; j < 8; ++j) bad += &t(r, c + j, s) != p + j;
      }
  return bad;
}

template <int BM, int BK, int NTHR>
int loader_cover_mismatches() {
  using L = TileLoader<cutlass::bfloat16_t, BM, BM, BK, NTHR>;
  std::vector<int> hits(BM * (BK / 8), 0);
  for (int tid = 0; tid < NTHR; ++tid)
    for (int i = 0; i < L::PA; ++i) hits[(tid / L::CPR + L::RPP * i) * (BK / 8) + (tid % L::CPR)] += 1;
  int bad = 0;
  for (int h : hits) bad += h != 1;
  return bad;
}

int layout_mismatches() {
  using E = cutlass::bfloat16_t;
  using C9 = Sm90Cfg<E>;
  using C8 = Sm80Cfg<E>;
  std::vector<unsigned char> raw(C9::kSmemBytes + 1024);
  E* base = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(raw.data()) + 1023) & ~uintptr_t{1023});
  int bad = swizzle128_mismatches<typename C9::SmemA, C9::BM, C9::BK, C9::S>(base);
  bad += swizzle128_mismatches<typename C9::SmemB, C9::BN, C9::BK, C9::S>(base);
  bad += swizzle128_mismatches<typename C8::SmemA, C8::BM, C8::BK, C8::S>(base);
  bad += loader_cover_mismatches<C9::BM, C9::BK, C9::NTHR>();
  bad += loader_cover_mismatches<C8::BM, C8::BK, C8::NTHR>();
  return bad;
}
#endif

#if !defined(VXLP_EMULATE)

// wr as a TMA source: [Cout, K] rows, one BN × BK box per load.
template <typename E>
auto make_tma_b(const E* wr, int cout, int k) {
  Tensor g = make_tensor(make_gmem_ptr(wr), make_shape(cout, k), make_stride(k, _1{}));
  return make_tma_copy(SM90_TMA_LOAD{}, g, typename Sm90Cfg<E>::SmemB{}(_, _, 0));
}

__device__ __forceinline__ void fence_async_proxy() {
#if VXLP_CONV_SM90A_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

template <typename E, class TmaB>
__global__ void __launch_bounds__(Sm90Cfg<E>::NTHR, 1) conv_fwd_sm90(FwdArgs<E> a, CUTE_GRID_CONSTANT TmaB const tma_b) {
#if VXLP_CONV_SM90A_DEVICE
  using Cfg = Sm90Cfg<E>;
  using Bar = cutlass::arch::ClusterTransactionBarrier;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, S = Cfg::S, D = Cfg::D;
  extern __shared__ __align__(128) unsigned char smem_sm90[];
  E* const pa = reinterpret_cast<E*>((reinterpret_cast<uintptr_t>(smem_sm90) + 1023) & ~uintptr_t{1023});
  E* const pb = pa + cosize_v<typename Cfg::SmemA>;
  uint64_t* const full = reinterpret_cast<uint64_t*>(pb + cosize_v<typename Cfg::SmemB>);  // B of stage s landed
  Tensor sA = make_tensor(make_smem_ptr(pa), typename Cfg::SmemA{});  // (BM, BK, S)
  Tensor sB = make_tensor(make_smem_ptr(pb), typename Cfg::SmemB{});  // (BN, BK, S)

  const int tid = threadIdx.x;
  const int n_tile = blockIdx.x, n0 = n_tile * BN, m0 = blockIdx.y * BM;
  const int KT = (a.K + BK - 1) / BK;

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < S; ++s) Bar::init(&full[s], 1);
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  Tensor mB = tma_b.get_tma_tensor(make_shape(a.Cout, a.K));
  Tensor gB = local_tile(mB, make_shape(Int<BN>{}, Int<BK>{}), make_coord(n_tile, _));  // (BN, BK, KT)
  auto tB = tma_partition(tma_b, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sB), group_modes<0, 2>(gB));
  Tensor tBg = get<0>(tB);  // (TMA, KT)
  Tensor tBs = get<1>(tB);  // (TMA, S)

  const TileLoader<E, BM, BN, BK, Cfg::NTHR> ld(a, m0, tid);
  auto load = [&](int kt, int s) {
    ld.load_a(kt, [&](int r, int c) { return &sA(r, c, s); });
    if (tid == 0) {
      Bar::arrive_and_expect_tx(&full[s], static_cast<uint32_t>(Cfg::kTileBytesB));
      copy(tma_b.with(full[s]), tBg(_, kt), tBs(_, s));
    }
  };

  typename Cfg::Mma mma;
  auto thr = mma.get_slice(tid);
  Tensor cA = thr.partition_A(sA);  // (MMA, MMA_M, MMA_K, S)
  Tensor cB = thr.partition_B(sB);
  Tensor dA = thr.make_fragment_A(cA);  // shared-memory descriptors
  Tensor dB = thr.make_fragment_B(cB);
  Tensor acc = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
  clear(acc);
  mma.accumulate_ = GMMA::ScaleOut::One;

#pragma unroll
  for (int s = 0; s < D; ++s) {
    if (s < KT) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    const int s = kt % S;
    cp_async_wait<D - 1>();  // this thread's A copies of k-tile kt have landed
    fence_async_proxy();     // ... and are visible to wgmma (async proxy)
    Bar::wait(&full[s], (kt / S) & 1);
    __syncthreads();  // everyone's A copies; every warpgroup is done with k-tile kt − 2 (waited below at kt − 1)
    if (kt + D < KT) load(kt + D, (kt + D) % S);  // stage of k-tile kt − 2
    cp_async_commit();
    warpgroup_fence_operand(acc);
    warpgroup_arrive();
#pragma unroll
    for (int kb = 0; kb < size<2>(dA); ++kb) gemm(mma, dA(_, _, kb, s), dB(_, _, kb, s), acc);
    warpgroup_commit_batch();
    warpgroup_wait<1>();  // the wgmma batch of k-tile kt − 1 has finished reading its stage
    warpgroup_fence_operand(acc);
  }
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc);
  cp_async_wait<0>();

  Tensor coords = thr.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));
  store_tile(a, acc, coords, m0, n0);
#elif defined(__CUDA_ARCH__)
  static_assert(Sm90Cfg<E>::D > 0 && Sm90Cfg<E>::kTileBytesB > 0, "sm_90a configuration");
  fence_async_proxy();  // (a no-op here)
  __trap();  // compiled without sm_90a features: never launched (host checks kSm90aBuilt), loud if it is
#endif
}

// 1 in the device code of an sm_90a build (read back per device with cudaMemcpyFromSymbol): the sm_90a path runs
// only where the loaded module really has the wgmma kernel.
__device__ int kSm90aBuilt = VXLP_CONV_SM90A_DEVICE;
#endif  // !VXLP_EMULATE

// ------------------------------------------------------------------------------------------ host
template <typename E>
FwdArgs<E> args_of(const FwdProblem& p) {
  FwdArgs<E> a{};
  a.x = static_cast<const E*>(p.x);
  a.wr = static_cast<const E*>(p.wr);
  a.bias = static_cast<const E*>(p.bias);
  a.out = static_cast<E*>(p.out);
  a.G = p.G, a.T = p.T, a.H = p.H, a.W = p.W, a.Cin = p.Cin, a.Cout = p.Cout, a.To = p.To, a.st = p.st;
  a.M = p.M, a.K = p.K;
  return a;
}

template <typename E>
void run_sm80(const FwdProblem& p, cudaStream_t stream) {
  using Cfg = Sm80Cfg<E>;
  auto kern = conv_fwd_sm80<E>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Cfg::kSmemBytes)));
  const dim3 grid((p.Cout + Cfg::BN - 1) / Cfg::BN, (p.M + Cfg::BM - 1) / Cfg::BM);
  kern<<<grid, Cfg::NTHR, Cfg::kSmemBytes, stream>>>(args_of<E>(p));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#if !defined(VXLP_EMULATE)
template <typename E>
void run_sm90(const FwdProblem& p, cudaStream_t stream) {
  using Cfg = Sm90Cfg<E>;
  const FwdArgs<E> a = args_of<E>(p);
  auto tma = make_tma_b(a.wr, p.Cout, p.K);
  auto kern = conv_fwd_sm90<E, decltype(tma)>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(Cfg::kSmemBytes)));
  const dim3 grid((p.Cout + Cfg::BN - 1) / Cfg::BN, (p.M + Cfg::BM - 1) / Cfg::BM);
  kern<<<grid, Cfg::NTHR, Cfg::kSmemBytes, stream>>>(a, tma);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether device `device` runs the sm_90a wgmma kernel (cached per device).
bool sm90a_loaded(int device) {
  static std::mutex mu;
  static int cache[64];  // 0 unknown, 1 yes, 2 no
  if (device < 0 || device >= 64) return false;
  std::lock_guard<std::mutex> lock(mu);
  if (cache[device] == 0) {
    int v = 0;
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    const cudaError_t e = cudaMemcpyFromSymbol(&v, kSm90aBuilt, sizeof(int));
    if (e != cudaSuccess) (void)cudaGetLastError();
    cache[device] = (e == cudaSuccess && v == 1) ? 1 : 2;
  }
  return cache[device] == 1;
}

// Whether device `device` has code of the cute_sm80 kernel (sm_80+ SASS or PTX for its arch; cached per device).
bool sm80_loaded(int device) {
  static std::mutex mu;
  static int cache[64];
  if (device < 0 || device >= 64) return false;
  std::lock_guard<std::mutex> lock(mu);
  if (cache[device] == 0) {
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    cudaFuncAttributes attr{};
    const cudaError_t e = cudaFuncGetAttributes(&attr, conv_fwd_sm80<cutlass::bfloat16_t>);
    if (e != cudaSuccess) (void)cudaGetLastError();
    cache[device] = (e == cudaSuccess && (attr.binaryVersion >= 80 || attr.ptxVersion >= 80)) ? 1 : 2;
  }
  return cache[device] == 1;
}
#endif

}  // namespace

const char* unsupported(Path path, const FwdProblem& p, int device) {
  if (p.Cin % 8 != 0) return "needs Cin % 8 == 0 (16-byte chunks of one tap)";
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || reinterpret_cast<uintptr_t>(p.wr) % 16 != 0)
    return "needs 16-byte aligned x and weight rows";
  if ((p.M + 127) / 128 > 65535) return "needs G·T_out·H·W <= 65535·128 (grid y)";  // BM >= 128 on both paths
#if defined(VXLP_EMULATE)
  (void)device;
  if (path == Path::kSm90) return "wgmma / TMA cannot run in the CPU emulation";
  return nullptr;
#else
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (path == Path::kSm90) {
    if (major != 9 || minor != 0) return "needs an sm_90 device (H100 / H200)";
    if (!sm90a_loaded(device)) return "this build has no sm_90a code (TORCH_CUDA_ARCH_LIST needs 9.0a)";
    return nullptr;
  }
  if (major < 8) return "needs an sm_80+ device";
  if (!sm80_loaded(device)) return "this build has no code for the device's arch (sm_80+)";
  return nullptr;
#endif
}

void run(Path path, const FwdProblem& p, cudaStream_t stream) {
  if (path == Path::kSm80) {
    if (p.bf16) run_sm80<cutlass::bfloat16_t>(p, stream);
    else run_sm80<cutlass::half_t>(p, stream);
    return;
  }
#if !defined(VXLP_EMULATE)
  if (p.bf16) run_sm90<cutlass::bfloat16_t>(p, stream);
  else run_sm90<cutlass::half_t>(p, stream);
#endif
}

}  // namespace conv_cute
}  // namespace vxlp_cuda

#if defined(VXLP_EMULATE)
extern "C" int vxlp_emu_conv_cute_layout_mismatches() { return vxlp_cuda::conv_cute::layout_mismatches(); }
#endif

#else  // !VXLP_CONV_CUTE

namespace vxlp_cuda {
namespace conv_cute {
const char* unsupported(Path, const FwdProblem&, int) {
  return "this build has no CUTLASS/CuTe headers (pip install --no-deps nvidia-cutlass==4.2.0.0, then rebuild)";
}
void run(Path, const FwdProblem&, cudaStream_t) {}
}  // namespace conv_cute
}  // namespace vxlp_cuda

#endif  // VXLP_CONV_CUTE
