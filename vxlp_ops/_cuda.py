"""CUDA backend of vxlp_ops: registers a ``cuda`` implementation of each op whose kernels were compiled.

The kernels live in ``csrc/cuda/`` and are registered by the compiled extension as internal ops
``vxlp_ops::cuda_<op>`` / ``vxlp_ops::cuda_<op>_backward`` (CUDA and Meta implementations). This module is
imported by :mod:`vxlp_ops._backends` only in CUDA builds; it imports cleanly anywhere and registers nothing for
an op whose kernel is absent.

Limits (each is a ``reasons`` entry when violated): CUDA tensors only; float32 / float16 / bfloat16 (no
float64); compute capability ≥ 8.0 (the fp16 / bf16 kernels use ``mma.sync.m16n8k16``); every tensor fewer than
2³¹ elements (32-bit indexing); temporal_merge_conv3d: G·(T+1) ≤ 65535 and the padded input gradient
G·(T+1)·(H+2)·(W+2)·Cin < 2³¹; query_topk_gather: B ≤ 65535; sgm_mask: the default dtype must be float32 (the
noise is drawn exactly as the reference draws it, with ``torch.rand``, and the kernel compares float32 noise).
"""

from __future__ import annotations

import functools

import torch

from . import dispatch
from ._layout_cache import conv_weight
from .reference.sgm import mask_counts

BACKEND = "cuda"
_INT31 = 1 << 31
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def has_kernel(op: str) -> bool:
    """Whether ``vxlp_ops::cuda_<op>`` exists and has a CUDA kernel in this build."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"vxlp_ops::cuda_{op}", "CUDA"))
    except RuntimeError:  # the op is not defined at all
        return False


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _common(*tensors, float_check=True) -> list[str]:
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if not ts:
        return ["no tensor argument"]
    reasons = []
    bad = [t.device for t in ts if t.device.type != "cuda"]
    if bad:
        return [f"cuda backend needs CUDA tensors, got a tensor on {bad[0]}"]
    if float_check:
        for t in ts:
            if t.is_floating_point() and t.dtype not in _DTYPES:
                reasons.append(f"cuda backend supports float32/float16/bfloat16, got {t.dtype}")
                break
    try:
        cap = _capability(ts[0].device.index if ts[0].device.index is not None else torch.cuda.current_device())
    except Exception as e:  # noqa: BLE001
        return reasons + [f"cannot query the CUDA device ({type(e).__name__}: {e})"]
    if cap < (8, 0):
        reasons.append(f"cuda backend needs compute capability >= 8.0, got {cap[0]}.{cap[1]}")
    for t in ts:
        if t.numel() >= _INT31:
            reasons.append(f"cuda backend needs tensors of fewer than 2^31 elements, got {t.numel()}")
            break
    return reasons


def _c(t):
    return t.contiguous() if isinstance(t, torch.Tensor) else t


_ops = torch.ops.vxlp_ops


# ------------------------------------------------------------------------------------------------ frame_attention
def _fa_forward(q, k, v, scale=None):
    return _ops.cuda_frame_attention(_c(q), _c(k), _c(v), scale)


def _fa_backward(grad_out, q, k, v, scale=None):
    return tuple(_ops.cuda_frame_attention_backward(_c(grad_out), _c(q), _c(k), _c(v), scale))


def _fa_fwd_forward(q, k, v, scale=None):
    return tuple(_ops.cuda_frame_attention_fwd(_c(q), _c(k), _c(v), scale))


def _fa_fwd_backward(grad_out, q, k, v, out, lse, scale=None):
    return tuple(_ops.cuda_frame_attention_fwd_backward(_c(grad_out), _c(q), _c(k), _c(v), _c(out), _c(lse), scale))


FA_MAX_S = 16384  # csrc/cuda/frame_attention_plan.h kMaxS
FA_WORKSPACE = 1 << 30  # csrc/cuda/frame_attention_plan.h kDefaultWorkspace


def frame_attention_workspace_bytes(b: int, s: int, elem_bytes: int, backward: bool = False) -> int:
    """Device bytes of the CUDA frame_attention's [S, S] workspace for ``[B, S, D]`` inputs of ``elem_bytes``-byte
    elements (the forward: float32 scores + P; the backward from (out, lse): P and dS), allocated once per call:
    as many batch rows as fit 1 GiB (at least one), rows padded to a multiple of 8. The same numbers as
    ``make_plan`` of csrc/cuda/frame_attention_plan.h (tests/test_frame_attention_plan.py checks it)."""
    pitch = -(-s // 8) * 8
    per_row = s * pitch * (2 * elem_bytes if backward else 4 + elem_bytes)
    return min(max(1, FA_WORKSPACE // per_row), b, 65535) * per_row


def _fa_reasons(q, k, v, scale=None):
    reasons = _common(q, k, v)
    if isinstance(q, torch.Tensor) and q.dim() == 3 and q.shape[1] > FA_MAX_S:
        reasons.append(
            f"cuda frame_attention materialises an [S, S] score workspace per batch row: needs S <= {FA_MAX_S}, "
            f"got {q.shape[1]}"
        )
    return reasons


# ------------------------------------------------------------------------------------------------ temporal_attention
def _ta_forward(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    return _ops.cuda_temporal_attention(_c(q), _c(k), _c(v), _c(rel_k), _c(rel_v), bool(transposed_rel_k))


def _ta_backward(grad_out, q, k, v, rel_k, rel_v, transposed_rel_k=False):
    return tuple(
        _ops.cuda_temporal_attention_backward(
            _c(grad_out), _c(q), _c(k), _c(v), _c(rel_k), _c(rel_v), bool(transposed_rel_k)
        )
    )


def _ta_reasons(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    reasons = _common(q, k, v, rel_k, rel_v)
    if isinstance(q, torch.Tensor) and q.dim() == 3 and q.shape[1] > 64:
        reasons.append(f"cuda temporal_attention supports T <= 64, got {q.shape[1]}")
    return reasons


# ------------------------------------------------------------------------------------------------ temporal_merge_conv3d
def _conv_forward(x, weight, bias=None, stride_t=2):
    # the [Cout, 27·Cin] GEMM layout of the weight, laid out once per weight state (vxlp_ops._layout_cache)
    rows = conv_weight(weight, "rows")
    return _ops.cuda_temporal_merge_conv3d(_c(x), _c(weight), _c(bias), int(stride_t), rows, dispatch.conv_forward_path())


def _conv_backward(grad_out, x, weight, stride_t=2):
    cols = conv_weight(weight, "cols")
    return tuple(_ops.cuda_temporal_merge_conv3d_backward(_c(grad_out), _c(x), _c(weight), int(stride_t), cols))


def _conv_reasons(x, weight, bias=None, stride_t=2):
    reasons = _common(x, weight, bias)
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        g, t, h, w, cin = x.shape
        if g * (t + 1) > 65535:
            reasons.append(f"cuda temporal_merge_conv3d needs G·(T+1) <= 65535, got {g * (t + 1)}")
        if g * (t + 1) * (h + 2) * (w + 2) * cin >= _INT31:
            reasons.append("cuda temporal_merge_conv3d needs G·(T+1)·(H+2)·(W+2)·Cin < 2^31 (padded input gradient)")
        if isinstance(weight, torch.Tensor) and weight.dim() == 5 and 27 * cin * weight.shape[0] >= _INT31:
            reasons.append("cuda temporal_merge_conv3d needs 27·Cin·Cout < 2^31")
    return reasons


# ------------------------------------------------------------------------------------------------ sgm_scores / sgm_mask
def _sgm_forward(x, temp_query, spatial_query):
    return _ops.cuda_sgm_scores(_c(x), _c(temp_query), _c(spatial_query))


def _sgm_backward(grad_scores, x, temp_query, spatial_query):
    return tuple(_ops.cuda_sgm_scores_backward(_c(grad_scores), _c(x), _c(temp_query), _c(spatial_query)))


def _sgm_reasons(x, temp_query, spatial_query):
    return _common(x, temp_query, spatial_query)


def _mask_forward(scores, mask_ratio, pool=0.75, generator=None):
    g, t, s = scores.shape
    n_pool, n_mask = mask_counts(s, mask_ratio, pool)
    # the reference's draw, call for call: same generator state → same noise → same mask
    noise = torch.rand((g, t, n_pool), generator=generator, device=scores.device)
    return _ops.cuda_sgm_mask(_c(scores), noise, n_mask)


def _mask_reasons(scores, mask_ratio, pool=0.75, generator=None):
    reasons = _common(scores)
    if torch.get_default_dtype() != torch.float32:
        reasons.append(
            f"cuda sgm_mask compares float32 noise; torch's default dtype is {torch.get_default_dtype()} "
            "(the reference's torch.rand would draw that dtype)"
        )
    if generator is not None and getattr(generator, "device", torch.device("cpu")).type != "cuda":
        reasons.append(f"cuda sgm_mask needs a CUDA generator, got one on {generator.device}")
    return reasons


# ------------------------------------------------------------------------------------------------ query_topk_gather
def _qtg_forward(visual, query, k, inject_scores=True):
    return tuple(_ops.cuda_query_topk_gather(_c(visual), _c(query), int(k), bool(inject_scores)))


def _qtg_backward(grad_selected, grad_scores, visual, query, indices, inject_scores=True):
    return tuple(
        _ops.cuda_query_topk_gather_backward(
            _c(grad_selected), _c(grad_scores), _c(visual), _c(query), _c(indices), bool(inject_scores)
        )
    )


def _qtg_reasons(visual, query, k, inject_scores=True):
    reasons = _common(visual, query)
    if isinstance(visual, torch.Tensor) and visual.dim() == 3 and visual.shape[0] > 65535:
        reasons.append(f"cuda query_topk_gather needs B <= 65535, got {visual.shape[0]}")
    return reasons


_TABLE = {
    "frame_attention": (_fa_forward, _fa_backward, _fa_reasons),
    "frame_attention_fwd": (_fa_fwd_forward, _fa_fwd_backward, _fa_reasons),
    "temporal_attention": (_ta_forward, _ta_backward, _ta_reasons),
    "temporal_merge_conv3d": (_conv_forward, _conv_backward, _conv_reasons),
    "sgm_scores": (_sgm_forward, _sgm_backward, _sgm_reasons),
    "sgm_mask": (_mask_forward, None, _mask_reasons),
    "query_topk_gather": (_qtg_forward, _qtg_backward, _qtg_reasons),
}

REGISTERED: list[str] = []


def _register() -> None:
    for op, (fwd, bwd, reasons) in _TABLE.items():
        if not has_kernel(op):
            continue
        if bwd is not None and not has_kernel(f"{op}_backward"):
            continue
        dispatch.register(op, BACKEND, fwd, bwd, reasons)
        REGISTERED.append(op)
    if not REGISTERED and BACKEND not in dispatch._UNAVAILABLE:
        dispatch.mark_unavailable(BACKEND, "no vxlp_ops::cuda_* kernels in this build of vxlp_ops._C")


_register()
