import math

import torch

from ._common import compute_dtype


def min_max(raw: torch.Tensor, dim) -> torch.Tensor:
    """Min-max normalise ``raw`` to [0, 1] over ``dim``; a constant slice gives zeros (differentiable)."""
    lo = raw.amin(dim=dim, keepdim=True)
    hi = raw.amax(dim=dim, keepdim=True)
    rng = hi - lo
    ok = rng > 0
    return torch.where(ok, (raw - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(raw))


def min_max_backward(grad: torch.Tensor, raw: torch.Tensor, dim) -> torch.Tensor:
    """Gradient of :func:`min_max` w.r.t. ``raw`` (the min/max gradient is shared equally among ties, as
    autograd's ``amin``/``amax`` do; a constant slice gets zero gradient)."""
    lo = raw.amin(dim=dim, keepdim=True)
    hi = raw.amax(dim=dim, keepdim=True)
    rng = hi - lo
    ok = rng > 0
    den = torch.where(ok, rng, torch.ones_like(rng))
    s = (raw - lo) / den
    d_lo = (grad * (s - 1)).sum(dim=dim, keepdim=True) / den
    d_hi = -(grad * s).sum(dim=dim, keepdim=True) / den
    is_lo = (raw == lo).to(raw.dtype)
    is_hi = (raw == hi).to(raw.dtype)
    g = grad / den + is_lo * d_lo / is_lo.sum(dim=dim, keepdim=True) + is_hi * d_hi / is_hi.sum(dim=dim, keepdim=True)
    return torch.where(ok, g, torch.zeros_like(g))


def _sgm_raw(xf, tq, sq):
    st = torch.einsum("gtnc,gtnc,c->gtn", xf[:, 1:], xf[:, :-1], tq)
    st = torch.cat([torch.zeros_like(st[:, :1]), st], dim=1) if xf.shape[1] > 1 else torch.zeros_like(xf[..., 0])
    m = xf.mean(dim=2)
    return st + torch.einsum("gtnc,gtc,c->gtn", xf, m, sq), m


def sgm_scores_backward(grad_scores, x, temp_query, spatial_query):
    """Explicit gradient of :func:`sgm_scores`: ``(dx, dtemp_query, dspatial_query)`` in the input dtypes."""
    ct = compute_dtype(x)
    xf = x.to(ct)
    tq = temp_query.to(ct).sum(0)
    sq = spatial_query.to(ct).mean(0)
    raw, m = _sgm_raw(xf, tq, sq)
    graw = min_max_backward(grad_scores.to(ct), raw, dim=(1, 2))  # [G, T, S]
    dx = torch.zeros_like(xf)
    dtq = torch.zeros_like(tq)
    if x.shape[1] > 1:
        gst = graw[:, 1:, :, None]  # st[t] = Σ_c x_t x_{t-1} tq
        dx[:, 1:] += gst * xf[:, :-1] * tq
        dx[:, :-1] += gst * xf[:, 1:] * tq
        dtq = torch.einsum("gtn,gtnc,gtnc->c", graw[:, 1:], xf[:, 1:], xf[:, :-1])
    # ss[t, n] = Σ_c x[t, n, c] m[t, c] sq[c], m[t] = mean_n x[t, n]
    dx += graw[..., None] * m[:, :, None, :] * sq
    dm = torch.einsum("gtn,gtnc->gtc", graw, xf) * sq
    dx += dm[:, :, None, :] / x.shape[2]
    dsq = torch.einsum("gtn,gtnc,gtc->c", graw, xf, m)
    dtq_full = dtq.expand(temp_query.shape[0], -1)
    dsq_full = (dsq / spatial_query.shape[0]).expand(spatial_query.shape[0], -1)
    return dx.to(x.dtype), dtq_full.to(temp_query.dtype).contiguous(), dsq_full.to(spatial_query.dtype).contiguous()


def sgm_scores(x, temp_query, spatial_query) -> torch.Tensor:
    """Semantic-Guided Masking scores (OPS.md op 4). x ``[G, T, S, C]`` → float32 ``[G, T, S]`` in [0, 1]."""
    ct = compute_dtype(x)
    xf = x.to(ct)
    tq = temp_query.to(ct).sum(0)  # Σ_q temp_query[q, c]
    sq = spatial_query.to(ct).mean(0)  # mean_q spatial_query[q, c]
    raw, _ = _sgm_raw(xf, tq, sq)
    scores = min_max(raw, dim=(1, 2))
    return scores.to(torch.float64 if ct == torch.float64 else torch.float32)


def mask_counts(num_tokens: int, mask_ratio: float, pool: float) -> tuple[int, int]:
    """``(ceil(pool·S), round_half_up(mask_ratio·S))``: candidate-pool size and masked count per frame."""
    n_pool = min(num_tokens, math.ceil(pool * num_tokens - 1e-9))
    n_mask = min(n_pool, int(math.floor(mask_ratio * num_tokens + 0.5)))
    return n_pool, n_mask


def sgm_mask(scores, mask_ratio: float, pool: float = 0.75, generator=None) -> torch.Tensor:
    """Semantic-Guided Masking (OPS.md op 5). scores ``[G, T, S]`` → bool ``[G, T, S]`` (True = masked).

    Candidates are the ``ceil(pool·S)`` lowest scores of each frame (stable sort: ties → lower index); the
    masked subset is the ``round(mask_ratio·S)`` candidates with the smallest uniform noise drawn from
    ``generator`` — a uniformly random subset without replacement.
    """
    g, t, s = scores.shape
    n_pool, n_mask = mask_counts(s, mask_ratio, pool)
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :n_pool]
    noise = torch.rand((g, t, n_pool), generator=generator, device=scores.device)
    pick = torch.sort(noise, dim=-1, stable=True).indices[..., :n_mask]
    chosen = torch.gather(order, -1, pick)
    mask = torch.zeros((g, t, s), dtype=torch.bool, device=scores.device)
    return mask.scatter(-1, chosen, True)
