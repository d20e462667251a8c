"""The two training stages used by the demo and by users: ReCoT pre-training and supervised QA fine-tuning."""

from __future__ import annotations

from typing import Callable

import torch

from ..llm_compression import vst_curriculum_ratio
from ..processing import conversation
from ..selector import SelectorNegativeMemory
from .loop import train_loop


def train_recot(
    model,
    processor,
    frames: torch.Tensor | list[torch.Tensor],
    steps: int,
    *,
    groups_per_step: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    mask_ratio: float = 0.5,
    pool: float = 0.75,
    score_loss_weight: float = 0.1,
    progress: bool = True,
) -> list[dict]:
    """ReCoT stage (SPEC §3): train ``sae``, ``recot_decoder`` and ``sgm`` to reconstruct frozen SigLIP tokens.

    Args:
        model: :class:`VideoXLProForConditionalGeneration` (with a ReCoT decoder).
        processor: :class:`VideoXLProProcessor` (its video processor turns frames into pixels).
        frames: uint8 ``[N, H, W, 3]`` training video frames, or a list of such videos (each with
            N ≥ frames_per_group); each step draws ``groups_per_step`` clips of ``frames_per_group`` frames (from one
            random video per step) with a random start and temporal stride 1–3.
        steps, lr: optimisation steps and peak learning rate; seed: seeds the clip sampling and the SGM masks.
        mask_ratio, pool, score_loss_weight: SGM masking and the score loss weight (SPEC §3; training settings).

    Returns: the per-step history (``loss``, ``recon_loss``, ``score_loss``, ``mask_fraction``).
    """
    t = model.config.frames_per_group
    videos = list(frames) if isinstance(frames, (list, tuple)) else [frames]
    for i, v in enumerate(videos):
        if v.shape[0] < t:
            raise ValueError(f"frames[{i}] must hold at least {t} frames, got {v.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    device = model.device
    mask_gen = torch.Generator(device=device).manual_seed(seed + 1)
    model.train()
    inner = model.model
    params = [*inner.sae.parameters(), *inner.recot_decoder.parameters(), *inner.sgm.parameters()]

    def loss_fn(step):
        clips = []
        video = videos[int(torch.randint(0, len(videos), (), generator=gen))]
        n = video.shape[0]
        for _ in range(groups_per_step):
            stride = int(torch.randint(1, 4, (), generator=gen))
            stride = min(stride, max(1, (n - 1) // max(1, t - 1)))
            start = int(torch.randint(0, n - (t - 1) * stride, (), generator=gen))
            clips.append(video[start : start + (t - 1) * stride + 1 : stride])
        pixels = processor.video_processor.pixel_values(torch.cat(clips)).to(device)
        # through forward, so FSDP2 gathers the root's parameters as in any other step
        opts = {"mask_ratio": mask_ratio, "pool": pool, "score_loss_weight": score_loss_weight, "generator": mask_gen}
        out = model(recot_pixel_values=pixels, recot_options=opts)
        return out.loss, {"recon_loss": out.recon_loss, "score_loss": out.score_loss, "mask_fraction": out.mask_fraction}

    return train_loop(params, loss_fn, steps, lr, desc="ReCoT", progress=progress)


def draw_keep_ratio(generator: torch.Generator, low: float = 0.70, high: float = 0.95) -> float:
    """A keep ratio drawn uniformly in ``[low, high]`` (SPEC §4: the paper drops 5–30 % in training)."""
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"keep ratio range must satisfy 0 < low <= high <= 1, got ({low}, {high})")
    return low + (high - low) * float(torch.rand((), generator=generator))


def train_qa(
    model,
    processor,
    sample_fn: Callable[[torch.Generator], tuple],
    steps: int,
    *,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    freeze_vision: bool = False,
    selector_mode: str = "ratio",
    keep_ratio_range: tuple[float, float] = (0.70, 0.95),
    selector_budget: int | None = None,
    selector_budget_range: tuple[int, int] | None = None,
    selector_off_steps: int = 0,
    selector_full_view_fraction: float = 0.0,
    selector_distill_weight: float = 0.0,
    selector_distill_temperature: float = 10.0,
    selector_distill_negatives: bool = False,
    selector_distill_memory: int = 0,
    progress: bool = True,
    desc: str = "QA",
    vst_ratios: tuple[int, ...] = (2, 4, 8, 16),
) -> list[dict]:
    """Supervised fine-tuning on (video, question, answer) samples; loss on the answer tokens only (SPEC §6).

    Args:
        model: :class:`VideoXLProForConditionalGeneration`; processor: :class:`VideoXLProProcessor`.
        sample_fn: ``sample_fn(generator) -> (frames uint8 [N, H, W, 3], timestamps [N] s, question, answer)``.
        steps, batch_size, lr: optimisation settings; seed: seeds sampling and the selector's keep ratio.
        freeze_vision: keep SigLIP fixed.
        selector_mode: the selector mode while training (``ratio``: SPEC §4's training mode, a keep ratio drawn per
            step in ``keep_ratio_range`` by this function's generator; ``budget`` with ``selector_budget``; ``off``).
            Passed per call: the model's configuration is never changed.
        selector_budget_range: budget mode: a budget drawn per step, uniformly among the multiples of 16 in
            ``[low, high]`` (instead of ``selector_budget``): a tight budget makes the selector choose even on short
            training videos. selector_off_steps: the first steps run with the selector off (every visual token
            reaches the LLM), so the LLM learns the task before the selector decides what it sees.
            selector_full_view_fraction (our design; 0 = off): when distilling, "full-view" steps keep every token
            but still score them (keep ratio 1), so the distillation target covers the whole video — including the
            tokens a tight budget drops, which the kept-token target never shows the selector. With a fraction
            > 0, the ``selector_off_steps`` are full-view steps, and after them each step is one with this
            probability (drawn per step).
        selector_distill_weight, selector_distill_temperature: weight and temperature of the selector's relevance
            distillation (our design; 0 = the released training), see
            :meth:`VideoXLProForConditionalGeneration.forward`. selector_distill_negatives (our design): the
            distillation also ranks each sample's tokens above the batch's low-relevance tokens of the other
            samples asked the same question (in-batch negatives, same method). selector_distill_memory (our design;
            0 = off): also the last this-many low-relevance groups of earlier steps, asked the same question, in a
            :class:`vxlp_model.selector.SelectorNegativeMemory` that lives for this call (a first-in-first-out queue
            of negatives, re-scored by the current selector at every step).
        vst_ratios: a model with ``llm_compression = "vst"`` draws its compression ratio per step from this
            curriculum (:func:`vxlp_model.llm_compression.vst_curriculum_ratio`).

    Returns: the per-step history (``loss`` — the optimised total —, ``lm_loss``, and ``distill`` when distilling).
    """
    if selector_budget_range is not None and not 16 <= selector_budget_range[0] <= selector_budget_range[1]:
        raise ValueError(f"selector_budget_range must satisfy 16 <= low <= high, got {selector_budget_range}")
    if selector_off_steps < 0:
        raise ValueError(f"selector_off_steps must be >= 0, got {selector_off_steps}")
    if not 0.0 <= selector_full_view_fraction <= 1.0:
        raise ValueError(f"selector_full_view_fraction must be in [0, 1], got {selector_full_view_fraction}")
    if isinstance(selector_distill_memory, bool) or not isinstance(selector_distill_memory, int) or selector_distill_memory < 0:
        raise ValueError(f"selector_distill_memory must be an int >= 0, got {selector_distill_memory!r}")
    memory = SelectorNegativeMemory(selector_distill_memory) if selector_distill_memory and selector_distill_weight > 0 else None
    gen = torch.Generator().manual_seed(seed)
    inner = model.model
    for p in inner.vision_tower.parameters():
        p.requires_grad_(not freeze_vision)
    model.train()
    skip = set()
    for name in ("recot_decoder", "sgm"):
        if hasattr(inner, name):
            skip |= {id(p) for p in getattr(inner, name).parameters()}
    params = [p for p in model.parameters() if id(p) not in skip]
    device = model.device

    def loss_fn(step):
        prompts, videos, stamps = [], [], []
        for _ in range(batch_size):
            frames, ts, question, answer = sample_fn(gen)
            prompts.append(processor.apply_chat_template(conversation(question, answer)))
            videos.append(frames)
            stamps.append(ts)
        batch = processor(text=prompts, videos=videos, video_timestamps=stamps, return_labels=True, padding_side="right").to(device)
        call = {"selector_mode": selector_mode if step >= selector_off_steps else "off"}
        if selector_mode == "ratio":
            call["selector_keep_ratio"] = draw_keep_ratio(gen, *keep_ratio_range)
        if selector_budget is not None:
            call["selector_budget"] = selector_budget
        if selector_budget_range is not None:
            lo, hi = (-(-selector_budget_range[0] // 16)), selector_budget_range[1] // 16
            call["selector_budget"] = 16 * int(torch.randint(lo, hi + 1, (), generator=gen))
        full_view = False
        if selector_full_view_fraction > 0:
            full_view = step < selector_off_steps or float(torch.rand((), generator=gen)) < selector_full_view_fraction
        if full_view and selector_distill_weight > 0 and selector_mode != "off":
            call["selector_mode"], call["selector_keep_ratio"] = "ratio", 1.0  # every token kept, and scored
        if selector_distill_weight > 0:
            call["selector_distill_temperature"] = selector_distill_temperature
            if selector_distill_negatives:
                call["selector_distill_negatives"] = True
            if memory is not None:
                call["selector_distill_memory"] = memory
        if getattr(model.config, "llm_compression", "none") == "vst":
            call["vst_ratio"] = vst_curriculum_ratio(step, steps, gen, vst_ratios)
        out = model(**batch, **call)
        loss, logs = out.loss, {"lm_loss": float(out.loss.detach())}
        if out.selector_distill_loss is not None:
            loss = loss + selector_distill_weight * out.selector_distill_loss
            logs["distill"] = float(out.selector_distill_loss.detach())
        return loss, logs

    return train_loop(params, loss_fn, steps, lr, desc=desc, progress=progress)
