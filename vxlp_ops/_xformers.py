"""xformers backend of vxlp_ops: ``frame_attention`` through xformers' memory-efficient attention.

Optional and never required: registered when an ``xformers`` package is installed (``vxlp_ops._backends``; it is
imported at first use), otherwise recorded as unavailable with the reason (``python -m vxlp_ops.info``). It serves ``frame_attention`` only, with
xformers' CUTLASS memory-efficient kernels (``MemoryEfficientAttentionCutlassOp``: any head width up to 65536, the
DTS's 1152 included; xformers' FlashAttention kernels stop at 256), called on ``[B, S, 1, D]`` views (one head).

When it runs: never by default. The automatic order of the built-in backends (cuda → triton → reference) does
not include it; an op's order changes only through the dispatcher's configuration API — ``dispatch.tune(op,
args)`` measures every backend that can run the arguments and puts the fastest first (so xformers is chosen only
where it was *measured* faster), ``dispatch.set_priority`` sets an order by hand, ``use_backend("xformers")``
forces it. Even then, each call still asks :func:`reasons`: CUDA tensors, and xformers' own
``not_supported_reasons`` of the forward and backward kernels for these inputs (dtype, compute capability, head
width, alignment), so an unsupported call falls through to the next backend with the reasons listed.

Backward: xformers' forward is re-run for the output and log-sum-exp (``memory_efficient_attention_forward_
requires_grad``; the op's backward schema carries only the inputs), then ``memory_efficient_attention_backward``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import torch

from . import dispatch

BACKEND = "xformers"
OPS = ("frame_attention",)
# the call that matters for vxlp (one DTS frame: 576 tokens × 1152 channels, bf16), probed by vxlp_ops.info
DTS_PROBE = ((1, 576, 1152), torch.bfloat16)

def installed() -> bool:
    """Whether an ``xformers`` package is importable (without importing it)."""
    if sys.modules.get("xformers") is not None:
        return True
    try:
        return importlib.util.find_spec("xformers") is not None
    except (ImportError, ValueError):
        return False


def load() -> None:
    """Register the backend when xformers is installed, or record that it is not; never raises, imports nothing.

    xformers itself is imported at the first call that asks this backend anything (importing it is slow and,
    without its CUDA extensions, noisy); an install that fails to import then refuses every call with the error.
    """
    dispatch.declare_optional(BACKEND, OPS)
    if not installed():
        dispatch.mark_unavailable(
            BACKEND, "xformers is not installed (optional; vxlp_ops does not require it: pip install xformers)"
        )
        return
    dispatch.register("frame_attention", BACKEND, forward, backward, reasons, probe=probe)


def _ops_module():
    """``xformers.ops`` (imported on first use); raises ImportError with the reason when it does not import or
    lacks the memory-efficient attention API."""
    try:
        xops = importlib.import_module("xformers.ops")
        for name in ("memory_efficient_attention_forward", "memory_efficient_attention_forward_requires_grad",
                     "memory_efficient_attention_backward", "MemoryEfficientAttentionCutlassOp"):
            getattr(xops, name)
        importlib.import_module("xformers.ops.fmha").Inputs  # noqa: B018
    except Exception as e:  # noqa: BLE001
        raise ImportError(f"xformers is installed but unusable: {type(e).__name__}: {e}") from e
    return xops


def _kernels(xops):
    """(forward op, backward op) of xformers' memory-efficient (CUTLASS) attention."""
    fw, bw = xops.MemoryEfficientAttentionCutlassOp
    return fw, bw


def _bmhk(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(2)  # [B, S, D] -> [B, S, 1, D]: one head, a view


def xformers_reasons(q, k, v, scale=None) -> list[str]:
    """xformers' own ``not_supported_reasons`` of its forward and backward kernels for these inputs (empty if
    this xformers has no such API)."""
    xops = _ops_module()
    fmha = importlib.import_module("xformers.ops.fmha")
    inp = fmha.Inputs(query=_bmhk(q), key=_bmhk(k), value=_bmhk(v), scale=scale)
    out = []
    for kernel in _kernels(xops):
        check = getattr(kernel, "not_supported_reasons", None)
        if check is None:
            continue
        name = getattr(kernel, "NAME", getattr(kernel, "__name__", "kernel"))
        out += [f"xformers {name}: {r}" for r in check(inp)]
    return out


def _device_reasons(q) -> list[str]:
    if q.device.type != "cuda":
        return [f"xformers backend needs CUDA tensors, got a tensor on {q.device}"]
    return []


def reasons(q, k, v, scale=None) -> list[str]:
    try:
        return _device_reasons(q) + xformers_reasons(q, k, v, scale)
    except ImportError as e:
        return [str(e)]


def forward(q, k, v, scale=None):
    xops = _ops_module()
    fw, _ = _kernels(xops)
    out = xops.memory_efficient_attention_forward(_bmhk(q), _bmhk(k), _bmhk(v), scale=scale, op=fw)
    return out.squeeze(2)


def backward(grad_out, q, k, v, scale=None):
    xops = _ops_module()
    fw, bw = _kernels(xops)
    qh, kh, vh = _bmhk(q), _bmhk(k), _bmhk(v)
    out, lse = xops.memory_efficient_attention_forward_requires_grad(qh, kh, vh, scale=scale, op=fw)
    dq, dk, dv = xops.memory_efficient_attention_backward(_bmhk(grad_out), out, lse, qh, kh, vh, scale=scale, op=bw)
    return dq.squeeze(2), dk.squeeze(2), dv.squeeze(2)


def probe() -> list[str]:
    """For ``vxlp_ops.info``: whether xformers supports the DTS's frame attention here, or its reasons."""
    shape, dtype = DTS_PROBE
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        t = torch.zeros(shape, dtype=dtype, device=dev)
        why = reasons(t, t, t, None)
    except Exception as e:  # noqa: BLE001
        return [f"could not probe xformers ({type(e).__name__}: {e})"]
    what = f"DTS frame attention {list(shape)} {str(dtype).replace('torch.', '')} on {dev}"
    return [f"{what}: supported"] if not why else [f"{what}: not supported: " + "; ".join(why)]
