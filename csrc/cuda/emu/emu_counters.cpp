// Counters of the CPU emulation (cuda_emu.h), as torch ops of the emulation library only:
// vxlp_emu::mma_count() -> the warp-level m16n8k16 products executed since vxlp_emu::reset_mma_count().
#include <torch/library.h>

#include "cuda_emu.h"

namespace {
int64_t mma_count() { return vxlp_emu::g_mma_count.load(); }
void reset_mma_count() { vxlp_emu::g_mma_count.store(0); }
}  // namespace

TORCH_LIBRARY(vxlp_emu, m) {
  m.def("mma_count() -> int", &mma_count);
  m.def("reset_mma_count() -> ()", &reset_mma_count);
}
