import math

import torch

from ._vjp import compute_dtype


def min_max(raw: torch.Tensor, dim) -> torch.Tensor:
    """Min-max normalise ``raw`` to [0, 1] over ``dim``; a constant slice gives zeros (differentiable)."""
    lo = raw.amin(dim=dim, keepdim=True)
    hi = raw.amax(dim=dim, keepdim=True)
    rng = hi - lo
    ok = rng > 0
    return torch.where(ok, (raw - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(raw))


def sgm_scores(x, temp_query, spatial_query) -> torch.Tensor:
    """Semantic-Guided Masking scores (OPS.md op 4). x ``[G, T, S, C]`` → float32 ``[G, T, S]`` in [0, 1]."""
    ct = compute_dtype(x)
    xf = x.to(ct)
    tq = temp_query.to(ct).sum(0)  # Σ_q temp_query[q, c]
    sq = spatial_query.to(ct).mean(0)  # mean_q spatial_query[q, c]
    st = torch.einsum("gtnc,gtnc,c->gtn", xf[:, 1:], xf[:, :-1], tq)
    st = torch.cat([torch.zeros_like(st[:, :1]), st], dim=1) if x.shape[1] > 1 else torch.zeros_like(xf[..., 0])
    m = xf.mean(dim=2)  # [G, T, C]
    ss = torch.einsum("gtnc,gtc,c->gtn", xf, m, sq)
    scores = min_max(st + ss, dim=(1, 2))
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
