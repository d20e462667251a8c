"""Query-aware Selector: keep the visual tokens most relevant to the question (paper §3.3; SPEC §4; RELEASED.md §4).

One module, :class:`QueryAwareSelector`, with the implementation chosen by ``config.selector_impl`` (an
architecture setting: it decides which parameters exist):

- ``"vxlp"`` (our design): each group's visual tokens attend over that group's time-text tokens
  (``time_attn``, ``nn.MultiheadAttention``, with a residual); the query is the user's text only; the scorer
  reads detached tokens; no rotary embedding on the inputs.
- ``"released_v2"`` (Video-XL-Pro-3B as released): ``time_attn`` is the released WindowTimeToTokenAttention
  (values are the projected time rows, no residual); the query is every prompt token outside the video block;
  RoPE on the whole video block's embeddings, then the score is added to the visual rows.
- ``"released_v1"`` (the paper-era upload): the score is computed on the visual tokens themselves; RoPE on the
  visual tokens only.

The selection itself (scores, top-k, temporal order) is :func:`vxlp_ops.query_topk_gather`. The number of kept
tokens follows the mode (``off`` | ``ratio`` | ``budget``, call arguments with config defaults): see
:func:`keep_count`. Nothing is random: the keep ratio is an argument (the released code drew it from Python's
global RNG, also at inference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import vxlp_ops

ROPE_BASE = 1_000_000.0  # RELEASED.md §4: angle p · 1e6^(−2i/d)


def keep_count(num_visual: int, impl: str, mode: str, budget: int, keep_ratio: float) -> int:
    """Visual tokens kept out of ``num_visual`` (SPEC §4; RELEASED.md §4).

    - ``off``: all of them.
    - ``budget``: ``min(N, budget)``.
    - ``ratio``: ``int(N·r)`` (released implementations) or ``round(N·r)`` (``vxlp``).

    The released implementations then round down to a multiple of 16 (``k −= k mod 16``). Where that leaves
    nothing (N·r < 16) vxlp keeps ``min(N, 16)`` tokens instead of none: a documented difference from the released
    code, whose prompt would then hold no visual token at all. Always ``1 ≤ k ≤ N`` for ``N ≥ 1``.
    """
    if num_visual < 1:
        raise ValueError(f"num_visual must be >= 1, got {num_visual}")
    released = impl.startswith("released")
    if mode == "off":
        return num_visual
    if mode == "budget":
        k = min(num_visual, budget)
    elif released:
        k = int(num_visual * keep_ratio)
    else:
        k = int(math.floor(num_visual * keep_ratio + 0.5))
    if released:
        k -= k % 16
        if k <= 0:
            k = min(num_visual, 16)
    return max(1, min(num_visual, k))


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """The released rotary embedding on input embeddings (RELEASED.md §4).

    ``(x_2i, x_2i+1) → (x_2i cos θ − x_2i+1 sin θ, x_2i+1 cos θ + x_2i sin θ)`` with ``θ = p · base^(−2i/d)``.
    The angle table is float32 exactly as the released code builds it (``exp(2i · (−ln base / d))`` in float32,
    times the float32 position, sin/cos in float32). As in the released code (a half-precision tensor times the
    float32 table promotes), the rotation is computed in float32 (float64 for float64 inputs) and rounded to the
    dtype of ``x`` once.

    Args: x ``[L, d]`` (d even), positions int64 ``[L]``. Returns ``[L, d]`` in the dtype of x.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rope_interleaved needs an even width, got {d}")
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=x.device) * (-math.log(base) / d))
    ang = positions.to(device=x.device, dtype=torch.float32)[:, None] * div[None, :]
    ct = torch.promote_types(x.dtype, torch.float32)
    cos, sin = ang.cos().to(ct), ang.sin().to(ct)
    x0, x1 = x[..., 0::2].to(ct), x[..., 1::2].to(ct)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2).to(x.dtype)


class ReleasedTimeAttention(nn.Module):
    """The released WindowTimeToTokenAttention (RELEASED.md §4): ``q_proj``, ``k_proj``, ``out_proj`` (d → d).

    Per group g and head h: ``Q = q_proj(time rows of g)``, ``K = k_proj(visual rows of g)``,
    ``P = softmax over the time rows of (K Qᵀ / sqrt(d / heads))``, ``O = P·Q`` (the values are the projected time
    rows), ``Z = out_proj(concat_heads(O))`` — no residual. The released checkpoint also stores a ``v_proj`` that
    its forward never uses; vxlp does not build it (``vxlp convert`` lists it as dropped).
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, visual: torch.Tensor, time: torch.Tensor, time_mask: torch.Tensor) -> torch.Tensor:
        """visual ``[G, P, d]``, time ``[G, n, d]``, time_mask bool ``[G, n]`` (True = a real time row) → ``[G, P, d]``."""
        g, p, d = visual.shape
        h = self.num_heads
        q = self.q_proj(time).reshape(g, -1, h, d // h).transpose(1, 2)  # [G, h, n, dh]
        k = self.k_proj(visual).reshape(g, p, h, d // h).transpose(1, 2)  # [G, h, P, dh]
        w = torch.matmul(k, q.transpose(-1, -2)) / math.sqrt(d // h)  # [G, h, P, n]
        w = w.masked_fill(~time_mask[:, None, None, :], float("-inf"))
        prob = torch.softmax(w.float(), dim=-1).to(q.dtype)
        o = torch.matmul(prob, q).transpose(1, 2).reshape(g, p, d)
        return self.out_proj(o)


@dataclass
class Selection:
    """The selector's result for one sample's video block.

    ``block``: ``[L_b, d]`` rows to place in the LLM input (RoPE'd / score-injected where the implementation does
    so; untouched otherwise); ``keep``: bool ``[L_b]`` rows kept (time rows always, visual rows per the selection);
    ``scores``: float ``[N]`` score of every visual token (None when the selector is off or absent) — it carries the
    gradient to the selector's parameters in training; ``kept_visual``: int64 ``[K]`` indices of the kept visual
    tokens among the N, ascending.
    """

    block: torch.Tensor
    keep: torch.Tensor
    scores: torch.Tensor | None
    kept_visual: torch.Tensor


class QueryAwareSelector(nn.Module):
    """Scores the visual tokens of a video block against the text and keeps the top k in temporal order.

    Parameters by implementation: ``text_mlp`` (Linear(d, d)·GELU, all); ``time_attn`` (``vxlp``:
    ``nn.MultiheadAttention(d, heads)``; ``released_v2``: :class:`ReleasedTimeAttention`; ``released_v1``: none).
    """

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.impl = config.selector_impl
        if self.impl == "none":
            raise ValueError("selector_impl 'none' builds no selector")
        self.text_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU())
        if self.impl == "vxlp":
            self.time_attn = nn.MultiheadAttention(d, config.selector_num_heads, batch_first=True)
        elif self.impl == "released_v2":
            self.time_attn = ReleasedTimeAttention(d, config.selector_num_heads)

    def forward(
        self,
        block: torch.Tensor,
        is_visual: torch.Tensor,
        tokens_per_group: int,
        text: torch.Tensor,
        mode: str,
        budget: int,
        keep_ratio: float,
    ) -> Selection:
        """Select within one sample's video block.

        Args:
            block: ``[L_b, d]`` embeddings of the video block in prompt order: per group its time-text rows, then
                its ``tokens_per_group`` visual rows (already holding the visual tokens).
            is_visual: bool ``[L_b]``, True on visual rows (the N = G·P of them).
            tokens_per_group: P (144).
            text: ``[L_t, d]`` embeddings of the query text (``vxlp``: the user's text; released: every prompt
                token outside the video block, answer excluded), ``L_t ≥ 1`` unless mode is ``off``.
            mode, budget, keep_ratio: see :func:`keep_count`.

        Returns: :class:`Selection`.

        Raises:
            ValueError: no visual row, a visual count that is not a multiple of P, or an empty text query.
        """
        vis_pos = is_visual.nonzero().squeeze(-1)
        n = vis_pos.numel()
        if n == 0 or n % tokens_per_group:
            raise ValueError(f"the video block must hold a positive multiple of {tokens_per_group} visual rows, got {n}")
        g, p, d = n // tokens_per_group, tokens_per_group, block.shape[-1]
        all_kept = torch.arange(n, device=block.device)
        keep_rows = torch.ones(block.shape[0], dtype=torch.bool, device=block.device)
        if self.impl == "vxlp" and mode == "off":
            return Selection(block, keep_rows, None, all_kept)
        if text.dim() != 2 or text.shape[0] == 0 or text.shape[1] != d:
            raise ValueError(f"the selector's text query must have shape [L_t >= 1, {d}], got {tuple(text.shape)}")
        k = keep_count(n, self.impl, mode, budget, keep_ratio)
        visual = block[vis_pos]  # [N, d]
        if self.impl == "released_v1":
            probe = visual
        else:
            time_rows, time_mask = _time_rows_per_group(block, is_visual, g, p)
            if self.impl == "vxlp":
                # The scorer reads detached tokens: its gradients (score injection, relevance distillation) train the
                # selector's own parameters and never pull the visual or text representations towards it.
                vis_d = visual.detach().reshape(g, p, d)
                if time_rows.shape[1] > 0:
                    te = time_rows.detach()
                    attn, _ = self.time_attn(vis_d, te, te, key_padding_mask=~time_mask, need_weights=False)
                    vis_d = vis_d + torch.nan_to_num(attn)  # a group without time rows adds nothing
                probe = vis_d.reshape(n, d)
            else:
                if time_rows.shape[1] == 0 or not bool(time_mask.any(1).all()):
                    raise ValueError("selector_impl 'released_v2' needs time-text rows before every group's visual tokens")
                probe = self.time_attn(visual.reshape(g, p, d), time_rows, time_mask).reshape(n, d)
        query_in = text.detach() if self.impl == "vxlp" else text
        query = self.text_mlp(query_in.to(probe.dtype))
        _, idx, scores = vxlp_ops.query_topk_gather(probe[None], query[None], k, inject_scores=False)
        idx, scores = idx[0], scores[0]
        out = block
        if self.impl == "released_v2":
            out = rope_interleaved(block, torch.arange(block.shape[0], device=block.device))
        elif self.impl == "released_v1":
            out = block.clone()
            out[vis_pos] = rope_interleaved(visual, torch.arange(n, device=block.device))
        out = out.clone() if out is block else out
        out[vis_pos] = out[vis_pos] + scores.to(out.dtype)[:, None]
        keep_rows[vis_pos] = False
        keep_rows[vis_pos[idx]] = True
        return Selection(out, keep_rows, scores, idx)


def _time_rows_per_group(block: torch.Tensor, is_visual: torch.Tensor, g: int, p: int):
    """Each group's time-text rows, padded: ``([G, n_max, d], mask bool [G, n_max])``.

    A non-visual row belongs to the group whose visual rows follow it (RELEASED.md §4: time text, then the group's
    visual tokens).
    """
    d = block.shape[-1]
    vis_before = torch.cumsum(is_visual.long(), 0) - is_visual.long()
    time_pos = (~is_visual).nonzero().squeeze(-1)
    group = vis_before[time_pos] // p
    if time_pos.numel() and int(group.max()) >= g:
        raise ValueError("the video block has time-text rows after its last group's visual tokens")
    counts = torch.bincount(group, minlength=g)
    n_max = int(counts.max()) if time_pos.numel() else 0
    rows = block.new_zeros((g, n_max, d))
    mask = torch.zeros((g, n_max), dtype=torch.bool, device=block.device)
    if n_max:
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(time_pos.numel(), device=block.device) - start[group]
        rows[group, slot] = block[time_pos]
        mask[group, slot] = True
    return rows, mask
