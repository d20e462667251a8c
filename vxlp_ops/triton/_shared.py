"""Small kernels shared by several ops: mean over the middle axis, per-row min-max normalisation, row sums.

The gradient of the min-max normalisation is not here: it is a handful of torch ops on the small [R, L] score
tensor, and the backends use the one formula of :func:`vxlp_ops.reference.sgm.min_max_backward`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C


@triton.jit
def _mean_mid(X, OUT, S, Cn, inv_s, BS: tl.constexpr, BC: tl.constexpr):
    """OUT[r, c] = inv_s · Σ_s X[r, s, c] (float32) for X [R, S, C]."""
    r = tl.program_id(0)
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    mc = offs_c < Cn
    base = r.to(tl.int64) * S * Cn
    acc = tl.zeros([BC], tl.float32)
    for s0 in range(0, S, BS):
        offs_s = s0 + tl.arange(0, BS)
        x = tl.load(X + base + offs_s[:, None] * Cn + offs_c[None, :], mask=(offs_s < S)[:, None] & mc[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(x, 0)
    tl.store(OUT + r.to(tl.int64) * Cn + offs_c, acc * inv_s, mask=mc)


@triton.jit
def _minmax_rows(RAW, OUT, L, BL: tl.constexpr):
    """OUT[r] = (RAW[r] − min) / (max − min) over the row, zeros for a constant row (float32)."""
    r = tl.program_id(0)
    base = r.to(tl.int64) * L
    lo = tl.full([BL], float("inf"), tl.float32)
    hi = tl.full([BL], float("-inf"), tl.float32)
    for l0 in range(0, L, BL):
        offs = l0 + tl.arange(0, BL)
        m = offs < L
        x = tl.load(RAW + base + offs, mask=m, other=0.0)
        lo = tl.minimum(lo, tl.where(m, x, float("inf")))
        hi = tl.maximum(hi, tl.where(m, x, float("-inf")))
    mn = tl.min(lo, 0)
    rng = tl.max(hi, 0) - mn
    ok = rng > 0
    den = tl.where(ok, rng, 1.0)
    for l0 in range(0, L, BL):
        offs = l0 + tl.arange(0, BL)
        m = offs < L
        x = tl.load(RAW + base + offs, mask=m, other=0.0)
        tl.store(OUT + base + offs, tl.where(ok, (x - mn) / den, 0.0), mask=m)


@triton.jit
def _rowsum(X, OUT, L, BL: tl.constexpr):
    """OUT[r] = Σ_l X[r, l] in float32, X [R, L]."""
    r = tl.program_id(0)
    base = r.to(tl.int64) * L
    acc = tl.zeros([BL], tl.float32)
    for l0 in range(0, L, BL):
        offs = l0 + tl.arange(0, BL)
        acc += tl.load(X + base + offs, mask=offs < L, other=0.0).to(tl.float32)
    tl.store(OUT + r, tl.sum(acc, 0))


def _blk(gpu: bool, n: int, gpu_block: int, cpu_block: int) -> int:
    return max(16, min(gpu_block if gpu else cpu_block, C.next_pow2(n)))


def mean_mid(x: torch.Tensor) -> torch.Tensor:
    """x [R, S, C] contiguous → float32 [R, C] mean over S."""
    r, s, c = x.shape
    gpu = C.on_gpu(x)
    out = torch.empty((r, c), dtype=torch.float32, device=x.device)
    bs, bc = _blk(gpu, s, 32, 16), _blk(gpu, c, 128, 32)
    _mean_mid[(r, C.cdiv(c, bc))](x, out, s, c, 1.0 / s, BS=bs, BC=bc)
    return out


def minmax_rows(raw: torch.Tensor) -> torch.Tensor:
    """raw float32 [R, L] contiguous → min-max normalised float32 [R, L]."""
    r, length = raw.shape
    out = torch.empty_like(raw)
    _minmax_rows[(r,)](raw, out, length, BL=_blk(C.on_gpu(raw), length, 1024, 64))
    return out


def rowsum(x: torch.Tensor) -> torch.Tensor:
    """x [R, L] contiguous → float32 [R] row sums."""
    r, length = x.shape
    out = torch.empty((r,), dtype=torch.float32, device=x.device)
    _rowsum[(r,)](x, out, length, BL=_blk(C.on_gpu(x), length, 1024, 64))
    return out


# ------------------------------------------------------------------------------------- tile helpers (jit)
@triton.jit
def load_tile(PTR, base, rows, row_mask, cols, ld, ncols):
    """The [len(rows), len(cols)] tile ``PTR[base + rows·ld + cols]`` of a row-major matrix, in the tensor's own
    dtype; zeros where ``row_mask`` is False or ``cols ≥ ncols``."""
    return tl.load(PTR + base + rows[:, None] * ld + cols[None, :],
                   mask=row_mask[:, None] & (cols < ncols)[None, :], other=0.0)


@triton.jit
def store_tile(PTR, base, rows, row_mask, cols, ld, ncols, x):
    """Store ``x`` (any float dtype) as the tile of :func:`load_tile`, cast to the tensor's dtype."""
    tl.store(PTR + base + rows[:, None] * ld + cols[None, :], x.to(PTR.dtype.element_ty),
             mask=row_mask[:, None] & (cols < ncols)[None, :])


@triton.jit
def mma(a, b, acc, IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``acc + a @ b`` with a float32 accumulator ``acc``.

    Both operands are first cast to ``IN_T`` (a no-op for tiles loaded from the inputs; it rounds float32
    intermediates such as softmax probabilities to the input dtype) and then to ``DOT_T``, the dtype ``tl.dot``
    sees; ``PREC`` is its ``input_precision`` (used for float32 operands only). :func:`vxlp_ops.triton._common.dot_args`
    chooses the three per input dtype.
    """
    return tl.dot(a.to(IN_T).to(DOT_T), b.to(IN_T).to(DOT_T), acc, input_precision=PREC)
