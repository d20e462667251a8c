"""Float64 references for the in-LLM compressors (SPEC §8), written from the spec with plain tensor algebra.

They share nothing with :mod:`vxlp_model.llm_compression`: a Qwen2 decoder layer is re-derived here (RMSNorm,
half-split RoPE, grouped-query attention, SwiGLU), and VST / LP-Comp are written as explicit loops over windows and
layers on lists of rows.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def weights_f64(model) -> dict:
    return {k: v.detach().to(F64) for k, v in model.state_dict().items()}


def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x, positions, theta):
    """``x [heads, n, hd]`` rotated at ``positions [n]`` (Qwen2: first half / second half)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=F64) / hd)
    ang = positions.to(F64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)
    return x * cos + torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1) * sin


def _lin(x, w, name, bias=True):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if bias and name + ".bias" in w else y


class Decoder:
    """Qwen2 decoder layers of a vxlp model's ``language_model`` in float64."""

    def __init__(self, w: dict, text_config, prefix="model.language_model."):
        self.w, self.p = w, prefix
        self.heads = text_config.num_attention_heads
        self.kv = text_config.num_key_value_heads
        self.hd = text_config.hidden_size // self.heads
        self.eps = text_config.rms_norm_eps
        self.theta = text_config.rope_parameters["rope_theta"]
        self.layers = text_config.num_hidden_layers

    def qkv(self, i, h, summary):
        """Pre-RoPE ``q [H, n, hd]``, ``k``, ``v [H_kv, n, hd]`` of rows ``h [n, d]`` at layer i; rows flagged in
        ``summary [n]`` use the summary projections."""
        lp = f"{self.p}layers.{i}.self_attn."
        x = _rms(h, self.w[f"{self.p}layers.{i}.input_layernorm.weight"], self.eps)
        outs = []
        for name, heads in (("q", self.heads), ("k", self.kv), ("v", self.kv)):
            y = _lin(x, self.w, lp + f"{name}_proj")
            if summary is not None and summary.any():
                y = torch.where(summary[:, None], _lin(x, self.w, lp + f"summary_{name}_proj"), y)
            outs.append(y.reshape(-1, heads, self.hd).transpose(0, 1))
        return outs

    def finish(self, i, h, q, k, v, qpos, kpos, allowed, summary):
        """Attention of ``q`` (at ``qpos``) over ``k, v`` (pre-RoPE, at ``kpos``) with bool ``allowed [n, m]``, then
        o-proj and the MLP: the layer's output rows."""
        lp = f"{self.p}layers.{i}."
        q, k = _rope(q, qpos, self.theta), _rope(k, kpos, self.theta)
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        s = s.masked_fill(~allowed[None], float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(h.shape[0], -1)
        o = _lin(a, self.w, lp + "self_attn.o_proj", bias=False)
        if summary is not None and summary.any():
            o = torch.where(summary[:, None], _lin(a, self.w, lp + "self_attn.summary_o_proj", bias=False), o)
        h = h + o
        x = _rms(h, self.w[lp + "post_attention_layernorm.weight"], self.eps)
        gate, up = _lin(x, self.w, lp + "mlp.gate_proj", False), _lin(x, self.w, lp + "mlp.up_proj", False)
        return h + _lin(gate * torch.sigmoid(gate) * up, self.w, lp + "mlp.down_proj", False)

    def norm(self, h):
        return _rms(h, self.w[self.p + "norm.weight"], self.eps)


def vst_f64(dec: Decoder, embeds, row_group, window_groups: int, ratio: int, summary_embed):
    """VST from SPEC §8 on one sample: ``embeds [L, d]``, ``row_group [L]`` (−1 = text). Returns the final hidden
    state of every input row ``[L, d]`` and the number of rows the memory holds at the end."""
    rows = embeds.shape[0]
    g = row_group.tolist()
    # segments: text runs whole; video runs cut every `window_groups` groups
    segs, i = [], 0
    while i < rows:
        j = i
        if g[i] < 0:
            while j < rows and g[j] < 0:
                j += 1
            segs.append((False, i, j))
        else:
            groups = []
            while j < rows and g[j] >= 0:
                if g[j] not in groups:
                    if len(groups) == window_groups:
                        break
                    groups.append(g[j])
                j += 1
            segs.append((True, i, j))
        i = j
    mem_k = [torch.zeros(dec.kv, 0, dec.hd, dtype=F64) for _ in range(dec.layers)]
    mem_v = [torch.zeros(dec.kv, 0, dec.hd, dtype=F64) for _ in range(dec.layers)]
    out = torch.zeros_like(embeds)
    for is_window, s, e in segs:
        raw = [embeds[t] for t in range(s, e)]
        seq, is_summary, raw_slot = [], [], []
        for t, x in enumerate(raw):
            raw_slot.append(len(seq))
            seq.append(x)
            is_summary.append(False)
            if is_window and ratio > 1 and ((t + 1) % ratio == 0 or t == len(raw) - 1):
                seq.append(summary_embed)
                is_summary.append(True)
        h = torch.stack(seq)
        summ = torch.tensor(is_summary)
        m, n = mem_k[0].shape[1], h.shape[0]
        qpos = torch.arange(m, m + n)
        kpos = torch.arange(m + n)
        allowed = torch.cat([torch.ones(n, m, dtype=torch.bool), torch.ones(n, n, dtype=torch.bool).tril()], 1)
        new_k, new_v = [], []
        for i in range(dec.layers):
            q, k, v = dec.qkv(i, h, summ)
            kk, vv = torch.cat([mem_k[i], k], 1), torch.cat([mem_v[i], v], 1)
            new_k.append(k)
            new_v.append(v)
            h = dec.finish(i, h, q, kk, vv, qpos, kpos, allowed, summ)
        h = dec.norm(h)
        keep = summ if (is_window and ratio > 1) else torch.ones(n, dtype=torch.bool)
        for i in range(dec.layers):
            mem_k[i] = torch.cat([mem_k[i], new_k[i][:, keep]], 1)
            mem_v[i] = torch.cat([mem_v[i], new_v[i][:, keep]], 1)
        out[s:e] = h[torch.tensor(raw_slot)]
    return out, mem_k[0].shape[1]


def lp_comp_f64(dec: Decoder, embeds, row_group, schedule: list[int]):
    """LP-Comp from SPEC §8 on one sample: layer l sees the text rows and each group's last ``schedule[l]`` rows, at
    their original positions 0…L−1, causally. Returns the final hidden rows ``[L, d]`` (rows dropped before the last
    layer hold their state when dropped) and the rows each layer saw."""
    rows = embeds.shape[0]
    g = row_group.tolist()
    h = embeds.clone()
    seen = []
    for i in range(dec.layers):
        keep = []
        for t in range(rows):
            if g[t] < 0:
                keep.append(t)
            else:
                after = sum(1 for u in range(t + 1, rows) if g[u] == g[t])
                if after < schedule[i]:
                    keep.append(t)
        seen.append(len(keep))
        idx = torch.tensor(keep)
        x = h[idx]
        q, k, v = dec.qkv(i, x, None)
        allowed = idx[None, :] <= idx[:, None]
        h = h.clone()
        h[idx] = dec.finish(i, x, q, k, v, idx, idx, allowed, None)
    return dec.norm(h), seen
