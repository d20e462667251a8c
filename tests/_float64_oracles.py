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


# ------------------------------------------------------------------ DTS blocks (SPEC §2; the fused ops' oracles)
def group_norm_cl(x, weight, bias, num_groups: int, eps: float, per_position: bool):
    """GroupNorm of channels-last ``x [G, T, H, W, C]``, group by group: statistics over (C/num_groups, T, H, W)
    of each sample, or (``per_position``) over (C/num_groups, T) of each position (g, h, w). float64."""
    x = x.to(F64)
    c = x.shape[-1]
    cg = c // num_groups
    dims = (1, 4) if per_position else (1, 2, 3, 4)
    parts = []
    for gi in range(num_groups):
        xs = x[..., gi * cg : (gi + 1) * cg]
        mu = xs.mean(dim=dims, keepdim=True)
        var = ((xs - mu) ** 2).mean(dim=dims, keepdim=True)
        parts.append((xs - mu) / torch.sqrt(var + eps))
    return torch.cat(parts, dim=-1) * weight.to(F64) + bias.to(F64)


def _proj(x, weight, bias):
    """A 1×1 conv on channels-last x: ``Σ_c x[..., c]·weight[o, c] + bias[o]``."""
    return torch.einsum("...c,oc->...o", x, weight.to(F64)) + bias.to(F64)


def dts_spatial_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, proj_weight, proj_bias, num_groups, eps):
    """SPEC §2 SpatialAttn on ``[G, T, H, W, C]``: per-sample GroupNorm, q/k/v = the three C-row blocks of the
    projection, softmax attention over each frame's H·W tokens, ``x + proj_out``. float64."""
    x = x.to(F64)
    g, t, hh, ww, c = x.shape
    h = group_norm_cl(x, norm_weight, norm_bias, num_groups, eps, per_position=False)
    q, k, v = (_proj(h, qkv_weight[j * c : (j + 1) * c], qkv_bias[j * c : (j + 1) * c]).reshape(g * t, hh * ww, c)
               for j in range(3))
    a = frame_attention(q, k, v).reshape(g, t, hh, ww, c)
    return x + _proj(a, proj_weight, proj_bias)


def dts_temporal_block(x, norm_weight, norm_bias, qkv_weight, qkv_bias, rel_k, rel_v, proj_weight, proj_bias,
                       num_groups, eps, transposed_rel_k=False):
    """SPEC §2 TemporalAttn on ``[G, T, H, W, C]``: per-position GroupNorm over (C/groups, T), the qkv projection,
    :func:`temporal_attention` over the T frames of each position, ``x + proj_out``. float64."""
    x = x.to(F64)
    g, t, hh, ww, c = x.shape
    h = group_norm_cl(x, norm_weight, norm_bias, num_groups, eps, per_position=True)
    seq = [_proj(h, qkv_weight[j * c : (j + 1) * c], qkv_bias[j * c : (j + 1) * c]) for j in range(3)]
    q, k, v = (z.permute(0, 2, 3, 1, 4).reshape(g * hh * ww, t, c) for z in seq)  # one length-T row per position
    a = temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k)
    a = a.reshape(g, hh, ww, t, c).permute(0, 3, 1, 2, 4)
    return x + _proj(a, proj_weight, proj_bias)


def dts_encoder(x, sd: dict, num_groups: int, eps: float, transposed_rel_k: bool):
    """The DTS encoder (SPEC §2) from a state dict with the released names (no ``model.sae.`` prefix):
    ``x [G, T, H, W, C]`` + ``temporal_encoding``, then (SpatialAttn, TemporalAttn, merge conv) per stage
    ``encoder.{3s, 3s+1, 3s+2}`` until one frame is left; returns ``[G, H·W, C]`` float64."""
    x = x.to(F64) + sd["temporal_encoding"].to(F64)[None, :, None, None, :]
    c = x.shape[-1]
    s = 0
    while x.shape[1] > 1:
        p = f"encoder.{3 * s}."
        qkv_w = torch.cat([sd[p + f"{m}.weight"].reshape(c, c) for m in ("q", "k", "v")])
        qkv_b = torch.cat([sd[p + f"{m}.bias"] for m in ("q", "k", "v")])
        x = dts_spatial_block(x, sd[p + "norm.weight"], sd[p + "norm.bias"], qkv_w, qkv_b,
                              sd[p + "proj_out.weight"].reshape(c, c), sd[p + "proj_out.bias"], num_groups, eps)
        p = f"encoder.{3 * s + 1}."
        x = dts_temporal_block(x, sd[p + "norm.weight"], sd[p + "norm.bias"], sd[p + "qkv.weight"].reshape(3 * c, c),
                               sd[p + "qkv.bias"], sd[p + "relative_position_k.embeddings_table"],
                               sd[p + "relative_position_v.embeddings_table"], sd[p + "proj_out.weight"].reshape(c, c),
                               sd[p + "proj_out.bias"], num_groups, eps, transposed_rel_k)
        p = f"encoder.{3 * s + 2}."
        x = temporal_merge_conv3d(x, sd[p + "conv.weight"], sd[p + "conv.bias"], 2)
        s += 1
    g, t, hh, ww, c = x.shape
    return x.reshape(g, t * hh * ww, c)
