"""The first layout's entry point, kept for ``vxlp_model.cli``'s current ``vxlp train`` (stages ``qa`` / ``recot``).

:func:`train_from_json` runs :func:`vxlp_model.train.train` (``qa`` = ``finetune``) and writes the trained model to
``out_dir`` (the run folder — checkpoints, metrics — is ``out_dir + ".run"``). New code: use
:func:`vxlp_model.train.train` / :mod:`vxlp_model.train.cli`.
"""

from __future__ import annotations

import os


def train_from_json(
    model_dir: str,
    data: str,
    out_dir: str,
    *,
    stage: str = "qa",
    steps: int = 100,
    lr: float = 1e-5,
    batch_size: int = 1,
    fps: float | None = 1.0,
    max_frames: int | None = 240,
    seed: int = 0,
    device: str = "cpu",
    freeze_vision: bool = False,
    progress: bool = True,
) -> str:
    """Train ``model_dir`` on LLaVA-style ``data`` and write the model to ``out_dir`` (see the module docstring).

    Raises ValueError for a bad stage or settings, FileNotFoundError for missing inputs.
    """
    from .trainer import TrainConfig, train

    stages = {"qa": "finetune", "finetune": "finetune", "recot": "recot", "projector": "projector"}
    if stage not in stages:
        raise ValueError(f"stage must be one of {sorted(stages)}, got {stage!r}")
    cfg = TrainConfig(
        stage=stages[stage], data=data, out=os.path.abspath(out_dir) + ".run", model=model_dir, steps=steps, lr=lr,
        batch_size=batch_size, fps=(fps or 1.0,), max_frames=max_frames or 100000, seed=seed, device=device,
        freeze=("vision",) if freeze_vision and stages[stage] == "finetune" else (), export_dir=out_dir, progress=progress,
        save_every=max(1, steps),
    )
    return train(cfg).model_dir or os.path.abspath(out_dir)
