"""Compression inside the LLM (SPEC §8): Video-XL's visual summarization tokens (VST) and XComp's LP-Comp and
QC-Comp, on transformers' own Qwen2 (its decoder layers, rotary embedding, attention functions and cache classes).

- **VST** (Video-XL, Shu et al. 2024, §3.2; the Activation-Beacon mechanism): the video block is processed in windows
  of ``vst_window_groups`` groups. In each window one learned summary token follows every ``r`` raw tokens
  (interleaved; the last summary closes the window). Summary tokens have their own q/k/v/o projections
  (``summary_{q,k,v,o}_proj``, initialised from the originals) and a learned input embedding
  (``summary_embed_tokens``). Attention is causal over ``[memory; window]`` ("full coverage"). After each window
  only the summary tokens' K/V stay in the memory; the raw K/V are dropped. Keys are kept before RoPE and every
  window re-positions the memory compactly: memory ``0 … M−1``, window ``M …``. ``r = 1`` keeps every raw token
  (no summary tokens): then VST equals the plain LLM. ``r`` per window can follow the content change of the window
  (``vst_dynamic_ratio``, the paper's dynamic compression); training draws ``r`` per step from a curriculum
  (:func:`vst_curriculum_ratio`).
- **LP-Comp** (XComp §3.2): each group's tokens (its time text, then its visual tokens) shrink layer by layer on a
  cosine schedule from all of them at the first layer to ``lp_comp_final_tokens`` (1) at the last; each group keeps
  its *last* tokens. Tokens keep their positions. Each layer's cache holds only the tokens that layer saw, so the
  K/V cache is smaller in the deeper layers (:class:`CompressedCache` keeps per-layer validity masks).
- **QC-Comp** (XComp §3.3): before answering, the LLM reads ``[prefix; segment; question]`` for short segments of
  ``qc_segment_groups`` groups, each segment alone at the same positions (local attention: no position bias
  between segments); a group's score is the attention that the question's rows pay to its visual tokens (mean
  over layers and heads). The best groups within the selector's budget are kept, in temporal order, and answered.

Shapes: ``d`` = LLM width, ``H``/``H_kv`` query/key-value heads, ``D`` head dim, ``L`` rows of one sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, apply_rotary_pos_emb, eager_attention_forward

LLM_COMPRESSIONS = ("none", "vst", "lp_comp")
FRAME_SELECTIONS = ("none", "selector", "qc_comp")
VST_RATIOS = (1, 2, 4, 8, 16)


def validate_compression_args(llm_compression, frame_selection, vst_ratio, vst_window_groups, lp_comp_final_tokens, qc_segment_groups) -> None:
    """Check the compression settings; raises ``ValueError`` naming the argument."""
    if llm_compression not in LLM_COMPRESSIONS:
        raise ValueError(f"llm_compression must be one of {LLM_COMPRESSIONS}, got {llm_compression!r}")
    if frame_selection not in FRAME_SELECTIONS:
        raise ValueError(f"frame_selection must be one of {FRAME_SELECTIONS}, got {frame_selection!r}")
    if vst_ratio not in VST_RATIOS:
        raise ValueError(f"vst_ratio must be one of {VST_RATIOS}, got {vst_ratio!r}")
    for name, v in (("vst_window_groups", vst_window_groups), ("lp_comp_final_tokens", lp_comp_final_tokens), ("qc_segment_groups", qc_segment_groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


# ---------------------------------------------------------------------- the attention module
def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (True = attend) → additive float mask (0 / dtype min)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


class CompressedQwen2Attention(Qwen2Attention):
    """``Qwen2Attention`` that also serves the in-LLM compressors; with none of their inputs it *is* Qwen2's.

    Extra keyword inputs (passed through the model's ``**kwargs``):

    - ``vxlp_summary_mask`` bool ``[B, L]``: rows that are VST summary tokens; they use ``summary_{q,k,v,o}_proj``
      (present when built with ``summary_projections=True``).
    - ``vxlp_memory`` (:class:`_PreRoPEMemory`): VST window mode: keys are taken *before* RoPE, appended to the
      memory's, and RoPE is applied to the memory and window keys at the positions the memory assigns.

    With a :class:`CompressedCache` (LP-Comp / VST decoding) the attention mask comes from that cache's per-layer
    validity, because the layers may hold different numbers of keys.
    """

    def __init__(self, config, layer_idx: int, summary_projections: bool = False):
        super().__init__(config, layer_idx)
        if summary_projections:
            for name in ("q", "k", "v", "o"):
                ref = getattr(self, f"{name}_proj")
                setattr(self, f"summary_{name}_proj", nn.Linear(ref.in_features, ref.out_features, bias=ref.bias is not None))

    @torch.no_grad()
    def init_summary_from_originals(self) -> None:
        """Copy q/k/v/o into the summary projections (Video-XL's initialisation)."""
        for name in ("q", "k", "v", "o"):
            dst, src = getattr(self, f"summary_{name}_proj", None), getattr(self, f"{name}_proj")
            if dst is not None:
                dst.weight.copy_(src.weight)
                if dst.bias is not None:
                    dst.bias.copy_(src.bias)

    def _project(self, name: str, x: torch.Tensor, summary: torch.Tensor | None) -> torch.Tensor:
        out = getattr(self, f"{name}_proj")(x)
        if summary is not None and bool(summary.any()):
            alt = getattr(self, f"summary_{name}_proj", None)
            if alt is None:
                raise ValueError("vxlp_summary_mask given but this attention has no summary projections (llm_compression != 'vst')")
            out = out.index_put((summary,), alt(x[summary]))
        return out

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):
        summary = kwargs.pop("vxlp_summary_mask", None)
        memory = kwargs.pop("vxlp_memory", None)
        kwargs.pop("past_key_values", None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self._project("q", hidden_states, summary).view(hidden_shape).transpose(1, 2)
        k = self._project("k", hidden_states, summary).view(hidden_shape).transpose(1, 2)
        v = self._project("v", hidden_states, summary).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        if memory is not None:
            k, v = memory.extend(self.layer_idx, k, v)
            kcos, ksin = memory.key_rope
            q, k = _rope(q, cos, sin), _rope(k, kcos, ksin)
        else:
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
                if isinstance(cache, CompressedCache):
                    attention_mask = cache.layer_mask(self.layer_idx, q.shape[2], q.dtype)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention_interface(
            self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling, sliding_window=self.sliding_window, **kwargs,
        )
        out = out.reshape(*input_shape, -1).contiguous()
        return self._project("o", out, summary), weights


def install_compressed_attention(language_model, summary_projections: bool) -> None:
    """Swap every decoder layer's ``self_attn`` for :class:`CompressedQwen2Attention` (same parameter names; the
    summary projections are added for VST)."""
    for i, layer in enumerate(language_model.layers):
        old = layer.self_attn
        new = CompressedQwen2Attention(old.config, i, summary_projections=summary_projections).to(
            device=old.q_proj.weight.device, dtype=old.q_proj.weight.dtype
        )
        new.load_state_dict(old.state_dict(), strict=False)
        layer.self_attn = new


# ---------------------------------------------------------------------- caches
class CompressedCache(DynamicCache):
    """A ``DynamicCache`` whose layers may hold different keys, with ``valid[l]`` bool ``[B, kv_l]`` marking the
    real (non-padding) keys of layer ``l``. New tokens are appended as valid; their attention mask (valid keys, and
    causal among the new tokens) is built per layer by :class:`CompressedQwen2Attention`."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], valid: list[torch.Tensor]):
        super().__init__()
        for i, (k, v) in enumerate(zip(keys, values)):
            DynamicCache.update(self, k, v, i)
        self.valid = [m.bool() for m in valid]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        b, q = key_states.shape[0], key_states.shape[2]
        self.valid[layer_idx] = torch.cat([self.valid[layer_idx], self.valid[layer_idx].new_ones(b, q)], 1)
        return out

    def layer_mask(self, layer_idx: int, q_len: int, dtype: torch.dtype) -> torch.Tensor:
        valid = self.valid[layer_idx]
        kv = valid.shape[1]
        qi = torch.arange(kv - q_len, kv, device=valid.device)
        kj = torch.arange(kv, device=valid.device)
        allowed = valid[:, None, None, :] & (kj[None, :] <= qi[:, None])[None, None]
        return _additive(allowed, dtype)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.valid = [m.index_select(0, beam_idx.to(m.device)) for m in self.valid]

    def kv_bytes(self) -> int:
        """Bytes of the valid keys and values over all layers."""
        total = 0
        for layer, m in zip(self.layers, self.valid):
            per_row = layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size() * 2
            total += int(m.sum()) * per_row
        return total


def visual_kv_bytes(cache, token_type_ids: torch.Tensor, sample: int = 0) -> tuple[int, list[int]]:
    """Bytes of the keys and values a prefill's cache keeps for the video of one sample, and its rows per layer.

    ``cache``: a ``DynamicCache`` or :class:`CompressedCache` after the prompt; ``token_type_ids`` ``[L]``: that
    sample's prompt types (:mod:`vxlp_model.processing`). The text rows (everything outside video blocks: neither
    time text nor placeholder) are kept whole at every layer by every compressor; the rest of the cache is the
    video's.
    """
    from .processing import TIME, VIDEO

    if isinstance(cache, CompressedCache):
        rows = [int(m[sample].sum()) for m in cache.valid]
    else:
        rows = [int(layer.keys.shape[2]) for layer in cache.layers]
    keys = cache.layers[0].keys
    row_bytes = 2 * keys.shape[1] * keys.shape[3] * keys.element_size()
    text_rows = int(((token_type_ids != VIDEO) & (token_type_ids != TIME)).sum())
    return (sum(rows) - text_rows * len(rows)) * row_bytes, rows


class _PreRoPEMemory:
    """VST's memory: per layer, keys before RoPE and values of the tokens kept so far (prefix text, summaries)."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.key_rope = None
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.pending[layer] = (k, v)
        if self.keys[layer] is None:
            return k, v
        return torch.cat([self.keys[layer], k], 2), torch.cat([self.values[layer], v], 2)

    def commit(self, keep: torch.Tensor | None) -> None:
        """Keep the current segment's rows ``keep`` (bool ``[n]``; None = all) in the memory."""
        for i, pend in enumerate(self.pending):
            k, v = pend
            if keep is not None:
                k, v = k[:, :, keep], v[:, :, keep]
            self.keys[i] = k if self.keys[i] is None else torch.cat([self.keys[i], k], 2)
            self.values[i] = v if self.values[i] is None else torch.cat([self.values[i], v], 2)
            self.pending[i] = None
        self.length = self.keys[0].shape[2]


# ---------------------------------------------------------------------- VST
def vst_curriculum_ratio(step: int, total_steps: int, generator: torch.Generator, ratios=(2, 4, 8, 16)) -> int:
    """The training curriculum over the compression ratio (Video-XL §3.2 trains with random ratios; we grow the
    set): at training progress ``step / total_steps`` ∈ [0, 1) the first ``1 + ⌊progress · len(ratios)⌋`` ratios are
    allowed and one is drawn uniformly by ``generator`` — mild compression first, every ratio by the end."""
    if total_steps < 1 or not 0 <= step:
        raise ValueError(f"need 0 <= step and total_steps >= 1, got step={step}, total_steps={total_steps}")
    allowed = ratios[: min(len(ratios), 1 + (step * len(ratios)) // total_steps)]
    return int(allowed[int(torch.randint(0, len(allowed), (), generator=generator))])


def dynamic_ratio(group_means: torch.Tensor, thresholds=(0.5, 0.2, 0.05), ratios=(2, 4, 8, 16)) -> int:
    """Compression ratio of one window from its content change (the paper's dynamic compression; thresholds ours).

    ``group_means``: ``[g, d]`` the mean visual row of each group in the window. Change
    ``c = 1 − mean cos(group_i, group_{i+1})`` (0 for a static window, up to 2); ``c ≥ 0.5 → 2``, ``≥ 0.2 → 4``,
    ``≥ 0.05 → 8``, else 16. A one-group window is treated as static.
    """
    if group_means.shape[0] < 2:
        return ratios[-1]
    cos = torch.nn.functional.cosine_similarity(group_means[1:].float(), group_means[:-1].float(), dim=-1)
    change = float(1.0 - cos.mean())
    for t, r in zip(thresholds, ratios):
        if change >= t:
            return r
    return ratios[-1]


def _segments(row_group: torch.Tensor, window_groups: int) -> list[tuple[str, int, int]]:
    """Split one sample's rows into ``("text", s, e)`` and ``("window", s, e)`` runs; a window holds at most
    ``window_groups`` consecutive groups."""
    g = row_group.tolist()
    out, i, n = [], 0, len(g)
    while i < n:
        if g[i] < 0:
            j = i
            while j < n and g[j] < 0:
                j += 1
            out.append(("text", i, j))
        else:
            seen, j = [], i
            while j < n and g[j] >= 0:
                if not seen or g[j] != seen[-1]:
                    if len(seen) == window_groups:
                        break
                    seen.append(g[j])
                j += 1
            out.append(("window", i, j))
        i = j
    return out


def interleave_summaries(n: int, ratio: int, device=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Layout of a window of ``n`` raw rows with one summary after every ``ratio`` raw rows, the last summary
    closing the window: returns ``(raw_index [n], summary_index [m], length n + m)`` with ``m = ⌈n / ratio⌉``."""
    m = -(-n // ratio)
    i = torch.arange(n, device=device)
    raw = i + i // ratio
    j = torch.arange(m, device=device)
    last_raw = torch.clamp((j + 1) * ratio, max=n) - 1
    summary = last_raw + last_raw // ratio + 1
    return raw, summary, n + m


@dataclass
class CompressedPrefill:
    """One sample through an in-LLM compressor: ``hidden`` ``[1, L, d]`` final hidden state of every input row
    (for LP-Comp, dropped rows hold their state at the layer that dropped them), per-layer post-RoPE ``keys`` /
    ``values`` ``[1, H_kv, M_l, D]`` of what stays cached, ``positions`` ``[M_0]`` of the layer-0 cache rows, and
    ``summary_tokens`` the number of VST summary tokens made."""

    hidden: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    positions: torch.Tensor
    summary_tokens: int = 0


def vst_prefill(language_model, summary_embed: torch.Tensor, embeds: torch.Tensor, row_group: torch.Tensor, window_groups: int, ratio: int, dynamic: bool = False) -> CompressedPrefill:
    """VST over one sample: ``embeds`` ``[1, L, d]``, ``row_group`` int64 ``[L]`` (group id of each video row,
    −1 for text). Text runs are kept whole; each window is compressed at ``ratio`` (or its dynamic ratio)."""
    lm = language_model
    n_layers = len(lm.layers)
    memory = _PreRoPEMemory(n_layers)
    hidden = embeds.new_zeros(embeds.shape)
    n_summary = 0
    dev = embeds.device
    for kind, s, e in _segments(row_group, window_groups):
        x = embeds[:, s:e]
        n = e - s
        r = ratio
        if kind == "window" and dynamic:
            grp = row_group[s:e]
            ids, inv = torch.unique_consecutive(grp, return_inverse=True)
            means = torch.zeros(ids.shape[0], x.shape[-1], dtype=torch.float32, device=dev).index_add_(0, inv, x[0].float())
            means = means / torch.bincount(inv, minlength=ids.shape[0]).clamp_min(1)[:, None]
            r = dynamic_ratio(means)
        compress = kind == "window" and r > 1
        if compress:
            raw_idx, sum_idx, length = interleave_summaries(n, r, dev)
            seq = x.new_zeros(1, length, x.shape[-1])
            seq = seq.index_copy(1, raw_idx, x).index_copy(1, sum_idx, summary_embed.to(x.dtype).expand(1, sum_idx.shape[0], -1))
            summary_mask = torch.zeros(1, length, dtype=torch.bool, device=dev)
            summary_mask[0, sum_idx] = True
        else:
            seq, length, summary_mask = x, n, None
        m = memory.length
        max_pos = getattr(lm.config, "max_position_embeddings", None)
        if max_pos is not None and m + length > max_pos:
            raise ValueError(
                f"VST needs {m + length} positions (text and summary tokens kept so far + this window), more than the "
                f"LLM's {max_pos} positions: raise vst_ratio or lower selector_budget"
            )
        positions = torch.arange(m, m + length, device=dev)[None]
        memory.key_rope = lm.rotary_emb(seq, torch.arange(m + length, device=dev)[None])
        causal = torch.ones(length, length, dtype=torch.bool, device=dev).tril()
        allowed = torch.cat([torch.ones(length, m, dtype=torch.bool, device=dev), causal], 1)[None, None]
        out = lm(
            inputs_embeds=seq, attention_mask={"full_attention": _additive(allowed, seq.dtype)}, position_ids=positions,
            use_cache=False, vxlp_memory=memory, vxlp_summary_mask=summary_mask,
        ).last_hidden_state
        if compress:
            hidden = hidden.index_copy(1, torch.arange(s, e, device=dev), out[:, raw_idx])
            memory.commit(summary_mask[0])
            n_summary += int(sum_idx.shape[0])
        else:
            hidden = hidden.index_copy(1, torch.arange(s, e, device=dev), out)
            memory.commit(None)
    total = memory.length
    cos, sin = lm.rotary_emb(embeds, torch.arange(total, device=dev)[None])
    keys = [_rope(k, cos, sin) for k in memory.keys]
    return CompressedPrefill(hidden, keys, list(memory.values), torch.arange(total, device=dev), n_summary)


# ---------------------------------------------------------------------- LP-Comp
def lp_comp_schedule(num_layers: int, max_tokens: int, final_tokens: int = 1) -> list[int]:
    """Tokens per group entering each layer: a cosine from ``max_tokens`` (layer 0) down to ``final_tokens`` (last
    layer), ``n_l = f + round((N − f) · (1 + cos(π l / (layers − 1))) / 2)`` (XComp §3.2). ``final_tokens ≥
    max_tokens`` keeps every token."""
    if final_tokens >= max_tokens:
        return [max_tokens] * num_layers
    if num_layers == 1:
        return [max_tokens]
    return [
        final_tokens + round((max_tokens - final_tokens) * (1 + math.cos(math.pi * l / (num_layers - 1))) / 2)
        for l in range(num_layers)
    ]


def lp_comp_prefill(language_model, embeds: torch.Tensor, row_group: torch.Tensor, positions: torch.Tensor, final_tokens: int = 1) -> CompressedPrefill:
    """LP-Comp over one sample: ``embeds`` ``[1, L, d]``, ``row_group`` ``[L]`` (−1 = text), ``positions``
    ``[L]``. Layer ``l`` sees the text rows and each group's last ``n_l`` rows (:func:`lp_comp_schedule`)."""
    lm = language_model
    dev = embeds.device
    is_video = row_group >= 0
    # rows after each row within its group (0 = the group's last row)
    if bool(is_video.any()):
        _, inv, counts = torch.unique_consecutive(row_group, return_inverse=True, return_counts=True)
        start = torch.cumsum(counts, 0) - counts
        rank_from_end = (start + counts)[inv] - 1 - torch.arange(row_group.shape[0], device=dev)
        max_tokens = int(counts[row_group[start] >= 0].max())
    else:
        rank_from_end = torch.zeros_like(row_group)
        max_tokens = 1
    schedule = lp_comp_schedule(len(lm.layers), max_tokens, final_tokens)
    cache = DynamicCache()
    hidden = embeds
    keys_pos = None
    for l, layer in enumerate(lm.layers):
        keep = (~is_video) | (rank_from_end < schedule[l])
        idx = keep.nonzero().squeeze(-1)
        h = hidden[:, idx]
        pos = positions[idx][None]
        if l == 0:
            keys_pos = positions[idx]
        n = idx.shape[0]
        mask = _additive(torch.ones(n, n, dtype=torch.bool, device=dev).tril()[None, None], h.dtype)
        pe = lm.rotary_emb(h, pos)
        out = layer(h, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, position_embeddings=pe)
        out = out[0] if isinstance(out, tuple) else out
        hidden = hidden.index_copy(1, idx, out)
    hidden = lm.norm(hidden)
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    return CompressedPrefill(hidden, keys, values, keys_pos)


# ---------------------------------------------------------------------- batch assembly
def assemble_cache(prefills: list[CompressedPrefill]) -> tuple[CompressedCache, torch.Tensor, torch.Tensor]:
    """Left-pad per-sample caches into one :class:`CompressedCache`; returns it, the layer-0 attention mask
    ``[B, M_0]`` (int64) and the layer-0 positions ``[B, M_0]`` (padding at position 1, as transformers does)."""
    n_layers = len(prefills[0].keys)
    keys, values, valid = [], [], []
    for l in range(n_layers):
        m = max(p.keys[l].shape[2] for p in prefills)
        ks, vs, ms = [], [], []
        for p in prefills:
            k, v = p.keys[l], p.values[l]
            pad = m - k.shape[2]
            ks.append(torch.cat([k.new_zeros(1, k.shape[1], pad, k.shape[3]), k], 2))
            vs.append(torch.cat([v.new_zeros(1, v.shape[1], pad, v.shape[3]), v], 2))
            ms.append(torch.cat([torch.zeros(pad, dtype=torch.bool, device=k.device), torch.ones(k.shape[2], dtype=torch.bool, device=k.device)]))
        keys.append(torch.cat(ks))
        values.append(torch.cat(vs))
        valid.append(torch.stack(ms))
    m0 = valid[0].shape[1]
    pos = torch.ones(len(prefills), m0, dtype=torch.long, device=valid[0].device)
    for i, p in enumerate(prefills):
        pos[i, m0 - p.positions.shape[0] :] = p.positions
    return CompressedCache(keys, values, valid), valid[0].long(), pos


# ---------------------------------------------------------------------- QC-Comp
def rotated_query_key(module, hidden: torch.Tensor, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention module's queries ``[B, H, L, D]`` and keys (repeated to ``H`` heads) with their rotary
    embedding, recomputed from its input ``hidden`` ``[B, L, d]`` — for reading attention weights from a forward
    pre-hook under any attention implementation."""
    cos, sin = position_embeddings
    b, length, _ = hidden.shape
    hd = module.head_dim
    q = module.q_proj(hidden).view(b, length, -1, hd).transpose(1, 2)
    k = module.k_proj(hidden).view(b, length, -1, hd).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k.repeat_interleave(module.num_key_value_groups, dim=1)


def _question_attention(language_model, embeds: torch.Tensor, query_rows: torch.Tensor, key_rows: torch.Tensor) -> torch.Tensor:
    """Mean over layers and heads of the softmax attention that rows ``query_rows`` pay to rows ``key_rows`` in a
    causal forward of ``embeds`` ``[1, L, d]`` at positions ``0 … L−1``: ``[len(key_rows)]`` (summed over queries'
    mean). Computed from each attention module's own inputs, so it holds under any attention implementation."""
    acc = []

    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            length = hidden.shape[1]
            q, k = rotated_query_key(module, hidden, kwargs["position_embeddings"])
            w = torch.matmul(q[0][:, query_rows].float(), k[0].float().transpose(-1, -2)) * module.scaling
            allowed = torch.arange(length, device=hidden.device)[None, :] <= query_rows[:, None]
            prob = torch.softmax(w.masked_fill(~allowed[None], float("-inf")), dim=-1)
            acc.append(prob[:, :, key_rows].mean(dim=(0, 1)))
        return None

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in language_model.layers]
    try:
        with torch.no_grad():
            language_model(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1], device=embeds.device)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(acc).mean(0)


@torch.no_grad()
def qc_comp_scores(
    language_model, prefix: torch.Tensor, group_rows: list[torch.Tensor], visual_counts: list[int], question: torch.Tensor, segment_groups: int
) -> torch.Tensor:
    """QC-Comp's group scores ``[G]`` (float32): for each segment of ``segment_groups`` consecutive groups, one
    forward of ``[prefix; segment rows; question]`` (each segment alone, all at the same positions); a group's
    score is the attention of the question rows to its visual rows, summed over those rows.

    ``prefix`` ``[Lp, d]``; ``group_rows[g]`` ``[n_g, d]`` the rows of group g as they enter the LLM (its time
    text, then its visual rows: the last ``visual_counts[g]`` rows); ``question`` ``[Lq, d]`` (≥ 1 row).
    """
    if question.shape[0] < 1:
        raise ValueError("QC-Comp needs at least one question row after the video block")
    scores = []
    for s in range(0, len(group_rows), segment_groups):
        seg = group_rows[s : s + segment_groups]
        sizes = [r.shape[0] for r in seg]
        seq = torch.cat([prefix, *seg, question])[None]
        lp, total_seg = prefix.shape[0], sum(sizes)
        q_rows = torch.arange(lp + total_seg, seq.shape[1], device=seq.device)
        vis_rows, owner = [], []
        off = lp
        for j, (n, nv) in enumerate(zip(sizes, visual_counts[s : s + segment_groups])):
            vis_rows.append(torch.arange(off + n - nv, off + n, device=seq.device))
            owner += [j] * nv
            off += n
        vis_rows = torch.cat(vis_rows)
        att = _question_attention(language_model, seq, q_rows, vis_rows)
        owner_t = torch.tensor(owner, device=seq.device)
        scores.append(torch.zeros(len(seg), device=seq.device).index_add_(0, owner_t, att))
    return torch.cat(scores)


def choose_groups(scores: torch.Tensor, group_sizes: torch.Tensor, mode: str, budget: int, keep_ratio: float) -> torch.Tensor:
    """Groups kept by QC-Comp (bool ``[G]``): ``off`` keeps all; ``ratio`` the best ``⌈ratio · G⌉``; ``budget`` the
    best groups, in score order, while their rows (time text + visual) fit ``budget`` (at least one group)."""
    g = scores.shape[0]
    keep = torch.zeros(g, dtype=torch.bool, device=scores.device)
    if mode == "off":
        keep[:] = True
        return keep
    order = torch.argsort(scores, descending=True, stable=True)
    if mode == "ratio":
        keep[order[: max(1, math.ceil(keep_ratio * g))]] = True
        return keep
    used = 0
    for j in order.tolist():
        size = int(group_sizes[j])
        if used + size > budget and keep.any():
            break
        keep[j] = True
        used += size
    return keep
