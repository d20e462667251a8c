"""Checkpoints of the first vxlp layout (``VideoXLProForCausalLM``, before the transformers-idiom redesign).

:meth:`VideoXLProForConditionalGeneration.from_pretrained` reads such a folder (recognised by the training-only keys
its ``config.json`` carries, :data:`vxlp_model.config.LEGACY_CONFIG_KEYS`) with this key map, applied in order:

=========================================  ==========================================
legacy key                                  current key
=========================================  ==========================================
``language_model.lm_head.*``                ``lm_head.*``
``language_model.model.*``                  ``model.language_model.*``
``vision_tower.model.embeddings.*``         ``model.vision_tower.embeddings.*``
``vision_tower.model.encoder.*``            ``model.vision_tower.encoder.*``
``selector.text_proj.*``                    ``model.selector.text_mlp.*``
``selector.window_attn.*``                  ``model.selector.time_attn.*``
``sae.*``, ``recot_decoder.*``, ``sgm.*``,  ``model.`` + the same name
``mm_projector.*``
=========================================  ==========================================

Filled with zeros as well: the selector's ``visual_mlp`` (absent in the legacy layout; its residual output is then
zero). Dropped: ``vision_tower.model.post_layernorm.*`` and ``vision_tower.model.head.*`` (never used), and the SigLIP layers
after the feature layer (the legacy tower built all layers and read ``hidden_states[-2]``; the current one stops
there, see :meth:`VideoXLProConfig._migrate_legacy`). Filled with zeros: the temporal blocks' ``proj_out.bias``,
which the legacy layout did not have — zero reproduces its outputs exactly. The legacy training-only config keys are
dropped. Saving the loaded model writes the current layout.
"""

from __future__ import annotations

import json
import os
import re

import torch

from .config import LEGACY_CONFIG_KEYS, VideoXLProConfig

LEGACY_KEY_MAP = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^vision_tower\.model\.(embeddings|encoder)\.", r"model.vision_tower.\1."),
    (r"^selector\.text_proj\.", "model.selector.text_mlp."),
    (r"^selector\.window_attn\.", "model.selector.time_attn."),
    (r"^(sae|recot_decoder|sgm|mm_projector)\.", r"model.\1."),
)
LEGACY_DROPPED = (r"^vision_tower\.model\.(post_layernorm|head)\.",)


def is_legacy_checkpoint(path: str) -> bool:
    """Whether ``path/config.json`` was written by the first vxlp layout."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    return data.get("model_type") == VideoXLProConfig.model_type and any(k in data for k in LEGACY_CONFIG_KEYS)


def map_legacy_key(key: str) -> str | None:
    """The current name of a legacy key, or None if it is dropped."""
    if any(re.match(p, key) for p in LEGACY_DROPPED):
        return None
    for pattern, repl in LEGACY_KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"unknown key in a legacy vxlp checkpoint: {key!r}")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    out = {}
    for name in files:
        out.update(load_file(os.path.join(path, name)))
    return out


def load_legacy_checkpoint(cls, path: str, dtype=None):
    """Build ``cls`` from a legacy folder with the key map above; strict: every current key is filled.

    Raises ``KeyError`` for an unknown legacy key or a current key left empty, ``ValueError`` for a shape mismatch.
    """
    from transformers import GenerationConfig

    config = VideoXLProConfig.from_pretrained(path)
    model = cls(config)
    expected = model.state_dict()
    n_vision = config.vision_config.num_hidden_layers
    state = {}
    for key, tensor in _read_state_dict(path).items():
        new = map_legacy_key(key)
        if new is None:
            continue
        m = re.match(r"^model\.vision_tower\.encoder\.layers\.(\d+)\.", new)
        if m and int(m.group(1)) >= n_vision:
            continue  # layers after the legacy feature layer were never used
        state[new] = tensor
    for key, value in expected.items():
        if key in state:
            continue
        if re.search(r"\.proj_out\.bias$", key) and value.dim() == 1:
            state[key] = torch.zeros_like(value)
        elif key.startswith("model.selector.visual_mlp."):
            state[key] = torch.zeros_like(value)  # the legacy selector had no visual MLP: a zero output is exact
        elif key == "lm_head.weight" and config.tie_word_embeddings:
            state[key] = state["model.language_model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(f"{path}: legacy checkpoint does not map onto the model: missing {missing}, unexpected {unexpected}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=True)
    if dtype is not None and dtype != "auto":
        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def legacy_processor(cls, path: str):
    """The processor of a legacy folder, from its tokenizer and its config's prompt keys; None if not legacy."""
    from transformers import AutoTokenizer

    from .processing import RELEASED_TIME_FORMAT, VideoXLProVideoProcessor

    if not is_legacy_checkpoint(path):
        return None
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    config = VideoXLProConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    mean, std = raw.get("image_mean", 0.5), raw.get("image_std", 0.5)
    video_processor = VideoXLProVideoProcessor(
        size=config.vision_config.image_size,
        image_mean=(mean,) * 3 if isinstance(mean, (int, float)) else mean,
        image_std=(std,) * 3 if isinstance(std, (int, float)) else std,
        frames_per_group=config.frames_per_group,
    )
    system = raw.get("system_prompt", "You are a helpful assistant.")
    from .processing import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT

    return cls(
        video_processor,
        tokenizer,
        chat_template=CHAT_TEMPLATE.replace(DEFAULT_SYSTEM_PROMPT, system),
        tokens_per_group=config.tokens_per_group,
        time_format=raw.get("time_format", RELEASED_TIME_FORMAT),
    )
