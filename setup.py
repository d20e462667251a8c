"""Build of the vxlp_ops._C extension.

Always builds the C++ extension (op schemas via TORCH_LIBRARY + a pybind11 module). Builds the CUDA
sources under csrc/cuda/ too when torch has CUDA and nvcc is found; ``VXLP_BUILD_CUDA=0`` forces them
off, ``VXLP_BUILD_CUDA=1`` forces them on (and fails loudly if that cannot work). ``TORCH_CUDA_ARCH_LIST``
picks the GPU targets (default ``8.0;9.0a``: A100 and H100/H200). Build with
``pip install --no-build-isolation .`` so that the installed torch is the one compiled against.
"""

import glob
import importlib.util
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("VXLP_BUILD_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    have = torch.version.cuda is not None and (
        shutil.which("nvcc") is not None or os.environ.get("CUDA_HOME") is not None
    )
    if flag in ("1", "true", "yes", "on"):
        if not have:
            raise RuntimeError(
                "VXLP_BUILD_CUDA=1 but torch has no CUDA (torch.version.cuda is None) or nvcc is not found"
            )
        return True
    return have


def _cutlass_include() -> list[str]:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        return []
    inc = os.path.join(os.path.dirname(spec.origin), "source", "include")
    return [inc] if os.path.isdir(inc) else []


def _extension():
    sources = [os.path.join("csrc", "registration.cpp"), os.path.join("csrc", "module.cpp")]
    macros = [("VXLP_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-std=c++17"]
    if not _want_cuda():
        return CppExtension("vxlp_ops._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx})
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "**", "*.cu"), recursive=True))
    cuda_cpp = sorted(glob.glob(os.path.join("csrc", "cuda", "**", "*.cpp"), recursive=True))
    macros += [("VXLP_WITH_CUDA", None), ("VXLP_CUDA_ARCH_LIST", f'"{archs}"')]
    nvcc = ["-O3", "-std=c++17", "-DNDEBUG", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "vxlp_ops._C",
        sources + cuda_cpp + cuda_sources,
        define_macros=macros,
        include_dirs=[os.path.join(HERE, "csrc")] + _cutlass_include(),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension})
