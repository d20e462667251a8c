"""The ``vxlp`` command: ``vxlp demo`` (the main job), ``vxlp convert`` (released checkpoints → vxlp), ``vxlp train``,
``vxlp score`` (official benchmark scorers) and ``vxlp info`` (parameter counts per component)."""

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
        samples_per_cell=args.samples_per_cell,
        recot_steps=args.recot_steps,
        qa_steps=args.qa_steps,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print()
    print("Needle in a video haystack (accuracy per depth × haystack length):")
    print(report["table"])
    wall = report["wall_time_s"]
    print(
        f"train frames ≤ {report['train_frames']['max']} (+1 needle), eval up to {max(report['eval_frames'])} frames; "
        f"{report['visual_tokens_per_frame']:g} visual tokens per frame; wall time {wall['total']:.0f} s "
        f"(ReCoT {wall['recot']:.0f} s, QA {wall['qa']:.0f} s, eval {wall['eval']:.0f} s)"
    )
    print(f"wrote {args.out}/niah.json, {args.out}/niah.png and the trained model in {args.out}/model")
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


def _cmd_train(args) -> int:
    from .train.run import train_from_json

    out = train_from_json(
        args.model,
        args.data,
        args.out,
        stage=args.stage,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        fps=args.fps,
        max_frames=args.max_frames,
        seed=args.seed,
        device=args.device,
        freeze_vision=args.freeze_vision,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vxlp", description="Video-XL-Pro: long-video understanding on one GPU")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train a small Video-XL-Pro and run needle-in-a-video-haystack on real video")
    d.add_argument("--out", default="./vxlp-demo", help="output folder for niah.json, niah.png, model/")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--train-frames", type=int, default=8, help="longest training haystack (frames); eval reaches 8x")
    d.add_argument("--samples-per-cell", type=int, default=20, help="needle questions per (length, depth) cell")
    d.add_argument("--recot-steps", type=int, default=100)
    d.add_argument("--qa-steps", type=int, default=2400)
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser("train", help="train a local checkpoint on LLaVA-style video QA JSON (torchrun: FSDP2)")
    t.add_argument("--model", required=True, help="local save_pretrained folder (model + tokenizer)")
    t.add_argument("--data", required=True, help="LLaVA-style JSON list with video paths and conversations")
    t.add_argument("--out", required=True, help="output folder (written atomically)")
    t.add_argument("--stage", choices=("recot", "qa"), default="qa")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--fps", type=float, default=1.0)
    t.add_argument("--max-frames", type=int, default=240)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--freeze-vision", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)
    c = sub.add_parser("convert", help="convert a released Video-XL-Pro / Video-XL-2 folder into a vxlp folder")
    c.add_argument("--from", dest="source", choices=("released",), required=True, help="source format")
    c.add_argument("src", help="the released checkpoint folder (config.json, weights, tokenizer files)")
    c.add_argument("--out", required=True, help="output folder (must not exist; written atomically)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_convert)
    try:
        from .eval.score_cli import add_score_parser
    except ImportError:  # pragma: no cover - the scorers ship with the package
        add_score_parser = None
    if add_score_parser is not None:
        add_score_parser(sub)
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


if __name__ == "__main__":
    sys.exit(main())
