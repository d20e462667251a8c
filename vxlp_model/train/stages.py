"""The two training stages used by the demo and by users: ReCoT pre-training and supervised QA fine-tuning."""

from __future__ import annotations

from typing import Callable

import torch

from .loop import train_loop


def train_recot(
    model,
    frames: torch.Tensor | list[torch.Tensor],
    steps: int,
    *,
    groups_per_step: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """ReCoT stage (SPEC §3): train ``sae``, ``recot_decoder`` and ``sgm`` to reconstruct frozen SigLIP tokens.

    Args:
        model: :class:`VideoXLProForCausalLM`.
        frames: uint8 ``[N, H, W, 3]`` training video frames, or a list of such videos (each with
            N ≥ frames_per_group); each step draws ``groups_per_step`` clips of ``frames_per_group`` frames (from one
            random video per step) with a random start and temporal stride 1–3.
        steps, lr: optimisation steps and peak learning rate; seed: seeds the clip sampling and the SGM masks.

    Returns: the per-step history (``loss``, ``recon_loss``, ``score_loss``, ``mask_fraction``).
    """
    t = model.config.frames_per_group
    videos = list(frames) if isinstance(frames, (list, tuple)) else [frames]
    for i, v in enumerate(videos):
        if v.shape[0] < t:
            raise ValueError(f"frames[{i}] must hold at least {t} frames, got {v.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    mask_gen = torch.Generator(device=model.sae.temporal_encoding.device).manual_seed(seed + 1)
    model.train()
    params = [*model.sae.parameters(), *model.recot_decoder.parameters(), *model.sgm.parameters()]

    def loss_fn(step):
        clips = []
        video = videos[int(torch.randint(0, len(videos), (), generator=gen))]
        n = video.shape[0]
        for _ in range(groups_per_step):
            stride = int(torch.randint(1, 4, (), generator=gen))
            stride = min(stride, max(1, (n - 1) // max(1, t - 1)))
            start = int(torch.randint(0, n - (t - 1) * stride, (), generator=gen))
            clips.append(video[start : start + (t - 1) * stride + 1 : stride])
        out = model.recot_loss(torch.cat(clips), generator=mask_gen)
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}

    return train_loop(params, loss_fn, steps, lr, desc="ReCoT", progress=progress)


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
    selector_mode: str | None = "ratio",
    progress: bool = True,
    desc: str = "QA",
) -> list[dict]:
    """Supervised fine-tuning on (video, question, answer) samples; loss on the answer tokens only (SPEC §6).

    Args:
        model: :class:`VideoXLProForCausalLM`; processor: :class:`VideoXLProProcessor`.
        sample_fn: ``sample_fn(generator) -> (frames uint8 [N, H, W, 3], timestamps [N] s, question, answer)``.
        steps, batch_size, lr: optimisation settings; seed: seeds sampling and the selector's keep ratio.
        freeze_vision: keep SigLIP fixed; selector_mode: the selector mode while training (``ratio`` = SPEC §4's
            training mode), restored afterwards.

    Returns: the per-step history (``loss``, ``answer_accuracy``: teacher-forced accuracy of the answer tokens).
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.vision_tower.parameters():
        p.requires_grad_(not freeze_vision)
    old_mode = model.selector.mode
    if selector_mode is not None:
        model.selector.mode = selector_mode
    model.train()
    skip = set(id(p) for p in [*model.recot_decoder.parameters(), *model.sgm.parameters()])
    params = [p for p in model.parameters() if id(p) not in skip]

    def loss_fn(step):
        samples, videos = [], []
        for _ in range(batch_size):
            frames, ts, question, answer = sample_fn(gen)
            samples.append(processor(question, ts, answer))
            videos.append(frames)
        batch = processor.collate(samples)
        out = model(**batch, video_frames=videos)
        return out.loss, {}

    try:
        return train_loop(params, loss_fn, steps, lr, desc=desc, progress=progress)
    finally:
        model.selector.mode = old_mode
