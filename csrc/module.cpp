// The pybind11 module vxlp_ops._C: importing it loads the TORCH_LIBRARY registrations of this library
// (registration.cpp and, in CUDA builds, the kernels under csrc/cuda/) and reports how it was built.
#include <torch/extension.h>

#include <string>

namespace {

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
}
