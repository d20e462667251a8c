"""Triton ``frame_attention``: flash-attention forward and FlashAttention-2 backward, any head width D.

Operands: q, k, v (and dO) tiles reach ``tl.dot`` in the input dtype (bf16 / fp16 on the tensor cores, float32
with ``input_precision="ieee"``) with a float32 accumulator; the probabilities P and dS are rounded to the
input dtype before the second product (P·V, Pᵀ·dO, dSᵀ·Q, dS·K), as FlashAttention does (``_shared.mma``,
``_common.dot_args``; the one exception is bf16 under the Triton interpreter, see ``dot_args``).

Forward (``_fa_fwd``): one program per (batch row, block of BM queries); online softmax over key blocks of BN.
The float32 output accumulator of the block never leaves the chip. It is held in registers as two tiles,
``[BM, DH]`` and ``[BM, DL]`` (powers of two, ``DH = prev_pow2(D)``, ``DL = next_pow2(D − DH)``: 1152 = 1024 +
128, no padding; one tile when D ≤ 128), and per key block the scores ``q kᵀ`` are computed once (over D in
chunks of BD, or with the query tile resident when D fits one chunk) and used for both tiles. Why this rather
than splitting D over programs or over an outer loop: any split of the output columns recomputes ``q kᵀ`` once
per split (9× for 1152 in chunks of 128: 20·S²·D instead of 4·S²·D FLOPs), while the register tiles cost only
BM rows: 16 × 1152 float32 = 72 registers per thread over 8 warps (BM = 16, BN = 16, 8 warps for D > 128;
ptxas for sm_80, bf16: 185 registers, no spills — ``scripts/check_triton_compile.py``). The price is a small M tile
(mma.sync m16n8k16 rather than Hopper's wgmma, which needs M = 64 per warpgroup) and K/V blocks read once per
16 queries (from L2).

FLOPs per call (tensor-core multiply-adds × 2, padding excluded): forward 4·B·S²·D (``q kᵀ`` and P·V once
each, no recomputation; for the DTS, B·S²·D = B·576²·1152: 1.53 GFLOP per batch row); backward from the saved
output and LSE (``frame_attention_fwd_backward``) 14·B·S²·D (``_fa_bwd_dkdv`` 8: ``q kᵀ``, dO·vᵀ, Pᵀ·dO,
dSᵀ·Q; ``_fa_bwd_dq`` 6: ``q kᵀ`` and dO·vᵀ again, dS·K — the two kernels write disjoint outputs, so no
atomics, at the price of recomputing the two score products once). ``frame_attention_backward`` (inputs only)
runs the forward with the LSE first: 18·B·S²·D. Padded work: S to multiples of BM / BN, ``q kᵀ`` to a multiple
of BD, P·V to DH + DL.

Forward with the LSE (``frame_attention_fwd``): the same ``_fa_fwd`` with ``STORE_LSE``, which writes each row's
``m + log2(l)`` converted to the natural log. Backward (``frame_attention_fwd_backward``): ``_fa_bwd_prep`` per
row: ``delta = rowsum(dO·O)`` from the saved output and the LSE in base 2; ``_fa_bwd_dkdv`` (one program per
key block: dK, dV) and ``_fa_bwd_dq`` (one program per query block) rebuild P from the LSE. When D fits one
chunk (``SINGLE``, D ≤ 128 on GPUs) the program's own tiles stay in registers and the accumulators too;
otherwise the dK / dV / dQ accumulators (two [BN, D] or one [BM, D] per program, too many registers for
D = 1152) live in a float32 scratch tile of the program's own rows, read-added-written per block with
``tl.debug_barrier()`` between blocks. Launch configurations (GPU): chosen with ptxas's register / spill counts
for sm_80, not timed on a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch

from . import _common as C
from . import _shared as SH

LOG2E = 1.4426950408889634


@triton.jit
def _fa_scores(Q, K, base, offs_m, mask_m, offs_n, mask_n, D,
               BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
               IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``q kᵀ`` for a [BM] query block and a [BN] key block, accumulated over D in chunks of BD (float32)."""
    offs_d = tl.arange(0, BD)
    s = tl.zeros([BM, BN], tl.float32)
    for d0 in range(0, D, BD):
        q = SH.load_tile(Q, base, offs_m, mask_m, d0 + offs_d, D, D)
        k = SH.load_tile(K, base, offs_n, mask_n, d0 + offs_d, D, D)
        s = SH.mma(q, tl.trans(k), s, IN_T, DOT_T, PREC)
    return s


@triton.jit
def _fa_scores_dp(Q, K, DO, V, base, offs_m, mask_m, offs_n, mask_n, D,
                  BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                  IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``(q kᵀ, dO vᵀ)`` for a query block and a key block, one pass over D (the backward's recomputation)."""
    offs_d = tl.arange(0, BD)
    s = tl.zeros([BM, BN], tl.float32)
    dp = tl.zeros([BM, BN], tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + offs_d
        q = SH.load_tile(Q, base, offs_m, mask_m, dd, D, D)
        do = SH.load_tile(DO, base, offs_m, mask_m, dd, D, D)
        k = SH.load_tile(K, base, offs_n, mask_n, dd, D, D)
        v = SH.load_tile(V, base, offs_n, mask_n, dd, D, D)
        s = SH.mma(q, tl.trans(k), s, IN_T, DOT_T, PREC)
        dp = SH.mma(do, tl.trans(v), dp, IN_T, DOT_T, PREC)
    return s, dp


@triton.jit
def _fa_pair(a, b, c, d, BM: tl.constexpr, BN: tl.constexpr,
             IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``(a bᵀ, c dᵀ)`` of register-resident tiles (the one-chunk form of :func:`_fa_scores_dp`)."""
    zero = tl.zeros([BM, BN], tl.float32)
    return SH.mma(a, tl.trans(b), zero, IN_T, DOT_T, PREC), SH.mma(c, tl.trans(d), zero, IN_T, DOT_T, PREC)


@triton.jit
def _fa_p_ds(s, dp, lse, delta, mask_m, mask_n, qk_scale):
    """Probabilities ``p = exp2(s·c − lse)`` (0 outside the valid block) and ``ds = p ∘ (dp − delta)``."""
    p = tl.exp2(s * qk_scale - lse[:, None])
    p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
    return p, p * (dp - delta[:, None])


@triton.jit
def _fa_scratch_add(ACC, base, rows, row_mask, cols, D, upd, start):
    """``ACC[rows, cols] (+)= upd`` on a float32 scratch tile (plain store, no read, at the first block: start 0)."""
    off = base + rows[:, None] * D + cols[None, :]
    am = row_mask[:, None] & (cols < D)[None, :]
    a = tl.load(ACC + off, mask=am & (start > 0), other=0.0)
    tl.store(ACC + off, a + upd, mask=am)


@triton.jit
def _fa_scratch_out(ACC, OUT, base, rows, row_mask, D, mul, BD: tl.constexpr):
    """``OUT = ACC · mul`` (mul per row or a scalar), chunk by chunk over D, cast to OUT's dtype."""
    offs_d = tl.arange(0, BD)
    for d0 in range(0, D, BD):
        dd = d0 + offs_d
        a = SH.load_tile(ACC, base, rows, row_mask, dd, D, D)
        SH.store_tile(OUT, base, rows, row_mask, dd, D, D, a * mul)


@triton.jit
def _fa_fwd(Q, K, V, O, LSE, S, D, n_mblocks, qk_scale,
            BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DH: tl.constexpr, DL: tl.constexpr,
            HAS_LO: tl.constexpr, Q_ONCE: tl.constexpr, STORE_LSE: tl.constexpr,
            IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """One program per (batch row, block of BM queries). The float32 output accumulator of the block stays in
    registers as two tiles, columns [0, DH) and [DH, DH + DL) (powers of two, DH + DL ≥ D; the second only
    with HAS_LO); per key block the scores are computed once (over D in chunks of BD) and both tiles updated.
    With STORE_LSE, LSE[b, i] = log Σ_j exp(scale·q_i·k_j) (natural log, float32)."""
    pid = tl.program_id(0)
    b = pid // n_mblocks
    mb = pid % n_mblocks
    base = b.to(tl.int64) * S * D
    offs_m = mb * BM + tl.arange(0, BM)
    mask_m = offs_m < S
    offs_nb = tl.arange(0, BN)
    offs_h = tl.arange(0, DH)
    offs_l = DH + tl.arange(0, DL)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc_h = tl.zeros([BM, DH], tl.float32)
    acc_l = tl.zeros([BM, DL], tl.float32)
    if Q_ONCE:  # D in one chunk (BD = DH ≥ D): the query tile stays in registers for every key block
        q = SH.load_tile(Q, base, offs_m, mask_m, offs_h, D, D)
    for start_n in range(0, S, BN):
        offs_n = start_n + offs_nb
        mask_n = offs_n < S
        if Q_ONCE:
            k = SH.load_tile(K, base, offs_n, mask_n, offs_h, D, D)
            s = SH.mma(q, tl.trans(k), tl.zeros([BM, BN], tl.float32), IN_T, DOT_T, PREC)
        else:
            s = _fa_scores(Q, K, base, offs_m, mask_m, offs_n, mask_n, D, BM, BN, BD, IN_T, DOT_T, PREC)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = SH.load_tile(V, base, offs_n, mask_n, offs_h, D, D)
        acc_h = SH.mma(p, v, acc_h * alpha[:, None], IN_T, DOT_T, PREC)
        if HAS_LO:
            v = SH.load_tile(V, base, offs_n, mask_n, offs_l, D, D)
            acc_l = SH.mma(p, v, acc_l * alpha[:, None], IN_T, DOT_T, PREC)
        m_i = m_new
    inv_l = 1.0 / l_i
    if STORE_LSE:
        tl.store(LSE + b.to(tl.int64) * S + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=mask_m)
    SH.store_tile(O, base, offs_m, mask_m, offs_h, D, D, acc_h * inv_l[:, None])
    if HAS_LO:
        SH.store_tile(O, base, offs_m, mask_m, offs_l, D, D, acc_l * inv_l[:, None])


@triton.jit
def _fa_bwd_prep(O, DO, LSE, LSE2, DELTA, R, D, BR: tl.constexpr, BD: tl.constexpr):
    """Per query row (R = B·S rows): DELTA = Σ_d dO·O (float32, from the saved output) and LSE2 = LSE·log2(e)
    (the base-2 form the backward kernels use)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    mask_r = rows < R
    offs_d = tl.arange(0, BD)
    acc = tl.zeros([BR], tl.float32)
    for d0 in range(0, D, BD):
        o = SH.load_tile(O, 0, rows.to(tl.int64), mask_r, d0 + offs_d, D, D).to(tl.float32)
        do = SH.load_tile(DO, 0, rows.to(tl.int64), mask_r, d0 + offs_d, D, D).to(tl.float32)
        acc += tl.sum(o * do, 1)
    tl.store(DELTA + rows, acc, mask=mask_r)
    tl.store(LSE2 + rows, tl.load(LSE + rows, mask=mask_r, other=0.0) * 1.4426950408889634, mask=mask_r)


@triton.jit
def _fa_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, ACCK, ACCV, S, D, n_nblocks, qk_scale, scale,
                 SINGLE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                 IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_nblocks
    nb = pid % n_nblocks
    base = b.to(tl.int64) * S * D
    offs_n = nb * BN + tl.arange(0, BN)
    mask_n = offs_n < S
    offs_mb = tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    dk_acc = tl.zeros([BN, BD], tl.float32)
    dv_acc = tl.zeros([BN, BD], tl.float32)
    if SINGLE:  # D in one chunk: the key-side tiles stay in registers
        k = SH.load_tile(K, base, offs_n, mask_n, offs_d, D, D)
        v = SH.load_tile(V, base, offs_n, mask_n, offs_d, D, D)
    for start_m in range(0, S, BM):
        offs_m = start_m + offs_mb
        mask_m = offs_m < S
        if SINGLE:
            q = SH.load_tile(Q, base, offs_m, mask_m, offs_d, D, D)
            do = SH.load_tile(DO, base, offs_m, mask_m, offs_d, D, D)
            s, dp = _fa_pair(q, k, do, v, BM, BN, IN_T, DOT_T, PREC)
        else:
            s, dp = _fa_scores_dp(Q, K, DO, V, base, offs_m, mask_m, offs_n, mask_n, D, BM, BN, BD, IN_T, DOT_T,
                                  PREC)
        lse = tl.load(LSE + b * S + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + b * S + offs_m, mask=mask_m, other=0.0)
        p, ds = _fa_p_ds(s, dp, lse, delta, mask_m, mask_n, qk_scale)
        pt = tl.trans(p)
        dst = tl.trans(ds)
        if SINGLE:
            dv_acc = SH.mma(pt, do, dv_acc, IN_T, DOT_T, PREC)
            dk_acc = SH.mma(dst, q, dk_acc, IN_T, DOT_T, PREC)
        else:
            for d0 in range(0, D, BD):
                dd = d0 + offs_d
                q = SH.load_tile(Q, base, offs_m, mask_m, dd, D, D)
                do = SH.load_tile(DO, base, offs_m, mask_m, dd, D, D)
                zero = tl.zeros([BN, BD], tl.float32)
                _fa_scratch_add(ACCV, base, offs_n, mask_n, dd, D, SH.mma(pt, do, zero, IN_T, DOT_T, PREC), start_m)
                _fa_scratch_add(ACCK, base, offs_n, mask_n, dd, D, SH.mma(dst, q, zero, IN_T, DOT_T, PREC), start_m)
            tl.debug_barrier()
    if SINGLE:
        SH.store_tile(DK, base, offs_n, mask_n, offs_d, D, D, dk_acc * scale)
        SH.store_tile(DV, base, offs_n, mask_n, offs_d, D, D, dv_acc)
    else:
        _fa_scratch_out(ACCK, DK, base, offs_n, mask_n, D, scale, BD)
        _fa_scratch_out(ACCV, DV, base, offs_n, mask_n, D, 1.0, BD)


@triton.jit
def _fa_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, ACCQ, S, D, n_mblocks, qk_scale, scale,
               SINGLE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
               IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_mblocks
    mb = pid % n_mblocks
    base = b.to(tl.int64) * S * D
    offs_m = mb * BM + tl.arange(0, BM)
    mask_m = offs_m < S
    offs_nb = tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    lse = tl.load(LSE + b * S + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + b * S + offs_m, mask=mask_m, other=0.0)
    dq_acc = tl.zeros([BM, BD], tl.float32)
    if SINGLE:  # D in one chunk: the query-side tiles stay in registers
        q = SH.load_tile(Q, base, offs_m, mask_m, offs_d, D, D)
        do = SH.load_tile(DO, base, offs_m, mask_m, offs_d, D, D)
    for start_n in range(0, S, BN):
        offs_n = start_n + offs_nb
        mask_n = offs_n < S
        if SINGLE:
            k = SH.load_tile(K, base, offs_n, mask_n, offs_d, D, D)
            v = SH.load_tile(V, base, offs_n, mask_n, offs_d, D, D)
            s, dp = _fa_pair(q, k, do, v, BM, BN, IN_T, DOT_T, PREC)
        else:
            s, dp = _fa_scores_dp(Q, K, DO, V, base, offs_m, mask_m, offs_n, mask_n, D, BM, BN, BD, IN_T, DOT_T,
                                  PREC)
        p, ds = _fa_p_ds(s, dp, lse, delta, mask_m, mask_n, qk_scale)
        if SINGLE:
            dq_acc = SH.mma(ds, k, dq_acc, IN_T, DOT_T, PREC)
        else:
            for d0 in range(0, D, BD):
                dd = d0 + offs_d
                k = SH.load_tile(K, base, offs_n, mask_n, dd, D, D)
                zero = tl.zeros([BM, BD], tl.float32)
                _fa_scratch_add(ACCQ, base, offs_m, mask_m, dd, D, SH.mma(ds, k, zero, IN_T, DOT_T, PREC), start_n)
            tl.debug_barrier()
    if SINGLE:
        SH.store_tile(DQ, base, offs_m, mask_m, offs_d, D, D, dq_acc * scale)
    else:
        _fa_scratch_out(ACCQ, DQ, base, offs_m, mask_m, D, scale, BD)


def _acc_split(d: int, single_max: int) -> dict:
    """The forward's [BM, D] register accumulator as tiles [BM, DH] + [BM, DL] (powers of two ≥ 16, DH + DL ≥ D):
    one tile ``next_pow2(D)`` wide up to ``single_max``, else ``DH = prev_pow2(D)`` and ``DL = next_pow2(D − DH)``
    (1152 = 1024 + 128, 768 = 512 + 256: no padding for the DTS widths)."""
    if d <= single_max:
        return dict(DH=max(16, C.next_pow2(d)), DL=16, HAS_LO=False)
    dh = C.next_pow2(d) if C.next_pow2(d) == d else C.next_pow2(d) // 2
    rest = d - dh
    return dict(DH=dh, DL=max(16, C.next_pow2(rest)) if rest else 16, HAS_LO=rest > 0)


def _fwd_config(d: int, gpu: bool) -> dict:
    if gpu:
        if d <= 128:
            return dict(BM=64, BN=64, BD=max(16, C.next_pow2(d)), **_acc_split(d, 128), num_warps=4, num_stages=2)
        # the accumulator is BM·D float32 in registers: 16 rows × 1152 = 72 registers per thread over 8 warps
        return dict(BM=16, BN=16, BD=64, **_acc_split(d, 128), num_warps=8, num_stages=2)
    # interpreter: small blocks, so small test shapes still cover several blocks, chunks, both accumulator tiles
    # and masked tails
    return dict(BM=16, BN=16, BD=32, **_acc_split(d, 32))


def _config(d: int, gpu: bool) -> dict:
    """The backward's configuration (SINGLE: D in one chunk, else float32 scratch accumulators)."""
    if gpu:
        if d <= 128:
            return dict(SINGLE=True, BM=64, BN=64, BD=max(16, C.next_pow2(d)), num_warps=8, num_stages=2)
        return dict(SINGLE=False, BM=64, BN=64, BD=32, num_warps=8, num_stages=2)
    # interpreter: small blocks, so small test shapes still cover several blocks, chunks and masked tails
    if d <= 32:
        return dict(SINGLE=True, BM=16, BN=16, BD=max(16, C.next_pow2(d)))
    return dict(SINGLE=False, BM=16, BN=16, BD=32)


def _launch_kw(cfg):
    return {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}


def _kernel_kw(cfg, *names):
    return {k: cfg[k] for k in names}


def _forward(q, k, v, scale, with_lse: bool):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, s, d = q.shape
    if scale is None:
        scale = d**-0.5
    cfg = _fwd_config(d, C.on_gpu(q))
    out = torch.empty_like(q)
    lse = torch.empty((b, s), dtype=torch.float32, device=q.device) if with_lse else out
    nmb = C.cdiv(s, cfg["BM"])
    _fa_fwd[(b * nmb,)](
        q, k, v, out, lse, s, d, nmb, float(scale) * LOG2E,
        Q_ONCE=not cfg["HAS_LO"] and cfg["BD"] >= d, STORE_LSE=with_lse, **C.dot_args(q.dtype),
        **_kernel_kw(cfg, "BM", "BN", "BD", "DH", "DL", "HAS_LO"), **_launch_kw(cfg),
    )
    return (out, lse) if with_lse else out


def forward(q, k, v, scale=None):
    return _forward(q, k, v, scale, False)


def forward_lse(q, k, v, scale=None):
    """``(out, lse)`` of ``frame_attention_fwd``: the forward kernel also stores each row's log-sum-exp."""
    return _forward(q, k, v, scale, True)


def backward_lse(grad_out, q, k, v, out, lse, scale=None):
    """``frame_attention_fwd_backward``: ``_fa_bwd_prep`` (Δ = rowsum(dO·O), the LSE in base 2), then the dK / dV
    and dQ kernels rebuild P from the saved LSE."""
    q, k, v, do, out = (t.contiguous() for t in (q, k, v, grad_out, out))
    b, s, d = q.shape
    if scale is None:
        scale = d**-0.5
    scale = float(scale)
    cfg = _config(d, C.on_gpu(q))
    kw = {**_kernel_kw(cfg, "BM", "BN", "BD"), **C.dot_args(q.dtype)}
    lw = _launch_kw(cfg)
    f32 = dict(dtype=torch.float32, device=q.device)
    lse2 = torch.empty((b, s), **f32)
    delta = torch.empty((b, s), **f32)
    br = 16 if C.on_gpu(q) else 8
    bd = min(128 if C.on_gpu(q) else 32, max(16, C.next_pow2(d)))
    _fa_bwd_prep[(C.cdiv(b * s, br),)](out, do, lse.contiguous(), lse2, delta, b * s, d, BR=br, BD=bd)
    nmb = C.cdiv(s, cfg["BM"])
    nnb = C.cdiv(s, cfg["BN"])
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    direct = cfg["SINGLE"] or q.dtype == torch.float32
    acck = dk if direct else torch.empty((b, s, d), **f32)
    accv = dv if direct else torch.empty((b, s, d), **f32)
    accq = dq if direct else torch.empty((b, s, d), **f32)
    _fa_bwd_dkdv[(b * nnb,)](
        q, k, v, do, lse2, delta, dk, dv, acck, accv, s, d, nnb, scale * LOG2E, scale,
        SINGLE=cfg["SINGLE"], **kw, **lw,
    )
    _fa_bwd_dq[(b * nmb,)](
        q, k, v, do, lse2, delta, dq, accq, s, d, nmb, scale * LOG2E, scale,
        SINGLE=cfg["SINGLE"], **kw, **lw,
    )
    return dq, dk, dv


def backward(grad_out, q, k, v, scale=None):
    """``frame_attention_backward`` (the inputs only): the forward with its LSE, then :func:`backward_lse`."""
    out, lse = forward_lse(q, k, v, scale)
    return backward_lse(grad_out, q, k, v, out, lse, scale)


def reasons(q, k, v, scale=None):
    r = C.common_reasons(q, k, v)
    if scale is not None and not math.isfinite(float(scale)):
        r.append("scale must be finite")
    return r


dispatch.register("frame_attention", "triton", forward=forward, backward=backward, reasons=reasons)
dispatch.register("frame_attention_fwd", "triton", forward=forward_lse, backward=backward_lse, reasons=reasons)
