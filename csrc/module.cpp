// The pybind11 module vxlp_ops._C: importing it loads the TORCH_LIBRARY registrations of this library
// (registration.cpp and, in CUDA builds, the kernels under csrc/cuda/) and reports how it was built.
#include <torch/extension.h>

#include <string>

#include "cuda/frame_attention_plan.h"

namespace {

// The launch plan of the CUDA frame_attention (csrc/cuda/frame_attention_plan.h), in every build: the kernels
// it launches, their grids and the multiply-adds of their matrix products.
pybind11::dict frame_attention_plan(int64_t B, int64_t S, int64_t D, int elem_bytes, bool backward,
                                    int64_t workspace) {
  namespace fp = vxlp_cuda::fa_plan;
  const fp::Plan plan = fp::make_plan(B, S, D, elem_bytes, backward, workspace);
  pybind11::list launches;
  for (const fp::Launch& l : plan.launches) {
    pybind11::dict d;
    d["step"] = std::string(fp::step_name(l.step));
    d["b0"] = l.b0;
    d["batch"] = l.batch;
    d["grid"] = pybind11::make_tuple(l.gx, l.gy, l.batch);
    d["m"] = l.m;
    d["n"] = l.n;
    d["k"] = l.k;
    d["products"] = l.products;
    d["tile"] = pybind11::make_tuple(l.tm, l.tn, l.tk);
    d["macs"] = l.macs();
    d["issued_macs"] = l.issued_macs();
    launches.append(d);
  }
  pybind11::dict out;
  out["pitch"] = plan.pitch;
  out["batch_chunk"] = plan.batch_chunk;
  out["workspace_bytes"] = plan.workspace_bytes;
  out["launches"] = launches;
  return out;
}

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef VXLP_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef VXLP_CUDA_ARCH_LIST
  info["cuda_arch_list"] = std::string(VXLP_CUDA_ARCH_LIST);
#else
  info["cuda_arch_list"] = std::string("");
#endif
#ifdef VXLP_TORCH_VERSION
  info["torch_version"] = std::string(VXLP_TORCH_VERSION);
#else
  info["torch_version"] = std::string("");
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vxlp_ops compiled extension: op schemas (TORCH_LIBRARY) and, when built with CUDA, kernels";
  m.def("build_info", &build_info,
        "dict(cuda: bool, cuda_arch_list: str, torch_version: str) describing this build");
  m.def("frame_attention_plan", &frame_attention_plan, pybind11::arg("B"), pybind11::arg("S"), pybind11::arg("D"),
        pybind11::arg("elem_bytes"), pybind11::arg("backward"),
        pybind11::arg("workspace") = vxlp_cuda::fa_plan::kDefaultWorkspace,
        "The launch plan of the CUDA frame_attention for [B, S, D] inputs of elem_bytes-byte elements: the forward "
        "(backward=False) or the backward from (out, lse): dict(pitch, batch_chunk, workspace_bytes, launches=[dict("
        "step, b0, batch, grid, m, n, k, products, tile, macs, issued_macs)]). Raises ValueError for S > 16384.");
}
