"""``vxlp train``: train a local Video-XL-Pro checkpoint on LLaVA-style video QA data (SPEC §6).

Single process, or several under ``torchrun`` (FSDP2: ``torch.distributed.fsdp.fully_shard`` on every LLM decoder
layer and the root; gloo on CPU, NCCL on GPU). The result is written atomically with ``save_pretrained``.
"""

from __future__ import annotations

import os

import torch

from .checkpoint import save_checkpoint
from .data import VideoQADataset, load_llava_json
from .stages import train_qa, train_recot


def _distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _shard(model) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.language_model.layers:
        fully_shard(layer)
    fully_shard(model)


def _full_state_dict(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


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
    """Train the checkpoint in ``model_dir`` on ``data`` and write the result to ``out_dir``.

    Args:
        model_dir: a local ``save_pretrained`` folder with the model and its tokenizer.
        data: LLaVA-style JSON (see :mod:`vxlp_model.train.data`).
        stage: ``"recot"`` (ReCoT reconstruction on the videos' frames, SPEC §3) or ``"qa"`` (supervised QA; SPEC §6
            stage 3 trains all parameters at LR 1e-5).
        steps, lr, batch_size: optimisation (batch size per process); fps, max_frames: video sampling (SPEC §6: 1 fps,
            ≤ 240 frames); device: ``cpu`` or ``cuda``.

    Returns: the output folder. Raises ``ValueError`` for a bad stage, ``FileNotFoundError`` for missing inputs.
    """
    from ..modeling import VideoXLProForConditionalGeneration
    from ..processing import VideoXLProProcessor

    if stage not in ("recot", "qa"):
        raise ValueError(f"stage must be 'recot' or 'qa', got {stage!r}")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir not found: {model_dir}")
    rank, world = _distributed()
    torch.manual_seed(seed + rank)
    model = VideoXLProForConditionalGeneration.from_pretrained(model_dir).to(device)
    processor = VideoXLProProcessor.from_pretrained(model_dir)
    dataset = VideoQADataset(load_llava_json(data), fps=fps, max_frames=max_frames)
    if world > 1:
        _shard(model)
    show = progress and rank == 0
    if stage == "recot":
        videos = [dataset[i][0] for i in range(len(dataset))]
        train_recot(model, processor, videos, steps, lr=lr, seed=seed + rank, progress=show)
    else:

        def sample_fn(gen):
            return dataset[int(torch.randint(0, len(dataset), (), generator=gen))]

        train_qa(
            model, processor, sample_fn, steps, batch_size=batch_size, lr=lr, seed=seed + rank,
            freeze_vision=freeze_vision, progress=show,
        )
    state = _full_state_dict(model) if world > 1 else None
    if rank == 0:
        if state is not None:
            unsharded = VideoXLProForConditionalGeneration.from_pretrained(model_dir)
            unsharded.load_state_dict(state)
            model = unsharded
        save_checkpoint(model, out_dir, processor=processor)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return os.path.abspath(out_dir)
