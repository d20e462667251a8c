"""Resumable training state: ``torch.distributed.checkpoint`` (DCP) checkpoints written atomically, and export.

Run folder layout (``--out``)::

    run_config.json            the settings that define the run (compared on --resume)
    base/                      config.json + processor files of the model being trained (rebuilds it on resume)
    checkpoints/step-00000100/ one DCP checkpoint: model + optimizer (sharded per rank: __<rank>_0.distcp,
                               .metadata), trainer_state.json (step = data position, scheduler, counters, skipped
                               samples), rng-<rank>.pt (torch CPU/CUDA, Python and NumPy RNG states per rank)
    checkpoints/latest         the name of the newest complete checkpoint
    metrics.jsonl, loss.png, summary.json, model/ (the exported model, ``from_pretrained``-loadable)

Atomicity: a checkpoint is written into ``checkpoints/.step-XXXXXXXX.partial``; DCP fsyncs its files; only when
every rank has finished does rank 0 write ``trainer_state.json`` last, rename the folder to ``step-XXXXXXXX``,
fsync the parent and replace ``latest`` (write + ``os.replace``). A process killed at any point leaves the
previous checkpoint and ``latest`` untouched; leftover ``.partial`` folders are removed at the next start.
Assumes a file system shared by all ranks (as DCP does).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch

from .distributed import DistInfo, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, fsync and ``os.replace`` (never a torn file)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every global RNG this process uses: torch CPU (and CUDA), Python ``random``, NumPy."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Save / find / load the DCP checkpoints of one run folder (see the module docstring).

    Args:
        run_dir: the run folder; info: :class:`DistInfo`; keep: complete checkpoints kept (oldest deleted first).
    """

    def __init__(self, run_dir: str, info: DistInfo, keep: int = 2):
        if keep < 1:
            raise ValueError(f"--keep-checkpoints must be >= 1, got {keep}")
        self.root = os.path.join(os.path.abspath(run_dir), "checkpoints")
        self.info, self.keep = info, keep

    # ---------------------------------------------------------------------------------------------- discovery
    def complete(self) -> list[str]:
        """Complete checkpoint folders, oldest first."""
        if not os.path.isdir(self.root):
            return []
        names = sorted(n for n in os.listdir(self.root) if _STEP_DIR.match(n))
        return [os.path.join(self.root, n) for n in names if os.path.isfile(os.path.join(self.root, n, "trainer_state.json"))]

    def latest(self) -> str | None:
        """The newest complete checkpoint (the ``latest`` pointer, checked; else a scan), or None."""
        pointer = os.path.join(self.root, "latest")
        if os.path.isfile(pointer):
            with open(pointer) as f:
                name = f.read().strip()
            path = os.path.join(self.root, name)
            if _STEP_DIR.match(name) and os.path.isfile(os.path.join(path, "trainer_state.json")):
                return path
        done = self.complete()
        return done[-1] if done else None

    def remove_partials(self) -> None:
        """Delete leftovers of interrupted saves (rank 0)."""
        if self.info.is_main and os.path.isdir(self.root):
            for n in os.listdir(self.root):
                p = os.path.join(self.root, n)
                if n.endswith(".partial") and os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif n.startswith("latest.") and n.endswith(".tmp"):
                    os.unlink(p)
        barrier()

    # --------------------------------------------------------------------------------------------------- save
    def save(self, step: int, model, optimizer, trainer_state: dict) -> str:
        """Write the checkpoint of ``step`` (completed steps) on every rank; returns its folder.

        ``trainer_state`` (JSON-serialisable, identical on all ranks) is written by rank 0 as the last file.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        name = f"step-{step:08d}"
        final = os.path.join(self.root, name)
        partial = os.path.join(self.root, f".{name}.partial")
        if self.info.is_main:
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
        barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=partial)
        rng_path = os.path.join(partial, f"rng-{self.info.rank}.pt")
        with open(rng_path, "wb") as f:
            torch.save(rng_state(), f)
            f.flush()
            os.fsync(f.fileno())
        barrier()
        if self.info.is_main:
            write_atomic(os.path.join(partial, "trainer_state.json"), json.dumps(trainer_state, indent=1))
            fsync_dir(partial)
            if os.path.exists(final):  # a rerun of the same step (after a resume): replace it
                shutil.rmtree(final)
            os.replace(partial, final)
            fsync_dir(self.root)
            write_atomic(os.path.join(self.root, "latest"), name + "\n")
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    # --------------------------------------------------------------------------------------------------- load
    def load(self, path: str, model, optimizer) -> dict:
        """Load model and optimizer state (any world size: DCP reshards), this rank's RNG states (rank r of a
        different world size takes ``rng-{r mod old_world}``) and return the trainer state.

        Raises ValueError naming ``path`` for an incomplete or unreadable checkpoint.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        state_file = os.path.join(path, "trainer_state.json")
        if not os.path.isfile(state_file):
            raise ValueError(f"{path} is not a complete checkpoint (no trainer_state.json)")
        with open(state_file) as f:
            trainer_state = json.load(f)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        try:
            dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        except Exception as e:
            raise ValueError(f"cannot load checkpoint {path}: {e}") from e
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
        old_world = int(trainer_state.get("world_size", 1))
        rng_file = os.path.join(path, f"rng-{self.info.rank % old_world}.pt")
        if os.path.isfile(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        return trainer_state


# ------------------------------------------------------------------------------------------------------- export
def build_skeleton(config):
    """A :class:`VideoXLProForConditionalGeneration` for ``config`` on CPU without running weight initialisation
    (every persistent tensor is overwritten by a load)."""
    from transformers.initialization import no_init_weights

    from ..modeling import VideoXLProForConditionalGeneration

    with no_init_weights():
        model = VideoXLProForConditionalGeneration(config)
    model.tie_weights()  # no_init_weights skips the tying step of post_init
    return model


def export_state_dict(state_dict: dict, config, out_dir: str, processor=None, dtype: str = "float32", extra_files=None, lora=None) -> str:
    """Write a full (unsharded) model state dict as a ``from_pretrained`` folder, atomically
    (:func:`vxlp_model.train.checkpoint.save_checkpoint`). ``dtype``: ``float32`` or ``bfloat16``. ``lora``: the run's
    LoRA settings, when the state dict holds adapters (they are merged into the base weights).

    Raises ValueError for missing / unexpected keys (naming them) or an unknown dtype.
    """
    from .checkpoint import save_checkpoint
    from .trainer import add_lora, merge_lora

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"--export-dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    model = build_skeleton(config)
    add_lora(model, lora)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"state dict does not match the model: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    if lora:
        merge_lora(model)
    model = model.to(dtypes[dtype])
    model.config.dtype = dtype
    return save_checkpoint(model, out_dir, processor=processor, extra_files=extra_files)


def export_model(model, config, out_dir: str, info: DistInfo, processor=None, dtype: str = "float32", extra_files=None, lora=None) -> str | None:
    """Gather an FSDP2 model's full state dict on rank 0 (CPU) and export it there (all ranks must call this).

    Returns the folder on rank 0, None elsewhere.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = None
    if info.is_main:
        path = export_state_dict(full, config, out_dir, processor=processor, dtype=dtype, extra_files=extra_files, lora=lora)
    barrier()
    return path


def export_checkpoint(checkpoint: str, out_dir: str, *, dtype: str = "float32") -> str:
    """Export a DCP checkpoint of a run (a ``step-*`` folder, or a run folder: its latest checkpoint) as a
    ``from_pretrained`` folder, in one process without a process group.

    Raises FileNotFoundError (no checkpoint / no ``base`` folder) and ValueError (unreadable checkpoint).
    """
    import torch.distributed.checkpoint as dcp

    from ..config import VideoXLProConfig
    from ..processing import VideoXLProProcessor

    checkpoint = os.path.abspath(checkpoint)
    if os.path.isdir(os.path.join(checkpoint, "checkpoints")):
        run_dir = checkpoint
        done = CheckpointManager(run_dir, DistInfo(0, 1, 0, torch.device("cpu"), False)).latest()
        if done is None:
            raise FileNotFoundError(f"{run_dir} holds no complete checkpoint")
        checkpoint = done
    else:
        run_dir = os.path.dirname(os.path.dirname(checkpoint))
    base = os.path.join(run_dir, "base")
    if not os.path.isfile(os.path.join(base, "config.json")):
        raise FileNotFoundError(f"{base}/config.json not found: {checkpoint} is not inside a vxlp run folder")
    config = VideoXLProConfig.from_pretrained(base)
    lora = None
    run_config = os.path.join(run_dir, "run_config.json")
    if os.path.isfile(run_config):
        with open(run_config) as f:
            lora = json.load(f).get("lora")
    from .trainer import add_lora

    model = build_skeleton(config)
    add_lora(model, lora)
    sd = model.state_dict()
    try:
        dcp.load({"model": sd}, checkpoint_id=checkpoint)
    except Exception as e:
        raise ValueError(f"cannot load checkpoint {checkpoint}: {e}") from e
    processor = VideoXLProProcessor.from_pretrained(base)
    return export_state_dict(sd, config, out_dir, processor=processor, dtype=dtype, lora=lora)
