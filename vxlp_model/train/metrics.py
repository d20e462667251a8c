"""Training logs: JSON Lines metrics (one object per step), optional TensorBoard, and the loss curve as a PNG."""

from __future__ import annotations

import io
import json
import math
import os

from .state import write_atomic


class MetricsLogger:
    """Appends one JSON object per step to ``metrics.jsonl`` (flushed at once) and, optionally, to TensorBoard.

    Only the main process logs (``enabled``). On a resume from step s the file is first rewritten (atomically)
    without the lines of steps ≥ s, so it always describes one consistent run.

    Args:
        path: the JSONL file; enabled: log here (rank 0); tensorboard_dir: also write TensorBoard events there.

    Raises ValueError when TensorBoard is asked for and the ``tensorboard`` package is missing.
    """

    def __init__(self, path: str, enabled: bool = True, resume_step: int | None = None, tensorboard_dir: str | None = None):
        self.path, self.enabled, self._tb = path, enabled, None
        if not enabled:
            return
        if resume_step is not None and os.path.isfile(path):
            kept = [r for r in read_metrics(path) if r.get("step", -1) < resume_step]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif os.path.exists(path):
            os.unlink(path)
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError("--tensorboard needs the 'tensorboard' package (pip install tensorboard)") from e
            self._tb = SummaryWriter(tensorboard_dir, purge_step=resume_step)
        self._f = open(path, "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics JSONL file (a torn last line, from a kill, is ignored)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_loss_curve(records: list[dict], path: str, title: str = "training loss") -> str:
    """Write the loss per step (and a running mean over ~5 % of the steps) as a PNG, atomically. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "loss" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="loss")
    w = max(1, len(losses) // 20)
    if w > 1:
        smooth = [sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.6, label=f"running mean ({w} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path
