"""Training: the optimisation loop, ReCoT pre-training and supervised QA fine-tuning (SPEC §3, §6)."""

from .checkpoint import save_checkpoint
from .loop import cosine_schedule, train_loop
from .stages import train_qa, train_recot

__all__ = ["train_loop", "cosine_schedule", "train_recot", "train_qa", "save_checkpoint"]
