"""Loads the optional backends (Triton, CUDA, xformers) and records why one is absent; never raises."""

from __future__ import annotations

import importlib

from . import _ext, dispatch


def _load_triton() -> None:
    try:
        importlib.import_module("triton")
    except Exception as e:  # noqa: BLE001
        dispatch.mark_unavailable("triton", f"triton is not importable ({type(e).__name__}: {e})")
        return
    try:
        importlib.import_module("vxlp_ops.triton")
    except ModuleNotFoundError as e:
        if e.name == "vxlp_ops.triton":
            dispatch.mark_unavailable("triton", "no Triton kernels in this build of vxlp_ops")
        else:
            dispatch.mark_unavailable("triton", f"vxlp_ops.triton failed to import: {e}")
    except Exception as e:  # noqa: BLE001
        dispatch.mark_unavailable("triton", f"vxlp_ops.triton failed to import: {type(e).__name__}: {e}")


def _load_cuda() -> None:
    if _ext.EXTENSION_ERROR is not None:
        dispatch.mark_unavailable("cuda", f"compiled extension unavailable: {_ext.EXTENSION_ERROR}")
        return
    if not _ext.BUILD_INFO.get("cuda", False):
        dispatch.mark_unavailable(
            "cuda",
            "vxlp_ops._C was built without CUDA (torch without CUDA, nvcc not found, or VXLP_BUILD_CUDA=0)",
        )
        return
    try:
        importlib.import_module("vxlp_ops._cuda")
    except Exception as e:  # noqa: BLE001
        dispatch.mark_unavailable("cuda", f"vxlp_ops._cuda failed to import: {type(e).__name__}: {e}")


def _load_optional() -> None:
    try:
        from . import _xformers  # noqa: PLC0415

        _xformers.load()
    except Exception as e:  # noqa: BLE001
        dispatch.mark_unavailable("xformers", f"vxlp_ops._xformers failed to load: {type(e).__name__}: {e}")


_load_triton()
_load_cuda()
_load_optional()
