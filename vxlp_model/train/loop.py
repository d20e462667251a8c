"""A small, explicit training loop: AdamW, linear warm-up + cosine decay, gradient clipping, tqdm progress."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_loop(
    params: Iterable[torch.nn.Parameter],
    loss_fn: Callable[[int], tuple[torch.Tensor, dict]],
    steps: int,
    lr: float,
    *,
    warmup_ratio: float = 0.03,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    desc: str = "train",
    progress: bool = True,
    log_every: int = 10,
) -> list[dict]:
    """Run ``steps`` optimisation steps of ``loss_fn(step) -> (loss, logs)``.

    Args:
        params: the parameters to train (others stay fixed).
        loss_fn: computes the loss of one step (it samples its own batch) and a dict of floats to log.
        steps: number of steps (≥ 1); lr: peak learning rate; warmup_ratio: fraction of steps warming up
            (SPEC §6: 3 %); weight_decay: AdamW decoupled weight decay; grad_clip: max global grad norm.

    Returns:
        One dict per step: ``step``, ``lr``, ``loss`` and the logs.

    Raises:
        ValueError: steps < 1, lr ≤ 0, no trainable parameter, or a non-finite loss (names the step).
    """
    params = [p for p in params if p.requires_grad]
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not params:
        raise ValueError("params holds no trainable parameter")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = int(round(warmup_ratio * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, warmup))
    history = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    running = None
    for step in bar:
        loss, logs = loss_fn(step)
        if not torch.isfinite(loss):
            raise ValueError(f"{desc}: non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        history.append({"step": step, "lr": sched.get_last_lr()[0], "loss": value, **{k: float(v) for k, v in logs.items()}})
        if step % log_every == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return history
