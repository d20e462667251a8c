"""Independent float64 oracles for the six vxlp_ops ops, written from shared/design/OPS.md.

Nothing here imports ``vxlp_ops``: each function re-derives its op from the contract with a formulation
different from ``vxlp_ops/reference`` (explicit loops over small dims, clamped index arithmetic instead of
F.pad + F.conv3d, a hand-written softmax and min-max, top-k by Python sorting). Every function upcasts its
tensor inputs to float64 and stays differentiable, so the tests also use them as gradient oracles.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

F64 = torch.float64


def _softmax_last(w: torch.Tensor) -> torch.Tensor:
    e = torch.exp(w - w.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def frame_attention(q, k, v, scale=None):
    """``softmax(q kᵀ · scale) v`` per batch row (OPS.md op 1), float64."""
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    d = q.shape[-1]
    sc = d**-0.5 if scale is None else float(scale)
    w = torch.einsum("bid,bjd->bij", q, k) * sc
    return torch.einsum("bij,bjd->bid", _softmax_last(w), v)


def rel_bucket(i: int, j: int, r: int) -> int:
    """``r(i, j) = clamp(j − i, −R, R) + R``."""
    return min(max(j - i, -r), r) + r


def temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    """OPS.md op 2 with explicit loops over the (i, j) frame pairs, float64."""
    q, k, v, rel_k, rel_v = (t.to(F64) for t in (q, k, v, rel_k, rel_v))
    n, t, d = q.shape
    r = (rel_k.shape[0] - 1) // 2
    s = d**-0.25
    qs, ks = q * s, k * s
    rows = []
    for i in range(t):
        cols = []
        for j in range(t):
            term = (qs[:, i] * ks[:, j]).sum(-1)
            if transposed_rel_k:
                term = term + (qs[:, j] * rel_k[rel_bucket(j, i, r)]).sum(-1)
            else:
                term = term + (qs[:, i] * rel_k[rel_bucket(i, j, r)]).sum(-1)
            cols.append(term)
        rows.append(torch.stack(cols, dim=-1))  # [N, T]
    w = torch.stack(rows, dim=1)  # [N, T(i), T(j)]
    p = _softmax_last(w)
    outs = []
    for i in range(t):
        acc = torch.zeros(n, d, dtype=F64)
        for j in range(t):
            acc = acc + p[:, i, j, None] * (v[:, j] + rel_v[rel_bucket(i, j, r)])
        outs.append(acc)
    return torch.stack(outs, dim=1)


def conv_out_frames(t: int, stride_t: int) -> int:
    return (t + 1 - 3) // stride_t + 1


def temporal_merge_conv3d(x, weight, bias=None, stride_t=2):
    """OPS.md op 3 by clamped index arithmetic (replicate padding T 1/0, H 1/1, W 1/1), float64."""
    x, weight = x.to(F64), weight.to(F64)
    g, t, h, w, _ = x.shape
    cout = weight.shape[0]
    t_out = conv_out_frames(t, stride_t)

    def clamp(i, hi):
        return min(max(i, 0), hi - 1)

    out = torch.zeros(g, t_out, h, w, cout, dtype=F64)
    for kt in range(3):
        # output frame o reads padded frame o*stride_t + kt, i.e. input frame o*stride_t + kt - 1 (front pad 1)
        ti = torch.tensor([clamp(o * stride_t + kt - 1, t) for o in range(t_out)])
        for kh in range(3):
            hi = torch.tensor([clamp(y + kh - 1, h) for y in range(h)])
            for kw in range(3):
                wi = torch.tensor([clamp(z + kw - 1, w) for z in range(w)])
                xs = x.index_select(1, ti).index_select(2, hi).index_select(3, wi)  # [G, T_out, H, W, Cin]
                out = out + torch.einsum("gthwc,oc->gthwo", xs, weight[:, :, kt, kh, kw])
    if bias is not None:
        out = out + bias.to(F64)
    return out


def minmax(raw: torch.Tensor) -> torch.Tensor:
    """Min-max of a 1-D tensor to [0, 1]; a constant tensor gives zeros."""
    lo, hi = raw.min(), raw.max()
    if float((hi - lo).detach()) == 0.0:
        return torch.zeros_like(raw)
    return (raw - lo) / (hi - lo)


def sgm_raw(x, temp_query, spatial_query):
    """``st + ss`` of OPS.md op 4, float64 ``[G, T, S]``."""
    x, tq, sq = x.to(F64), temp_query.to(F64), spatial_query.to(F64)
    g, t, s, c = x.shape
    frames = []
    for ti in range(t):
        if ti == 0:
            st = torch.zeros(g, s, dtype=F64)
        else:
            st = torch.einsum("gnc,gnc,qc->gn", x[:, ti], x[:, ti - 1], tq)
        m = x[:, ti].sum(dim=1) / s  # [G, C]
        ss = torch.einsum("gnc,gc,qc->gn", x[:, ti], m, sq) / sq.shape[0]
        frames.append(st + ss)
    return torch.stack(frames, dim=1)


def sgm_scores(x, temp_query, spatial_query):
    """OPS.md op 4: per-clip min-max of ``st + ss``, float64 ``[G, T, S]``."""
    raw = sgm_raw(x, temp_query, spatial_query)
    g = raw.shape[0]
    return torch.stack([minmax(raw[i].reshape(-1)).reshape(raw.shape[1:]) for i in range(g)])


def query_scores(visual, query):
    """OPS.md op 6 scores: per-row min-max of ``mean_l visual[b, n]·query[b, l]``, float64 ``[B, N]``."""
    visual, query = visual.to(F64), query.to(F64)
    raw = torch.einsum("bnd,bld->bn", visual, query) / query.shape[1]
    return torch.stack([minmax(raw[b]) for b in range(raw.shape[0])])


def topk_rule(scores_row, k: int) -> list[int]:
    """The k highest scores (ties → lower index), returned in ascending index order."""
    vals = [float(s) for s in scores_row]
    ranked = sorted(range(len(vals)), key=lambda n: (-vals[n], n))
    return sorted(ranked[:k])


def gather(visual, scores, indices, inject_scores):
    """``selected[b, i] = visual[b, indices[b, i]] (+ scores[b, indices[b, i]])``, float64."""
    visual = visual.to(F64)
    scores = scores.to(F64)
    rows = []
    for b in range(visual.shape[0]):
        sel = [visual[b, int(n)] + (scores[b, int(n)] if inject_scores else 0.0) for n in indices[b]]
        rows.append(torch.stack(sel))
    return torch.stack(rows)


def round_half_up(ratio: float, s: int) -> int:
    """``round_half_up(ratio·S)`` evaluated exactly on the decimal value of ``ratio``."""
    return math.floor(Fraction(repr(ratio)) * s + Fraction(1, 2))


def ceil_exact(pool: float, s: int) -> int:
    """``ceil(pool·S)`` evaluated exactly on the decimal value of ``pool``."""
    return math.ceil(Fraction(repr(pool)) * s)


def mask_candidates(scores_row, pool: float) -> list[int]:
    """Indices of the ``ceil(pool·S)`` lowest scores (ties → lower index)."""
    vals = [float(s) for s in scores_row]
    ranked = sorted(range(len(vals)), key=lambda n: (vals[n], n))
    return sorted(ranked[: ceil_exact(pool, len(vals))])


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out − ref|| / ||ref||`` in float64 (absolute error when ``ref`` is all zeros)."""
    out, ref = out.detach().to(F64), ref.detach().to(F64)
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num
