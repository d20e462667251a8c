"""Shared helpers of the Triton backend: the ``reasons`` checks, launch configuration, dtype plumbing.

Kernels load any of float32 / float16 / bfloat16 and keep the tiles in that dtype up to ``tl.dot``, which
accumulates in float32 (:func:`dot_args`, :func:`vxlp_ops.triton._shared.mma`): bf16 / fp16 operands run on
the tensor cores at their own rate, float32 operands with ``input_precision="ieee"``. Float32 intermediates
that feed a second product (softmax probabilities, dS) are rounded to the input dtype first, as FlashAttention
does. Element-wise math (softmax, scaling, reductions) is float32; results are cast at the store.

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


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def dot_args(dtype: torch.dtype, interpret: bool | None = None) -> dict:
    """The constexprs ``IN_T``, ``DOT_T``, ``PREC`` of :func:`vxlp_ops.triton._shared.mma` for inputs of ``dtype``.

    ``tl.dot`` gets the input dtype (``IN_T = DOT_T``): fp16 / bf16 tiles go to the tensor cores as they are,
    with a float32 accumulator; float32 inputs multiply in float32 with ``input_precision="ieee"`` (exact, like
    the reference). The one exception is bf16 under the Triton interpreter (``interpret``, default: whether the
    kernels were loaded in interpreter mode), which stores bf16 as raw uint16 and cannot multiply it: there
    ``DOT_T`` is float32. The operands are still rounded to bf16 first (``IN_T``), and a bf16 × bf16 product is
    exact in float32, so the interpreter computes what the tensor cores compute (up to summation order).
    """
    in_t = _TL_DTYPES[dtype]
    interpret = INTERPRET_AT_IMPORT if interpret is None else interpret
    dot_t = tl.float32 if (interpret and dtype == torch.bfloat16) else in_t
    return dict(IN_T=in_t, DOT_T=dot_t, PREC="ieee" if dot_t == tl.float32 else "tf32")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def sm_count(t: torch.Tensor) -> int:
    if on_gpu(t):
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return 2
