"""Process groups, FSDP2 sharding, mixed precision and activation checkpointing for every training stage.

One code path for one process and for ``torchrun --nproc_per_node N``: without torchrun a one-process group is
created in-process (``HashStore``), so the model is always an FSDP2 module (``torch.distributed.fsdp.fully_shard``)
and checkpoints are always ``torch.distributed.checkpoint`` (DCP) folders that any world size can resume.

Sharding units (bottom-up, then the root): every SigLIP encoder layer, every DTS block (``sae.encoder[i]``), every
ReCoT decoder block, every LLM decoder layer. Everything else (embeddings, projector, selector, SGM, norms, the LM
head tied to the embeddings) is in the root unit, gathered for the whole forward, because the model reads those
parameters outside their own ``forward`` (e.g. the splice reads the input embeddings).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class DistInfo:
    """``rank``, ``world`` (size), ``local_rank``, ``device`` and whether this call ``created`` the process group."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    created: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | None) -> torch.device:
    """``None`` → ``cuda`` when available, else ``cpu``. Raises ValueError for ``cuda`` without a CUDA device."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return dev


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group (``WORLD_SIZE > 1``) or create a one-process group.

    Backends: gloo on CPU; NCCL for CUDA tensors (with gloo for CPU objects). Under torchrun with CUDA each process
    uses ``cuda:LOCAL_RANK``. An existing process group is reused (and left alone at the end).
    """
    dev = resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        created = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, created)


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of floats over all ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sharding_units(model) -> list[tuple[nn.ModuleList, int]]:
    """``(parent list, index)`` of every block that becomes its own FSDP2 unit (see the module docstring)."""
    inner = model.model
    lists = [inner.vision_tower.encoder.layers, inner.sae.encoder]
    if hasattr(inner, "recot_decoder"):
        lists.append(inner.recot_decoder.blocks)
    lists.append(inner.language_model.layers)
    return [(lst, i) for lst in lists for i in range(len(lst))]


def shard_model(model, *, device: torch.device, precision: str = "fp32", activation_checkpointing: bool = True):
    """Apply activation checkpointing (optional) and FSDP2 to ``model`` in place; returns it.

    Args:
        model: :class:`VideoXLProForConditionalGeneration` on ``device`` (requires_grad already set per stage).
        precision: ``"fp32"`` or ``"bf16"``: FSDP2 ``MixedPrecisionPolicy(param_dtype=bfloat16,
            reduce_dtype=float32)`` — float32 master weights and optimizer state, bf16 compute and all-gathers,
            float32 gradient reduction.
        activation_checkpointing: wrap every sharding unit with ``checkpoint_wrapper`` (non-reentrant): its
            activations are recomputed in backward. State-dict names do not change.

    Raises ValueError for an unknown precision.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else MixedPrecisionPolicy()
    for lst, i in sharding_units(model):
        block = lst[i]
        if activation_checkpointing:
            block = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            lst[i] = block
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def local_value(t) -> torch.Tensor:
    """A DTensor's full value (or the tensor itself)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
