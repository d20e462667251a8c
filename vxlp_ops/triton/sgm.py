"""Triton ``sgm_scores`` (forward + backward) and ``sgm_mask``.

sgm_scores forward: ``_mean_mid`` (frame means m[g,t,:]), ``_sgm_raw`` (st + ss per token, one pass over
x[t] and x[t−1]), ``_minmax_rows`` (per-clip min-max over T·S). The query reductions Σ_q temp_query and
mean_q spatial_query ([Q, C] → [C]) are torch ops.
sgm_scores backward: kernels recompute m and raw; the min-max gradient on [G, T·S] is the reference's (torch ops);
``_sgm_colsums`` gives u[g,t,c] = Σ_n draw·x_t and v[g,t,c] = Σ_n draw·x_t·x_{t−1}; ``_sgm_dx`` writes dx;
dtemp_query / dspatial_query are reductions of v and u·m over [G, T, C] (torch ops).

sgm_mask: ``_sgm_mask`` — no sort. Per frame, a token's stable ascending rank is the number of tokens with a
smaller score (or equal score and lower index; NaN counted largest, as torch.sort does); the candidates are
ranks < n_pool; the p-th candidate (by rank) gets noise[g, t, p]; it is masked when fewer than n_mask
candidates have smaller noise (ties → lower p). This is exactly the reference's two stable sorts, so the same
noise (drawn with torch.rand exactly as the reference does) gives the same mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch
from vxlp_ops.reference.sgm import mask_counts, min_max_backward

from . import _common as C
from . import _shared as SH


@triton.jit
def _sgm_raw(X, MEAN, TQ, SQ, RAW, T, S, Cn, BS: tl.constexpr, BC: tl.constexpr):
    gt = tl.program_id(0)
    t = gt % T
    offs_s = tl.program_id(1) * BS + tl.arange(0, BS)
    ms = offs_s < S
    base = gt.to(tl.int64) * S * Cn
    has_prev = t > 0
    st = tl.zeros([BS], tl.float32)
    ss = tl.zeros([BS], tl.float32)
    for c0 in range(0, Cn, BC):
        offs_c = c0 + tl.arange(0, BC)
        mc = offs_c < Cn
        xm = ms[:, None] & mc[None, :]
        off = offs_s[:, None] * Cn + offs_c[None, :]
        x = tl.load(X + base + off, mask=xm, other=0.0).to(tl.float32)
        xp = tl.load(X + base - S * Cn + off, mask=xm & has_prev, other=0.0).to(tl.float32)
        m = tl.load(MEAN + gt.to(tl.int64) * Cn + offs_c, mask=mc, other=0.0)
        tq = tl.load(TQ + offs_c, mask=mc, other=0.0)
        sq = tl.load(SQ + offs_c, mask=mc, other=0.0)
        st += tl.sum(x * xp * tq[None, :], 1)
        ss += tl.sum(x * (m * sq)[None, :], 1)
    tl.store(RAW + gt.to(tl.int64) * S + offs_s, st + ss, mask=ms)


@triton.jit
def _sgm_colsums(X, DRAW, U, V, T, S, Cn, BS: tl.constexpr, BC: tl.constexpr):
    gt = tl.program_id(0)
    t = gt % T
    offs_c = tl.program_id(1) * BC + tl.arange(0, BC)
    mc = offs_c < Cn
    base = gt.to(tl.int64) * S * Cn
    has_prev = t > 0
    u = tl.zeros([BC], tl.float32)
    v = tl.zeros([BC], tl.float32)
    for s0 in range(0, S, BS):
        offs_s = s0 + tl.arange(0, BS)
        ms = offs_s < S
        xm = ms[:, None] & mc[None, :]
        off = offs_s[:, None] * Cn + offs_c[None, :]
        x = tl.load(X + base + off, mask=xm, other=0.0).to(tl.float32)
        xp = tl.load(X + base - S * Cn + off, mask=xm & has_prev, other=0.0).to(tl.float32)
        dr = tl.load(DRAW + gt.to(tl.int64) * S + offs_s, mask=ms, other=0.0)
        u += tl.sum(dr[:, None] * x, 0)
        v += tl.sum(dr[:, None] * x * xp, 0)
    tl.store(U + gt.to(tl.int64) * Cn + offs_c, u, mask=mc)
    tl.store(V + gt.to(tl.int64) * Cn + offs_c, v, mask=mc)


@triton.jit
def _sgm_dx(X, DRAW, MEAN, U, TQ, SQ, DX, T, S, Cn, inv_s, BS: tl.constexpr, BC: tl.constexpr):
    gt = tl.program_id(0)
    t = gt % T
    offs_s = tl.program_id(1) * BS + tl.arange(0, BS)
    ms = offs_s < S
    offs_c = tl.program_id(2) * BC + tl.arange(0, BC)
    mc = offs_c < Cn
    xm = ms[:, None] & mc[None, :]
    base = gt.to(tl.int64) * S * Cn
    off = offs_s[:, None] * Cn + offs_c[None, :]
    has_prev = t > 0
    has_next = t < T - 1
    xp = tl.load(X + base - S * Cn + off, mask=xm & has_prev, other=0.0).to(tl.float32)
    xn = tl.load(X + base + S * Cn + off, mask=xm & has_next, other=0.0).to(tl.float32)
    dr = tl.load(DRAW + gt.to(tl.int64) * S + offs_s, mask=ms, other=0.0)
    drn = tl.load(DRAW + gt.to(tl.int64) * S + S + offs_s, mask=ms & has_next, other=0.0)
    m = tl.load(MEAN + gt.to(tl.int64) * Cn + offs_c, mask=mc, other=0.0)
    u = tl.load(U + gt.to(tl.int64) * Cn + offs_c, mask=mc, other=0.0)
    tq = tl.load(TQ + offs_c, mask=mc, other=0.0)
    sq = tl.load(SQ + offs_c, mask=mc, other=0.0)
    dx = dr[:, None] * (xp * tq[None, :] + (m * sq)[None, :]) + drn[:, None] * xn * tq[None, :]
    dx += (u * sq * inv_s)[None, :]
    tl.store(DX + base + off, dx.to(DX.dtype.element_ty), mask=xm)


@triton.jit
def _sgm_mask(SC, NOISE, MASK, S, n_pool, n_mask, BS: tl.constexpr, BJ: tl.constexpr):
    gt = tl.program_id(0)
    offs_i = tl.program_id(1) * BS + tl.arange(0, BS)
    mi = offs_i < S
    base = gt.to(tl.int64) * S
    si = tl.load(SC + base + offs_i, mask=mi, other=0.0).to(tl.float32)
    nan_i = si != si
    rank = tl.zeros([BS], tl.int32)
    for j0 in range(0, S, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mj = offs_j < S
        sj = tl.load(SC + base + offs_j, mask=mj, other=0.0).to(tl.float32)
        nan_j = sj != sj
        lt = (sj[None, :] < si[:, None]) | (nan_i[:, None] & ~nan_j[None, :])
        eq = (sj[None, :] == si[:, None]) | (nan_i[:, None] & nan_j[None, :])
        before = (lt | (eq & (offs_j[None, :] < offs_i[:, None]))) & mj[None, :]
        rank += tl.sum(before.to(tl.int32), 1)
    cand = mi & (rank < n_pool)
    nbase = gt.to(tl.int64) * n_pool
    ni = tl.load(NOISE + nbase + rank, mask=cand, other=0.0)
    nrank = tl.zeros([BS], tl.int32)
    for p0 in range(0, n_pool, BJ):
        offs_p = p0 + tl.arange(0, BJ)
        mp = offs_p < n_pool
        npl = tl.load(NOISE + nbase + offs_p, mask=mp, other=0.0)
        before = (npl[None, :] < ni[:, None]) | ((npl[None, :] == ni[:, None]) & (offs_p[None, :] < rank[:, None]))
        nrank += tl.sum((before & mp[None, :]).to(tl.int32), 1)
    masked = cand & (nrank < n_mask)
    tl.store(MASK + base + offs_i, masked.to(tl.int8), mask=mi)


def _blocks(gpu: bool):
    return (32, 128) if gpu else (16, 32)  # (rows BS, channels BC)


def _raw(x, tq, sq):
    """x [G, T, S, C] contiguous, tq/sq float32 [C] → (raw float32 [G, T, S], m float32 [G, T, C])."""
    g, t, s, c = x.shape
    bs, bc = _blocks(C.on_gpu(x))
    m = SH.mean_mid(x.view(g * t, s, c))
    raw = torch.empty((g, t, s), dtype=torch.float32, device=x.device)
    _sgm_raw[(g * t, C.cdiv(s, bs))](x, m, tq, sq, raw, t, s, c, BS=bs, BC=bc)
    return raw, m.view(g, t, c)


def _queries(temp_query, spatial_query):
    return (temp_query.float().sum(0).contiguous(), spatial_query.float().mean(0).contiguous())


def scores_forward(x, temp_query, spatial_query):
    x = x.contiguous()
    g, t, s, _ = x.shape
    tq, sq = _queries(temp_query, spatial_query)
    raw, _ = _raw(x, tq, sq)
    return SH.minmax_rows(raw.view(g, t * s)).view(g, t, s)


def scores_backward(grad_scores, x, temp_query, spatial_query):
    x = x.contiguous()
    g, t, s, c = x.shape
    tq, sq = _queries(temp_query, spatial_query)
    raw, m = _raw(x, tq, sq)
    draw = min_max_backward(grad_scores.float().reshape(g, t * s), raw.view(g, t * s), dim=-1).contiguous()
    bs, bc = _blocks(C.on_gpu(x))
    f32 = dict(dtype=torch.float32, device=x.device)
    u = torch.empty((g, t, c), **f32)
    v = torch.empty((g, t, c), **f32)
    _sgm_colsums[(g * t, C.cdiv(c, bc))](x, draw, u, v, t, s, c, BS=bs, BC=bc)
    dx = torch.empty_like(x)
    _sgm_dx[(g * t, C.cdiv(s, bs), C.cdiv(c, bc))](x, draw, m, u, tq, sq, dx, t, s, c, 1.0 / s, BS=bs, BC=bc)
    dtq = v.sum((0, 1))  # ∂/∂(Σ_q temp_query) — the same for every q
    dsq = (u * m).sum((0, 1)) / spatial_query.shape[0]
    dtemp = dtq.unsqueeze(0).expand_as(temp_query).to(temp_query.dtype).contiguous()
    dspatial = dsq.unsqueeze(0).expand_as(spatial_query).to(spatial_query.dtype).contiguous()
    return dx, dtemp, dspatial


def mask_forward(scores, mask_ratio, pool=0.75, generator=None):
    g, t, s = scores.shape
    n_pool, n_mask = mask_counts(s, mask_ratio, pool)
    # the same draw as the reference (same generator state → same noise → same mask)
    noise = torch.rand((g, t, n_pool), generator=generator, device=scores.device)
    scores = scores.contiguous()
    out = torch.empty((g, t, s), dtype=torch.int8, device=scores.device)
    if out.numel() == 0:
        return out.view(torch.bool)
    gpu = C.on_gpu(scores)
    bs, bj = (64, 128) if gpu else (16, 32)
    _sgm_mask[(g * t, C.cdiv(s, bs))](scores, noise if n_pool > 0 else scores, out, s, n_pool, n_mask, BS=bs, BJ=bj)
    return out.view(torch.bool)


def scores_reasons(x, temp_query, spatial_query):
    return C.common_reasons(x, temp_query, spatial_query)


def mask_reasons(scores, mask_ratio, pool=0.75, generator=None):
    return C.common_reasons(scores)


dispatch.register("sgm_scores", "triton", forward=scores_forward, backward=scores_backward, reasons=scores_reasons)
dispatch.register("sgm_mask", "triton", forward=mask_forward, reasons=mask_reasons)
