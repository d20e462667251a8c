"""Query-aware Selector: keep the visual tokens most relevant to the question (paper §3.3; SPEC §4; RELEASED.md §4).

One module, :class:`QueryAwareSelector`, with the implementation chosen by ``config.selector_impl`` (an
architecture setting: it decides which parameters exist):

- ``"vxlp"`` (our design): the probe of a visual token is the token plus a residual MLP of it (``visual_mlp``,
  zero-initialised output) plus its attention over its group's time-text tokens (``time_attn``,
  ``nn.MultiheadAttention``); the query is the user's text only; the scorer reads detached tokens; no rotary
  embedding on the inputs. Time text travels with the groups whose visual tokens
  are kept, and the ``budget`` mode counts it, so the video block fits the budget at any length.
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

import vxlp_ops
from vxlp_ops.reference.sgm import min_max

ROPE_BASE = 1_000_000.0  # RELEASED.md §4: angle p · 1e6^(−2i/d)


def keep_count(num_visual: int, impl: str, mode: str, budget: int, keep_ratio: float) -> int:
    """Visual tokens kept out of ``num_visual`` (SPEC §4; RELEASED.md §4).

    - ``off``: all of them.
    - ``budget``: ``min(N, budget)`` (released implementations; ``vxlp`` counts time text too, see
      :func:`budget_selection`).
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
    """The selector's result for one video block (G groups; per group its time-text rows, then P visual rows).

    ``kept_visual``: int64 ``[K]`` indices of the kept visual tokens among the N = G·P, ascending;
    ``visual_rows``: ``[K, d]`` those tokens as they enter the LLM (RoPE'd and / or score-injected where the
    implementation does so); ``kept_time``: bool ``[R]`` which time-text rows stay; ``time_rows``: ``[R_kept, d]``
    those rows as they enter the LLM; ``visual_pos`` / ``time_pos``: int64 positions of the kept rows in the
    uncompacted block (to put them in order); ``scores``: float ``[N]`` every visual token's score (None when the
    selector is off or absent) — in training it carries the gradient to the selector's parameters.
    ``probe`` ``[N, d]`` (the tokens' dtype) and ``query`` float32 ``[d]`` (``vxlp`` in training, else None): the
    scoring vectors and the mean query vector, so that ``scores = min_max(probe @ query)`` (references to tensors
    the scores' graph holds anyway: no copy) — what the distillation's in-batch negatives
    score another sample's tokens with. ``probe_inputs`` (same condition): the probe's inputs ``(visual [G, P, d],
    time rows [G, n, d], time mask bool [G, n])``, detached, as :meth:`QueryAwareSelector.probe_groups` takes them
    (what a :class:`SelectorNegativeMemory` keeps).
    """

    kept_visual: torch.Tensor
    visual_rows: torch.Tensor
    kept_time: torch.Tensor
    time_rows: torch.Tensor
    visual_pos: torch.Tensor
    time_pos: torch.Tensor
    scores: torch.Tensor | None
    probe: torch.Tensor | None = None
    query: torch.Tensor | None = None
    probe_inputs: tuple | None = None


def block_layout(time_group: torch.Tensor, num_groups: int, tokens_per_group: int):
    """Row positions in the uncompacted block: ``(time_pos [R], visual_pos [G·P])`` for per-group time rows (of
    groups ``time_group``, nondecreasing) followed by the group's P visual rows."""
    dev = time_group.device
    n_time = torch.bincount(time_group, minlength=num_groups)
    size = n_time + tokens_per_group
    offsets = torch.cumsum(size, 0) - size
    first_time = torch.cumsum(n_time, 0) - n_time
    local = torch.arange(time_group.shape[0], device=dev) - first_time[time_group]
    time_pos = offsets[time_group] + local
    visual_pos = ((offsets + n_time)[:, None] + torch.arange(tokens_per_group, device=dev)[None, :]).reshape(-1)
    return time_pos, visual_pos


def keep_all(visual: torch.Tensor, time_rows: torch.Tensor, time_group: torch.Tensor) -> Selection:
    """The no-selection result (``selector_impl="none"``, or the ``vxlp`` selector off)."""
    g, p, d = visual.shape
    time_pos, visual_pos = block_layout(time_group, g, p)
    n = g * p
    return Selection(
        torch.arange(n, device=time_pos.device), visual.reshape(n, d), torch.ones(time_rows.shape[0], dtype=torch.bool, device=time_pos.device),
        time_rows, visual_pos, time_pos, None,
    )


class QueryAwareSelector(nn.Module):
    """Scores the visual tokens of a video block against the text and keeps the best, in temporal order.

    Parameters by implementation: ``text_mlp`` (Linear(d, d)·GELU, all); ``time_attn`` (``vxlp``:
    ``nn.MultiheadAttention(d, heads)``; ``released_v2``: :class:`ReleasedTimeAttention`; ``released_v1``: none);
    ``visual_mlp`` (``vxlp``: Linear·GELU·Linear, residual).

    Long videos are scored chunk by chunk (``chunk_tokens`` visual tokens at a time): only the N raw scores and
    the kept tokens are ever held beside the visual tokens themselves, which may stay in host memory (each chunk is
    moved to the selector's device). A video that fits one chunk goes through the fused
    :func:`vxlp_ops.query_topk_gather`; longer ones compute the same scores (``mean_l probe·text_l``, min-max over
    the whole video) chunk by chunk.
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
            # a residual MLP on the visual side: the score is then a non-linear function of the token, so a property
            # shared by tokens far apart in the LLM's embedding space (e.g. "an inserted frame", whatever its colour)
            # can rank first; zero-initialised output: the selector starts as the linear released-style scorer
            self.visual_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            self.visual_mlp[2].zero_init = True
            nn.init.zeros_(self.visual_mlp[2].weight)
            nn.init.zeros_(self.visual_mlp[2].bias)
        elif self.impl == "released_v2":
            self.time_attn = ReleasedTimeAttention(d, config.selector_num_heads)

    def _probe(self, visual: torch.Tensor, time_rows: torch.Tensor, time_mask: torch.Tensor) -> torch.Tensor:
        """Scoring vectors of ``visual`` ``[g, P, d]`` given each group's padded time rows ``[g, n, d]``."""
        if self.impl == "released_v1":
            return visual
        if self.impl == "released_v2":
            if time_rows.shape[1] == 0 or not bool(time_mask.any(1).all()):
                raise ValueError("selector_impl 'released_v2' needs time-text rows before every group's visual tokens")
            return self.time_attn(visual, time_rows, time_mask)
        # vxlp: the scorer reads detached tokens: its gradients (score injection, relevance distillation) train the
        # selector's own parameters and never pull the visual or text representations towards it.
        vis = visual.detach()
        probe = vis + self.visual_mlp(vis)
        if time_rows.shape[1] == 0:
            return probe
        attn, _ = self.time_attn(vis, time_rows.detach(), time_rows.detach(), key_padding_mask=~time_mask, need_weights=False)
        return probe + torch.nan_to_num(attn)  # a group without time rows adds nothing

    def probe_groups(self, visual: torch.Tensor, time_rows: torch.Tensor, time_mask: torch.Tensor) -> torch.Tensor:
        """``vxlp`` scoring vectors ``[g, P, d]`` of the groups ``visual`` ``[g, P, d]``, given each group's padded
        time-text rows ``[g, n, d]`` and their mask bool ``[g, n]`` (a :class:`Selection`'s ``probe_inputs``).

        Raises ``ValueError`` for the released implementations (they keep no separate probe).
        """
        if self.impl != "vxlp":
            raise ValueError(f"probe_groups needs selector_impl 'vxlp', got {self.impl!r}")
        dev = self.text_mlp[0].weight.device
        return self._probe(visual.to(dev), time_rows.to(dev), time_mask.to(dev))

    def forward(
        self,
        visual: torch.Tensor,
        time_rows: torch.Tensor,
        time_group: torch.Tensor,
        text: torch.Tensor,
        mode: str,
        budget: int,
        keep_ratio: float,
        chunk_tokens: int = 1 << 16,
    ) -> Selection:
        """Select within one video block.

        Args:
            visual: ``[G, P, d]`` the video's visual tokens (any device; chunks move to the selector's).
            time_rows: ``[R, d]`` embeddings of the block's time-text rows; time_group: int64 ``[R]`` the group of
                each (nondecreasing).
            text: ``[L_t, d]`` embeddings of the query text (``vxlp``: the user's text; released: every prompt
                token outside the video block, answer excluded), ``L_t ≥ 1`` unless mode is ``off``.
            mode, budget, keep_ratio: see :func:`keep_count` and :func:`budget_selection`.
            chunk_tokens: visual tokens scored at a time.

        Returns: :class:`Selection`.

        Raises: ValueError: an empty text query, shapes that do not match, a budget below one group's cost.
        """
        g, p, d = visual.shape
        n = g * p
        dev = self.text_mlp[0].weight.device
        if n == 0:
            raise ValueError("the video block holds no visual token")
        if self.impl == "vxlp" and mode == "off":
            return keep_all(visual.to(dev), time_rows, time_group)
        if text.dim() != 2 or text.shape[0] == 0 or text.shape[1] != d:
            raise ValueError(f"the selector's text query must have shape [L_t >= 1, {d}], got {tuple(text.shape)}")
        time_pos, visual_pos = block_layout(time_group, g, p)
        query = self.text_mlp((text.detach() if self.impl == "vxlp" else text).to(visual.dtype))
        rows, mask = _time_rows_per_group(time_rows, time_group, g)
        k = keep_count(n, self.impl, mode, budget, keep_ratio)
        step = max(1, chunk_tokens // p)
        probe = None
        if g <= step:  # one chunk: the fused op
            probe = self._probe(visual.to(dev), rows, mask).reshape(n, d)
            _, idx, scores = vxlp_ops.query_topk_gather(probe[None], query[None], k, inject_scores=False)
            idx, scores = idx[0], scores[0]
        else:
            qbar = query.float().mean(0)
            raw = torch.cat(
                [self._probe(visual[i : i + step].to(dev), rows[i : i + step], mask[i : i + step]).reshape(-1, d).float() @ qbar
                 for i in range(0, g, step)]
            )
            scores = min_max(raw, dim=0)
            idx = torch.sort(torch.sort(scores.detach(), descending=True, stable=True).indices[:k]).values
        if self.impl == "vxlp" and mode == "budget":
            idx = budget_selection(scores.detach(), p, torch.bincount(time_group, minlength=g).to(scores.device), budget)
        kept = visual.reshape(n, d)[idx.to(visual.device)].to(dev)
        if self.impl == "released_v2":
            kept = rope_interleaved(kept, visual_pos[idx])
            time_out = rope_interleaved(time_rows, time_pos)
        elif self.impl == "released_v1":
            kept = rope_interleaved(kept, idx)
            time_out = time_rows
        else:
            time_out = time_rows
        kept = kept + scores[idx].to(kept.dtype)[:, None]
        if self.impl == "vxlp":
            # time text travels with the groups that keep visual tokens (the released code keeps every group's)
            touched = torch.zeros(g, dtype=torch.bool, device=dev)
            touched[idx // p] = True
            kept_time = touched[time_group]
        else:
            kept_time = torch.ones(time_rows.shape[0], dtype=torch.bool, device=dev)
        keep_probe = self.impl == "vxlp" and self.training and probe is not None
        return Selection(idx, kept, kept_time, time_out[kept_time], visual_pos[idx], time_pos[kept_time], scores,
                         probe if keep_probe else None, query.float().mean(0) if keep_probe else None,
                         (visual.detach(), rows.detach(), mask) if keep_probe else None)


class SelectorNegativeMemory:
    """A first-in-first-out memory of the haystack groups the LLM hardly used, for the selector's relevance
    distillation (our design; the queue of negatives of MoCo, He et al., CVPR 2020, applied to the selector).

    In-batch negatives show a question only the batch's few short videos; at inference a long video holds
    thousands of groups, and a handful of haystack scenes that outscore the needle is enough to push it out of the
    budget. The memory keeps the last ``capacity`` low-relevance groups of earlier steps (with the question they
    were asked under) and the distillation adds them to the softmax of every later sample asked the same question.
    It keeps the probe's *inputs* (detached visual tokens and the group's time-text rows), not the probes, so each
    step re-scores them with the current selector: the scores are never stale and the gradient reaches the
    selector's parameters.

    Args: capacity: groups kept (≥ 1); the oldest go first. Raises ``ValueError`` for a capacity below 1.
    Deterministic: no randomness; the content depends only on the order of :meth:`push` calls.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self._items: list[tuple] = []  # (query ids tuple, visual [P, d], time rows [n, d], mask [n])

    def __len__(self) -> int:
        return len(self._items)

    def push(self, query_ids: torch.Tensor, visual: torch.Tensor, time_rows: torch.Tensor, time_mask: torch.Tensor) -> None:
        """Add groups asked under ``query_ids`` (int ``[L]``): ``visual`` ``[g, P, d]``, ``time_rows`` ``[g, n, d]``,
        ``time_mask`` bool ``[g, n]`` (detached copies are kept)."""
        key = tuple(int(t) for t in query_ids.reshape(-1).tolist())
        for v, r, m in zip(visual.detach(), time_rows.detach(), time_mask):
            self._items.append((key, v.clone(), r[m].clone()))
        del self._items[: max(0, len(self._items) - self.capacity)]

    def groups(self, query_ids: torch.Tensor):
        """The kept groups asked under ``query_ids``, as :meth:`QueryAwareSelector.probe_groups` takes them:
        ``(visual [m, P, d], time rows [m, n, d], mask bool [m, n])``, oldest first; None when there are none."""
        key = tuple(int(t) for t in query_ids.reshape(-1).tolist())
        hits = [(v, r) for k, v, r in self._items if k == key]
        if not hits:
            return None
        n = max(r.shape[0] for _, r in hits)
        d = hits[0][0].shape[-1]
        rows = hits[0][1].new_zeros((len(hits), n, d))
        mask = torch.zeros((len(hits), n), dtype=torch.bool, device=rows.device)
        for i, (_, r) in enumerate(hits):
            rows[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return torch.stack([v for v, _ in hits]), rows, mask


def budget_selection(scores: torch.Tensor, tokens_per_group: int, time_counts: torch.Tensor, budget: int) -> torch.Tensor:
    """Visual tokens kept under a budget that counts every token reaching the LLM (vxlp's budget mode).

    Tokens are taken in descending score order (ties → lower index); the first token taken from a group also brings
    that group's ``time_counts[g]`` time-text tokens. The longest prefix of that order whose cost (visual + time
    tokens) is ≤ ``budget`` is kept, so the video block never exceeds the budget at any video length.

    Args: scores float ``[N]`` (N = G·P), tokens_per_group P, time_counts int ``[G]``, budget (tokens).
    Returns: int64 ``[K]`` kept indices, ascending (temporal order), K ≥ 1.
    Raises: ValueError if the budget cannot hold even one group's time text and one visual token.
    """
    n = scores.shape[0]
    need = int(time_counts.max()) + 1 if time_counts.numel() else 1
    if budget < need:
        raise ValueError(f"selector_budget ({budget}) cannot hold one group's time text and one visual token ({need} tokens)")
    order = torch.sort(scores, descending=True, stable=True).indices
    group = order // tokens_per_group
    rank = torch.arange(n, device=scores.device)
    first = torch.full((time_counts.shape[0],), n, dtype=torch.long, device=scores.device)
    first = first.scatter_reduce(0, group, rank, reduce="amin")
    cost = 1 + (rank == first[group]).long() * time_counts.to(scores.device)[group]
    m = int((torch.cumsum(cost, 0) <= budget).sum())
    return torch.sort(order[: max(m, 1)]).values


def _time_rows_per_group(time_rows: torch.Tensor, time_group: torch.Tensor, g: int):
    """Each group's time-text rows, padded: ``([G, n_max, d], mask bool [G, n_max])``."""
    d = time_rows.shape[-1]
    dev = time_rows.device
    counts = torch.bincount(time_group, minlength=g)
    n_max = int(counts.max()) if time_group.numel() else 0
    rows = time_rows.new_zeros((g, n_max, d))
    mask = torch.zeros((g, n_max), dtype=torch.bool, device=dev)
    if n_max:
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(time_group.numel(), device=dev) - start[time_group]
        rows[time_group, slot] = time_rows
        mask[time_group, slot] = True
    return rows, mask
