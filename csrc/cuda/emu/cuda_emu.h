// CPU emulation of the CUDA execution model, for testing the kernels of csrc/cuda/ without a GPU
// (run_emulation.py builds them with a host compiler and -DVXLP_EMULATE, after rewriting launches and
// __shared__ declarations; see there). Not part of any build of vxlp_ops.
//
// Model: the blocks of a launch run one after another; the threads of a block run as real host threads
// (std::thread), __syncthreads() is a std::barrier over the block, warp shuffles and mma.sync exchange
// through per-warp buffers between two per-warp barriers. Shared memory (static and dynamic) comes from a
// per-block arena filled with 0xFF bytes (NaN in every float format) before the block starts, so reads of
// unwritten shared memory show up as NaN. mma.m16n8k16 is emulated from the fragment layout in the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"), independently of the kernels' loaders.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define __launch_bounds__(...)

#undef C10_CUDA_KERNEL_LAUNCH_CHECK
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
#undef C10_CUDA_CHECK
#define C10_CUDA_CHECK(EXPR) ((void)(EXPR))
// 4 "SMs": makes the host code pick multi-position blocks / split-K on small emulated shapes
#define cudaDeviceGetAttribute(P, A, D) (*(P) = 4, cudaSuccess)
#define cudaFuncSetAttribute(...) cudaSuccess

namespace c10 {
namespace cuda {
struct EmuGuard {
  explicit EmuGuard(c10::Device) {}
};
inline cudaStream_t emuGetCurrentStream() { return nullptr; }
}  // namespace cuda
}  // namespace c10
#define CUDAGuard EmuGuard
#define getCurrentCUDAStream emuGetCurrentStream

using std::max;
using std::min;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace vxlp_emu {

struct Block {
  explicit Block(int nthreads, size_t dyn_bytes)
      : nthreads(nthreads), bar(nthreads), dyn(dyn_bytes), arena(dyn_bytes + (1 << 17), 0xFF) {
    const int nw = (nthreads + 31) / 32;
    for (int w = 0; w < nw; ++w) {
      const int n = std::min(32, nthreads - 32 * w);
      warp_bar.emplace_back(std::make_unique<std::barrier<>>(n));
    }
    xch_f.resize(nw * 32);
    xch_u.resize(nw * 32 * 6);
    top = (dyn_bytes + 15) / 16 * 16;
  }
  int nthreads;
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<float> xch_f;
  std::vector<uint32_t> xch_u;
  size_t dyn;
  std::vector<unsigned char> arena;
  std::mutex mu;
  std::map<int, size_t> static_off;
  size_t top;
};

inline thread_local Block* tl_block = nullptr;
inline thread_local int tl_linear = 0;

inline void* dyn_smem() { return tl_block->arena.data(); }

template <int ID>
void* static_smem(size_t bytes) {
  Block* b = tl_block;
  std::lock_guard<std::mutex> lock(b->mu);
  auto it = b->static_off.find(ID);
  if (it == b->static_off.end()) {
    const size_t off = (b->top + 15) / 16 * 16;
    if (off + bytes > b->arena.size()) throw std::runtime_error("emulated shared memory arena exhausted");
    b->top = off + bytes;
    it = b->static_off.emplace(ID, off).first;
  }
  return b->arena.data() + it->second;
}

inline std::barrier<>& warp_barrier() { return *tl_block->warp_bar[tl_linear / 32]; }

inline float shfl_xor(float v, int o) {
  Block* b = tl_block;
  const int w = tl_linear / 32, lane = tl_linear % 32;
  float* x = b->xch_f.data() + w * 32;
  x[lane] = v;
  warp_barrier().arrive_and_wait();
  const float r = x[lane ^ o];
  warp_barrier().arrive_and_wait();
  return r;
}

inline float bits_to_float(uint16_t h, bool bf16) {
  if (bf16) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half_raw r;
  r.x = h;
  return __half2float(__half(r));
}

// D = A·B + C for one warp, m16n8k16, A row-major 16×16, B col-major 16×8 (PTX ISA fragment layouts):
//   A element (row, col): lane (row % 8)·4 + (col % 8) / 2, register (row / 8) + 2·(col / 8), half col % 2
//   B element (k, n):     lane n·4 + (k % 8) / 2, register k / 8, half k % 2
//   C element (row, col): lane (row % 8)·4 + col / 2, index 2·(row / 8) + col % 2
// Warp-level m16n8k16 products executed since the last reset (mma.sync emulations plus the FMA tile products of
// warp_fma_k16, counted in m16n8k16 units), read by run_emulation.py through vxlp_emu::mma_count
// (emu_counters.cpp) to check the work of a kernel against its launch plan.
inline std::atomic<long long> g_mma_count{0};
inline void count_mma(long long n) {
  if (tl_linear % 32 == 0) g_mma_count.fetch_add(n, std::memory_order_relaxed);
}

template <bool BF16>
void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Block* bk = tl_block;
  const int w = tl_linear / 32, lane = tl_linear % 32;
  count_mma(1);
  uint32_t* X = bk->xch_u.data() + w * 32 * 6;
  for (int i = 0; i < 4; ++i) X[lane * 6 + i] = a[i];
  X[lane * 6 + 4] = b[0];
  X[lane * 6 + 5] = b[1];
  warp_barrier().arrive_and_wait();
  auto elemA = [&](int row, int col) {
    const uint32_t reg = X[((row % 8) * 4 + (col % 8) / 2) * 6 + (row / 8) + 2 * (col / 8)];
    return bits_to_float(static_cast<uint16_t>(reg >> (16 * (col % 2))), BF16);
  };
  auto elemB = [&](int k, int n) {
    const uint32_t reg = X[(n * 4 + (k % 8) / 2) * 6 + 4 + k / 8];
    return bits_to_float(static_cast<uint16_t>(reg >> (16 * (k % 2))), BF16);
  };
  float d[4];
  for (int e = 0; e < 4; ++e) {
    const int row = lane / 4 + 8 * (e / 2), col = 2 * (lane % 4) + (e % 2);
    double acc = c[e];
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(elemA(row, k)) * elemB(k, col);
    d[e] = static_cast<float>(acc);
  }
  warp_barrier().arrive_and_wait();
  for (int e = 0; e < 4; ++e) c[e] = d[e];
}

struct Launcher {
  dim3 grid, block;
  size_t smem;
  Launcher(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}

  template <class... P, class... A>
  void run(void (*kernel)(P...), A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel argument count");
    const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(args)...);
    const int nthreads = static_cast<int>(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          Block blk(nthreads, smem);
          std::vector<std::thread> threads;
          threads.reserve(nthreads);
          std::exception_ptr err;
          std::mutex err_mu;
          for (int t = 0; t < nthreads; ++t) {
            threads.emplace_back([&, t] {
              tl_block = &blk;
              tl_linear = t;
              threadIdx = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              blockIdx = make_uint3(bx, by, bz);
              blockDim = block;
              gridDim = grid;
              try {
                std::apply(kernel, params);
              } catch (...) {
                std::lock_guard<std::mutex> lock(err_mu);
                err = std::current_exception();
              }
              blk.warp_bar[t / 32]->arrive_and_drop();
              blk.bar.arrive_and_drop();
            });
          }
          for (auto& th : threads) th.join();
          if (err) std::rethrow_exception(err);
        }
  }
};

}  // namespace vxlp_emu

inline void __syncthreads() { vxlp_emu::tl_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { vxlp_emu::warp_barrier().arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) { return vxlp_emu::shfl_xor(v, o); }
