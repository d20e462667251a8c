"""Triton ``frame_attention``: flash-attention forward and FlashAttention-2 backward with D tiled in chunks.

Forward (``_fa_fwd``): one program per (batch row, block of BM queries); online softmax over key blocks of
BN; ``q kᵀ`` accumulated over D-chunks of BD. When D fits one chunk (``SINGLE``) the [BM, D] output
accumulator lives in registers; otherwise (D up to 1152 and beyond, any D) it lives in a float32 scratch
tile of the program's own rows (the output itself for float32), read-rescaled-written per key block, with
``tl.debug_barrier()`` between key blocks (so no recomputation of ``q kᵀ`` per D-chunk).

Backward: ``_fa_bwd_stats`` recomputes the log-sum-exp and ``delta = rowsum(dO·O) = Σ_j p_ij·(dO_i·v_j)``
online (no forward output needed); ``_fa_bwd_dkdv`` (one program per key block: dK, dV) and ``_fa_bwd_dq``
(one program per query block) recompute P from the LSE, with the same register / scratch accumulators.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch

from . import _common as C

LOG2E = 1.4426950408889634


@triton.jit
def _fa_fwd(Q, K, V, O, ACC, S, D, n_mblocks, qk_scale,
            SINGLE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_mblocks
    mb = pid % n_mblocks
    base = b.to(tl.int64) * S * D
    offs_m = mb * BM + tl.arange(0, BM)
    mask_m = offs_m < S
    offs_nb = tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, BD], tl.float32)
    for start_n in range(0, S, BN):
        offs_n = start_n + offs_nb
        mask_n = offs_n < S
        s = tl.zeros([BM, BN], tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            md = dd < D
            q = tl.load(Q + base + offs_m[:, None] * D + dd[None, :], mask=mask_m[:, None] & md[None, :], other=0.0)
            k = tl.load(K + base + offs_n[:, None] * D + dd[None, :], mask=mask_n[:, None] & md[None, :], other=0.0)
            s += tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=PREC)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if SINGLE:
            md = offs_d < D
            v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=mask_n[:, None] & md[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=PREC)
        else:
            for d0 in range(0, D, BD):
                dd = d0 + offs_d
                md = dd < D
                v = tl.load(V + base + offs_n[:, None] * D + dd[None, :], mask=mask_n[:, None] & md[None, :], other=0.0)
                am = mask_m[:, None] & md[None, :]
                aptr = ACC + base + offs_m[:, None] * D + dd[None, :]
                a = tl.load(aptr, mask=am & (start_n > 0), other=0.0)
                a = a * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=PREC)
                tl.store(aptr, a, mask=am)
            tl.debug_barrier()
        m_i = m_new
    inv_l = 1.0 / l_i
    if SINGLE:
        md = offs_d < D
        tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], (acc * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=mask_m[:, None] & md[None, :])
    else:
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            am = mask_m[:, None] & (dd < D)[None, :]
            off = base + offs_m[:, None] * D + dd[None, :]
            a = tl.load(ACC + off, mask=am, other=0.0)
            tl.store(O + off, (a * inv_l[:, None]).to(O.dtype.element_ty), mask=am)


@triton.jit
def _fa_bwd_stats(Q, K, V, DO, LSE, DELTA, S, D, n_mblocks, qk_scale,
                  BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """LSE (log2 domain, of the scaled logits) and delta_i = Σ_j p_ij (dO_i·v_j), online over key blocks."""
    pid = tl.program_id(0)
    b = pid // n_mblocks
    mb = pid % n_mblocks
    base = b.to(tl.int64) * S * D
    offs_m = mb * BM + tl.arange(0, BM)
    mask_m = offs_m < S
    offs_nb = tl.arange(0, BN)
    offs_d = tl.arange(0, BD)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    d_i = tl.zeros([BM], tl.float32)
    for start_n in range(0, S, BN):
        offs_n = start_n + offs_nb
        mask_n = offs_n < S
        s = tl.zeros([BM, BN], tl.float32)
        dp = tl.zeros([BM, BN], tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            md = dd < D
            qm = mask_m[:, None] & md[None, :]
            km = mask_n[:, None] & md[None, :]
            q = tl.load(Q + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            do = tl.load(DO + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            k = tl.load(K + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            v = tl.load(V + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            s += tl.dot(q, tl.trans(k), input_precision=PREC)
            dp += tl.dot(do, tl.trans(v), input_precision=PREC)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        d_i = d_i * alpha + tl.sum(p * dp, 1)
        m_i = m_new
    tl.store(LSE + b * S + offs_m, m_i + tl.log2(l_i), mask=mask_m)
    tl.store(DELTA + b * S + offs_m, d_i / l_i, mask=mask_m)


@triton.jit
def _fa_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, ACCK, ACCV, S, D, n_nblocks, qk_scale, scale,
                 SINGLE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
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
    for start_m in range(0, S, BM):
        offs_m = start_m + offs_mb
        mask_m = offs_m < S
        s = tl.zeros([BM, BN], tl.float32)
        dp = tl.zeros([BM, BN], tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            md = dd < D
            qm = mask_m[:, None] & md[None, :]
            km = mask_n[:, None] & md[None, :]
            q = tl.load(Q + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            do = tl.load(DO + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            k = tl.load(K + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            v = tl.load(V + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            s += tl.dot(q, tl.trans(k), input_precision=PREC)
            dp += tl.dot(do, tl.trans(v), input_precision=PREC)
        lse = tl.load(LSE + b * S + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + b * S + offs_m, mask=mask_m, other=0.0)
        p = tl.exp2(s * qk_scale - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        pt = tl.trans(p)
        dst = tl.trans(ds)
        if SINGLE:
            qm = mask_m[:, None] & (offs_d < D)[None, :]
            q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=qm, other=0.0).to(tl.float32)
            do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=qm, other=0.0).to(tl.float32)
            dv_acc += tl.dot(pt, do, input_precision=PREC)
            dk_acc += tl.dot(dst, q, input_precision=PREC)
        else:
            for d0 in range(0, D, BD):
                dd = d0 + offs_d
                md = dd < D
                qm = mask_m[:, None] & md[None, :]
                q = tl.load(Q + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
                do = tl.load(DO + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
                am = mask_n[:, None] & md[None, :]
                off = base + offs_n[:, None] * D + dd[None, :]
                av = tl.load(ACCV + off, mask=am & (start_m > 0), other=0.0)
                tl.store(ACCV + off, av + tl.dot(pt, do, input_precision=PREC), mask=am)
                ak = tl.load(ACCK + off, mask=am & (start_m > 0), other=0.0)
                tl.store(ACCK + off, ak + tl.dot(dst, q, input_precision=PREC), mask=am)
            tl.debug_barrier()
    if SINGLE:
        am = mask_n[:, None] & (offs_d < D)[None, :]
        off = base + offs_n[:, None] * D + offs_d[None, :]
        tl.store(DK + off, (dk_acc * scale).to(DK.dtype.element_ty), mask=am)
        tl.store(DV + off, dv_acc.to(DV.dtype.element_ty), mask=am)
    else:
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            am = mask_n[:, None] & (dd < D)[None, :]
            off = base + offs_n[:, None] * D + dd[None, :]
            ak = tl.load(ACCK + off, mask=am, other=0.0)
            av = tl.load(ACCV + off, mask=am, other=0.0)
            tl.store(DK + off, (ak * scale).to(DK.dtype.element_ty), mask=am)
            tl.store(DV + off, av.to(DV.dtype.element_ty), mask=am)


@triton.jit
def _fa_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, ACCQ, S, D, n_mblocks, qk_scale, scale,
               SINGLE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
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
    for start_n in range(0, S, BN):
        offs_n = start_n + offs_nb
        mask_n = offs_n < S
        s = tl.zeros([BM, BN], tl.float32)
        dp = tl.zeros([BM, BN], tl.float32)
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            md = dd < D
            qm = mask_m[:, None] & md[None, :]
            km = mask_n[:, None] & md[None, :]
            q = tl.load(Q + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            do = tl.load(DO + base + offs_m[:, None] * D + dd[None, :], mask=qm, other=0.0).to(tl.float32)
            k = tl.load(K + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            v = tl.load(V + base + offs_n[:, None] * D + dd[None, :], mask=km, other=0.0).to(tl.float32)
            s += tl.dot(q, tl.trans(k), input_precision=PREC)
            dp += tl.dot(do, tl.trans(v), input_precision=PREC)
        p = tl.exp2(s * qk_scale - lse[:, None])
        p = tl.where(mask_m[:, None] & mask_n[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        if SINGLE:
            km = mask_n[:, None] & (offs_d < D)[None, :]
            k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=km, other=0.0).to(tl.float32)
            dq_acc += tl.dot(ds, k, input_precision=PREC)
        else:
            for d0 in range(0, D, BD):
                dd = d0 + offs_d
                md = dd < D
                k = tl.load(K + base + offs_n[:, None] * D + dd[None, :], mask=mask_n[:, None] & md[None, :],
                            other=0.0).to(tl.float32)
                am = mask_m[:, None] & md[None, :]
                off = base + offs_m[:, None] * D + dd[None, :]
                a = tl.load(ACCQ + off, mask=am & (start_n > 0), other=0.0)
                tl.store(ACCQ + off, a + tl.dot(ds, k, input_precision=PREC), mask=am)
            tl.debug_barrier()
    if SINGLE:
        am = mask_m[:, None] & (offs_d < D)[None, :]
        tl.store(DQ + base + offs_m[:, None] * D + offs_d[None, :], (dq_acc * scale).to(DQ.dtype.element_ty), mask=am)
    else:
        for d0 in range(0, D, BD):
            dd = d0 + offs_d
            am = mask_m[:, None] & (dd < D)[None, :]
            off = base + offs_m[:, None] * D + dd[None, :]
            a = tl.load(ACCQ + off, mask=am, other=0.0)
            tl.store(DQ + off, (a * scale).to(DQ.dtype.element_ty), mask=am)


def _config(d: int, gpu: bool) -> dict:
    if gpu:
        if d <= 128:
            return dict(SINGLE=True, BM=64, BN=64, BD=max(16, C.next_pow2(d)), num_warps=4, num_stages=2)
        return dict(SINGLE=False, BM=64, BN=64, BD=64, num_warps=4, num_stages=2)
    # interpreter: small blocks, so small test shapes still cover several blocks, chunks and masked tails
    if d <= 32:
        return dict(SINGLE=True, BM=16, BN=16, BD=max(16, C.next_pow2(d)))
    return dict(SINGLE=False, BM=16, BN=16, BD=32)


def _launch_kw(cfg):
    return {k: v for k, v in cfg.items() if k in ("num_warps", "num_stages")}


def _kernel_kw(cfg, *names):
    return {k: cfg[k] for k in names}


def forward(q, k, v, scale=None):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, s, d = q.shape
    if scale is None:
        scale = d**-0.5
    cfg = _config(d, C.on_gpu(q))
    out = torch.empty_like(q)
    if cfg["SINGLE"] or q.dtype == torch.float32:
        acc = out
    else:
        acc = torch.empty((b, s, d), dtype=torch.float32, device=q.device)
    nmb = C.cdiv(s, cfg["BM"])
    _fa_fwd[(b * nmb,)](
        q, k, v, out, acc, s, d, nmb, float(scale) * LOG2E,
        PREC=C.dot_precision(q.dtype), **_kernel_kw(cfg, "SINGLE", "BM", "BN", "BD"), **_launch_kw(cfg),
    )
    return out


def backward(grad_out, q, k, v, scale=None):
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous()
    b, s, d = q.shape
    if scale is None:
        scale = d**-0.5
    scale = float(scale)
    cfg = _config(d, C.on_gpu(q))
    prec = C.dot_precision(q.dtype)
    kw = _kernel_kw(cfg, "BM", "BN", "BD")
    lw = _launch_kw(cfg)
    f32 = dict(dtype=torch.float32, device=q.device)
    lse = torch.empty((b, s), **f32)
    delta = torch.empty((b, s), **f32)
    nmb = C.cdiv(s, cfg["BM"])
    nnb = C.cdiv(s, cfg["BN"])
    _fa_bwd_stats[(b * nmb,)](q, k, v, do, lse, delta, s, d, nmb, scale * LOG2E, PREC=prec, **kw, **lw)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    direct = cfg["SINGLE"] or q.dtype == torch.float32
    acck = dk if direct else torch.empty((b, s, d), **f32)
    accv = dv if direct else torch.empty((b, s, d), **f32)
    accq = dq if direct else torch.empty((b, s, d), **f32)
    _fa_bwd_dkdv[(b * nnb,)](
        q, k, v, do, lse, delta, dk, dv, acck, accv, s, d, nnb, scale * LOG2E, scale,
        SINGLE=cfg["SINGLE"], PREC=prec, **kw, **lw,
    )
    _fa_bwd_dq[(b * nmb,)](
        q, k, v, do, lse, delta, dq, accq, s, d, nmb, scale * LOG2E, scale,
        SINGLE=cfg["SINGLE"], PREC=prec, **kw, **lw,
    )
    return dq, dk, dv


def reasons(q, k, v, scale=None):
    r = C.common_reasons(q, k, v)
    if scale is not None and not math.isfinite(float(scale)):
        r.append("scale must be finite")
    return r


dispatch.register("frame_attention", "triton", forward=forward, backward=backward, reasons=reasons)
