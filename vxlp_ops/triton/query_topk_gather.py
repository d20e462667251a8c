"""Triton ``query_topk_gather``: scoring, min-max, top-k (torch.sort), gather + score injection; backward.

Forward: ``_mean_mid`` (qm[b] = mean_l query[b, l]), ``_qtg_raw`` (raw[b, n] = visual[b, n]·qm[b]),
``_minmax_rows`` (scores), then the top-k selection with ``torch.sort(stable=True)`` exactly as the reference
(k highest, ties → lower index, then sorted ascending), then ``_qtg_gather`` (selected = visual[idx]
(+ score[idx] over D)).
Backward: kernels recompute qm and raw; ``_rowsum`` gives Σ_d grad_selected (the injected-score gradient);
scattering it onto [B, N], the inverse index map and the min-max gradient (the reference's) are torch ops on [B, N] / [B, k];
``_qtg_dvisual`` writes dvisual = draw ⊗ qm + grad_selected scattered back; ``_qtg_dquery`` reduces
Σ_n draw·visual and writes dquery[b, l] = that / L.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vxlp_ops import dispatch
from vxlp_ops.reference.sgm import min_max_backward

from . import _common as C
from . import _shared as SH


@triton.jit
def _qtg_raw(VIS, QM, RAW, N, D, BN: tl.constexpr, BD: tl.constexpr):
    b = tl.program_id(0)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    mn = offs_n < N
    base = b.to(tl.int64) * N * D
    acc = tl.zeros([BN], tl.float32)
    for d0 in range(0, D, BD):
        offs_d = d0 + tl.arange(0, BD)
        md = offs_d < D
        v = tl.load(VIS + base + offs_n[:, None] * D + offs_d[None, :], mask=mn[:, None] & md[None, :],
                    other=0.0).to(tl.float32)
        q = tl.load(QM + b.to(tl.int64) * D + offs_d, mask=md, other=0.0)
        acc += tl.sum(v * q[None, :], 1)
    tl.store(RAW + b.to(tl.int64) * N + offs_n, acc, mask=mn)


@triton.jit
def _qtg_gather(VIS, SC, IDX, SEL, N, K, D, INJECT: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    b = tl.program_id(0)
    offs_k = tl.program_id(1) * BK + tl.arange(0, BK)
    mk = offs_k < K
    offs_d = tl.program_id(2) * BD + tl.arange(0, BD)
    md = offs_d < D
    idx = tl.load(IDX + b.to(tl.int64) * K + offs_k, mask=mk, other=0)
    m2 = mk[:, None] & md[None, :]
    v = tl.load(VIS + b.to(tl.int64) * N * D + idx[:, None] * D + offs_d[None, :], mask=m2, other=0.0)
    if INJECT:
        s = tl.load(SC + b.to(tl.int64) * N + idx, mask=mk, other=0.0)
        out = (v.to(tl.float32) + s[:, None]).to(SEL.dtype.element_ty)
    else:
        out = v
    tl.store(SEL + b.to(tl.int64) * K * D + offs_k[:, None] * D + offs_d[None, :], out, mask=m2)


@triton.jit
def _qtg_dvisual(DRAW, QM, GSEL, INV, DV, N, K, D, BN: tl.constexpr, BD: tl.constexpr):
    b = tl.program_id(0)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    mn = offs_n < N
    offs_d = tl.program_id(2) * BD + tl.arange(0, BD)
    md = offs_d < D
    m2 = mn[:, None] & md[None, :]
    dr = tl.load(DRAW + b.to(tl.int64) * N + offs_n, mask=mn, other=0.0)
    q = tl.load(QM + b.to(tl.int64) * D + offs_d, mask=md, other=0.0)
    inv = tl.load(INV + b.to(tl.int64) * N + offs_n, mask=mn, other=-1)
    sel = inv >= 0
    gs = tl.load(GSEL + b.to(tl.int64) * K * D + tl.maximum(inv, 0)[:, None] * D + offs_d[None, :],
                 mask=m2 & sel[:, None], other=0.0).to(tl.float32)
    dv = dr[:, None] * q[None, :] + gs
    tl.store(DV + b.to(tl.int64) * N * D + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=m2)


@triton.jit
def _qtg_dquery(VIS, DRAW, DQ, N, L, D, inv_l, BN: tl.constexpr, BD: tl.constexpr):
    b = tl.program_id(0)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = offs_d < D
    acc = tl.zeros([BD], tl.float32)
    for n0 in range(0, N, BN):
        offs_n = n0 + tl.arange(0, BN)
        mn = offs_n < N
        v = tl.load(VIS + b.to(tl.int64) * N * D + offs_n[:, None] * D + offs_d[None, :],
                    mask=mn[:, None] & md[None, :], other=0.0).to(tl.float32)
        dr = tl.load(DRAW + b.to(tl.int64) * N + offs_n, mask=mn, other=0.0)
        acc += tl.sum(dr[:, None] * v, 0)
    out = (acc * inv_l).to(DQ.dtype.element_ty)
    for li in range(0, L):
        tl.store(DQ + (b.to(tl.int64) * L + li) * D + offs_d, out, mask=md)


def _blocks(gpu: bool):
    return (64, 128) if gpu else (16, 32)  # (rows, channels)


def _scores(visual, query):
    """→ (raw float32 [B, N], qm float32 [B, D])."""
    b, n, d = visual.shape
    bn, bd = _blocks(C.on_gpu(visual))
    qm = SH.mean_mid(query)
    raw = torch.empty((b, n), dtype=torch.float32, device=visual.device)
    _qtg_raw[(b, C.cdiv(n, bn))](visual, qm, raw, n, d, BN=bn, BD=bd)
    return raw, qm


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores per row (ties → lower index), sorted ascending — torch.sort, as the reference."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=-1).values


def forward(visual, query, k, inject_scores=True):
    visual, query = visual.contiguous(), query.contiguous()
    b, n, d = visual.shape
    k = int(k)
    raw, _ = _scores(visual, query)
    scores = SH.minmax_rows(raw)
    indices = topk_indices(scores, k)
    selected = torch.empty((b, k, d), dtype=visual.dtype, device=visual.device)
    bn, bd = _blocks(C.on_gpu(visual))
    _qtg_gather[(b, C.cdiv(k, bn), C.cdiv(d, bd))](visual, scores, indices, selected, n, k, d,
                                                   INJECT=bool(inject_scores), BK=bn, BD=bd)
    return selected, indices, scores


def backward(grad_selected, grad_scores, visual, query, indices, inject_scores=True):
    visual, query = visual.contiguous(), query.contiguous()
    gsel = grad_selected.contiguous()
    indices = indices.contiguous()
    b, n, d = visual.shape
    l = query.shape[1]
    k = indices.shape[1]
    raw, qm = _scores(visual, query)
    dscores = grad_scores.float().clone()
    if inject_scores:
        dscores.scatter_add_(1, indices, SH.rowsum(gsel.view(b * k, d)).view(b, k))
    draw = min_max_backward(dscores, raw, dim=-1).contiguous()
    inv = torch.full((b, n), -1, dtype=torch.int32, device=visual.device)
    inv.scatter_(1, indices, torch.arange(k, dtype=torch.int32, device=visual.device).expand(b, k).contiguous())
    bn, bd = _blocks(C.on_gpu(visual))
    dvisual = torch.empty_like(visual)
    _qtg_dvisual[(b, C.cdiv(n, bn), C.cdiv(d, bd))](draw, qm, gsel, inv, dvisual, n, k, d, BN=bn, BD=bd)
    dquery = torch.empty_like(query)
    _qtg_dquery[(b, C.cdiv(d, bd))](visual, draw, dquery, n, l, d, 1.0 / l, BN=bn, BD=bd)
    return dvisual, dquery


def reasons(visual, query, k, inject_scores=True):
    return C.common_reasons(visual, query)


dispatch.register("query_topk_gather", "triton", forward=forward, backward=backward, reasons=reasons)
