// The launch plan of the CUDA frame_attention (csrc/cuda/frame_attention.cu): which kernels run, on which grid,
// and the GEMM-shaped work each one does. Plain C++ (no CUDA, no torch): the .cu host code launches exactly the
// steps of this plan (grids and problem sizes taken from it), and the CPU build exposes the same function to
// Python (vxlp_ops._C.frame_attention_plan, csrc/module.cpp), so that a CPU test pins the FLOP count per call.
//
// Work is counted in multiply-adds of the matrix products: a "unit" is B·S²·D of them (one [S, D] × [D, S] or
// [S, S] × [S, D] product per batch row). Forward: 2 units (S = Q Kᵀ once over the whole D, O = P V). Backward
// from the saved output and LSE: 5 units (S = Q Kᵀ and dP = dO Vᵀ in one kernel, dV = Pᵀ dO, dK = dSᵀ Q,
// dQ = dS K). The softmax and Δ = rowsum(dO·O) are O(B·S²) and O(B·S·D) elementwise work, not counted.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vxlp_cuda {
namespace fa_plan {

// score kernels (fa_scores_kernel): 64 queries × 64 keys per block, the whole D in chunks of 64
constexpr int kScoreBM = 64;
constexpr int kScoreBN = 64;
constexpr int kScoreBK = 64;
// GEMM kernel (fa_gemm_kernel): 64 × 128 output tile, K in chunks of 32
constexpr int kGemmBM = 64;
constexpr int kGemmBN = 128;
constexpr int kGemmBK = 32;
// row kernels (softmax, delta): one warp per row, 8 warps per block
constexpr int kRowsPerBlock = 8;
constexpr int kThreads = 256;
// the row pitch of the [S, S] workspaces is a multiple of 8 elements (16-byte rows for 16-bit types), the
// columns past S hold zeros
constexpr int kPitch = 8;
// default bound on the workspace of one call (bytes): the batch is processed in chunks that fit
constexpr int64_t kDefaultWorkspace = int64_t{1} << 30;
// largest S: the [S, S] workspace of one batch row must stay addressable with 32-bit element offsets
constexpr int64_t kMaxS = 16384;

enum class Step : int {
  kScores = 0,     // fwd: S·c (log2 units) = Q Kᵀ·scale·log2(e), fp32, into the score workspace
  kSoftmax = 1,    // fwd: per row m, l, LSE; P = exp2(S·c − LSE2) in the input dtype into the P workspace
  kPV = 2,         // fwd: O = P V
  kDelta = 3,      // bwd: Δ = rowsum(dO · O), LSE2 = LSE·log2(e)
  kBwdScores = 4,  // bwd: S = Q Kᵀ and dP = dO Vᵀ; P = exp2(S·c − LSE2), dS = P ∘ (dP − Δ) into two workspaces
  kGemmDV = 5,     // bwd: dV = Pᵀ dO
  kGemmDK = 6,     // bwd: dK = scale · dSᵀ Q
  kGemmDQ = 7,     // bwd: dQ = scale · dS K
};

inline const char* step_name(Step s) {
  switch (s) {
    case Step::kScores: return "scores";
    case Step::kSoftmax: return "softmax";
    case Step::kPV: return "pv";
    case Step::kDelta: return "delta";
    case Step::kBwdScores: return "bwd_scores";
    case Step::kGemmDV: return "dv";
    case Step::kGemmDK: return "dk";
    case Step::kGemmDQ: return "dq";
  }
  return "?";
}

struct Launch {
  Step step;
  int64_t b0, batch;     // batch rows [b0, b0 + batch) of this launch (grid z = batch)
  int64_t gx, gy;        // grid x, y
  int64_t m, n, k;       // per batch row and product: an [m, k] × [k, n] matrix product (0 for row kernels)
  int products;          // matrix products per block (2 for the backward scores: Q Kᵀ and dO Vᵀ)
  int64_t tm, tn, tk;    // the block tile: tm × tn outputs, k in steps of tk
  // multiply-adds of the mathematical products (no padding)
  int64_t macs() const { return static_cast<int64_t>(products) * m * n * k * batch; }
  // multiply-adds the blocks issue (tiles padded to tm × tn, k to a multiple of tk)
  int64_t issued_macs() const {
    return products == 0 ? 0 : static_cast<int64_t>(products) * gx * tn * gy * tm * ((k + tk - 1) / tk * tk) * batch;
  }
};

struct Plan {
  int64_t B = 0, S = 0, D = 0;
  int64_t pitch = 0;            // row pitch of the [S, S] workspaces (elements)
  int64_t batch_chunk = 0;      // batch rows per chunk
  int64_t workspace_bytes = 0;  // allocated once, reused by every chunk
  std::vector<Launch> launches;
};

inline int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The plan of one call. elem_bytes: size of the input dtype (2 or 4); backward: the backward from (out, lse)
// (else the forward); workspace: the bound on the workspace (bytes; at least one batch row is always planned).
inline Plan make_plan(int64_t B, int64_t S, int64_t D, int elem_bytes, bool backward,
                      int64_t workspace = kDefaultWorkspace) {
  if (B < 1 || S < 1 || D < 1) throw std::invalid_argument("frame_attention plan: B, S, D must be >= 1");
  if (S > kMaxS)
    throw std::invalid_argument("frame_attention plan: S = " + std::to_string(S) + " > " + std::to_string(kMaxS) +
                                " (the cuda kernels materialise an [S, S] score workspace per batch row)");
  if (elem_bytes != 2 && elem_bytes != 4) throw std::invalid_argument("frame_attention plan: elem_bytes must be 2 or 4");
  Plan p;
  p.B = B;
  p.S = S;
  p.D = D;
  p.pitch = cdiv64(S, kPitch) * kPitch;
  // forward: fp32 scores + P (input dtype); backward: P and dS (input dtype)
  const int64_t per_row = S * p.pitch * (backward ? 2 * elem_bytes : 4 + elem_bytes);
  int64_t chunk = workspace / per_row;
  if (chunk < 1) chunk = 1;
  if (chunk > B) chunk = B;
  if (chunk > 65535) chunk = 65535;  // grid z
  p.batch_chunk = chunk;
  p.workspace_bytes = chunk * per_row;
  const int64_t ns = cdiv64(S, kScoreBN), ms = cdiv64(S, kScoreBM);
  const int64_t gx = cdiv64(D, kGemmBN), gy = cdiv64(S, kGemmBM);
  const int64_t rows = cdiv64(S, kRowsPerBlock);
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = (B - b0 < chunk) ? B - b0 : chunk;
    auto add = [&](Step st, int64_t x, int64_t y, int64_t m, int64_t n, int64_t k, int prods, int64_t tm, int64_t tn,
                   int64_t tk) { p.launches.push_back(Launch{st, b0, nb, x, y, m, n, k, prods, tm, tn, tk}); };
    if (!backward) {
      add(Step::kScores, ns, ms, S, S, D, 1, kScoreBM, kScoreBN, kScoreBK);
      add(Step::kSoftmax, rows, 1, 0, 0, 0, 0, 0, 0, 1);
      add(Step::kPV, gx, gy, S, D, S, 1, kGemmBM, kGemmBN, kGemmBK);
    } else {
      add(Step::kDelta, rows, 1, 0, 0, 0, 0, 0, 0, 1);
      add(Step::kBwdScores, ns, ms, S, S, D, 2, kScoreBM, kScoreBN, kScoreBK);
      add(Step::kGemmDV, gx, gy, S, D, S, 1, kGemmBM, kGemmBN, kGemmBK);
      add(Step::kGemmDK, gx, gy, S, D, S, 1, kGemmBM, kGemmBN, kGemmBK);
      add(Step::kGemmDQ, gx, gy, S, D, S, 1, kGemmBM, kGemmBN, kGemmBK);
    }
  }
  return p;
}

}  // namespace fa_plan
}  // namespace vxlp_cuda
