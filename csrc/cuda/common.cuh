// Shared pieces of the vxlp_ops CUDA kernels: dtype plumbing, argument checks, warp reductions, and the
// warp-level tile product used by frame_attention and temporal_merge_conv3d.
//
// Tile product: every warp owns an (MT·16) × (NT·8) block of an fp32 accumulator laid out exactly like the
// C fragment of `mma.sync.m16n8k16` (PTX ISA, "Matrix Fragments for mma.m16n8k16"): with g = lane / 4 and
// q = lane % 4, element e of acc[mt][nt] is row m0 + 16·mt + g + 8·(e / 2), column n0 + 8·nt + 2·q + (e % 2).
// For fp16 / bf16 operands on sm_80+ the product runs on the tensor cores (mma.sync, fp32 accumulation); for
// fp32 operands (and on older archs) the same layout is produced with FMAs, so that every kernel is written
// once for all three dtypes. Operands are read from shared memory, either layout:
//   A (M × K): A_KMAJOR ? sA[k·lda + m] : sA[m·lda + k]      B (K × N): B_NMAJOR ? sB[n·ldb + k] : sB[k·ldb + n]
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

// VXLP_EMULATE: the CPU emulation of csrc/cuda/emu/ (kernels run as host threads, mma.sync emulated from its
// PTX fragment layout) compiles these sources with a host compiler to test index arithmetic without a GPU.
#if defined(VXLP_EMULATE)
#define VXLP_HAS_SM80 1
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define VXLP_HAS_SM80 1
#else
#define VXLP_HAS_SM80 0
#endif

namespace vxlp_cuda {

// ----------------------------------------------------------------------------------------------- dtypes
template <typename S>
struct DevType {
  using type = S;
};
template <>
struct DevType<c10::Half> {
  using type = __half;
};
template <>
struct DevType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename S>
using dev_t = typename DevType<S>::type;

template <typename S>
inline const dev_t<S>* dptr(const at::Tensor& t) {
  return reinterpret_cast<const dev_t<S>*>(t.data_ptr<S>());
}
template <typename S>
inline dev_t<S>* mptr(at::Tensor& t) {
  return reinterpret_cast<dev_t<S>*>(t.data_ptr<S>());
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Elements per 16-byte vector.
template <typename T>
struct Vec {
  static constexpr int n = 16 / static_cast<int>(sizeof(T));
};

// 16 bytes of T, unpacked to / packed from floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& u, float* f) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < Vec<T>::n; ++i) f[i] = to_f(e[i]);
}
template <typename T>
__device__ __forceinline__ uint4 pack16(const float* f) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int i = 0; i < Vec<T>::n; ++i) e[i] = from_f<T>(f[i]);
  return u;
}

// ----------------------------------------------------------------------------------------------- warps
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ----------------------------------------------------------------------------------------------- tiles
// Copy rows [r0, r0+ROWS) × cols [c0, c0+COLS) of a row-major global matrix (ld elements per row) into shared
// memory (row stride lds elements), writing zeros outside rows < nrows and cols < ncols. With vec, 16-byte
// copies: the caller guarantees that ld, c0, ncols and lds are multiples of Vec<T>::n and g is 16-byte aligned.
template <typename T, int ROWS, int COLS, int NTHREADS>
__device__ __forceinline__ void load_tile(T* s, int lds, const T* __restrict__ g, int ld, int r0, int nrows,
                                          int c0, int ncols, bool vec) {
  constexpr int V = Vec<T>::n;
  static_assert(COLS % V == 0, "tile width must be a multiple of the vector width");
  if (vec) {
    constexpr int CPR = COLS / V;
    for (int i = threadIdx.x; i < ROWS * CPR; i += NTHREADS) {
      const int r = i / CPR, c = (i - r * CPR) * V;
      const int gr = r0 + r, gc = c0 + c;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (gr < nrows && gc < ncols) val = *reinterpret_cast<const uint4*>(g + static_cast<size_t>(gr) * ld + gc);
      *reinterpret_cast<uint4*>(s + r * lds + c) = val;
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * COLS; i += NTHREADS) {
      const int r = i / COLS, c = i - r * COLS;
      const int gr = r0 + r, gc = c0 + c;
      s[r * lds + c] = (gr < nrows && gc < ncols) ? g[static_cast<size_t>(gr) * ld + gc] : from_f<T>(0.f);
    }
  }
}

// ----------------------------------------------------------------------------------------------- mma
__device__ __forceinline__ uint32_t ld_u32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack_u16(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(VXLP_EMULATE)
  vxlp_emu::mma16816<false>(c, a, b);
#elif VXLP_HAS_SM80
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        const uint32_t (&b)[2]) {
#if defined(VXLP_EMULATE)
  vxlp_emu::mma16816<true>(c, a, b);
#elif VXLP_HAS_SM80
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// FMA version of warp_mma_k16 (fp32 operands, or any operands before sm_80): the same accumulator layout.
template <typename T, int MT, int NT, bool A_KMAJOR, bool B_NMAJOR>
__device__ __forceinline__ void warp_fma_k16(float (&acc)[MT][NT][4], const T* sA, int lda, int m0, const T* sB,
                                             int ldb, int n0, int k0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
#if defined(VXLP_EMULATE)
  vxlp_emu::count_mma(MT * NT);  // the work of MT·NT m16n8k16 products
#endif
#pragma unroll 4
  for (int kk = 0; kk < 16; ++kk) {
    const int k = k0 + kk;
    float a[MT][2];
    float b[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int r = m0 + 16 * mt + g;
      a[mt][0] = to_f(A_KMAJOR ? sA[k * lda + r] : sA[r * lda + k]);
      a[mt][1] = to_f(A_KMAJOR ? sA[k * lda + r + 8] : sA[(r + 8) * lda + k]);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = n0 + 8 * nt + 2 * q;
      b[nt][0] = to_f(B_NMAJOR ? sB[n * ldb + k] : sB[k * ldb + n]);
      b[nt][1] = to_f(B_NMAJOR ? sB[(n + 1) * ldb + k] : sB[k * ldb + n + 1]);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        acc[mt][nt][0] = fmaf(a[mt][0], b[nt][0], acc[mt][nt][0]);
        acc[mt][nt][1] = fmaf(a[mt][0], b[nt][1], acc[mt][nt][1]);
        acc[mt][nt][2] = fmaf(a[mt][1], b[nt][0], acc[mt][nt][2]);
        acc[mt][nt][3] = fmaf(a[mt][1], b[nt][1], acc[mt][nt][3]);
      }
  }
}

// acc += A[m0 : m0+16·MT, k0 : k0+16] · B[k0 : k0+16, n0 : n0+8·NT] for one warp (layouts: see the top).
template <typename T, int MT, int NT, bool A_KMAJOR, bool B_NMAJOR>
__device__ __forceinline__ void warp_mma_k16(float (&acc)[MT][NT][4], const T* sA, int lda, int m0, const T* sB,
                                             int ldb, int n0, int k0) {
#if VXLP_HAS_SM80
  if constexpr (sizeof(T) == 2) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const uint16_t* A = reinterpret_cast<const uint16_t*>(sA);
    const uint16_t* B = reinterpret_cast<const uint16_t*>(sB);
    const int c = k0 + 2 * q;
    uint32_t a[MT][4];
    uint32_t b[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int r = m0 + 16 * mt + g;
      if constexpr (!A_KMAJOR) {
        a[mt][0] = ld_u32(A + r * lda + c);
        a[mt][1] = ld_u32(A + (r + 8) * lda + c);
        a[mt][2] = ld_u32(A + r * lda + c + 8);
        a[mt][3] = ld_u32(A + (r + 8) * lda + c + 8);
      } else {
        a[mt][0] = pack_u16(A[c * lda + r], A[(c + 1) * lda + r]);
        a[mt][1] = pack_u16(A[c * lda + r + 8], A[(c + 1) * lda + r + 8]);
        a[mt][2] = pack_u16(A[(c + 8) * lda + r], A[(c + 9) * lda + r]);
        a[mt][3] = pack_u16(A[(c + 8) * lda + r + 8], A[(c + 9) * lda + r + 8]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = n0 + 8 * nt + g;
      if constexpr (B_NMAJOR) {
        b[nt][0] = ld_u32(B + n * ldb + c);
        b[nt][1] = ld_u32(B + n * ldb + c + 8);
      } else {
        b[nt][0] = pack_u16(B[c * ldb + n], B[(c + 1) * ldb + n]);
        b[nt][1] = pack_u16(B[(c + 8) * ldb + n], B[(c + 9) * ldb + n]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma16816<T>(acc[mt][nt], a[mt], b[nt]);
  } else {
    warp_fma_k16<T, MT, NT, A_KMAJOR, B_NMAJOR>(acc, sA, lda, m0, sB, ldb, n0, k0);
  }
#else
  warp_fma_k16<T, MT, NT, A_KMAJOR, B_NMAJOR>(acc, sA, lda, m0, sB, ldb, n0, k0);
#endif
}

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

// Store two horizontally adjacent values (row-major, ld elements per row) at (r, c), (r, c+1), each when in range.
template <typename T>
__device__ __forceinline__ void store_pair(T* __restrict__ out, int ld, int nrows, int ncols, int r, int c, float v0,
                                           float v1) {
  if (r >= nrows) return;
  T* p = out + static_cast<size_t>(r) * ld + c;
  if (c + 1 < ncols && (ld % 2 == 0)) {
    // c is even here (fragment columns), so with an even ld the pair is 2·sizeof(T)-aligned
    if constexpr (sizeof(T) == 2) {
      T two[2] = {from_f<T>(v0), from_f<T>(v1)};
      *reinterpret_cast<uint32_t*>(p) = *reinterpret_cast<const uint32_t*>(two);
    } else {
      *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
    }
  } else {
    if (c < ncols) p[0] = from_f<T>(v0);
    if (c + 1 < ncols) p[1] = from_f<T>(v1);
  }
}

// ----------------------------------------------------------------------------------------------- host
inline bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Whether 16-byte vector loads / stores are safe: rows of `n` elements of the kernel type of S_ are a whole
// number of 16-byte vectors and every tensor's data is 16-byte aligned.
template <typename S_>
inline bool vec_ok(int64_t n, std::initializer_list<const at::Tensor*> ts) {
  if (n % Vec<dev_t<S_>>::n != 0) return false;
  for (const at::Tensor* t : ts)
    if (!aligned16(*t)) return false;
  return true;
}

inline void check_input(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dims, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op,
              ": ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK(t.numel() < (int64_t{1} << 31), op, ": ", name, " must have fewer than 2^31 elements, got ",
              t.numel());
}

inline void check_same(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has ", ref.scalar_type());
}

inline void check_shape(const at::Tensor& t, const char* op, const char* name, at::IntArrayRef expected,
                        const char* dims) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", dims, " = ", expected, ", got ",
              t.sizes());
}

inline int num_sms(int device) {
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n > 0 ? n : 1;
}

template <typename Kernel>
inline void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// AT_DISPATCH_FLOATING_TYPES_AND2(kHalf, kBFloat16, ...) without double (the kernels take fp32 / fp16 / bf16;
// the cuda backend refuses float64 before it gets here).
#define VXLP_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace vxlp_cuda
