"""The ``vxlp`` command: ``vxlp demo`` (the main job), ``vxlp chat`` (questions about a video), ``vxlp convert``
(released checkpoints → vxlp), ``vxlp train`` / ``vxlp prune`` (training at scale), ``vxlp eval`` /
``vxlp make-vnbench`` / ``vxlp score`` (benchmarks and their official scorers) and ``vxlp info`` (parameter counts)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(
        out_dir=args.out,
        seed=args.seed,
        device=args.device,
        train_frames=args.train_frames,
        eval_lengths=tuple(args.eval_lengths) if args.eval_lengths else None,
        samples_per_cell=args.samples_per_cell,
        recot_steps=args.recot_steps,
        qa_steps=args.qa_steps,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print()
    print("One needle in a video haystack (accuracy per depth × haystack length):")
    print(report["table"])
    print()
    print("Two needles, the question names the shape (query-dependent):")
    print(report["table_two"])
    ctrl = report["no_needle_control"]
    print(f"\nno needle at all (control): accuracy {ctrl['accuracy']:.3f} (chance {report['chance']:.2f})")
    wall = report["wall_time_s"]
    print(
        f"train frames ≤ {report['train_frames']['max']} (+ needles), eval up to {max(report['eval_frames'])} frames; "
        f"{report['visual_tokens_per_frame']:g} visual tokens per frame; wall time {wall['total']:.0f} s "
        f"(ReCoT {wall['recot']:.0f} s, QA {wall['qa']:.0f} s, eval {wall['eval_single'] + wall['eval_two_and_control']:.0f} s)"
    )
    print(f"wrote {args.out}/niah.json, niah.png, niah_two_needles.png and the trained model in {args.out}/model")
    return 0


def _cmd_info(args) -> int:
    import torch

    from .config import VideoXLProConfig
    from .modeling import VideoXLProForConditionalGeneration

    config = VideoXLProConfig.real() if args.config == "real" else VideoXLProConfig.tiny()
    with torch.device("meta"):
        model = VideoXLProForConditionalGeneration(config)
    counts = model.parameter_counts()
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    print(f"Video-XL-Pro, preset '{args.config}' (parameters per component; tied embeddings counted once)")
    for name, n in counts.items():
        print(f"  {name:<16} {n:>15,d}  ({n / 1e6:,.1f} M)")
    print(
        f"  tokens: {config.vision_grid}² vision grid → {config.dts_grid}² per frame → DTS {config.frames_per_group} frames → 1 "
        f"→ {config.tokens_per_group} per group after {config.pool_size}×{config.pool_size} pool; LLM width {config.hidden_size}"
    )
    return 0


def _cmd_convert(args) -> int:
    from .convert import convert_released

    report = convert_released(args.src, args.out, progress=not args.no_progress)
    print(f"converted {report.variant} ({report.dtype}, {report.num_tensors} tensors) from {args.src}")
    for key, reason in report.dropped:
        print(f"  dropped {key}: {reason}")
    if report.tied_lm_head:
        print("  lm_head tied to the input embeddings (absent from the checkpoint)")
    print(f"wrote {report.dst}")
    return 0


def _cmd_chat(args) -> int:
    from .pipeline import VideoChat, peak_memory

    chat = VideoChat.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache, decode_workers=args.workers,
        chunk_frames=args.chunk_frames,
    )
    if args.frame_selection is not None:
        chat.model.config.frame_selection = args.frame_selection  # read by every call (docs/compression.md)
    enc = chat.encode(args.video, fps=args.fps, max_frames=args.max_frames, progress=not args.no_progress)
    frames = enc.num_frames
    how = "from the encoding cache" if enc.from_cache else "encoded"
    print(f"{args.video}: {frames} frames → {enc.tokens.shape[0]} groups × {enc.tokens.shape[1]} visual tokens ({how})")
    if not enc.from_cache:
        t = enc.timings
        total = t.get("decode", 0) + t.get("vision", 0) + t.get("dts", 0)
        print(
            f"  encoding {total:.2f} s = decode wait {t.get('decode', 0):.2f} s + vision {t.get('vision', 0):.2f} s + "
            f"DTS/projector/pool {t.get('dts', 0):.2f} s ({frames / max(total, 1e-9):.1f} frames/s)"
        )
    for q in args.question:
        a = chat.ask(enc, q, max_new_tokens=args.max_new_tokens, selector_budget=args.budget)
        t = a.timings
        print(f"Q: {q}")
        print(f"A: {a.text}")
        print(
            f"  selector {t['selector']:.3f} s, prefill {t['prefill']:.3f} s, generation {t['generation']:.3f} s "
            f"({len(a.token_ids)} tokens); the LLM saw {a.llm_tokens} tokens ({a.visual_tokens_kept} visual)"
        )
    mem = peak_memory()
    dev = f"{mem['device_gib']:.2f} GiB on the GPU, " if mem["device_gib"] is not None else ""
    print(f"peak memory: {dev}{mem['host_rss_gib']:.2f} GiB host (max RSS)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vxlp", description="Video-XL-Pro: long-video understanding on one GPU")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small Video-XL-Pro and run needle-in-a-video-haystack on real video")
    d.add_argument("--out", default="./vxlp-demo", help="output folder for niah.json, niah.png, model/")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--train-frames", type=int, default=8, help="longest training haystack (frames)")
    d.add_argument("--eval-lengths", type=int, nargs="+", default=None, help="haystack lengths to evaluate (default 8 32 128 512 2048 4096)")
    d.add_argument("--samples-per-cell", type=int, default=20, help="needle questions per (length, depth) cell")
    d.add_argument("--recot-steps", type=int, default=100)
    d.add_argument("--qa-steps", type=int, default=2400)
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_demo)
    from .train.cli import add_prune_parser, add_train_parser

    add_train_parser(sub)
    add_prune_parser(sub)
    ch = sub.add_parser("chat", help="ask questions about a video: encode once (cached), answer each question")
    ch.add_argument("--model", required=True, help="a local vxlp model folder (model + processor)")
    ch.add_argument("--video", required=True, help="the video file")
    ch.add_argument("--question", action="append", required=True, help="a question (repeat for more)")
    ch.add_argument("--fps", type=float, default=1.0, help="frames per second sampled from the video")
    ch.add_argument("--max-frames", type=int, default=None, help="at most this many frames, uniformly")
    ch.add_argument("--budget", type=int, default=None, help="selector budget: tokens of the video block reaching the LLM")
    ch.add_argument("--device", default="cpu")
    ch.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default: as saved")
    ch.add_argument("--cache", default=None, help="folder of the encoding cache (skip encoding on later runs)")
    ch.add_argument("--workers", type=int, default=1, help="parallel decoding segments")
    ch.add_argument("--chunk-frames", type=int, default=None, help="frames through vision + DTS at a time")
    ch.add_argument("--max-new-tokens", type=int, default=64)
    ch.add_argument("--frame-selection", default=None, choices=("none", "selector", "qc_comp"),
                    help="which groups reach the LLM (default: the model's config; docs/compression.md)")
    ch.add_argument("--no-progress", action="store_true")
    ch.set_defaults(func=_cmd_chat)
    c = sub.add_parser("convert", help="convert a released Video-XL-Pro / Video-XL-2 folder into a vxlp folder")
    c.add_argument("--from", dest="source", choices=("released",), required=True, help="source format")
    c.add_argument("src", help="the released checkpoint folder (config.json, weights, tokenizer files)")
    c.add_argument("--out", required=True, help="output folder (must not exist; written atomically)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_convert)
    from .eval.eval_cli import add_eval_parser, add_make_vnbench_parser
    from .eval.score_cli import add_score_parser

    add_score_parser(sub)
    add_eval_parser(sub)
    add_make_vnbench_parser(sub)
    from .plan import add_plan_parser

    add_plan_parser(sub)
    i = sub.add_parser("info", help="parameter count per component (built on the meta device)")
    i.add_argument("--config", choices=("real", "tiny"), default="real")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"vxlp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vxlp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
