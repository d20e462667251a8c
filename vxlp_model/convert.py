"""``vxlp convert --from released SRC --out DST``: released Video-XL checkpoints → a vxlp folder (RELEASED.md).

Reads a released folder — ``config.json`` (LLaVA-Qwen, ``model_type = "llava_qwen"``), the weights as safetensors
shards with or without an index, or ``pytorch_model*.bin``, and Qwen2.5's tokenizer files — and writes a folder that
loads with ``VideoXLProForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` (no import
of the released code, no network).

Variants (RELEASED.md §1), detected from the keys:

- ``pro-v2`` (Video-XL-Pro-3B): ``model.WindowTimeToTokenAttention.*`` and ``model.text_mlp.*`` present →
  ``selector_impl = "released_v2"``, default ``selector_mode = "ratio"`` at ``selector_keep_ratio = 0.845`` (the mean
  of the released ``random.uniform(0.7, 0.99)``; pass another ratio per call), time text ``"Time {t:06.1f}s:"``.
- ``video-xl-2`` (BAAI/Video-XL-2): no selector (``selector_impl = "none"``), time text ``"Time {t:.1f}s:"`` (the
  released ``f"Time {round(t, 1)}s:"``), frame count trimmed to a multiple of 4 as its evaluation does.
- ``pro-v1`` (the paper upload): ``model.beacon_embed_tokens.weight`` and ``…self_attn.beacon_{q,k,v,o}_proj.*``
  present. Its LLM is Video-XL's Activation-Beacon Qwen2 (visual summarization tokens), which converts to vxlp's VST
  LLM (``llm_compression = "vst"``, SPEC §8): ``beacon_embed_tokens`` → ``summary_embed_tokens``,
  ``beacon_{q,k,v,o}_proj`` → ``summary_{q,k,v,o}_proj``; ``selector_impl = "released_v1"`` in budget mode at 9,600
  visual tokens; no time text (``time_format = ""``). The Activation-Beacon settings come from config.json, see
  :func:`beacon_settings` (windows of ``beacon_window`` tokens → ``vst_window_groups``, ``beacon_ratio`` →
  ``vst_ratio``; options vxlp does not implement are refused, naming the setting).

The mapping is strict (:data:`KEY_MAP`): every source key is consumed or listed as deliberately dropped
(:data:`DROPPED`), every destination key is filled (a pro-v1 summary projection that ``beacon_param`` leaves to the
original projection gets a copy of it, listed in the report), every shape is checked; ``lm_head`` is tied when
absent; the dtype is kept. Conversion goes shard by shard (peak host memory about one shard). DST is written to a
temporary sibling and renamed into place only when complete; an existing DST is an error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import torch

VARIANTS = ("pro-v2", "video-xl-2", "pro-v1")
VISION_SRC = "model.vision_tower.vision_tower.vision_model."

# (source regex, destination template); applied to every source key, first match wins.
KEY_MAP = (
    (r"^model\.vision_tower\.vision_tower\.vision_model\.(embeddings|encoder)\.(.+)$", r"model.vision_tower.\1.\2"),
    (r"^model\.mm_projector\.(.+)$", r"model.mm_projector.\1"),
    (r"^model\.sae\.(.+)$", r"model.sae.\1"),
    (r"^model\.text_mlp\.(.+)$", r"model.selector.text_mlp.\1"),
    (r"^model\.WindowTimeToTokenAttention\.(q_proj|k_proj|out_proj)\.(.+)$", r"model.selector.time_attn.\1.\2"),
    # pro-v1: the Activation-Beacon parameters → vxlp's VST summary tokens (before the generic layers rule)
    (r"^model\.beacon_embed_tokens\.weight$", r"model.summary_embed_tokens.weight"),
    (
        r"^model\.layers\.(\d+)\.self_attn\.beacon_(q|k|v|o)_proj\.(weight|bias)$",
        r"model.language_model.layers.\1.self_attn.summary_\2_proj.\3",
    ),
    (r"^model\.(embed_tokens|layers|norm)\.(.+)$", r"model.language_model.\1.\2"),
    (r"^lm_head\.weight$", r"lm_head.weight"),
)
# Deliberately dropped source keys, with the reason (RELEASED.md §2).
DROPPED = (
    (r"^model\.vision_tower\.vision_tower\.vision_model\.post_layernorm\.", "stored but never applied by the released forward"),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.head\.", "the released tower has no pooling head"),
    (r"^model\.WindowTimeToTokenAttention\.v_proj\.", "stored but never used by the released forward"),
)
VIDEO_XL_2_DROPPED = ((r"^model\.text_mlp\.", "built but never used by Video-XL-2's forward"),)


class ConversionError(ValueError):
    """A released folder that cannot be converted; the message names the file or key."""


@dataclass
class ConversionReport:
    """What :func:`convert_released` did: ``variant``, ``dtype``, ``num_tensors`` written, ``dropped`` source keys
    (with reasons), ``copied`` ``(destination, source, reason)`` for destination tensors filled with a copy of another
    source tensor (pro-v1 summary projections that the checkpoint's ``beacon_param`` leaves to the originals),
    ``tied_lm_head``, ``dst``."""

    variant: str
    dtype: str
    num_tensors: int = 0
    dropped: list = field(default_factory=list)
    copied: list = field(default_factory=list)
    tied_lm_head: bool = False
    dst: str = ""


# ---------------------------------------------------------------------- reading the source folder
def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def weight_files(src: str) -> tuple[str, list[str]]:
    """``(format, files)`` of a released folder: ``"safetensors"`` or ``"bin"``, with its shard files (paths).

    Raises FileNotFoundError naming the index's missing shard, or the folder when it holds no weights.
    """
    for fmt, index_name, single in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = os.path.join(src, index_name)
        if os.path.isfile(index):
            data = _load_json(index)
            if not isinstance(data.get("weight_map"), dict) or not data["weight_map"]:
                raise ConversionError(f"{index}: no weight_map")
            files = sorted(set(data["weight_map"].values()))
            for name in files:
                if not os.path.isfile(os.path.join(src, name)):
                    raise FileNotFoundError(f"{index} names the shard {name}, which is missing from {src}")
            return fmt, [os.path.join(src, name) for name in files]
        if os.path.isfile(os.path.join(src, single)):
            return fmt, [os.path.join(src, single)]
    shards = sorted(f for f in os.listdir(src) if re.match(r"^model-\d+-of-\d+\.safetensors$", f))
    if shards:
        return "safetensors", [os.path.join(src, f) for f in shards]
    raise FileNotFoundError(f"{src}: no weights (model.safetensors[.index.json] or pytorch_model[.bin.index.json])")


def _read_shard(fmt: str, path: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ConversionError(f"{path}: cannot read safetensors ({e})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ConversionError(f"{path}: cannot read the PyTorch weights ({e})") from None
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: not a state dict")
    return sd


def _shard_shapes(fmt: str, path: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            out = {}
            with safe_open(path, "pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = (tuple(sl.get_shape()), _SAFE_DTYPES.get(sl.get_dtype(), None))
            return out
        except Exception as e:
            raise ConversionError(f"{path}: cannot read safetensors ({e})") from None
    return {k: (tuple(v.shape), v.dtype) for k, v in _read_shard(fmt, path).items()}


_SAFE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def detect_variant(keys) -> str:
    """``pro-v2`` | ``video-xl-2`` | ``pro-v1`` from the key names (RELEASED.md §1). Raises ConversionError."""
    keys = set(keys)
    if any("beacon" in k for k in keys):
        return "pro-v1"
    if not any(k.startswith("model.sae.") for k in keys):
        raise ConversionError("not a Video-XL checkpoint: no model.sae.* (DTS) keys")
    if any(k.startswith("model.WindowTimeToTokenAttention.") for k in keys):
        return "pro-v2"
    return "video-xl-2"


# ---------------------------------------------------------------------- pro-v1: the Activation-Beacon settings
# Video-XL's Activation-Beacon defaults, taken for settings a pro-v1 config.json does not name.
BEACON_DEFAULTS = {
    "beacon_pos": "interleave",
    "beacon_attn": "full-coverage",
    "beacon_window": 1440,  # 10 frames × 144 tokens
    "beacon_sink_size": 0,
    "beacon_attend_prev": True,
    "beacon_parallel_window": 1,
    "beacon_param": ["q", "k", "v", "o"],
}
BEACON_PROJECTIONS = ("q", "k", "v", "o")
BEACON_DEFAULT_RATIO = 8  # vxlp's VST default, for a config.json without beacon_ratio
SUPPORTED_VST_RATIOS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class BeaconSettings:
    """A pro-v1 checkpoint's Activation-Beacon settings as vxlp's VST: ``window_groups`` (``vst_window_groups``),
    ``ratio`` (``vst_ratio``) and ``param``, the projections that have their own beacon weights (the others are
    the original projections, also for the summary tokens)."""

    window_groups: int
    ratio: int
    param: tuple


def _int_setting(value, key: str, config_path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{config_path}: {key} = {value!r} is not an integer")
    return value


def beacon_settings(src_config: dict, keys, tokens_per_group: int, config_path: str) -> BeaconSettings:
    """The VST settings of a pro-v1 checkpoint from its config.json (and its key names).

    - ``vst_window_groups = beacon_window // tokens_per_group`` (Video-XL: 1440 = 10 groups × 144 tokens); the window
      must hold a whole number of groups. ``beacon_stride`` must equal ``beacon_window`` (no overlapping windows).
    - ``vst_ratio`` from ``beacon_ratio`` (a list of the ratios trained with, or one integer): a single value is
      taken as is and must be one of 1, 2, 4, 8, 16; from several, inference takes the largest that vxlp supports
      among 2, 4, 8, 16 (the strongest compression trained; other values in the list are ignored; pass ``vst_ratio``
      per call to choose another). ``beacon_ratio_mix`` (how training drew the ratio) is not read.
    - ``beacon_param``: the projections with their own beacon weights, among q, k, v, o (the released code gives
      the beacon tokens the original projection for the others: their summary projection is then a copy of the
      original). It must agree with the ``beacon_{q,k,v,o}_proj`` keys present.
    - Refused, naming the setting (vxlp's VST does not implement them): ``beacon_pos`` other than ``"interleave"``,
      ``beacon_attn`` other than ``"full-coverage"``, ``beacon_sink_size > 0``, ``beacon_stride != beacon_window``,
      ``beacon_attend_prev = false``, ``beacon_parallel_window != 1``, and beacon MLP weights (``"mlp"`` in
      ``beacon_param``, or any key naming both ``beacon`` and ``mlp``).

    A setting the config lacks takes Video-XL's default (:data:`BEACON_DEFAULTS`: interleave, full-coverage, a
    window of 1,440 tokens, no sink, beacon weights for q, k, v and o; ``beacon_stride`` defaults to the window);
    without ``beacon_ratio`` the ratio is vxlp's default, 8.

    Raises ConversionError naming the setting or key.
    """
    cfg = {**BEACON_DEFAULTS, **{k: v for k, v in src_config.items() if k.startswith("beacon_")}}
    mlp_keys = sorted(k for k in keys if "beacon" in k and "mlp" in k)
    if mlp_keys:
        raise ConversionError(
            f"{mlp_keys[0]}: beacon MLP weights (beacon_param 'mlp') are not supported: vxlp's VST summary tokens use the "
            "LLM's own MLP"
        )
    param = cfg["beacon_param"]
    if isinstance(param, str):
        param = param.replace(",", " ").split()
    if not isinstance(param, (list, tuple)) or not all(isinstance(p, str) for p in param):
        raise ConversionError(f"{config_path}: beacon_param = {cfg['beacon_param']!r} is not a list of names")
    if "mlp" in param:
        raise ConversionError(
            f"{config_path}: beacon_param = {cfg['beacon_param']!r} includes 'mlp' (beacon MLP weights), which vxlp's VST "
            "does not support"
        )
    unknown = [p for p in param if p not in BEACON_PROJECTIONS]
    if unknown:
        raise ConversionError(
            f"{config_path}: beacon_param = {cfg['beacon_param']!r}: unknown {unknown} (expected among q, k, v, o)"
        )
    for key, want in (("beacon_pos", "interleave"), ("beacon_attn", "full-coverage")):
        if cfg[key] != want:
            raise ConversionError(f"{config_path}: {key} = {cfg[key]!r} is not supported: vxlp's VST implements {want!r} only")
    if _int_setting(cfg["beacon_sink_size"], "beacon_sink_size", config_path) > 0:
        raise ConversionError(
            f"{config_path}: beacon_sink_size = {cfg['beacon_sink_size']} is not supported: vxlp's VST keeps no sink tokens"
        )
    if cfg["beacon_attend_prev"] is not True:
        raise ConversionError(
            f"{config_path}: beacon_attend_prev = {cfg['beacon_attend_prev']!r} is not supported: in vxlp's VST every token "
            "of a window attends to the summaries of the previous windows"
        )
    if _int_setting(cfg["beacon_parallel_window"], "beacon_parallel_window", config_path) != 1:
        raise ConversionError(
            f"{config_path}: beacon_parallel_window = {cfg['beacon_parallel_window']} is not supported (1 only)"
        )
    window = _int_setting(cfg["beacon_window"], "beacon_window", config_path)
    stride = _int_setting(cfg.get("beacon_stride", window), "beacon_stride", config_path)
    if stride != window:
        raise ConversionError(
            f"{config_path}: beacon_stride = {stride} differs from beacon_window = {window}: overlapping windows are not "
            "supported by vxlp's VST"
        )
    if window < 1 or window % tokens_per_group:
        raise ConversionError(
            f"{config_path}: beacon_window = {window} is not a positive multiple of the {tokens_per_group} visual tokens "
            "per group: vxlp's VST windows hold whole groups"
        )
    ratio = cfg.get("beacon_ratio", BEACON_DEFAULT_RATIO)
    values = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConversionError(f"{config_path}: beacon_ratio = {ratio!r} is not an integer or a non-empty list of integers")
    if len(values) == 1:
        chosen = values[0]
        if chosen not in SUPPORTED_VST_RATIOS:
            raise ConversionError(
                f"{config_path}: beacon_ratio = {ratio!r}: vxlp's VST supports the ratios {SUPPORTED_VST_RATIOS}"
            )
    else:
        usable = [v for v in values if v in SUPPORTED_VST_RATIOS[1:]]
        if not usable:
            raise ConversionError(
                f"{config_path}: beacon_ratio = {ratio!r} holds none of the ratios vxlp's VST supports "
                f"{SUPPORTED_VST_RATIOS[1:]}"
            )
        chosen = max(usable)
    for p in BEACON_PROJECTIONS:
        has = any(re.match(rf"^model\.layers\.\d+\.self_attn\.beacon_{p}_proj\.", k) for k in keys)
        if p in param and not has:
            raise ConversionError(
                f"{config_path}: beacon_param = {cfg['beacon_param']!r} names {p!r} but the checkpoint has no "
                f"model.layers.N.self_attn.beacon_{p}_proj weights"
            )
        if p not in param and has:
            raise ConversionError(
                f"{config_path}: the checkpoint has model.layers.N.self_attn.beacon_{p}_proj weights but beacon_param = "
                f"{cfg['beacon_param']!r} leaves {p!r} out (the released code would not use them)"
            )
    own = tuple(p for p in BEACON_PROJECTIONS if p in param)
    return BeaconSettings(window_groups=window // tokens_per_group, ratio=chosen, param=own)


# ---------------------------------------------------------------------- configuration
def build_config(src_config: dict, shapes: dict, variant: str, video_token_id: int, tokenizer, config_path: str):
    """The :class:`VideoXLProConfig` of a released folder, from its config.json and the weight shapes."""
    from transformers import Qwen2Config, SiglipVisionConfig

    from .config import VideoXLProConfig

    def need(key):
        if key not in src_config:
            raise ConversionError(f"{config_path}: missing {key!r}")
        return src_config[key]

    for key, expected in (("mm_projector_type", "mlp2x_gelu"), ("mm_spatial_pool_mode", "average")):
        if src_config.get(key, expected) != expected:
            raise ConversionError(f"{config_path}: {key} = {src_config[key]!r} is not supported (expected {expected!r})")
    layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(VISION_SRC) + r"encoder\.layers\.(\d+)\.", k))}
    if not layer_ids or sorted(layer_ids) != list(range(len(layer_ids))):
        raise ConversionError(f"vision tower layers are missing or not numbered 0..n-1: {sorted(layer_ids)}")
    patch_w = shapes.get(VISION_SRC + "embeddings.patch_embedding.weight")
    pos_w = shapes.get(VISION_SRC + "embeddings.position_embedding.weight")
    fc1 = shapes.get(VISION_SRC + "encoder.layers.0.mlp.fc1.weight")
    if patch_w is None or pos_w is None or fc1 is None:
        raise ConversionError("vision tower embeddings or MLP weights are missing")
    c, patch = patch_w[0][0], patch_w[0][2]
    grid = int(round(pos_w[0][0] ** 0.5))
    vc = dict(src_config.get("vision_config") or {})
    if "num_attention_heads" not in vc:
        if c != 1152:
            raise ConversionError(
                f"{config_path}: the vision tower's width is {c}, not so400m's 1152, and config.json has no "
                "vision_config with num_attention_heads"
            )
        vc["num_attention_heads"] = 16
    vision = SiglipVisionConfig(
        hidden_size=c,
        intermediate_size=fc1[0][0],
        num_hidden_layers=len(layer_ids),
        num_attention_heads=vc["num_attention_heads"],
        # so400m-patch14-384 takes 384-pixel frames; its stride-14 patch conv reads the first 27·14 = 378 of them
        image_size=int(vc.get("image_size", 384 if (grid, patch) == (27, 14) else grid * patch)),
        patch_size=patch,
        hidden_act=vc.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
    )
    if int(src_config.get("mm_hidden_size", c)) != c:
        raise ConversionError(f"{config_path}: mm_hidden_size {src_config['mm_hidden_size']} != vision width {c}")
    n_llm = len({int(m.group(1)) for k in shapes if (m := re.match(r"^model\.layers\.(\d+)\.", k))})
    embed = shapes.get("model.embed_tokens.weight")
    if embed is None:
        raise ConversionError("model.embed_tokens.weight is missing")
    tied = "lm_head.weight" not in shapes
    rope_theta = float(src_config.get("rope_theta", (src_config.get("rope_parameters") or {}).get("rope_theta", 1e6)))
    text = Qwen2Config(
        vocab_size=embed[0][0],
        hidden_size=int(need("hidden_size")),
        intermediate_size=int(need("intermediate_size")),
        num_hidden_layers=n_llm,
        num_attention_heads=int(need("num_attention_heads")),
        num_key_value_heads=int(src_config.get("num_key_value_heads", need("num_attention_heads"))),
        max_position_embeddings=int(src_config.get("max_position_embeddings", 32768)),
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=float(src_config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=tied,
        bos_token_id=src_config.get("bos_token_id"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    if embed[0][1] != text.hidden_size:
        raise ConversionError(f"{config_path}: hidden_size {text.hidden_size} != model.embed_tokens.weight width {embed[0][1]}")
    table = shapes.get("model.sae.encoder.1.relative_position_k.embeddings_table")
    if table is None:
        raise ConversionError("model.sae.encoder.1.relative_position_k.embeddings_table is missing")
    selector = {
        "pro-v2": dict(selector_impl="released_v2", selector_mode="ratio", selector_keep_ratio=0.845),
        # RELEASED.md §4: k = min(144·G, 9600) visual tokens, rounded down to a multiple of 16
        "pro-v1": dict(selector_impl="released_v1", selector_mode="budget", selector_budget=9600),
    }.get(variant, dict(selector_impl="none", selector_mode="off"))
    dts_grid = int(src_config.get("dts_grid", 24))
    pool = int(src_config.get("mm_spatial_pool_stride", 2))
    llm = {}
    if variant == "pro-v1":
        beacon = beacon_settings(src_config, shapes, (dts_grid // pool) ** 2, config_path)
        llm = dict(llm_compression="vst", vst_window_groups=beacon.window_groups, vst_ratio=beacon.ratio)
    dtype = shapes["model.embed_tokens.weight"][1]
    return VideoXLProConfig(
        vision_config=vision,
        text_config=text,
        frames_per_group=4,
        dts_grid=dts_grid,
        dts_norm_groups=32,
        dts_norm_eps=1e-6,
        dts_max_relative_position=(table[0][0] - 1) // 2,
        token_layout="released",
        transposed_rel_k=True,
        recot_decoder_layers=0,
        pool_size=pool,
        selector_num_heads=4,
        video_token_id=video_token_id,
        dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
        **selector,
        **llm,
    )


def map_key(key: str, variant: str) -> tuple[str | None, str | None]:
    """``(destination, None)`` for a consumed key or ``(None, reason)`` for a deliberately dropped one.

    Raises ConversionError for a key that is neither.
    """
    for pattern, reason in DROPPED + (VIDEO_XL_2_DROPPED if variant == "video-xl-2" else ()):
        if re.match(pattern, key):
            return None, reason
    for pattern, repl in KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new, None
    raise ConversionError(f"unknown key {key!r}: not part of the released {variant} layout (RELEASED.md §2)")


# ---------------------------------------------------------------------- conversion
def _convert_shard(fmt: str, path: str, plan: dict, out_path: str, weight_map: dict, sizes: dict) -> None:
    """Read one source shard, rename its tensors (``plan``: source key → destination keys), write them as one
    destination shard (nothing kept after)."""
    from safetensors.torch import save_file

    sd = _read_shard(fmt, path)
    out = {}
    for k, v in sd.items():
        for i, new in enumerate(plan.get(k, ())):
            # a second destination of the same tensor gets its own storage (safetensors refuses shared tensors)
            out[new] = v.contiguous() if i == 0 else v.clone(memory_format=torch.contiguous_format)
    del sd
    if out:
        save_file(out, out_path, metadata={"format": "pt"})
        name = os.path.basename(out_path)
        for key, tensor in out.items():
            weight_map[key] = name
            sizes[key] = tensor.numel() * tensor.element_size()


def convert_released(src: str, dst: str, *, progress: bool = False) -> ConversionReport:
    """Convert a released Video-XL folder ``src`` into a vxlp folder ``dst`` (see the module docstring).

    Returns a :class:`ConversionReport`.

    Raises:
        FileNotFoundError: ``src`` or one of its files (config.json, a shard named by the index, the tokenizer).
        FileExistsError: ``dst`` exists (never overwritten).
        ConversionError (a ValueError): wrong ``model_type``, unknown keys, keys the model needs but the checkpoint
        lacks, shape mismatches, unreadable files, pro-v1 Activation-Beacon settings vxlp does not implement
        (:func:`beacon_settings`) — naming the file, key or setting.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, GenerationConfig, PretrainedConfig

    from .modeling import VideoXLProForConditionalGeneration
    from .processing import RELEASED_TIME_FORMAT, VideoXLProProcessor, VideoXLProVideoProcessor

    src = os.path.abspath(os.fspath(src))
    dst = os.path.abspath(os.fspath(dst))
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: not a folder")
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} already exists: choose a new output folder")
    config_path = os.path.join(src, "config.json")
    src_config = _load_json(config_path)
    if src_config.get("model_type") != "llava_qwen":
        raise ConversionError(
            f"{config_path}: model_type is {src_config.get('model_type')!r}; a released Video-XL checkpoint has 'llava_qwen'"
        )
    fmt, files = weight_files(src)
    shapes: dict = {}
    owner: dict = {}
    for path in files:
        for k, v in _shard_shapes(fmt, path).items():
            if k in shapes:
                raise ConversionError(f"{path}: key {k!r} also appears in {owner[k]}")
            shapes[k], owner[k] = v, path
    variant = detect_variant(shapes)
    try:
        # config= keeps transformers from reading the released config.json (model_type "llava_qwen" is unknown to it)
        tokenizer = AutoTokenizer.from_pretrained(src, config=PretrainedConfig())
    except Exception as e:
        raise FileNotFoundError(f"{src}: cannot load the tokenizer files ({e})") from None
    pad_ids = tokenizer.encode("<|vision_pad|>", add_special_tokens=False)
    if len(pad_ids) != 1:
        raise ConversionError(f"{src}: the tokenizer has no <|vision_pad|> token (the visual placeholder)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    config = build_config(src_config, shapes, variant, pad_ids[0], tokenizer, config_path)

    # the destination layout, on the meta device: names and shapes only
    with torch.device("meta"):
        target = VideoXLProForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    report = ConversionReport(variant=variant, dtype=str(config.dtype).replace("torch.", ""), tied_lm_head=config.tie_word_embeddings)
    # pro-v1: projections that beacon_param leaves to the originals are copied into the summary projections
    copied_proj = ()
    if variant == "pro-v1":
        own = beacon_settings(src_config, shapes, config.tokens_per_group, config_path).param
        copied_proj = tuple(p for p in BEACON_PROJECTIONS if p not in own)
    plan: dict[str, list[str]] = {}
    filled: dict[str, str] = {}
    for key, (shape, _) in shapes.items():
        new, reason = map_key(key, variant)
        if new is None:
            report.dropped.append((key, reason))
            continue
        targets = [new]
        m = re.match(r"^model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)$", key) if copied_proj else None
        if m and m.group(2) in copied_proj:
            extra = f"model.language_model.layers.{m.group(1)}.self_attn.summary_{m.group(2)}_proj.{m.group(3)}"
            targets.append(extra)
            why = f"beacon_param has no {m.group(2)!r}: the summary tokens use the original projection"
            report.copied.append((extra, key, why))
        for t in targets:
            if t not in expected:
                raise ConversionError(f"{owner[key]}: key {key!r} maps to {t!r}, which the {variant} model does not have")
            if tuple(shape) != expected[t]:
                raise ConversionError(f"{owner[key]}: {key} has shape {tuple(shape)}, expected {expected[t]} for {t}")
            if t in filled:
                raise ConversionError(f"{owner[key]}: keys {filled[t]!r} and {key!r} both map to {t!r}")
            filled[t] = key
        plan[key] = targets
    missing = sorted(set(expected) - set(filled))
    if missing:
        raise ConversionError(f"{src}: the checkpoint lacks weights the {variant} model needs: {missing[:8]}{' …' if len(missing) > 8 else ''}")

    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=parent)
    try:
        weight_map, sizes = {}, {}
        n = len(files)
        for i, path in enumerate(tqdm(files, desc="vxlp convert", disable=not progress)):
            # one shard at a time: its tensors are released when _convert_shard returns
            _convert_shard(fmt, path, plan, os.path.join(tmp, f"model-{i + 1:05d}-of-{n:05d}.safetensors"), weight_map, sizes)
        total = sum(sizes.values())
        report.num_tensors = len(weight_map)
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        config.architectures = ["VideoXLProForConditionalGeneration"]
        config.save_pretrained(tmp)
        GenerationConfig(
            eos_token_id=config.text_config.eos_token_id,
            pad_token_id=config.text_config.pad_token_id,
            do_sample=False,
        ).save_pretrained(tmp)
        video_processor = VideoXLProVideoProcessor(
            size=config.vision_config.image_size,
            resample="pil_bicubic",
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            frames_per_group=config.frames_per_group,
            tail="drop" if variant == "video-xl-2" else "repeat",
        )
        processor = VideoXLProProcessor(
            video_processor,
            tokenizer,
            tokens_per_group=config.tokens_per_group,
            # the paper-era model (pro-v1) has no time text (RELEASED.md §4)
            time_format={"video-xl-2": "Time {t:.1f}s:", "pro-v1": ""}.get(variant, RELEASED_TIME_FORMAT),
        )
        processor.save_pretrained(tmp)
        with open(os.path.join(tmp, "vxlp_conversion.json"), "w") as f:
            json.dump(
                {
                    "source": src, "variant": variant, "format": fmt, "dropped": [list(x) for x in report.dropped],
                    "copied": [list(x) for x in report.copied],
                },
                f,
                indent=2,
            )
        if os.path.exists(dst):
            raise FileExistsError(f"{dst} appeared during the conversion: not overwritten")
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.dst = dst
    return report
