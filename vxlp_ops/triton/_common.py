"""Shared helpers of the Triton backend: the ``reasons`` checks, launch configuration, dtype plumbing.

Kernels load any of float32 / float16 / bfloat16, upcast to float32 right after ``tl.load``, accumulate in
float32 and downcast at the store (the interpreter stores bfloat16 as raw uint16, so no arithmetic is ever
done on 16-bit values). ``tl.dot`` runs with ``input_precision="ieee"`` for float32 inputs (exact, like the
reference) and ``"tf32"`` for 16-bit inputs (exact on the upcast operands, faster on the GPU).

Only APIs present in both Triton 3.6 and 3.7 are used (plain pointer arithmetic + masks, ``tl.gather``
(since 3.3), ``tl.debug_barrier``); no autotuning, one fixed configuration per device kind.
"""

from __future__ import annotations

import os

import torch
import triton.language as tl

from vxlp_ops import dispatch

# triton.jit decides interpreter vs compiler when the kernels are *decorated* (import time).
INTERPRET_AT_IMPORT = os.environ.get("TRITON_INTERPRET") == "1"

DTYPE_REASON = "triton backend supports float32/float16/bfloat16"


def first_tensor(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


def device_reasons(t: torch.Tensor) -> list[str]:
    """Why the Triton backend cannot run on ``t``'s device (empty if it can)."""
    dev = t.device
    if dev.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1" or dispatch.forced_backend() != "triton":
            return [
                "CPU tensors run on the triton backend only through the Triton interpreter, used only when "
                "explicitly asked: set TRITON_INTERPRET=1 and force the backend (VXLP_BACKEND=triton or "
                "vxlp_ops.use_backend('triton'))"
            ]
        if not INTERPRET_AT_IMPORT:
            return ["TRITON_INTERPRET=1 was set after vxlp_ops.triton was imported; set it before importing vxlp_ops"]
        return []
    if dev.type == "cuda":
        if INTERPRET_AT_IMPORT and dispatch.forced_backend() != "triton":
            return [
                "the Triton kernels were loaded in interpreter mode (TRITON_INTERPRET=1 when vxlp_ops was "
                "imported); the interpreter is used only when the triton backend is forced"
            ]
        try:
            cap = torch.cuda.get_device_capability(dev)
        except Exception as e:  # noqa: BLE001
            return [f"cannot query the CUDA device ({type(e).__name__}: {e})"]
        if cap < (8, 0):
            return [f"triton backend needs CUDA compute capability >= 8.0, got {cap[0]}.{cap[1]}"]
        return []
    return [f"triton backend runs on CUDA devices (or CPU through the interpreter), got {dev.type}"]


def common_reasons(*args, dtypes=True) -> list[str]:
    t = first_tensor(args)
    if t is None:
        return ["no tensor argument"]
    reasons = []
    if dtypes:
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype not in (
                torch.float32,
                torch.float16,
                torch.bfloat16,
            ):
                reasons.append(f"{DTYPE_REASON}, got {a.dtype}")
                break
    reasons += device_reasons(t)
    return reasons


def on_gpu(t: torch.Tensor) -> bool:
    """True when the kernels will be compiled for a GPU (not interpreted)."""
    return t.device.type == "cuda" and not INTERPRET_AT_IMPORT


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_args(dtype: torch.dtype) -> dict:
    """The constexprs ``IN_T``, ``DOT_T``, ``PREC`` of :func:`vxlp_ops.triton._shared.mma` for inputs of ``dtype``."""
    return dict(IN_T=tl.float32, DOT_T=tl.float32, PREC=dot_precision(dtype))


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def sm_count(t: torch.Tensor) -> int:
    if on_gpu(t):
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return 2
