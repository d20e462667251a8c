"""Independent float64 re-derivation of the released Video-XL-Pro (v2) / Video-XL-2 forward, RELEASED.md §3–§5.

Written from ``shared/design/RELEASED.md`` and ``SPEC.md`` §2/§4/§5 only; it imports neither ``vxlp_model`` nor
``vxlp_ops`` and uses no model class from ``transformers`` (only its tokenizer). Every weight is cast to float64
and every step runs in float64, except the angle table of the RoPE applied to the video-block embeddings, which
is float32 as in the released code (RELEASED.md §4).

Entry point::

    released_forward_f64(ckpt_dir, frames, timestamps, question, keep_ratio=None) -> dict

Deterministic replacements for the released code's randomness (both documented differences):
- frame padding to a multiple of 4 repeats the last frame (and its timestamp) instead of ``torch.randperm``;
- the keep ratio is the argument ``keep_ratio`` instead of ``random.uniform(0.7, 0.99)``; ``None`` keeps every
  visual token (RoPE and score injection still happen).

The pieces (SigLIP, DTS, projector, selector, Qwen2) are module-level functions so that tests can check them
one by one. Tensors are float64 unless said otherwise.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

F64 = torch.float64

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
SAE_PREFIX = "model.sae."
WTTA_PREFIX = "model.WindowTimeToTokenAttention."

SYSTEM_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
VISUAL_PLACEHOLDER = "<|vision_pad|>"

# SigLIP so400m-patch14-384, used when config.json has no "vision_config" (the released config has none)
SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
DEFAULT_DTS_GRID = 24
DTS_NORM_GROUPS = 32
DTS_NORM_EPS = 1e-6
WTTA_HEADS = 4
EMBED_ROPE_BASE = 1e6
KEEP_MULTIPLE = 16


# ----------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class VariantRules:
    """What differs between the released variants in this forward (change here if research says otherwise)."""

    name: str
    time_text: Callable[[float], str]  # the time text of a group starting at t seconds
    selector: bool  # WTTA probe + text query scores, top-k keep
    rope_on_video_block: bool  # RoPE (interleaved, fp32 angle table) on the video-block embeddings
    inject_scores: bool  # E[visual n] += s[n] after that RoPE
    drop_tail: bool = False  # trim N mod 4 trailing frames (Video-XL-2's evaluation) instead of repeating the last


RULES = {
    "pro-v2": VariantRules(
        name="pro-v2",
        time_text=lambda t: f"Time {t:06.1f}s:",
        selector=True,
        rope_on_video_block=True,
        inject_scores=True,
    ),
    "video-xl-2": VariantRules(
        name="video-xl-2",
        time_text=lambda t: f"Time {round(t, 1)}s:",  # its eval: timestamps round(idx / fps, 1), unpadded
        selector=False,
        rope_on_video_block=False,
        inject_scores=False,
        drop_tail=True,  # its eval trims the frame count to a multiple of 4 (load_video)
    ),
}


def detect_variant(keys) -> str:
    """``"pro-v2"``, ``"pro-v1"`` or ``"video-xl-2"`` from the checkpoint's key names (RELEASED.md §1)."""
    keys = set(keys)
    if any(k.startswith(WTTA_PREFIX) for k in keys):
        return "pro-v2"
    if "model.beacon_embed_tokens.weight" in keys or any(".self_attn.beacon_" in k for k in keys):
        return "pro-v1"
    return "video-xl-2"


# ----------------------------------------------------------------------------------------------- loading
def load_weights_f64(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """Every tensor of the folder (safetensors index / single file, ``.bin`` index / single file) as float64."""
    from safetensors.torch import load_file

    def load_bin(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    def path(name):
        return os.path.join(ckpt_dir, name)

    raw: dict[str, torch.Tensor] = {}
    if os.path.exists(path("model.safetensors.index.json")) or os.path.exists(path("pytorch_model.bin.index.json")):
        index = "model.safetensors.index.json"
        loader = load_file
        if not os.path.exists(path(index)):
            index, loader = "pytorch_model.bin.index.json", load_bin
        with open(path(index)) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for name in files:
            raw.update(loader(path(name)))
    elif os.path.exists(path("model.safetensors")):
        raw = load_file(path("model.safetensors"))
    elif os.path.exists(path("pytorch_model.bin")):
        raw = load_bin(path("pytorch_model.bin"))
    else:
        raise FileNotFoundError(f"no weights in {ckpt_dir}")
    return {k: v.to(F64) for k, v in raw.items()}


def load_checkpoint(ckpt_dir: str):
    """``(config dict, float64 weights, tokenizer, variant)`` of a released-format folder."""
    from transformers import AutoTokenizer, PretrainedConfig

    with open(os.path.join(ckpt_dir, "config.json")) as f:
        cfg = json.load(f)
    w = load_weights_f64(ckpt_dir)
    # an empty config: the tokenizer class comes from tokenizer_config.json, and transformers does not try to
    # read the (unknown to it) "llava_qwen" config.json
    tok = AutoTokenizer.from_pretrained(ckpt_dir, config=PretrainedConfig())
    return cfg, w, tok, detect_variant(w)


def vision_config(cfg: dict, w: dict) -> dict:
    """SigLIP shape: config "vision_config" (test geometries) over so400m defaults; layer count from the keys."""
    vc = dict(SO400M)
    vc.update(cfg.get("vision_config", {}))
    lp = VISION_PREFIX + "encoder.layers."
    layers = {int(k[len(lp) :].split(".")[0]) for k in w if k.startswith(lp)}
    vc["num_hidden_layers"] = len(layers)
    assert layers == set(range(len(layers))), f"SigLIP layers are not 0…n−1: {sorted(layers)}"
    return vc


# ----------------------------------------------------------------------------------------------- §3 pixels
def preprocess_frames(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → ``[N, 3, S, S]``: PIL bicubic resize (no crop), ×1/255, mean = std = 0.5."""
    import numpy as np
    from PIL import Image

    out = []
    for f in frames:
        img = Image.fromarray(f.numpy().astype(np.uint8)).resize((image_size, image_size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()))
    x = torch.stack(out).to(F64) / 255.0
    x = (x - 0.5) / 0.5
    return x.permute(0, 3, 1, 2).contiguous()


def pad_frames(frames: torch.Tensor, timestamps: list[float], multiple: int = 4):
    """Repeat the last frame (and timestamp) until the count is a multiple of ``multiple``."""
    n = frames.shape[0]
    extra = (-n) % multiple
    if extra:
        frames = torch.cat([frames, frames[-1:].expand(extra, *frames.shape[1:])])
        timestamps = list(timestamps) + [timestamps[-1]] * extra
    return frames, list(timestamps)


# ----------------------------------------------------------------------------------------------- SigLIP
def layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x, w, prefix, bias=True):
    y = x @ w[prefix + ".weight"].T
    return y + w[prefix + ".bias"] if bias else y


def softmax_last(s):
    return torch.softmax(s, dim=-1)


def siglip_features(pixels: torch.Tensor, w: dict, vc: dict) -> torch.Tensor:
    """``[N, 3, S, S]`` → ``[N, g·g, C]``: the output of the last stored encoder layer (no post_layernorm)."""
    p = vc["patch_size"]
    n = pixels.shape[0]
    g = vc["image_size"] // p
    vp = VISION_PREFIX
    # conv with stride = kernel = p (no padding): patches in row-major order, each flattened as (3, p, p)
    x = pixels[:, :, : g * p, : g * p].reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * p * p)
    pw = w[vp + "embeddings.patch_embedding.weight"]
    h = x @ pw.reshape(pw.shape[0], -1).T + w[vp + "embeddings.patch_embedding.bias"]
    h = h + w[vp + "embeddings.position_embedding.weight"]
    heads, eps = vc["num_attention_heads"], vc["layer_norm_eps"]
    c = h.shape[-1]
    hd = c // heads
    for i in range(vc["num_hidden_layers"]):
        lp = f"{vp}encoder.layers.{i}."
        y = layer_norm(h, w[lp + "layer_norm1.weight"], w[lp + "layer_norm1.bias"], eps)
        q, k, v = (
            linear(y, w, lp + f"self_attn.{m}").reshape(n, -1, heads, hd).transpose(1, 2)  # [N, heads, g·g, hd]
            for m in ("q_proj", "k_proj", "v_proj")
        )
        a = softmax_last((q * hd**-0.5) @ k.transpose(-1, -2)) @ v  # [N, heads, g·g, hd]
        h = h + linear(a.transpose(1, 2).reshape(n, -1, c), w, lp + "self_attn.out_proj")
        y = layer_norm(h, w[lp + "layer_norm2.weight"], w[lp + "layer_norm2.bias"], eps)
        h = h + linear(gelu_tanh(linear(y, w, lp + "mlp.fc1")), w, lp + "mlp.fc2")
    return h


def grid_resize(feats: torch.Tensor, out_grid: int) -> torch.Tensor:
    """``[N, g·g, C]`` → ``[N, C, D, D]``: a view of ``[N, g, g, C]`` permuted, bilinear (align_corners=False)."""
    n, s, c = feats.shape
    g = math.isqrt(s)
    x = feats.reshape(n, g, g, c).permute(0, 3, 1, 2)
    return F.interpolate(x, size=(out_grid, out_grid), mode="bilinear", align_corners=False).contiguous()


def released_groups(feat_cf: torch.Tensor, frames_per_group: int = 4) -> torch.Tensor:
    """``feat.view(G, C, 4, D, D)`` of the contiguous ``[4G, C, D, D]``: ``X[g, c, t] = F[4g + (4c+t)//C, (4c+t) % C]``."""
    n, c, d1, d2 = feat_cf.shape
    return feat_cf.contiguous().view(n // frames_per_group, c, frames_per_group, d1, d2)


# ----------------------------------------------------------------------------------------------- DTS (SPEC §2)
def group_norm(x, weight, bias, groups, eps):
    """GroupNorm over (C/groups, *rest) per sample; ``x`` channels-first ``[B, C, ...]``."""
    b, c = x.shape[:2]
    xg = x.reshape(b, groups, -1)
    mu = xg.mean(-1, keepdim=True)
    var = ((xg - mu) ** 2).mean(-1, keepdim=True)
    xn = ((xg - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return xn * weight.reshape(shape) + bias.reshape(shape)


def conv1x1(x, weight, bias):
    """A kernel-1 Conv1d/Conv3d on channels-first ``x [B, Cin, ...]``: ``weight [Cout, Cin, 1, ...]``."""
    y = torch.einsum("oc,bc...->bo...", weight.reshape(weight.shape[0], weight.shape[1]), x)
    return y + bias.reshape((1, -1) + (1,) * (x.dim() - 2))


def spatial_attn(x, w, prefix):
    """AttnBlock3D on ``[G, C, T, H, W]``: GroupNorm over the sample, per-frame softmax attention, residual."""
    g, c, t, hh, ww = x.shape
    h = group_norm(x, w[prefix + "norm.weight"], w[prefix + "norm.bias"], DTS_NORM_GROUPS, DTS_NORM_EPS)
    q, k, v = (conv1x1(h, w[prefix + f"{m}.weight"], w[prefix + f"{m}.bias"]) for m in ("q", "k", "v"))

    def tokens(z):  # [G, C, T, H, W] → [G, T, HW, C]
        return z.reshape(g, c, t, hh * ww).permute(0, 2, 3, 1)

    a = softmax_last(tokens(q) @ tokens(k).transpose(-1, -2) * c**-0.5) @ tokens(v)  # [G, T, HW, C]
    a = a.permute(0, 3, 1, 2).reshape(g, c, t, hh, ww)
    return x + conv1x1(a, w[prefix + "proj_out.weight"], w[prefix + "proj_out.bias"])


def rel_index(i: int, j: int, r: int) -> int:
    """Relative-position table row of the pair (i, j): ``clamp(j − i, −R, R) + R``."""
    return min(max(j - i, -r), r) + r


def temporal_attention_core(q, k, v, rel_k, rel_v):
    """Released temporal attention on channels-first ``q, k, v [B, C, T]`` (unscaled), tables ``[2R+1, C]``.

    ``q, k ← q·C^(−1/4), k·C^(−1/4)``; ``w[i,j] = q_i·k_j + q_j·rel_k[clamp(i−j)+R]`` (the released *transposed*
    rel_k term, SPEC §2 / OPS.md op 2 with ``transposed_rel_k=True``); ``p = softmax_j w``;
    ``out_i = Σ_j p[i,j] (v_j + rel_v[clamp(j−i)+R])``. Returns ``[B, C, T]``.
    """
    b, c, t = q.shape
    r = (rel_k.shape[0] - 1) // 2
    s = c**-0.25
    q, k = q * s, k * s
    logits = torch.empty(b, t, t, dtype=q.dtype)
    for i in range(t):
        for j in range(t):
            logits[:, i, j] = (q[:, :, i] * k[:, :, j]).sum(1) + (q[:, :, j] * rel_k[rel_index(j, i, r)]).sum(1)
    p = softmax_last(logits)
    out = torch.zeros_like(v)
    for i in range(t):
        for j in range(t):
            out[:, :, i] += p[:, i, j, None] * (v[:, :, j] + rel_v[rel_index(i, j, r)])
    return out


def temporal_attn(x, w, prefix):
    """TemporalAttn on ``[G, C, T, H, W]``: one length-T sequence per spatial position, residual."""
    g, c, t, hh, ww = x.shape
    seq = x.permute(0, 3, 4, 1, 2).reshape(g * hh * ww, c, t)  # [B, C, T]
    h = group_norm(seq, w[prefix + "norm.weight"], w[prefix + "norm.bias"], DTS_NORM_GROUPS, DTS_NORM_EPS)
    qkv = conv1x1(h, w[prefix + "qkv.weight"], w[prefix + "qkv.bias"])
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    out = temporal_attention_core(
        q, k, v, w[prefix + "relative_position_k.embeddings_table"], w[prefix + "relative_position_v.embeddings_table"]
    )
    seq = seq + conv1x1(out, w[prefix + "proj_out.weight"], w[prefix + "proj_out.bias"])
    return seq.reshape(g, hh, ww, c, t).permute(0, 3, 4, 1, 2)


def temporal_merge_conv(x, w, prefix, stride_t=2):
    """Conv3d k=3, stride (2,1,1), bias, replicate padding T 1/0, H 1/1, W 1/1, on ``[G, C, T, H, W]``.

    Written as 27 shifted channel contractions over the replicate-padded input (clamped indices); the sum is
    accumulated channels-last (one matmul per kernel tap) and returned channels-first ``[G, Cout, T_out, H, W]``."""
    g, c, t, hh, ww = x.shape
    weight, bias = w[prefix + "conv.weight"], w[prefix + "conv.bias"]
    it = torch.arange(-1, t).clamp(0, t - 1)  # front 1, back 0
    ih = torch.arange(-1, hh + 1).clamp(0, hh - 1)
    iw = torch.arange(-1, ww + 1).clamp(0, ww - 1)
    xp = x[:, :, it][:, :, :, ih][:, :, :, :, iw].permute(0, 2, 3, 4, 1)  # [G, T+1, H+2, W+2, C]
    t_out = (t + 1 - 3) // stride_t + 1
    taps = weight.permute(2, 3, 4, 1, 0).contiguous()  # [3, 3, 3, Cin, Cout]
    out = torch.zeros(g * t_out * hh * ww, weight.shape[0], dtype=x.dtype)
    for kt in range(3):
        for kh in range(3):
            for kw in range(3):
                xs = xp[:, kt : kt + stride_t * (t_out - 1) + 1 : stride_t, kh : kh + hh, kw : kw + ww]
                out += xs.reshape(-1, c) @ taps[kt, kh, kw]
    return (out + bias).reshape(g, t_out, hh, ww, -1).permute(0, 4, 1, 2, 3)


def dts_forward(x: torch.Tensor, w: dict) -> torch.Tensor:
    """DTS encoder on ``[G, C, T=4, D, D]`` (released layout already applied) → ``[G, D·D, C]`` row-major."""
    te = w[SAE_PREFIX + "temporal_encoding"]  # [T, C]
    x = x + te.T[None, :, :, None, None]
    for s in (0, 3):
        x = spatial_attn(x, w, f"{SAE_PREFIX}encoder.{s}.")
        x = temporal_attn(x, w, f"{SAE_PREFIX}encoder.{s + 1}.")
        x = temporal_merge_conv(x, w, f"{SAE_PREFIX}encoder.{s + 2}.")
    g, c = x.shape[:2]
    assert x.shape[2] == 1, x.shape
    return x.reshape(g, c, -1).transpose(1, 2)


def project_and_pool(z: torch.Tensor, w: dict, grid: int, stride: int) -> torch.Tensor:
    """``[G, D·D, C]`` → projector (Linear · GELU(erf) · Linear) → ``[G, D, D, d]`` → stride×stride average pool
    → ``[G, (D/s)², d]`` row-major."""
    y = linear(gelu_erf(linear(z, w, "model.mm_projector.0")), w, "model.mm_projector.2")
    g, _, d = y.shape
    y = y.reshape(g, grid // stride, stride, grid // stride, stride, d).mean(dim=(2, 4))
    return y.reshape(g, -1, d)


def visual_tokens(frames, timestamps, cfg, w, drop_tail=False):
    """§3 end to end: ``(V [G·P, d], group start times [G], P)``."""
    vc = vision_config(cfg, w)
    if drop_tail and frames.shape[0] >= 4 and frames.shape[0] % 4:
        keep = frames.shape[0] - frames.shape[0] % 4
        frames, timestamps = frames[:keep], list(timestamps)[:keep]
    frames, timestamps = pad_frames(frames, timestamps, 4)
    pixels = preprocess_frames(frames, vc["image_size"])
    feats = siglip_features(pixels, w, vc)
    grid = cfg.get("dts_grid", DEFAULT_DTS_GRID)
    x = released_groups(grid_resize(feats, grid), 4)
    z = dts_forward(x, w)
    v = project_and_pool(z, w, grid, cfg.get("mm_spatial_pool_stride", 2))
    g, p, d = v.shape
    return v.reshape(g * p, d), [float(timestamps[4 * i]) for i in range(g)], p


# ----------------------------------------------------------------------------------------------- §4 selector
def rope_interleaved_fp32_table(e: torch.Tensor, base: float = EMBED_ROPE_BASE) -> torch.Tensor:
    """RoPE on rows ``e [L, d]`` at positions 0…L−1, interleaved pairs ``(e_2i, e_2i+1)``, angle ``p·base^(−2i/d)``.

    The angle table is float32 as in the released code: ``exp(2i · (−ln base / d))`` in fp32, times the fp32
    position, sin/cos in fp32; then cast to ``e``'s dtype for the rotation."""
    n, d = e.shape
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(base) / d))
    ang = torch.arange(n, dtype=torch.float32)[:, None] * div[None, :]
    sin, cos = torch.sin(ang).to(e.dtype), torch.cos(ang).to(e.dtype)
    ev, od = e[:, 0::2], e[:, 1::2]
    out = torch.empty_like(e)
    out[:, 0::2] = ev * cos - od * sin
    out[:, 1::2] = od * cos + ev * sin
    return out


def wtta_probe(time_rows: torch.Tensor, vis_rows: torch.Tensor, w: dict, heads: int = WTTA_HEADS) -> torch.Tensor:
    """WindowTimeToTokenAttention for one group: time rows ``[nt, d]``, visual rows ``[P, d]`` → ``Z [P, d]``.

    ``Q = q_proj(time)``, ``K = k_proj(visual)``; per head ``softmax over the time rows of K Qᵀ / sqrt(d/heads)``;
    the values are Q itself; ``Z = out_proj(concat heads)``, no residual (``v_proj`` unused)."""
    d = time_rows.shape[-1]
    hd = d // heads
    q = linear(time_rows, w, WTTA_PREFIX + "q_proj").reshape(-1, heads, hd).transpose(0, 1)  # [h, nt, hd]
    k = linear(vis_rows, w, WTTA_PREFIX + "k_proj").reshape(-1, heads, hd).transpose(0, 1)  # [h, P, hd]
    p = softmax_last(k @ q.transpose(-1, -2) / math.sqrt(hd))  # [h, P, nt]
    o = (p @ q).transpose(0, 1).reshape(-1, d)
    return linear(o, w, WTTA_PREFIX + "out_proj")


def minmax(s: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1]. The released code has no epsilon (0/0 on a constant score); here a constant gives zeros."""
    lo, hi = s.min(), s.max()
    if float(hi - lo) == 0.0:
        return torch.zeros_like(s)
    return (s - lo) / (hi - lo)


def keep_count(n_visual: int, keep_ratio) -> int:
    """``k = int(N·r); k −= k mod 16``; ``keep_ratio=None`` keeps all N."""
    if keep_ratio is None:
        return n_visual
    k = int(n_visual * keep_ratio)
    return k - k % KEEP_MULTIPLE


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores (ties → lower index), sorted ascending."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values


# ----------------------------------------------------------------------------------------------- §5 prompt
def build_prompt(tok, time_texts: list[str], per_group: int, question: str):
    """Token ids of prefix + per group (time text ids + P placeholders) + suffix, and the segment layout.

    Returns ``(ids, layout)``, ``layout = {"prefix": n_prefix, "groups": [(time_start, n_time, vis_start)],
    "block": (start, end), "suffix": n_suffix}`` (indices into ``ids``)."""

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    pad_id = tok.convert_tokens_to_ids(VISUAL_PLACEHOLDER)
    ids = list(enc(SYSTEM_PREFIX))
    block_start = len(ids)
    groups = []
    for text in time_texts:
        t_ids = enc(text)
        groups.append((len(ids), len(t_ids), len(ids) + len(t_ids)))
        ids += t_ids + [pad_id] * per_group
    block_end = len(ids)
    suffix = enc(f"\n{question}<|im_end|>\n<|im_start|>assistant\n")
    ids += suffix
    layout = {"prefix": block_start, "groups": groups, "block": (block_start, block_end), "suffix": len(suffix)}
    return ids, layout


# ----------------------------------------------------------------------------------------------- Qwen2
def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rotate_half_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """HF Qwen2 RoPE (first half / second half) on ``x [heads, L, hd]``, inverse frequencies in float64."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=F64) / hd)
    ang = positions.to(F64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def qwen2_forward(embeds: torch.Tensor, w: dict, cfg: dict) -> torch.Tensor:
    """Qwen2 decoder on ``embeds [L, d]`` at positions 0…L−1 (causal) → logits ``[L, vocab]``."""
    n, d = embeds.shape
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = torch.arange(n)
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    h = embeds
    for i in range(cfg["num_hidden_layers"]):
        lp = f"model.layers.{i}."
        x = rms_norm(h, w[lp + "input_layernorm.weight"], eps)
        q = linear(x, w, lp + "self_attn.q_proj").reshape(n, heads, hd).transpose(0, 1)
        k = linear(x, w, lp + "self_attn.k_proj").reshape(n, kv_heads, hd).transpose(0, 1)
        v = linear(x, w, lp + "self_attn.v_proj").reshape(n, kv_heads, hd).transpose(0, 1)
        q, k = rotate_half_rope(q, pos, theta), rotate_half_rope(k, pos, theta)
        rep = heads // kv_heads
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)  # GQA: head i uses KV head i // rep
        s = (q @ k.transpose(-1, -2)) * hd**-0.5
        s = s.masked_fill(causal, float("-inf"))
        a = (softmax_last(s) @ v).transpose(0, 1).reshape(n, d)
        h = h + linear(a, w, lp + "self_attn.o_proj", bias=False)
        x = rms_norm(h, w[lp + "post_attention_layernorm.weight"], eps)
        gate = linear(x, w, lp + "mlp.gate_proj", bias=False)
        up = linear(x, w, lp + "mlp.up_proj", bias=False)
        h = h + linear(gate * torch.sigmoid(gate) * up, w, lp + "mlp.down_proj", bias=False)
    h = rms_norm(h, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return h @ head.T


# ----------------------------------------------------------------------------------------------- entry point
def released_forward_f64(ckpt_dir, frames: torch.Tensor, timestamps, question: str, keep_ratio=None) -> dict:
    """The released forward (RELEASED.md §3–§5) in float64 on a released-format folder.

    ``frames``: uint8 ``[N, H, W, 3]``; ``timestamps``: N floats (seconds); ``keep_ratio``: the selector's r
    (pro-v2 only; ``None`` keeps every visual token; ignored by video-xl-2).
    Returns ``{"logits" [L', vocab] float64 (every position of the compacted sequence), "input_ids" (the
    uncompacted prompt ids, list), "kept_visual" (int64 [k], indices into the N visual tokens, sorted),
    "scores" (float64 [N] or None), "visual_tokens" (V float64 [N, d]), "num_groups", "variant",
    "inputs_embeds" ([L', d], the LLM input), "kept_positions" (int64 [L'], indices into input_ids),
    "time_texts" (list of str)}``. Raises ``NotImplementedError`` for pro-v1 (needs the beacon LLM).
    """
    cfg, w, tok, variant = load_checkpoint(os.fspath(ckpt_dir))
    if variant not in RULES:
        raise NotImplementedError(f"variant {variant!r}: the oracle covers {sorted(RULES)}")
    rules = RULES[variant]
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if len(timestamps) != frames.shape[0]:
        raise ValueError(f"{len(timestamps)} timestamps for {frames.shape[0]} frames")

    v, starts, per_group = visual_tokens(frames, list(timestamps), cfg, w, drop_tail=rules.drop_tail)
    n_groups = len(starts)
    time_texts = [rules.time_text(t) for t in starts]
    ids, layout = build_prompt(tok, time_texts, per_group, question)
    b0, b1 = layout["block"]

    embed = w["model.embed_tokens.weight"]
    e = embed[torch.tensor(ids)]  # [L_total, d]
    is_visual = torch.zeros(len(ids), dtype=torch.bool)
    for _, _, vs in layout["groups"]:
        is_visual[vs : vs + per_group] = True
    e[is_visual] = v  # placeholders overwritten by V, in order
    block = e[b0:b1].clone()
    vis_in_block = is_visual[b0:b1]

    scores = None
    n_visual = v.shape[0]
    kept = torch.arange(n_visual)
    if rules.selector:
        text_rows = torch.cat([e[:b0], e[b1:]])  # every prompt token outside the video block
        tq = gelu_erf(linear(text_rows, w, "model.text_mlp.0"))  # [L_t, d]
        z = torch.cat([wtta_probe(e[ts : ts + nt], e[vs : vs + per_group], w) for ts, nt, vs in layout["groups"]])
        scores = minmax((z @ tq.T).mean(dim=1))  # [N]
        kept = topk_sorted(scores, keep_count(n_visual, keep_ratio))
    if rules.rope_on_video_block:
        block = rope_interleaved_fp32_table(block)
    if rules.inject_scores and scores is not None:
        block[vis_in_block] = block[vis_in_block] + scores[:, None]

    # compact the block: every time row, the kept visual rows, in order
    keep_row = ~vis_in_block
    vis_rows = torch.nonzero(vis_in_block).squeeze(1)
    keep_row[vis_rows[kept]] = True
    kept_positions = torch.cat([torch.arange(b0), b0 + torch.nonzero(keep_row).squeeze(1), torch.arange(b1, len(ids))])
    llm_in = torch.cat([e[:b0], block[keep_row], e[b1:]])
    logits = qwen2_forward(llm_in, w, cfg)
    return {
        "logits": logits,
        "input_ids": ids,
        "kept_visual": kept,
        "scores": scores,
        "visual_tokens": v,
        "num_groups": n_groups,
        "variant": variant,
        "inputs_embeds": llm_in,
        "kept_positions": kept_positions,
        "time_texts": time_texts,
    }
