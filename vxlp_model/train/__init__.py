"""Training (SPEC §3, §6).

- :func:`train` with :class:`TrainConfig`: the three stages (``recot``, ``projector``, ``finetune``) on LLaVA-style
  data or YAML mixtures, FSDP2 in one process or under ``torchrun``, exact resume from DCP checkpoints, export to a
  ``from_pretrained`` folder (:mod:`.trainer`). CLI: ``vxlp train`` / ``python -m vxlp_model.train``.
- :func:`prune_dataset`: SigLIP-redundancy pruning of video data (paper; SPEC §6) — ``vxlp prune``.
- :func:`train_recot`, :func:`train_qa`: the small in-memory loops of the demo (:mod:`.stages`).
- :func:`save_checkpoint` (atomic ``save_pretrained``), :func:`export_checkpoint` (DCP checkpoint → model folder).
"""

from .checkpoint import save_checkpoint
from .loop import cosine_schedule, train_loop
from .stages import train_qa, train_recot


def __getattr__(name):  # the scale-out pieces import torch.distributed and friends lazily
    if name in ("train", "TrainConfig", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    if name == "export_checkpoint":
        from .state import export_checkpoint

        return export_checkpoint
    if name in ("prune_dataset", "PruneReport"):
        from . import prune

        return getattr(prune, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "export_checkpoint",
    "prune_dataset",
    "PruneReport",
    "train_loop",
    "cosine_schedule",
    "train_recot",
    "train_qa",
    "save_checkpoint",
]
