// Index maps of the merge conv's implicit GEMMs (OPS.md op 3), shared by the mma.sync kernels
// (temporal_merge_conv3d.cu) and the CuTe paths (temporal_merge_conv3d_cute.cu):
//  - output row m ↔ (g, to, h, w) with m = ((g·To + to)·H + h)·W + w;
//  - reduction index k ↔ (kt, kh, kw, ci) with k = (kt·9 + kh·3 + kw)·Cin + ci (the laid-out weight's order).
#pragma once

namespace vxlp_cuda {

struct ConvRow {
  int g, to, h, w;
};

__host__ __device__ __forceinline__ ConvRow conv_row(int m, int W, int H, int To) {
  ConvRow o;
  o.w = m % W;
  int r = m / W;
  o.h = r % H;
  r /= H;
  o.to = r % To;
  o.g = r / To;
  return o;
}

struct ConvTap {
  int kt, kh, kw, ci;
};

__host__ __device__ __forceinline__ ConvTap conv_tap(int k, int Cin) {
  const int tap = k / Cin;
  return {tap / 9, (tap / 3) % 3, tap % 3, k - tap * Cin};
}

}  // namespace vxlp_cuda
