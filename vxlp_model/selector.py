"""Query-aware Selector: keep the visual tokens most relevant to the question (paper §3.3; SPEC §4)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import vxlp_ops


class QueryAwareSelector(nn.Module):
    """Scores visual tokens against the question and keeps the top k, in temporal order.

    Text side: the question's input embeddings (no LLM forward) → ``text_proj`` (Linear(d, d)·GELU). Visual side:
    ``window_attn`` — each group's visual tokens attend over that group's time-text tokens (``selector_num_heads``
    heads); the result (plus a residual) is used only for scoring. Scores, top-k and the gather are
    :func:`vxlp_ops.query_topk_gather`; the kept *original* tokens get their score added to every channel (the
    released code's gradient path, since top-k is not differentiable). Time-text tokens are always kept.

    Modes (``config.selector_mode``): ``off`` keeps everything untouched; ``ratio`` keeps ``round(r·N)`` tokens,
    r ~ U[ratio_min, ratio_max] in training and the midpoint in eval mode; ``budget`` keeps all N if
    N ≤ ``selector_budget``, else the top ``selector_budget``. Eval mode is deterministic.
    """

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.mode = config.selector_mode
        self.budget = config.selector_budget
        self.ratio_min = config.selector_ratio_min
        self.ratio_max = config.selector_ratio_max
        self.text_proj = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.window_attn = nn.MultiheadAttention(d, config.selector_num_heads, batch_first=True)

    def keep_count(self, num_visual: int, generator: torch.Generator | None = None) -> int:
        """Number of visual tokens kept out of ``num_visual`` under the current mode (training or eval)."""
        if self.mode == "off":
            return num_visual
        if self.mode == "budget":
            return min(num_visual, self.budget)
        if self.training:
            u = torch.rand((), generator=generator).item()
            ratio = self.ratio_min + (self.ratio_max - self.ratio_min) * u
        else:
            ratio = 0.5 * (self.ratio_min + self.ratio_max)
        return max(1, min(num_visual, int(math.floor(ratio * num_visual + 0.5))))

    def forward(
        self,
        visual: torch.Tensor,
        time_embeds: torch.Tensor,
        query_embeds: torch.Tensor,
        generator: torch.Generator | None = None,
    ):
        """Select visual tokens for one sample.

        Args:
            visual: ``[G, P, d]`` visual tokens of G groups (P = 144 per group).
            time_embeds: ``[G, n_time, d]`` embeddings of each group's time-text tokens (n_time may be 0).
            query_embeds: ``[L_q, d]`` input embeddings of the question tokens (answer excluded), ``L_q ≥ 1``.
            generator: CPU generator for the keep ratio in training ``ratio`` mode.

        Returns:
            ``(keep bool [G·P], selected [K, d], scores float32 [G·P] or None)``: which visual tokens are kept (in
            temporal order), the kept tokens (score-injected unless mode is ``off``), and the scores.

        Raises:
            ValueError: ``query_embeds`` empty in a mode that needs a query, or mismatched shapes.
        """
        g, p, d = visual.shape
        n = g * p
        flat = visual.reshape(n, d)
        if self.mode == "off":
            return torch.ones(n, dtype=torch.bool, device=visual.device), flat, None
        if query_embeds.dim() != 2 or query_embeds.shape[0] == 0 or query_embeds.shape[1] != d:
            raise ValueError(f"query_embeds must have shape [L_q >= 1, {d}], got {tuple(query_embeds.shape)}")
        if time_embeds.dim() != 3 or time_embeds.shape[0] != g or time_embeds.shape[2] != d:
            raise ValueError(f"time_embeds must have shape [{g}, n_time, {d}], got {tuple(time_embeds.shape)}")
        k = self.keep_count(n, generator)
        # The scorer reads detached tokens: its gradients (score injection, relevance distillation) train the
        # selector's own parameters and never pull the visual or text representations towards the scorer.
        probe = visual.detach()
        if time_embeds.shape[1] > 0:
            te = time_embeds.detach().to(visual.dtype)
            attn, _ = self.window_attn(probe, te, te, need_weights=False)
            probe = probe + attn
        query = self.text_proj(query_embeds.detach().to(visual.dtype))
        _, idx, scores = vxlp_ops.query_topk_gather(probe.reshape(1, n, d), query[None], k, inject_scores=False)
        idx, scores = idx[0], scores[0]
        selected = flat.index_select(0, idx) + scores.index_select(0, idx).to(flat.dtype)[:, None]
        keep = torch.zeros(n, dtype=torch.bool, device=visual.device).index_fill(0, idx, True)
        return keep, selected, scores
