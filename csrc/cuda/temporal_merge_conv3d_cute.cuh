// The CUTLASS/CuTe forward paths of temporal_merge_conv3d (temporal_merge_conv3d_cute.cu), as seen from the op's
// host code (temporal_merge_conv3d.cu). VXLP_CONV_CUTE is 1 when the CuTe headers were found at build time
// (setup.py / check_cuda_compile.sh put cutlass_library/source/include on the include path when nvidia-cutlass is
// installed); without them only the hand-written mma.sync kernel exists and every CuTe path reports itself
// unavailable.
#pragma once

#include <cuda_runtime.h>

#if defined(__has_include)
#if __has_include(<cute/tensor.hpp>)
#define VXLP_CONV_CUTE 1
#endif
#endif
#ifndef VXLP_CONV_CUTE
#define VXLP_CONV_CUTE 0
#endif

namespace vxlp_cuda {
namespace conv_cute {

// out[m, co] = bias[co] + Σ_k im2col(x)[m, k] · wr[co, k] (see temporal_merge_conv3d.cu); fp16 / bf16 only.
struct FwdProblem {
  const void* x;     // [G, T, H, W, Cin]
  const void* wr;    // [Cout, 27·Cin], k = (kt·9 + kh·3 + kw)·Cin + ci
  const void* bias;  // [Cout] or null
  void* out;         // [G, To, H, W, Cout]
  bool bf16;         // else fp16
  int G, T, H, W, Cin, Cout, To, st, M, K;
};

enum class Path { kSm90, kSm80 };

inline const char* path_name(Path p) { return p == Path::kSm90 ? "cute_sm90" : "cute_sm80"; }

// nullptr when `path` can run `p` on CUDA device `device` (the kernel was compiled for that device's arch, the
// channel counts and pointers allow 16-byte copies), else the reason it cannot.
const char* unsupported(Path path, const FwdProblem& p, int device);

// Launches the forward of `path` on `stream` (call only when unsupported() returned nullptr).
void run(Path path, const FwdProblem& p, cudaStream_t stream);

}  // namespace conv_cute
}  // namespace vxlp_cuda
