"""Triton ``temporal_attention``: attention over T ≤ 64 frames per position, with relative-position tables.

One program per position n holds the whole [T, T] problem in registers (T padded to TP ≥ 16 for
``tl.dot``), D tiled in chunks of BD. The relative terms use the window of the 2T−1 table rows that can
occur, ``win[e] = table[clamp(e − (T−1), −R, R) + R]``: ``A = q · winᵀ`` is a [T, 2T−1] product, and the
[T, T] term ``A[i, j − i + T − 1]`` is taken out with ``tl.gather`` (likewise ``Pg[i, e] = P[i, i + e − T + 1]``
turns ``Σ_j p_ij rel_v[r(i, j)]`` into ``Pg · win_v``).

Kernels: ``_ta_fwd`` (forward), ``_ta_bwd`` (per position: recompute P, dP; dq, dk, dv; saves P and
dW = P∘(dP − rowsum(P∘dP)) to a float32 scratch [N, T, T]), ``_ta_bwd_rel`` (drel_k, drel_v: each program
reduces a group of positions for one D-chunk into a per-group partial [2T−1, BD] in registers, no atomics;
torch sums the partials over groups and folds the 2T−1 window rows onto the 2R+1 table rows — deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch

from . import _common as C
from . import _shared as SH

LOG2E = tl.constexpr(1.4426950408889634)  # a constexpr: compiled kernels may read no other globals
MAX_T = 64


@triton.jit
def _ta_gather_diag(x, T, TP: tl.constexpr, EP: tl.constexpr):
    """[TP, TP] from [TP, EP]: out[a, b] = x[a, b − a + T − 1]."""
    ti = tl.arange(0, TP)
    idx = ti[None, :] - ti[:, None] + T - 1
    idx = tl.minimum(tl.maximum(idx, 0), EP - 1)
    return tl.gather(x, idx, 1)


@triton.jit
def _ta_gather_win(x, T, TP: tl.constexpr, EP: tl.constexpr):
    """[TP, EP] from [TP, TP]: out[i, e] = x[i, i + e − T + 1] (0 where that column is outside [0, T))."""
    ti = tl.arange(0, TP)
    ei = tl.arange(0, EP)
    pj = ti[:, None] + ei[None, :] - (T - 1)
    ok = (pj >= 0) & (pj < T) & (ti < T)[:, None]
    g = tl.gather(x, tl.minimum(tl.maximum(pj, 0), TP - 1), 1)
    return tl.where(ok, g, 0.0)


@triton.jit
def _ta_products(X, Y, RY, base, ti, mt, rrow, me, D, TP: tl.constexpr, EP: tl.constexpr, BD: tl.constexpr,
                 IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    """``(X Yᵀ [TP, TP], X winᵀ [TP, EP])`` of one position over D in chunks of BD, win = the window rows
    ``rrow`` of the table RY: the logits' products (X, Y, RY = q, k, rel_k) or the backward's (dO, v, rel_v)."""
    offs_d = tl.arange(0, BD)
    xy = tl.zeros([TP, TP], tl.float32)
    xw = tl.zeros([TP, EP], tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + offs_d
        x = SH.load_tile(X, base, ti, mt, dd, D, D)
        y = SH.load_tile(Y, base, ti, mt, dd, D, D)
        ry = SH.load_tile(RY, 0, rrow, me, dd, D, D)
        xy = SH.mma(x, tl.trans(y), xy, IN_T, DOT_T, PREC)
        xw = SH.mma(x, tl.trans(ry), xw, IN_T, DOT_T, PREC)
    return xy, xw


@triton.jit
def _ta_probs(sqk, a, mt, T, s1, s2, TRANSPOSED: tl.constexpr, TP: tl.constexpr, EP: tl.constexpr):
    """Softmax over j of ``w[i, j] = s2·(q_i·k_j) + s1·(q_i·rel_k[r(i, j)])`` (or the transposed relative term),
    zero outside the T × T block."""
    g = _ta_gather_diag(a, T, TP, EP)
    if TRANSPOSED:
        g = tl.trans(g)
    w = (sqk * s2 + g * s1) * LOG2E
    w = tl.where(mt[None, :], w, float("-inf"))
    p = tl.exp2(w - tl.max(w, 1)[:, None])
    p = p / tl.sum(p, 1)[:, None]
    return tl.where(mt[:, None] & mt[None, :], p, 0.0)


@triton.jit
def _ta_fwd(Q, K, V, RK, RV, O, T, D, R, s1, s2,
            TRANSPOSED: tl.constexpr, TP: tl.constexpr, EP: tl.constexpr, BD: tl.constexpr,
            IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0)
    base = n.to(tl.int64) * T * D
    ti = tl.arange(0, TP)
    mt = ti < T
    ei = tl.arange(0, EP)
    me = ei < 2 * T - 1
    rrow = tl.minimum(tl.maximum(ei - (T - 1), -R), R) + R
    offs_d = tl.arange(0, BD)
    sqk, a = _ta_products(Q, K, RK, base, ti, mt, rrow, me, D, TP, EP, BD, IN_T, DOT_T, PREC)
    p = _ta_probs(sqk, a, mt, T, s1, s2, TRANSPOSED, TP, EP)
    pg = _ta_gather_win(p, T, TP, EP)
    for d0 in range(0, D, BD):
        dd = d0 + offs_d
        v = SH.load_tile(V, base, ti, mt, dd, D, D)
        rv = SH.load_tile(RV, 0, rrow, me, dd, D, D)
        o = SH.mma(pg, rv, SH.mma(p, v, tl.zeros([TP, BD], tl.float32), IN_T, DOT_T, PREC), IN_T, DOT_T, PREC)
        SH.store_tile(O, base, ti, mt, dd, D, D, o)


@triton.jit
def _ta_bwd(Q, K, V, RK, RV, DO, DQ, DK, DV, PS, DWS, T, D, R, s1, s2,
            TRANSPOSED: tl.constexpr, TP: tl.constexpr, EP: tl.constexpr, BD: tl.constexpr,
            IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    n = tl.program_id(0)
    base = n.to(tl.int64) * T * D
    ti = tl.arange(0, TP)
    mt = ti < T
    ei = tl.arange(0, EP)
    me = ei < 2 * T - 1
    rrow = tl.minimum(tl.maximum(ei - (T - 1), -R), R) + R
    offs_d = tl.arange(0, BD)
    sqk, a = _ta_products(Q, K, RK, base, ti, mt, rrow, me, D, TP, EP, BD, IN_T, DOT_T, PREC)
    dpv, bv = _ta_products(DO, V, RV, base, ti, mt, rrow, me, D, TP, EP, BD, IN_T, DOT_T, PREC)
    p = _ta_probs(sqk, a, mt, T, s1, s2, TRANSPOSED, TP, EP)
    valid = mt[:, None] & mt[None, :]
    dp = dpv + _ta_gather_diag(bv, T, TP, EP)
    delta = tl.sum(p * dp, 1)
    dw = tl.where(valid, p * (dp - delta[:, None]), 0.0)
    soff = n.to(tl.int64) * T * T + ti[:, None] * T + ti[None, :]
    tl.store(PS + soff, p, mask=valid)
    tl.store(DWS + soff, dw, mask=valid)
    if TRANSPOSED:
        xg = _ta_gather_win(tl.trans(dw), T, TP, EP)
    else:
        xg = _ta_gather_win(dw, T, TP, EP)
    dwt = tl.trans(dw)
    pt = tl.trans(p)
    for d0 in range(0, D, BD):
        dd = d0 + offs_d
        q = SH.load_tile(Q, base, ti, mt, dd, D, D)
        k = SH.load_tile(K, base, ti, mt, dd, D, D)
        do = SH.load_tile(DO, base, ti, mt, dd, D, D)
        rk = SH.load_tile(RK, 0, rrow, me, dd, D, D)
        zero = tl.zeros([TP, BD], tl.float32)
        dq = SH.mma(dw, k, zero, IN_T, DOT_T, PREC) * s2 + SH.mma(xg, rk, zero, IN_T, DOT_T, PREC) * s1
        dk = SH.mma(dwt, q, zero, IN_T, DOT_T, PREC) * s2
        dv = SH.mma(pt, do, zero, IN_T, DOT_T, PREC)
        SH.store_tile(DQ, base, ti, mt, dd, D, D, dq)
        SH.store_tile(DK, base, ti, mt, dd, D, D, dk)
        SH.store_tile(DV, base, ti, mt, dd, D, D, dv)


@triton.jit
def _ta_bwd_rel(Q, DO, PS, DWS, PRK, PRV, N, T, D, per_group, s1,
                TRANSPOSED: tl.constexpr, TP: tl.constexpr, EP: tl.constexpr, BD: tl.constexpr,
                IN_T: tl.constexpr, DOT_T: tl.constexpr, PREC: tl.constexpr):
    db = tl.program_id(0)
    grp = tl.program_id(1)
    dd = db * BD + tl.arange(0, BD)
    md = dd < D
    ti = tl.arange(0, TP)
    mt = ti < T
    ei = tl.arange(0, EP)
    me = ei < 2 * T - 1
    pj = ti[:, None] + ei[None, :] - (T - 1)
    pmask = (pj >= 0) & (pj < T) & me[None, :] & mt[:, None]
    acc_k = tl.zeros([EP, BD], tl.float32)
    acc_v = tl.zeros([EP, BD], tl.float32)
    n0 = grp.to(tl.int64) * per_group  # int64 loop bounds → int64 position offsets
    n1 = tl.minimum(n0 + per_group, N)
    for n in range(n0, n1):
        sb = n * T * T
        pg = tl.load(PS + sb + ti[:, None] * T + pj, mask=pmask, other=0.0)  # P[i, i+e-T+1]
        if TRANSPOSED:
            xg = tl.load(DWS + sb + pj * T + ti[:, None], mask=pmask, other=0.0)  # dW[j+e-T+1, j]
        else:
            xg = tl.load(DWS + sb + ti[:, None] * T + pj, mask=pmask, other=0.0)  # dW[i, i+e-T+1]
        q = SH.load_tile(Q, n * T * D, ti, mt, dd, D, D)
        do = SH.load_tile(DO, n * T * D, ti, mt, dd, D, D)
        acc_k = SH.mma(tl.trans(xg), q, acc_k, IN_T, DOT_T, PREC)
        acc_v = SH.mma(tl.trans(pg), do, acc_v, IN_T, DOT_T, PREC)
    E = 2 * T - 1
    poff = grp.to(tl.int64) * E * D + ei[:, None] * D + dd[None, :]
    pm = me[:, None] & md[None, :]
    tl.store(PRK + poff, acc_k * s1, mask=pm)
    tl.store(PRV + poff, acc_v, mask=pm)


def _config(t: int, d: int, gpu: bool) -> dict:
    tp = max(16, C.next_pow2(t))
    ep = max(16, C.next_pow2(2 * t - 1))
    if gpu:
        return dict(TP=tp, EP=ep, BD=64 if t <= 32 else 32, num_warps=4 if t <= 16 else 8)
    return dict(TP=tp, EP=ep, BD=16)


def _scales(d):
    s1 = d**-0.25
    return float(s1), float(s1 * s1)


def forward(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    q, k, v, rel_k, rel_v = (x.contiguous() for x in (q, k, v, rel_k, rel_v))
    n, t, d = q.shape
    r = (rel_k.shape[0] - 1) // 2
    cfg = _config(t, d, C.on_gpu(q))
    s1, s2 = _scales(d)
    out = torch.empty_like(q)
    _ta_fwd[(n,)](q, k, v, rel_k, rel_v, out, t, d, r, s1, s2, TRANSPOSED=bool(transposed_rel_k),
                  **C.dot_args(q.dtype), **cfg)
    return out


def backward(grad_out, q, k, v, rel_k, rel_v, transposed_rel_k=False):
    q, k, v, rel_k, rel_v, do = (x.contiguous() for x in (q, k, v, rel_k, rel_v, grad_out))
    n, t, d = q.shape
    r = (rel_k.shape[0] - 1) // 2
    gpu = C.on_gpu(q)
    cfg = _config(t, d, gpu)
    dargs = C.dot_args(q.dtype)
    s1, s2 = _scales(d)
    f32 = dict(dtype=torch.float32, device=q.device)
    ps = torch.empty((n, t, t), **f32)
    dws = torch.empty((n, t, t), **f32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    tr = bool(transposed_rel_k)
    _ta_bwd[(n,)](q, k, v, rel_k, rel_v, do, dq, dk, dv, ps, dws, t, d, r, s1, s2, TRANSPOSED=tr, **dargs, **cfg)
    e = 2 * t - 1
    # groups of positions reduced in registers by one program each; the partials are summed by torch
    groups = min(n, 4 * C.sm_count(q)) if gpu else min(n, 3)
    groups = max(1, min(groups, (64 << 20) // max(1, 8 * e * d)))  # partials ≤ 64 MiB
    per_group = C.cdiv(n, groups)
    groups = C.cdiv(n, per_group)
    prk = torch.empty((groups, e, d), **f32)
    prv = torch.empty((groups, e, d), **f32)
    _ta_bwd_rel[(C.cdiv(d, cfg["BD"]), groups)](q, do, ps, dws, prk, prv, n, t, d, per_group, s1, TRANSPOSED=tr,
                                                **dargs, **cfg)
    rows = (torch.arange(e, device=q.device) - (t - 1)).clamp(-r, r) + r
    nb = rel_k.shape[0]
    drk = torch.zeros((nb, d), **f32).index_add_(0, rows, prk.sum(0))
    drv = torch.zeros((nb, d), **f32).index_add_(0, rows, prv.sum(0))
    return dq, dk, dv, drk.to(rel_k.dtype), drv.to(rel_v.dtype)


def reasons(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    r = C.common_reasons(q, k, v, rel_k, rel_v)
    if q.dim() == 3 and q.shape[1] > MAX_T:
        r.append(f"triton temporal_attention supports T <= {MAX_T} frames, got T = {q.shape[1]}")
    return r


dispatch.register("temporal_attention", "triton", forward=forward, backward=backward, reasons=reasons)
