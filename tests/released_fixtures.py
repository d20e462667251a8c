"""Synthetic checkpoints in the *released* Video-XL-Pro / Video-XL-2 format, for converter and parity tests.

Written from ``shared/design/RELEASED.md`` §1–§2 and ``SPEC.md`` §2 ("Parameter names in the released
checkpoint"); nothing here imports ``vxlp_model`` or ``vxlp_ops``. A written folder holds what a user who
downloaded a released checkpoint holds: ``config.json`` (a LLaVA-Qwen config as the released code saves it),
the weights under the released key names (safetensors with an index, one safetensors file, or ``.bin``), and
Qwen2-style tokenizer files (a small byte-level BPE with Qwen2.5's special tokens and a ChatML template).

Public API::

    write_released_checkpoint(out_dir, variant="pro-v2", *, geometry="tiny", seed=0, dtype=torch.float32,
                              weight_format="safetensors-index", num_shards=3, include_lm_head=False,
                              beacon_config=None) -> str
    released_state_dict(out_dir) -> dict[str, torch.Tensor]
    write_released_tokenizer(out_dir) -> transformers.PreTrainedTokenizerBase
    released_key_shapes(variant, geometry, vocab_size, include_lm_head=False,
                        beacon_config=None) -> dict[str, tuple[int, ...]]
    TINY, REAL2, GEOMETRIES, VARIANTS, WEIGHT_FORMATS, SPECIAL_TOKENS, TOKENIZER_WORDS

Geometry "tiny" is a test geometry: its ``config.json`` carries two keys the released config lacks,
``vision_config`` (the SigLIP shape) and ``dts_grid``; readers fall back to so400m-patch14-384 and grid 24
when they are absent (geometry "real2", which has the real widths with 2 SigLIP and 2 LLM layers).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch

VARIANTS = ("pro-v2", "video-xl-2", "pro-v1")
WEIGHT_FORMATS = ("safetensors-index", "safetensors-single", "bin")

VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."

# Qwen2.5's special tokens in Qwen2.5's id order (151643, 151644, 151645, ..., 151652 … 151656 there).
SPECIAL_TOKENS = (
    "<|endoftext|>",  # pad (and bos_token_id in Qwen2.5's config)
    "<|im_start|>",
    "<|im_end|>",  # eos
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",  # the visual placeholder of the released splice
    "<|image_pad|>",
    "<|video_pad|>",
)
# Whole words merged into single tokens (with and without a leading space). Digits are never merged, so
# "Time {t:06.1f}s:" is always 10 tokens: Time, Ġ, 4 digits, '.', 1 digit, s, ':' (as under Qwen2.5).
TOKENIZER_WORDS = (
    "system", "user", "assistant", "You", "are", "a", "helpful", "Time", "What", "colour", "is", "the",
    "video", "Best", "option",
)  # fmt: skip

# Qwen2.5's ChatML template, reduced to the plain-message case (no tools).
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Geometry:
    """Shapes of one synthetic checkpoint. ``vision_layers``/``llm_layers`` are the layer counts *stored*."""

    name: str
    # SigLIP
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    vision_eps: float
    # DTS (width = vision_hidden)
    dts_grid: int
    dts_norm_groups: int
    dts_frames: int
    dts_max_relative: int
    # LLM (Qwen2)
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    rope_theta: float
    rms_norm_eps: float
    # selector
    wtta_heads: int = 4
    pool_stride: int = 2
    write_test_overrides: bool = False  # add config keys "vision_config" and "dts_grid" (test geometries only)

    @property
    def vision_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_group(self) -> int:
        return (self.dts_grid // self.pool_stride) ** 2


TINY = Geometry(
    name="tiny",
    vision_hidden=64, vision_intermediate=128, vision_layers=3, vision_heads=4, image_size=36, patch_size=4,
    vision_eps=1e-6,
    dts_grid=6, dts_norm_groups=32, dts_frames=4, dts_max_relative=64,
    llm_hidden=64, llm_layers=2, llm_heads=4, llm_kv_heads=2, llm_intermediate=128, rope_theta=1e6,
    rms_norm_eps=1e-6,
    write_test_overrides=True,
)  # fmt: skip
REAL2 = Geometry(
    name="real2",
    vision_hidden=1152, vision_intermediate=4304, vision_layers=2, vision_heads=16, image_size=384, patch_size=14,
    vision_eps=1e-6,
    dts_grid=24, dts_norm_groups=32, dts_frames=4, dts_max_relative=64,
    llm_hidden=2048, llm_layers=2, llm_heads=16, llm_kv_heads=2, llm_intermediate=11008, rope_theta=1e6,
    rms_norm_eps=1e-6,
)  # fmt: skip
GEOMETRIES = {"tiny": TINY, "real2": REAL2}


def _geometry(geometry) -> Geometry:
    if isinstance(geometry, Geometry):
        return geometry
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {sorted(GEOMETRIES)} or a Geometry, got {geometry!r}")
    return GEOMETRIES[geometry]


# ----------------------------------------------------------------------------------------------- tokenizer
def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair of lowest rank (leftmost occurrence first)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _vocab_and_merges():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    words = sorted(TOKENIZER_WORDS, key=lambda w: (-len(w), w))
    # Each new word: tokenize it with the merges so far, then append merges joining the pieces left to right.
    # Appended merges rank below every earlier one, so they never change how an earlier word tokenizes.
    for w in words + [" " + w for w in words]:
        pieces = _bpe([b2u[b] for b in w.encode("utf-8")], ranks)
        cur = pieces[0]
        for nxt in pieces[1:]:
            pair = (cur, nxt)
            cur = cur + nxt
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            vocab.setdefault(cur, len(vocab))
    for s in SPECIAL_TOKENS:
        vocab[s] = len(vocab)
    return vocab, merges


def write_released_tokenizer(out_dir: str):
    """Write a small byte-level BPE Qwen2 tokenizer (Qwen2.5's special tokens, ChatML template) to ``out_dir``.

    Returns the tokenizer. Vocabulary: the 256 byte symbols, the merged words of ``TOKENIZER_WORDS`` (with and
    without a leading space), then ``SPECIAL_TOKENS`` in Qwen2.5's order. No BOS, no ``<image>`` token.
    """
    from transformers import Qwen2Tokenizer

    vocab, merges = _vocab_and_merges()
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[s for s in SPECIAL_TOKENS if s not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


# ----------------------------------------------------------------------------------------------- key table
def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _vocab_size() -> int:
    vocab, _ = _vocab_and_merges()
    return _round8(len(vocab))


def _beacon_param(beacon_config) -> list[str]:
    param = beacon_config.get("beacon_param", ["q", "k", "v", "o"])
    return param.replace(",", " ").split() if isinstance(param, str) else list(param)


def _param_specs(variant: str, g: Geometry, vocab_size: int, include_lm_head: bool, beacon_config=None):
    """Ordered ``{key: (shape, std, mean)}``; a parameter is drawn as ``mean + std · N(0, 1)``.

    pro-v1 without ``beacon_config``: all four beacon projections, each with a bias (recognisable only). With it:
    the released Qwen2 beacon layout — ``beacon_{p}_proj`` for each ``p`` of its ``beacon_param`` (default q, k, v,
    o), with a bias exactly when the original projection has one (``beacon_o_proj`` has none), and
    ``mlp.beacon_{up,down}_proj`` when ``beacon_param`` holds ``"mlp"``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    specs: dict[str, tuple[tuple[int, ...], float, float]] = {}
    bias_std, norm_std = 0.05, 0.1

    def linear(key, out_f, in_f, bias=True):
        specs[key + ".weight"] = ((out_f, in_f), in_f**-0.5, 0.0)
        if bias:
            specs[key + ".bias"] = ((out_f,), bias_std, 0.0)

    def norm(key, n, bias=True):
        specs[key + ".weight"] = ((n,), norm_std, 1.0)
        if bias:
            specs[key + ".bias"] = ((n,), bias_std, 0.0)

    # SigLIP (last layer deleted in the released tower: whatever is stored is used; post_layernorm never applied)
    c, p = g.vision_hidden, g.patch_size
    vp = VISION_PREFIX
    specs[vp + "embeddings.patch_embedding.weight"] = ((c, 3, p, p), (3 * p * p) ** -0.5, 0.0)
    specs[vp + "embeddings.patch_embedding.bias"] = ((c,), bias_std, 0.0)
    specs[vp + "embeddings.position_embedding.weight"] = ((g.vision_grid**2, c), 0.3, 0.0)
    for n in range(g.vision_layers):
        lp = f"{vp}encoder.layers.{n}."
        norm(lp + "layer_norm1", c)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(lp + "self_attn." + proj, c, c)
        norm(lp + "layer_norm2", c)
        linear(lp + "mlp.fc1", g.vision_intermediate, c)
        linear(lp + "mlp.fc2", c, g.vision_intermediate)
    norm(vp + "post_layernorm", c)

    d = g.llm_hidden
    # projector mlp2x_gelu
    linear("model.mm_projector.0", d, c)
    linear("model.mm_projector.2", d, d)

    # DTS (SPEC §2): every conv carries a bias, including the temporal blocks' proj_out
    sp = "model.sae."
    specs[sp + "temporal_encoding"] = ((g.dts_frames, c), 0.3, 0.0)
    for i in (0, 3):
        norm(f"{sp}encoder.{i}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            specs[f"{sp}encoder.{i}.{n}.weight"] = ((c, c, 1, 1, 1), c**-0.5, 0.0)
            specs[f"{sp}encoder.{i}.{n}.bias"] = ((c,), bias_std, 0.0)
    rows = 2 * g.dts_max_relative + 1
    for i in (1, 4):
        norm(f"{sp}encoder.{i}.norm", c)
        specs[f"{sp}encoder.{i}.qkv.weight"] = ((3 * c, c, 1), c**-0.5, 0.0)
        specs[f"{sp}encoder.{i}.qkv.bias"] = ((3 * c,), bias_std, 0.0)
        specs[f"{sp}encoder.{i}.relative_position_k.embeddings_table"] = ((rows, c), 0.1, 0.0)
        specs[f"{sp}encoder.{i}.relative_position_v.embeddings_table"] = ((rows, c), 0.1, 0.0)
        specs[f"{sp}encoder.{i}.proj_out.weight"] = ((c, c, 1), c**-0.5, 0.0)
        specs[f"{sp}encoder.{i}.proj_out.bias"] = ((c,), bias_std, 0.0)
    for i in (2, 5):
        specs[f"{sp}encoder.{i}.conv.weight"] = ((c, c, 3, 3, 3), (27 * c) ** -0.5, 0.0)
        specs[f"{sp}encoder.{i}.conv.bias"] = ((c,), bias_std, 0.0)

    # selector
    if variant in ("pro-v2", "pro-v1"):
        linear("model.text_mlp.0", d, d)
    if variant == "pro-v2":
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear("model.WindowTimeToTokenAttention." + proj, d, d)

    # Qwen2
    hd = d // g.llm_heads
    kv = g.llm_kv_heads * hd
    specs["model.embed_tokens.weight"] = ((vocab_size, d), 1.0, 0.0)
    if variant == "pro-v1":
        specs["model.beacon_embed_tokens.weight"] = ((1, d), 1.0, 0.0)
    for n in range(g.llm_layers):
        lp = f"model.layers.{n}."
        linear(lp + "self_attn.q_proj", d, d)
        linear(lp + "self_attn.k_proj", kv, d)
        linear(lp + "self_attn.v_proj", kv, d)
        linear(lp + "self_attn.o_proj", d, d, bias=False)
        if variant == "pro-v1" and beacon_config is None:
            linear(lp + "self_attn.beacon_q_proj", d, d)
            linear(lp + "self_attn.beacon_k_proj", kv, d)
            linear(lp + "self_attn.beacon_v_proj", kv, d)
            linear(lp + "self_attn.beacon_o_proj", d, d)
        elif variant == "pro-v1":
            param = _beacon_param(beacon_config)
            for p_name, out_f in (("q", d), ("k", kv), ("v", kv), ("o", d)):
                if p_name in param:
                    linear(lp + f"self_attn.beacon_{p_name}_proj", out_f, d, bias=p_name != "o")
        linear(lp + "mlp.gate_proj", g.llm_intermediate, d, bias=False)
        linear(lp + "mlp.up_proj", g.llm_intermediate, d, bias=False)
        linear(lp + "mlp.down_proj", d, g.llm_intermediate, bias=False)
        if variant == "pro-v1" and beacon_config is not None and "mlp" in _beacon_param(beacon_config):
            linear(lp + "mlp.beacon_up_proj", g.llm_intermediate, d, bias=False)
            linear(lp + "mlp.beacon_down_proj", d, g.llm_intermediate, bias=False)
        norm(lp + "input_layernorm", d, bias=False)
        norm(lp + "post_attention_layernorm", d, bias=False)
    norm("model.norm", d, bias=False)
    if include_lm_head:
        linear("lm_head", vocab_size, d, bias=False)
    return specs


def released_key_shapes(
    variant: str, geometry="tiny", vocab_size: int | None = None, include_lm_head=False, beacon_config=None
):
    """``{key: shape}`` of a synthetic released checkpoint (``vocab_size`` defaults to the fixture tokenizer's)."""
    g = _geometry(geometry)
    vocab_size = _vocab_size() if vocab_size is None else vocab_size
    return {k: s for k, (s, _, _) in _param_specs(variant, g, vocab_size, include_lm_head, beacon_config).items()}


# ----------------------------------------------------------------------------------------------- config
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}


def _config(g: Geometry, vocab_size: int, tok, dtype, include_lm_head: bool) -> dict:
    cfg = {
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "vocab_size": vocab_size,
        "hidden_size": g.llm_hidden,
        "intermediate_size": g.llm_intermediate,
        "num_hidden_layers": g.llm_layers,
        "num_attention_heads": g.llm_heads,
        "num_key_value_heads": g.llm_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rope_theta": g.rope_theta,
        "rms_norm_eps": g.rms_norm_eps,
        "tie_word_embeddings": not include_lm_head,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "use_cache": True,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "torch_dtype": _DTYPE_NAMES[dtype],
        "mm_projector_type": "mlp2x_gelu",
        "mm_spatial_pool_mode": "average",
        "mm_spatial_pool_stride": g.pool_stride,
        "mm_hidden_size": g.vision_hidden,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "tokenizer_model_max_length": 32768,
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
    }
    if g.write_test_overrides:
        # test-geometry overrides, absent from the released config (readers default to so400m and grid 24)
        cfg["vision_config"] = {
            "hidden_size": g.vision_hidden,
            "intermediate_size": g.vision_intermediate,
            "num_hidden_layers": g.vision_layers,
            "num_attention_heads": g.vision_heads,
            "image_size": g.image_size,
            "patch_size": g.patch_size,
            "layer_norm_eps": g.vision_eps,
            "hidden_act": "gelu_pytorch_tanh",
        }
        cfg["dts_grid"] = g.dts_grid
    return cfg


# ----------------------------------------------------------------------------------------------- weights I/O
_WEIGHT_FILE_PREFIXES = ("model.safetensors", "model-", "pytorch_model")


def _shards(keys: list[str], sd: dict[str, torch.Tensor], n: int) -> list[list[str]]:
    """Split ``keys`` (in order) into ``n`` non-empty contiguous runs of roughly equal bytes."""
    n = max(1, min(n, len(keys)))
    sizes = [sd[k].numel() * sd[k].element_size() for k in keys]
    total = sum(sizes)
    out: list[list[str]] = [[] for _ in range(n)]
    acc, s = 0, 0
    for i, (k, b) in enumerate(zip(keys, sizes)):
        remaining_keys = len(keys) - i
        remaining_shards = n - s - 1
        if out[s] and s < n - 1 and (acc >= total * (s + 1) / n or remaining_keys <= remaining_shards):
            s += 1
        out[s].append(k)
        acc += b
    return out


def _write_weights(out_dir: str, sd: dict[str, torch.Tensor], weight_format: str, num_shards: int) -> None:
    from safetensors.torch import save_file

    keys = list(sd)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    if weight_format == "safetensors-single":
        save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    if weight_format == "bin" and num_shards <= 1:
        torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
        return
    shards = _shards(keys, sd, num_shards)
    n = len(shards)
    weight_map = {}
    for i, shard_keys in enumerate(shards, start=1):
        part = {k: sd[k] for k in shard_keys}
        if weight_format == "safetensors-index":
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            save_file(part, os.path.join(out_dir, name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
            torch.save(part, os.path.join(out_dir, name))
        weight_map.update({k: name for k in shard_keys})
    index = "model.safetensors.index.json" if weight_format == "safetensors-index" else "pytorch_model.bin.index.json"
    with open(os.path.join(out_dir, index), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def released_state_dict(out_dir: str) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder as one ``{key: tensor}`` dict, in their stored dtype.

    Reads, in this order of preference: ``model.safetensors.index.json`` (+ shards), ``model.safetensors``,
    ``pytorch_model.bin.index.json`` (+ shards), ``pytorch_model.bin``. Raises ``FileNotFoundError`` if none.
    """
    from safetensors.torch import load_file

    def load_bin(path):
        return torch.load(path, map_location="cpu", weights_only=True)

    def load_indexed(index, loader):
        with open(os.path.join(out_dir, index)) as f:
            weight_map = json.load(f)["weight_map"]
        sd: dict[str, torch.Tensor] = {}
        for name in sorted(set(weight_map.values())):
            for k, v in loader(os.path.join(out_dir, name)).items():
                if weight_map.get(k) != name:
                    raise ValueError(f"{name} holds {k!r}, which {index} does not map to it")
                sd[k] = v
        missing = set(weight_map) - set(sd)
        if missing:
            raise ValueError(f"{index} maps keys that no shard holds: {sorted(missing)[:5]}")
        return sd

    def exists(name):
        return os.path.exists(os.path.join(out_dir, name))

    if exists("model.safetensors.index.json"):
        return load_indexed("model.safetensors.index.json", load_file)
    if exists("model.safetensors"):
        return load_file(os.path.join(out_dir, "model.safetensors"))
    if exists("pytorch_model.bin.index.json"):
        return load_indexed("pytorch_model.bin.index.json", load_bin)
    if exists("pytorch_model.bin"):
        return load_bin(os.path.join(out_dir, "pytorch_model.bin"))
    raise FileNotFoundError(f"no safetensors or pytorch_model.bin weights in {out_dir}")


# ----------------------------------------------------------------------------------------------- entry point
def write_released_checkpoint(
    out_dir,
    variant: str = "pro-v2",
    *,
    geometry="tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weight_format: str = "safetensors-index",
    num_shards: int = 3,
    include_lm_head: bool = False,
    beacon_config: dict | None = None,
) -> str:
    """Write a synthetic released-format checkpoint (config, weights, tokenizer) to ``out_dir``; return it.

    ``variant``: ``"pro-v2"`` (WindowTimeToTokenAttention + text_mlp), ``"video-xl-2"`` (neither), ``"pro-v1"``
    (text_mlp, beacon keys, no WTTA; recognisable only unless ``beacon_config`` is given). ``beacon_config``
    (pro-v1 only): Activation-Beacon settings written into ``config.json`` as they are (e.g. ``{"beacon_window":
    18, "beacon_ratio": [4]}``); the beacon weights then follow the released Qwen2 code (see :func:`_param_specs`:
    ``beacon_param`` decides which beacon projections exist, ``beacon_o_proj`` has no bias). ``geometry``:
    ``"tiny"``, ``"real2"`` or a :class:`Geometry`. Weights are drawn from ``torch.Generator().manual_seed(seed)``
    in float32 at scales that keep activations O(1) (linear ~ N(0, 1/fan_in), biases ~ N(0, 0.05²), norm weights
    ~ 1 + N(0, 0.1²), conv3d ~ N(0, 1/(27·C)), relative tables ~ N(0, 0.1²), temporal encoding and embeddings
    non-zero), then cast to ``dtype``. ``lm_head.weight`` is written only if ``include_lm_head`` (then
    ``tie_word_embeddings`` is false). ``weight_format``: one of ``WEIGHT_FORMATS``; ``num_shards`` applies to
    ``"safetensors-index"`` and (when > 1) ``"bin"``. Raises ``FileExistsError`` if ``out_dir`` already holds
    weight files, ``ValueError`` on an unknown variant, geometry or format, or ``beacon_config`` for another variant.
    """
    g = _geometry(geometry)
    if weight_format not in WEIGHT_FORMATS:
        raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if beacon_config is not None and variant != "pro-v1":
        raise ValueError(f"beacon_config applies to the pro-v1 variant only, not {variant!r}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    stale = [f for f in os.listdir(out_dir) if f.startswith(_WEIGHT_FILE_PREFIXES)]
    if stale:
        raise FileExistsError(f"{out_dir} already holds weight files: {sorted(stale)}")

    tok = write_released_tokenizer(out_dir)
    vocab_size = _round8(len(tok))
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (shape, std, mean) in _param_specs(variant, g, vocab_size, include_lm_head, beacon_config).items():
        t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(std).add_(mean)
        sd[key] = t.to(dtype).contiguous()
    _write_weights(out_dir, sd, weight_format, num_shards)
    cfg = _config(g, vocab_size, tok, dtype, include_lm_head)
    cfg.update(beacon_config or {})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir
