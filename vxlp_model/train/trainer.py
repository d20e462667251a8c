"""The Video-XL-Pro training recipe at scale (SPEC §3, §6): three stages, FSDP2, exact resume, fault-tolerant data.

Stages (``stage``):

- ``recot`` (SPEC §3): SigLIP frozen; the DTS (``sae``), the ReCoT decoder and the SGM queries learn to reconstruct
  the SigLIP tokens of 4-frame clips streamed from disk (MSE; SGM masking). A checkpoint without a decoder (a
  converted release) gets one (``recot_decoder_layers``), initialised fresh.
- ``projector`` (SPEC §6 stage 2): only the projector (LR 5e-4 by default); the selector is off (every visual token
  reaches the frozen LLM) unless ``selector_mode`` says otherwise.
- ``finetune`` (SPEC §6 stage 3): every parameter except the ReCoT decoder / SGM, or the groups left after
  ``freeze`` (``vision``, ``dts``, ``projector``, ``selector``, ``llm``); LR 1e-5 cosine, warm-up 3 %, weight decay
  0; loss on every assistant turn; the selector in its training mode (``ratio``, keep ratio drawn per micro-batch in
  ``keep_ratio_range``).

Batching: ``batch_size`` samples per micro-batch per process, ``grad_accum`` micro-batches per step (or
``global_batch_size`` = batch_size · grad_accum · processes). The loss of a step is the mean over its micro-batches of
each micro-batch's loss (the mean over its labelled tokens, or ReCoT's per-clip means), so any split of the same
micro-batches over processes and accumulation gives the same update. Every random choice (ReCoT clip starts, SGM
masks, the selector's keep ratio) comes from generators seeded by (seed, position) or (seed, step, micro-batch), never
from the rank or a global RNG: one process and N processes see the same micro-batches and draws, and a resumed run
continues bit for bit (on CPU).

Entry points: :func:`train` (Python), ``vxlp train`` / ``python -m vxlp_model.train`` (:mod:`.cli`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import (
    VideoSampling,
    build_clip_sample,
    build_lm_sample,
    collate_clips,
    collate_lm,
    load_records,
    sample_rng,
)
from .distributed import DistInfo, all_reduce_sum, barrier, gather_objects, init_distributed, local_value, shard_model, shutdown
from .loader import EpochOrder, RobustLoader, SampleDataset, rank_positions
from .metrics import MetricsLogger, plot_loss_curve, read_metrics
from ..llm_compression import vst_curriculum_ratio
from .stages import draw_keep_ratio
from .state import CheckpointManager, build_skeleton, export_model, write_atomic

STAGES = ("recot", "projector", "finetune")
GROUPS = {
    "vision": ("model.vision_tower.",),
    "dts": ("model.sae.",),
    "recot": ("model.recot_decoder.", "model.sgm."),
    "projector": ("model.mm_projector.",),
    "selector": ("model.selector.",),
    "llm": ("model.language_model.", "lm_head."),
}
FREEZABLE = ("vision", "dts", "projector", "selector", "llm")
STAGE_GROUPS = {
    "recot": {"dts", "recot"},
    "projector": {"projector"},
    "finetune": {"vision", "dts", "projector", "selector", "llm"},
}
STAGE_LR = {"recot": 1e-4, "projector": 5e-4, "finetune": 1e-5}
STAGE_SELECTOR_MODE = {"recot": "off", "projector": "off", "finetune": "ratio"}
# settings that define the numerics of a run: a resume must not change them
_FINGERPRINT = (
    "stage", "data", "video_root", "image_root", "model", "config", "steps", "epochs", "batch_size", "lr", "warmup_ratio",
    "min_lr_ratio", "weight_decay", "grad_clip", "adam_betas", "adam_eps", "precision", "seed", "shuffle", "fps",
    "max_frames", "max_length", "freeze", "selector_mode", "keep_ratio_range", "selector_budget", "distill_weight",
    "distill_temperature", "mask_ratio", "pool", "score_loss_weight", "clips_per_video", "recot_decoder_layers",
    "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "vst_ratios", "distill_negatives",
)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI flags of ``vxlp train``, same names with ``-`` for ``_``).

    Model: ``model`` (a ``from_pretrained`` folder: a vxlp checkpoint, a converted release, or a previous run's
    folder — its ``model/`` export is used) or ``config`` (``tiny`` | ``real``, freshly initialised with seed ``seed``;
    ``real`` needs ``tokenizer``, a Qwen2.5 tokenizer folder). Data: ``data`` (LLaVA JSON/JSONL or a mixture YAML,
    see :mod:`vxlp_model.train.data`), ``video_root`` / ``image_root``. Output: ``out`` (the run folder, see
    :mod:`vxlp_model.train.state`). Length: ``steps``, else ``epochs`` (default 1) over the records.

    Optimisation: ``lr`` (default per stage: recot 1e-4, projector 5e-4, finetune 1e-5), linear warm-up over
    ``warmup_ratio`` of the steps then cosine to ``min_lr_ratio · lr``, AdamW (``adam_betas``, ``adam_eps``,
    ``weight_decay`` on ≥ 2-D weights), gradient clipping at ``grad_clip`` (global norm; 0 = off). ``precision``
    ``bf16`` (FSDP2 mixed precision; default on CUDA) or ``fp32`` (default on CPU). ``activation_checkpointing``.

    Data: ``fps`` (candidate rates, frames/s) and ``max_frames`` (see :class:`VideoSampling`), ``max_length`` (tokens;
    longer samples are skipped), ``num_workers``, ``sample_timeout`` / ``loader_timeout`` (seconds),
    ``max_bad_fraction`` (abort when more than this fraction of the samples read, after 50, were bad).

    Stage settings: ``freeze`` (finetune groups kept fixed), ``selector_mode`` (default: ``ratio`` in finetune, ``off``
    in projector), ``keep_ratio_range``, ``selector_budget``, ``distill_weight`` / ``distill_temperature`` (the
    selector's relevance distillation) and ``distill_negatives`` (its in-batch negatives: each micro-batch's other
    samples asked the same question), ``vst_ratios`` (a model with ``llm_compression = "vst"``: the compression
    ratios of the training curriculum, :func:`vxlp_model.llm_compression.vst_curriculum_ratio`); ReCoT: ``mask_ratio``, ``pool``, ``score_loss_weight``, ``clips_per_video``,
    ``recot_decoder_layers`` (for a model without a decoder). LoRA (finetune, optional, needs ``peft``):
    ``lora_rank`` > 0 trains low-rank adapters on the LLM's ``lora_targets`` projections (``lora_alpha``,
    ``lora_dropout``) instead of its weights; the export merges them (a plain model folder).

    Checkpoints: ``save_every`` steps, ``keep_checkpoints``, ``resume`` (continue from the latest checkpoint in
    ``out``; a fresh start when there is none), ``stop_after`` (save and stop after this many steps of this
    invocation; continue later with ``resume``). Export: ``export_dir`` (default ``out/model``), ``export_dtype``.
    """

    stage: str
    data: str
    out: str
    model: str | None = None
    config: str | None = None
    tokenizer: str | None = None
    video_root: str | None = None
    image_root: str | None = None
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int | None = None
    global_batch_size: int | None = None
    lr: float | None = None
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    precision: str | None = None
    activation_checkpointing: bool = True
    device: str | None = None
    seed: int = 0
    shuffle: bool = True
    fps: tuple = (3.0, 2.0, 1.0)
    max_frames: int = 360
    max_length: int | None = None
    num_workers: int = 2
    sample_timeout: float | None = 300.0
    loader_timeout: float | None = None
    max_bad_fraction: float = 0.1
    freeze: tuple = ()
    selector_mode: str | None = None
    keep_ratio_range: tuple = (0.70, 0.95)
    selector_budget: int | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 10.0
    distill_negatives: bool = False
    vst_ratios: tuple = (2, 4, 8, 16)
    mask_ratio: float = 0.5
    pool: float = 0.75
    score_loss_weight: float = 0.1
    clips_per_video: int = 1
    recot_decoder_layers: int = 4
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple = LORA_TARGETS
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None
    export_dir: str | None = None
    export_dtype: str = "float32"
    log_every: int = 1
    tensorboard: bool = False
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with the stage defaults filled in and every value checked.

        Raises ValueError naming the CLI flag (``--stage``, ``--batch-size``, …) for an invalid value, and
        FileNotFoundError for a missing ``--data`` / ``--model`` / ``--tokenizer``.
        """
        c = dataclasses.replace(self)
        if c.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {c.stage!r}")
        if (c.model is None) == (c.config is None):
            raise ValueError("give exactly one of --model DIR (a checkpoint folder) or --config tiny|real")
        if c.config is not None and c.config not in ("tiny", "real"):
            raise ValueError(f"--config must be tiny or real, got {c.config!r}")
        if c.config == "real" and c.tokenizer is None:
            raise ValueError("--config real needs --tokenizer DIR (a Qwen2.5 tokenizer folder): it cannot be downloaded")
        for flag, path in (("--data", c.data), ("--model", c.model), ("--tokenizer", c.tokenizer)):
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f"{flag} {path}: not found")
        for flag, path in (("--video-root", c.video_root), ("--image-root", c.image_root)):
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"{flag} {path}: not a folder")
        c.data = os.path.abspath(c.data)
        c.model = os.path.abspath(c.model) if c.model else None
        c.video_root = os.path.abspath(c.video_root) if c.video_root else None
        c.image_root = os.path.abspath(c.image_root) if c.image_root else None
        c.lr = STAGE_LR[c.stage] if c.lr is None else float(c.lr)
        c.selector_mode = STAGE_SELECTOR_MODE[c.stage] if c.selector_mode is None else c.selector_mode
        c.fps = tuple(float(f) for f in c.fps)
        c.adam_betas = tuple(float(b) for b in c.adam_betas)
        c.keep_ratio_range = tuple(float(r) for r in c.keep_ratio_range)
        c.freeze = tuple(sorted(set(c.freeze)))

        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(c.steps is None or c.steps >= 1, f"--steps must be >= 1, got {c.steps}")
        need(c.epochs > 0, f"--epochs must be > 0, got {c.epochs}")
        need(c.batch_size >= 1, f"--batch-size must be >= 1, got {c.batch_size}")
        need(c.grad_accum is None or c.grad_accum >= 1, f"--grad-accum must be >= 1, got {c.grad_accum}")
        need(c.global_batch_size is None or c.global_batch_size >= 1, f"--global-batch-size must be >= 1, got {c.global_batch_size}")
        need(not (c.grad_accum and c.global_batch_size), "give --grad-accum or --global-batch-size, not both")
        need(c.lr > 0 and math.isfinite(c.lr), f"--lr must be > 0, got {c.lr}")
        need(0 <= c.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {c.warmup_ratio}")
        need(0 <= c.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {c.min_lr_ratio}")
        need(c.weight_decay >= 0, f"--weight-decay must be >= 0, got {c.weight_decay}")
        need(c.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {c.grad_clip}")
        need(len(c.adam_betas) == 2 and all(0 <= b < 1 for b in c.adam_betas), f"--adam-betas must be two values in [0, 1), got {c.adam_betas}")
        need(c.precision in (None, "bf16", "fp32"), f"--precision must be bf16 or fp32, got {c.precision!r}")
        need(c.max_length is None or c.max_length >= 1, f"--max-length must be >= 1, got {c.max_length}")
        need(c.num_workers >= 0, f"--num-workers must be >= 0, got {c.num_workers}")
        need(c.sample_timeout is None or c.sample_timeout > 0, f"--sample-timeout must be > 0, got {c.sample_timeout}")
        need(c.loader_timeout is None or c.loader_timeout > 0, f"--loader-timeout must be > 0, got {c.loader_timeout}")
        need(0 <= c.max_bad_fraction <= 1, f"--max-bad-fraction must be in [0, 1], got {c.max_bad_fraction}")
        unknown = set(c.freeze) - set(FREEZABLE)
        need(not unknown, f"--freeze: unknown groups {sorted(unknown)} (choose from {', '.join(FREEZABLE)})")
        need(not c.freeze or c.stage == "finetune", "--freeze applies to --stage finetune only (recot and projector fix their groups)")
        need(c.selector_mode in ("off", "ratio", "budget"), f"--selector-mode must be off, ratio or budget, got {c.selector_mode!r}")
        lo, hi = c.keep_ratio_range
        need(len(c.keep_ratio_range) == 2 and 0 < lo <= hi <= 1, f"--keep-ratio-range must be two values 0 < low <= high <= 1, got {c.keep_ratio_range}")
        need(c.selector_budget is None or (c.selector_budget >= 16 and c.selector_budget % 16 == 0), f"--selector-budget must be a positive multiple of 16, got {c.selector_budget}")
        need(c.distill_weight >= 0 and c.distill_temperature > 0, "--distill-weight must be >= 0 and --distill-temperature > 0")
        c.vst_ratios = tuple(int(r) for r in c.vst_ratios)
        need(len(c.vst_ratios) >= 1 and set(c.vst_ratios) <= {1, 2, 4, 8, 16}, f"--vst-ratios must be values among 1, 2, 4, 8, 16, got {c.vst_ratios}")
        need(0 <= c.mask_ratio <= c.pool <= 1, f"--mask-ratio and --pool must satisfy 0 <= mask_ratio <= pool <= 1, got {c.mask_ratio}, {c.pool}")
        need(c.score_loss_weight >= 0, f"--score-loss-weight must be >= 0, got {c.score_loss_weight}")
        need(c.clips_per_video >= 1, f"--clips-per-video must be >= 1, got {c.clips_per_video}")
        need(c.recot_decoder_layers >= 1, f"--recot-decoder-layers must be >= 1, got {c.recot_decoder_layers}")
        c.lora_targets = tuple(c.lora_targets)
        need(c.lora_rank >= 0, f"--lora-rank must be >= 0 (0: no LoRA), got {c.lora_rank}")
        if c.lora_rank:
            need(c.stage == "finetune", "--lora-rank applies to --stage finetune only")
            need("llm" not in c.freeze, "--lora-rank adapts the LLM: do not also --freeze llm")
            need(c.lora_alpha > 0 and 0 <= c.lora_dropout < 1, "--lora-alpha must be > 0 and --lora-dropout in [0, 1)")
            bad = set(c.lora_targets) - set(LORA_TARGETS)
            need(c.lora_targets and not bad, f"--lora-targets must be among {', '.join(LORA_TARGETS)}, got {sorted(bad) or '(none)'}")
            import importlib.util

            need(importlib.util.find_spec("peft") is not None, "--lora-rank needs the 'peft' package (pip install peft)")
        need(c.save_every >= 1, f"--save-every must be >= 1, got {c.save_every}")
        need(c.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {c.keep_checkpoints}")
        need(c.stop_after is None or c.stop_after >= 1, f"--stop-after must be >= 1, got {c.stop_after}")
        need(c.export_dtype in ("float32", "bfloat16"), f"--export-dtype must be float32 or bfloat16, got {c.export_dtype!r}")
        need(c.log_every >= 1, f"--log-every must be >= 1, got {c.log_every}")
        VideoSampling(c.fps, c.max_frames)  # raises for bad rates / caps
        return c

    def fingerprint(self) -> dict:
        return {k: _jsonable(getattr(self, k)) for k in _FINGERPRINT}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class TrainResult:
    """``out`` (run folder), ``model_dir`` (the export, None when the run stopped early), ``step`` (steps done),
    ``total_steps``, ``history`` (this invocation's per-step records, as in ``metrics.jsonl``), ``summary``."""

    out: str
    model_dir: str | None
    step: int
    total_steps: int
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total`` (an object,
    not a lambda, so ``LambdaLR.state_dict`` saves it)."""

    def __init__(self, total: int, warmup: int, min_ratio: float = 0.0):
        self.total, self.warmup, self.min_ratio = int(total), int(warmup), float(min_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the generators of micro-batch ``micro`` of ``step`` (SGM masks, keep ratio)."""
    a, b = np.random.SeedSequence([int(seed), int(step), int(micro), 0x5EED]).generate_state(2, np.uint32)
    return (int(a) << 31 | int(b) >> 1) & (2**63 - 1)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def resolve_model_dir(path: str) -> str:
    """A ``from_pretrained`` folder, or a previous run's folder (→ its ``model/`` export).

    Raises FileNotFoundError naming the folder when neither holds a ``config.json``."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    if os.path.isfile(os.path.join(path, "model", "config.json")):
        return os.path.join(path, "model")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        raise FileNotFoundError(
            f"--model {path}: this run has no exported model/ yet (it did not finish); resume it, or export a checkpoint "
            "with vxlp_model.train.export_checkpoint"
        )
    raise FileNotFoundError(f"--model {path}: no config.json (expected a save_pretrained / vxlp convert folder or a run folder)")


def load_start_model(cfg: TrainConfig):
    """The model and processor a fresh run starts from (float32 master weights, on CPU); see :class:`TrainConfig`.

    Raises FileNotFoundError / ValueError naming the flag (a checkpoint that misses weights other than the ReCoT
    decoder, a tokenizer without ``<|vision_pad|>``, …).
    """
    from ..config import VideoXLProConfig
    from ..modeling import VideoXLProForConditionalGeneration
    from ..processing import VideoXLProProcessor, VideoXLProVideoProcessor, build_tiny_tokenizer

    if cfg.model is not None:
        path = resolve_model_dir(cfg.model)
        config = VideoXLProConfig.from_pretrained(path)
        overrides = {}
        allowed_missing = ()
        if cfg.stage == "recot" and not config.has_recot:
            overrides["recot_decoder_layers"] = cfg.recot_decoder_layers
            allowed_missing = ("model.recot_decoder.", "model.sgm.")
        with _quiet_transformers():
            model, info = VideoXLProForConditionalGeneration.from_pretrained(path, dtype=torch.float32, output_loading_info=True, **overrides)
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(allowed_missing))
        if missing or info["unexpected_keys"] or info["mismatched_keys"]:
            raise ValueError(
                f"--model {path}: weights do not match the configuration: missing {missing[:6]}, unexpected "
                f"{sorted(info['unexpected_keys'])[:6]}, mismatched {sorted(map(str, info['mismatched_keys']))[:6]}"
            )
        try:
            processor = VideoXLProProcessor.from_pretrained(path)
        except Exception as e:
            raise ValueError(f"--model {path}: cannot load the processor / tokenizer files: {e}") from e
        return model.float(), processor
    if cfg.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    else:
        tokenizer = build_tiny_tokenizer()
    vid = tokenizer.convert_tokens_to_ids("<|vision_pad|>")
    if vid is None or vid == tokenizer.unk_token_id:
        raise ValueError(f"--tokenizer {cfg.tokenizer}: the tokenizer has no <|vision_pad|> token")
    if cfg.config == "tiny":
        config = VideoXLProConfig.tiny(vocab_size=max(512, len(tokenizer)), video_token_id=vid)
    else:
        config = VideoXLProConfig.real(video_token_id=vid)
        if len(tokenizer) > config.text_config.vocab_size:
            raise ValueError(f"--tokenizer {cfg.tokenizer}: {len(tokenizer)} tokens exceed the vocabulary {config.text_config.vocab_size}")
    torch.manual_seed(cfg.seed)
    model = VideoXLProForConditionalGeneration(config)
    vp = VideoXLProVideoProcessor(size=config.vision_config.image_size, frames_per_group=config.frames_per_group)
    processor = VideoXLProProcessor(vp, tokenizer, tokens_per_group=config.tokens_per_group)
    return model, processor


def lora_settings(cfg: TrainConfig) -> dict | None:
    """The LoRA settings of a run (None without LoRA), as stored in ``run_config.json``."""
    if not cfg.lora_rank:
        return None
    return {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": list(cfg.lora_targets)}


def add_lora(model, lora: dict | None) -> None:
    """Inject LoRA adapters (``peft.inject_adapter_in_model``) into the LLM's target projections, in place."""
    if not lora:
        return
    from peft import LoraConfig, inject_adapter_in_model

    conf = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["targets"])
    inject_adapter_in_model(conf, model.model.language_model)


def merge_lora(model) -> None:
    """Merge every LoRA adapter into its base layer and put the base layer back (the plain architecture)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, module.get_base_layer())


def parameter_group(name: str) -> str:
    """The freeze group of a parameter name (see ``GROUPS``)."""
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    raise KeyError(f"parameter {name} belongs to no training group")


def set_trainable(model, stage: str, freeze=(), lora: bool = False) -> dict[str, int]:
    """Set ``requires_grad`` for ``stage`` (minus ``freeze``); with ``lora`` the LLM trains only its adapters.
    Returns trainable parameter counts per group. Raises ValueError when nothing is left to train."""
    groups = STAGE_GROUPS[stage] - set(freeze)
    counts: Counter = Counter()
    for name, p in model.named_parameters():
        g = parameter_group(name)
        on = g in groups and (not lora or g != "llm" or ".lora_" in name)
        p.requires_grad_(on)
        if on:
            counts[g] += p.numel()
    if not counts:
        raise ValueError(f"--stage {stage} with --freeze {','.join(freeze)} leaves no parameter to train")
    return dict(counts)


class _Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.dev = info.device
        self.out = os.path.abspath(cfg.out)
        self.precision = cfg.precision or ("bf16" if self.dev.type == "cuda" else "fp32")
        self.lora = lora_settings(cfg)
        self.bad_new: list[dict] = []
        self.bad_all: list[dict] = []
        self.totals = Counter()

    # ------------------------------------------------------------------------------------------------- setup
    def _log(self, msg: str) -> None:
        if self.info.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"vxlp train: {msg}", file=sys.stderr)

    def _prepare_out(self):
        cfg = self.cfg
        ckpt = CheckpointManager(self.out, self.info, cfg.keep_checkpoints)
        latest = ckpt.latest()
        run_config = os.path.join(self.out, "run_config.json")
        if latest and not cfg.resume:
            raise ValueError(f"--out {self.out} already holds a run (checkpoint {os.path.basename(latest)}): pass --resume to continue it, or choose another --out")
        if not latest and os.path.isdir(os.path.join(self.out, "model")) and not cfg.resume:
            raise ValueError(f"--out {self.out} already holds a trained model (model/): choose another --out")
        if latest:
            with open(run_config) as f:
                saved = json.load(f)
            mine = cfg.fingerprint()
            # a setting added after the run was saved counts as its default there
            defaults = {f.name: _jsonable(f.default) for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
            theirs = {k: saved["fingerprint"].get(k, defaults.get(k)) for k in mine}
            diff = [k for k in mine if theirs[k] != mine[k]]
            if diff:
                detail = ", ".join(f"--{k.replace('_', '-')} {theirs[k]!r} → {mine[k]!r}" for k in diff)
                raise ValueError(f"--resume: the settings differ from the run in {self.out}: {detail}; a resumed run must use the same settings")
        elif cfg.resume:
            self._log(f"--resume: no checkpoint in {self.out}; starting from step 0")
        ckpt.remove_partials()
        return ckpt, latest

    def _build(self, latest):
        from ..config import VideoXLProConfig
        from ..processing import VideoXLProProcessor

        cfg = self.cfg
        base = os.path.join(self.out, "base")
        if latest:
            config = VideoXLProConfig.from_pretrained(base)
            processor = VideoXLProProcessor.from_pretrained(base)
            model = build_skeleton(config)
            add_lora(model, self.lora)
        else:
            model, processor = load_start_model(cfg)
            torch.manual_seed(cfg.seed)  # the adapters' initialisation, identical on every rank
            add_lora(model, self.lora)
            if self.info.is_main:
                os.makedirs(self.out, exist_ok=True)
                tmp = tempfile.mkdtemp(prefix=".base.", dir=self.out)
                model.config.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                shutil.rmtree(base, ignore_errors=True)
                os.replace(tmp, base)
            barrier()
        self.trainable = set_trainable(model, cfg.stage, cfg.freeze, lora=self.lora is not None)
        self.config, self.processor = model.config, processor
        model.to(self.dev)
        model.train()
        shard_model(model, device=self.dev, precision=self.precision, activation_checkpointing=cfg.activation_checkpointing)
        self.model = model
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}) if g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.params = [p for g in groups for p in g["params"]]

    def _data(self):
        cfg = self.cfg
        self.table = load_records(cfg.data, video_root=cfg.video_root, image_root=cfg.image_root, seed=cfg.seed, require_conversation=cfg.stage != "recot")
        world, b = self.info.world, cfg.batch_size
        if cfg.global_batch_size:
            if cfg.global_batch_size % (b * world):
                raise ValueError(f"--global-batch-size {cfg.global_batch_size} must be a multiple of --batch-size {b} × {world} processes")
            self.accum = cfg.global_batch_size // (b * world)
        else:
            self.accum = cfg.grad_accum or 1
        self.global_batch = b * self.accum * world
        self.total = cfg.steps or max(1, math.ceil(cfg.epochs * len(self.table) / self.global_batch))
        self.sampling = VideoSampling(cfg.fps, cfg.max_frames)
        proc, sampling = self.processor, self.sampling
        if cfg.stage == "recot":
            clips, seed = cfg.clips_per_video, cfg.seed

            def build(record, position):
                return build_clip_sample(record, proc, sampling, sample_rng(seed, position), clips)
        else:
            max_length = cfg.max_length

            def build(record, position):
                return build_lm_sample(record, proc, sampling, max_length)

        self.dataset = SampleDataset(self.table, EpochOrder(len(self.table), cfg.seed, cfg.shuffle), build, cfg.sample_timeout)

    def _dummy_batch(self) -> dict:
        """A micro-batch for a process whose samples were all bad: it keeps the collectives in step and weighs 0."""
        from ..processing import conversation

        size = self.processor.video_processor.size
        t = self.processor.frames_per_group
        if self.cfg.stage == "recot":
            return {"pixels": torch.zeros(t, 3, size, size)}
        proc = self.processor
        enc = proc(text=[proc.apply_chat_template(conversation("?", "?"))], videos=[torch.zeros(t, size, size, 3, dtype=torch.uint8)],
                   video_timestamps=[[0.0] * t], return_labels=True, padding_side="right")
        return dict(enc)

    # --------------------------------------------------------------------------------------------------- step
    def _forward(self, batch: dict, seed: int, step: int = 0):
        cfg, model = self.cfg, self.model
        if cfg.stage == "recot":
            pixels = batch["pixels"].to(self.dev)
            gen = torch.Generator(device=self.dev).manual_seed(seed)
            opts = {"mask_ratio": cfg.mask_ratio, "pool": cfg.pool, "score_loss_weight": cfg.score_loss_weight, "generator": gen}
            out = model(recot_pixel_values=pixels, recot_options=opts)
            logs = {"recon_loss": float(out.recon_loss), "score_loss": float(out.score_loss), "mask_fraction": float(out.mask_fraction)}
            return out.loss, logs, 0, pixels.shape[0]
        gen = torch.Generator().manual_seed(seed)
        call = {"selector_mode": cfg.selector_mode, "use_cache": False}  # a cache would grow on recomputation
        if cfg.selector_mode == "ratio":
            call["selector_keep_ratio"] = draw_keep_ratio(gen, *cfg.keep_ratio_range)
        if cfg.selector_budget is not None:
            call["selector_budget"] = cfg.selector_budget
        if cfg.distill_weight > 0:
            call["selector_distill_temperature"] = cfg.distill_temperature
            if cfg.distill_negatives:
                call["selector_distill_negatives"] = True
        if getattr(model.config, "llm_compression", "none") == "vst":
            call["vst_ratio"] = vst_curriculum_ratio(step, self.total, gen, cfg.vst_ratios)
        inputs = {k: v.to(self.dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out = model(**inputs, **call)
        loss, logs = out.loss, {"lm_loss": float(out.loss.detach())}
        if cfg.distill_weight > 0 and out.selector_distill_loss is not None:
            loss = loss + cfg.distill_weight * out.selector_distill_loss
            logs["distill"] = float(out.selector_distill_loss.detach())
        return loss, logs, int(inputs["attention_mask"].sum()), int(inputs["pixel_values_videos"].shape[0])

    def _note_bad(self, step: int, bad) -> None:
        rec = {**bad.to_dict(), "step": step, "rank": self.info.rank}
        self.bad_new.append(rec)
        from tqdm.auto import tqdm

        tqdm.write(f"vxlp train: [rank {self.info.rank}] skipped sample {bad.id!r} ({bad.media}): {bad.reason}", file=sys.stderr)

    def _trainer_state(self, step: int) -> dict:
        for part in gather_objects(self.bad_new):
            self.bad_all += part
        self.bad_new = []
        self.bad_all.sort(key=lambda r: r["position"])
        return {
            "version": 1,
            "step": step,
            "total_steps": self.total,
            "world_size": self.info.world,
            "scheduler": self.sched.state_dict(),
            "totals": dict(self.totals),
            "bad_samples": self.bad_all[:10000],
            "bad_reasons": dict(Counter(r["reason"].split(":")[0] for r in self.bad_all)),
        }

    # ---------------------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        ckpt, latest = self._prepare_out()
        self._build(latest)
        self._data()
        warmup = int(round(cfg.warmup_ratio * self.total))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, WarmupCosine(self.total, warmup, cfg.min_lr_ratio))
        start = 0
        if latest:
            state = ckpt.load(latest, self.model, self.opt)
            self.sched.load_state_dict(state["scheduler"])
            start = int(state["step"])
            self.totals.update(state.get("totals", {}))
            self.bad_all = list(state.get("bad_samples", []))
            if int(state.get("total_steps", self.total)) != self.total:
                raise ValueError(f"--resume: the run in {self.out} has {state['total_steps']} steps, this invocation {self.total}")
            self._log(f"resumed from {os.path.basename(latest)} (step {start} of {self.total})")
        if info.is_main:
            write_atomic(os.path.join(self.out, "run_config.json"), json.dumps({
                "fingerprint": cfg.fingerprint(), "settings": {k: _jsonable(v) for k, v in dataclasses.asdict(cfg).items()},
                "world_size": info.world, "grad_accum": self.accum, "global_batch_size": self.global_batch,
                "total_steps": self.total, "records": len(self.table), "precision": self.precision,
                "trainable_parameters": self.trainable, "lora": self.lora,
            }, indent=1))
        stop = self.total if cfg.stop_after is None else min(self.total, start + cfg.stop_after)
        tb_dir = os.path.join(self.out, "tensorboard") if cfg.tensorboard else None
        metrics = MetricsLogger(os.path.join(self.out, "metrics.jsonl"), info.is_main, resume_step=start if latest else None, tensorboard_dir=tb_dir)
        history = []
        try:
            self._loop(start, stop, ckpt, metrics, history)
        finally:
            metrics.close()
        return self._finish(stop, history)

    def _loop(self, start: int, stop: int, ckpt: CheckpointManager, metrics: MetricsLogger, history: list) -> None:
        from tqdm.auto import tqdm

        cfg, info, b = self.cfg, self.info, self.cfg.batch_size
        positions = list(rank_positions(start, stop, info.rank, info.world, self.accum, b))
        loader_timeout = cfg.loader_timeout or (4 * cfg.sample_timeout + 60 if cfg.sample_timeout else None)
        loader = RobustLoader(self.dataset, positions, num_workers=cfg.num_workers, loader_timeout=loader_timeout, seed=cfg.seed + info.rank)
        collate = collate_clips if cfg.stage == "recot" else (lambda s: collate_lm(s, self._pad_id()))
        it = iter(loader)
        bar = tqdm(total=self.total, initial=start, desc=f"vxlp {cfg.stage}", disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
        try:
            for step in range(start, stop):
                t0 = time.perf_counter()
                lr = self.sched.get_last_lr()[0]
                loss_sum, n_real, tokens, frames, bad, extra = 0.0, 0, 0, 0, 0, Counter()
                for a in range(self.accum):
                    items = [next(it) for _ in range(b)]
                    good = [x.sample for x in items if x.sample is not None]
                    for x in items:
                        if x.bad is not None:
                            bad += 1
                            self._note_bad(step, x.bad)
                    batch, weight = (collate(good), 1.0) if good else (self._dummy_batch(), 0.0)
                    loss, logs, tok, fr = self._forward(batch, micro_seed(cfg.seed, step, info.rank * self.accum + a), step)
                    (loss * (weight / self.accum)).backward()
                    if weight:
                        loss_sum += float(loss.detach())
                        n_real += 1
                        tokens += tok
                        frames += fr
                        extra.update(logs)
                norm = self._clip()
                keys = self._log_keys()  # the same on every rank (a rank may have run only placeholder batches)
                sums = all_reduce_sum([loss_sum, n_real, tokens, frames, bad, b * self.accum] + [extra[k] for k in keys], self.dev)
                g_loss = sums[0] / max(1.0, sums[1])
                if not (math.isfinite(g_loss) and math.isfinite(norm)):
                    raise FloatingPointError(
                        f"non-finite {'loss' if not math.isfinite(g_loss) else 'gradient norm'} at step {step} "
                        f"(loss {g_loss}, grad norm {norm}); the last checkpoint is intact: lower --lr or check the data"
                    )
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                dt = time.perf_counter() - t0
                self.totals.update({"samples": int(sums[5]), "bad": int(sums[4]), "tokens": int(sums[2]), "frames": int(sums[3]), "steps": 1})
                self.totals["seconds"] = self.totals.get("seconds", 0.0) + dt
                record = {
                    "step": step, "loss": g_loss, "lr": lr, "grad_norm": norm,
                    "tokens_per_s": sums[2] / dt, "frames_per_s": sums[3] / dt,
                    "samples": int(sums[5]), "bad_samples": int(sums[4]), "step_time_s": dt,
                    **{k: v / max(1.0, sums[1]) for k, v in zip(keys, sums[6:])},
                }
                history.append(record)
                if step % cfg.log_every == 0 or step == stop - 1:
                    metrics.log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{g_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                self._check_bad_fraction()
                done = step + 1
                if done % cfg.save_every == 0 or done == stop:
                    path = ckpt.save(done, self.model, self.opt, self._trainer_state(done))
                    self._log(f"saved checkpoint {path}")
        finally:
            bar.close()

    def _log_keys(self) -> tuple:
        if self.cfg.stage == "recot":
            return ("mask_fraction", "recon_loss", "score_loss")
        return ("distill", "lm_loss") if self.cfg.distill_weight > 0 else ("lm_loss",)

    def _pad_id(self) -> int:
        tok = self.processor.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else 0

    def _clip(self) -> float:
        params = [p for p in self.params if p.grad is not None]
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(local_value(norm))

    def _check_bad_fraction(self) -> None:
        seen, bad = self.totals["samples"], self.totals["bad"]
        if seen >= 50 and bad > self.cfg.max_bad_fraction * seen:
            reasons = Counter(r["reason"] for r in self.bad_new + self.bad_all).most_common(3)
            raise ValueError(
                f"{bad} of the {seen} samples read could not be used (above --max-bad-fraction {self.cfg.max_bad_fraction}); "
                f"most common reasons here: {reasons}. Check --data, --video-root and --image-root."
            )

    def _finish(self, stop: int, history: list) -> TrainResult:
        cfg, info = self.cfg, self.info
        state = self._trainer_state(stop)  # gathers the skipped samples of every rank
        model_dir = None
        if stop == self.total:
            model_dir = os.path.abspath(cfg.export_dir or os.path.join(self.out, "model"))
            note = json.dumps({"stage": cfg.stage, "steps": self.total, "run": self.out}, indent=1)
            export_model(self.model, self.config, model_dir, info, processor=self.processor, dtype=cfg.export_dtype, lora=self.lora,
                         extra_files={"vxlp_training.json": note})
            if info.is_main:
                self._log(f"exported the trained model to {model_dir}")
        summary = {}
        if info.is_main:
            records = read_metrics(os.path.join(self.out, "metrics.jsonl"))
            if records:
                plot_loss_curve(records, os.path.join(self.out, "loss.png"), f"vxlp {cfg.stage}: loss per step")
            t = state["totals"]
            tail = [r["loss"] for r in records[-10:]]
            summary = {
                "stage": cfg.stage, "status": "complete" if stop == self.total else "stopped", "step": stop,
                "total_steps": self.total, "world_size": info.world, "grad_accum": self.accum,
                "global_batch_size": self.global_batch, "precision": self.precision, "records": len(self.table),
                "samples_read": t.get("samples", 0), "bad_samples": t.get("bad", 0), "bad_reasons": state["bad_reasons"],
                "bad_sample_list": state["bad_samples"], "final_loss": float(np.mean(tail)) if tail else None,
                "first_loss": records[0]["loss"] if records else None,
                "tokens_per_s": t.get("tokens", 0) / max(1e-9, t.get("seconds", 0.0)),
                "frames_per_s": t.get("frames", 0) / max(1e-9, t.get("seconds", 0.0)),
                "train_seconds": t.get("seconds", 0.0), "model_dir": model_dir, "trainable_parameters": self.trainable,
                "metrics": os.path.join(self.out, "metrics.jsonl"), "loss_curve": os.path.join(self.out, "loss.png"),
            }
            write_atomic(os.path.join(self.out, "summary.json"), json.dumps(summary, indent=1))
        barrier()
        return TrainResult(self.out, model_dir, stop, self.total, history, summary)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) one training stage; see :class:`TrainConfig` and the module docstring.

    Works in one process (a one-process group is created) and under ``torchrun`` (every process calls it).

    Returns :class:`TrainResult` (the summary on rank 0; ``{}`` elsewhere).

    Raises:
        ValueError: invalid settings (naming the flag), malformed data (naming the file and record), a resume with
            different settings, too many bad samples, an ``--out`` that holds another run.
        FileNotFoundError: missing data, model or tokenizer.
        FloatingPointError: a non-finite loss or gradient norm (the last checkpoint stays intact).
    """
    cfg = cfg.resolved()
    # the tokenizer runs in forked DataLoader workers: keep its own thread pool off (no fork warnings, no deadlock)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    info = init_distributed(cfg.device)
    try:
        return _Run(cfg, info).run()
    finally:
        shutdown(info)
