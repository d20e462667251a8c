import torch

from ._common import compute_dtype
from .sgm import min_max, min_max_backward


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest scores per row (ties → lower index), sorted ascending. int64 ``[B, k]``."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=-1).values


def query_scores(visual, query) -> torch.Tensor:
    """``minmax_n(mean_l visual[b, n]·query[b, l])`` per row, float32 ``[B, N]`` (float64 for float64 inputs)."""
    ct = compute_dtype(visual)
    raw = torch.matmul(visual.to(ct), query.to(ct).mean(dim=1).unsqueeze(-1)).squeeze(-1)
    return min_max(raw, dim=-1)


def gather_selected(visual, scores, indices, inject_scores: bool) -> torch.Tensor:
    """``visual[b, indices[b, i]]`` (+ the token's score broadcast over D when ``inject_scores``)."""
    d = visual.shape[-1]
    sel = torch.gather(visual, 1, indices.unsqueeze(-1).expand(-1, -1, d))
    if inject_scores:
        sel = (sel.to(scores.dtype) + torch.gather(scores, 1, indices).unsqueeze(-1)).to(visual.dtype)
    return sel


def query_topk_gather(visual, query, k: int, inject_scores: bool = True):
    """Query-aware token selection (OPS.md op 6) → ``(selected [B, k, D], indices int64 [B, k], scores [B, N])``."""
    scores = query_scores(visual, query)
    indices = topk_indices(scores.detach(), k)
    return gather_selected(visual, scores, indices, inject_scores), indices, scores


def query_topk_gather_backward(grad_selected, grad_scores, visual, query, indices, inject_scores: bool = True):
    """Explicit gradient of :func:`query_topk_gather` through ``selected`` and ``scores``: ``(dvisual, dquery)``.

    ``dvisual`` gets ``grad_selected`` scattered to the kept rows plus ``graw[b, n]·mean_l query[b, l]``;
    ``dquery[b, l] = Σ_n graw[b, n] visual[b, n] / L``, where ``graw`` is the min-max backward of
    ``grad_scores`` (+ ``Σ_d grad_selected`` at the kept tokens when ``inject_scores``).
    """
    ct = compute_dtype(visual)
    vf, qm = visual.to(ct), query.to(ct).mean(dim=1)  # [B, N, D], [B, D]
    raw = torch.matmul(vf, qm.unsqueeze(-1)).squeeze(-1)
    gsel = grad_selected.to(ct)
    gs = grad_scores.to(ct).clone()
    if inject_scores:
        gs.scatter_add_(1, indices, gsel.sum(-1))
    graw = min_max_backward(gs, raw, dim=-1)
    dvisual = graw.unsqueeze(-1) * qm.unsqueeze(1)
    dvisual.scatter_add_(1, indices.unsqueeze(-1).expand(-1, -1, vf.shape[-1]), gsel)
    dquery = (torch.matmul(graw.unsqueeze(1), vf) / query.shape[1]).expand(-1, query.shape[1], -1)
    return dvisual.to(visual.dtype), dquery.to(query.dtype).contiguous()
