"""``vxlp train`` and ``vxlp prune`` (also ``python -m vxlp_model.train`` and, for multi-GPU,
``torchrun --nproc_per_node N -m vxlp_model.train …``).

``add_train_parser(subparsers)`` / ``add_prune_parser(subparsers)`` register the sub-commands on an argparse
sub-parser set (``vxlp_model.cli`` uses them); each sets ``func(args) -> int``: 0 on success, 2 with a one-line
``vxlp <command>: error: …`` on stderr for bad input (a missing file, a bad flag value, malformed data, a resume
with other settings, too many bad samples, a non-finite loss).
"""

from __future__ import annotations

import argparse
import os
import sys

_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError, NotADirectoryError, IsADirectoryError, PermissionError, FloatingPointError)


def _floats(n: int | None = None):
    def parse(text: str):
        try:
            vals = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if not vals or (n is not None and len(vals) != n):
            raise argparse.ArgumentTypeError(f"expected {n or 'one or more'} comma-separated numbers, got {text!r}")
        return vals

    return parse


def _names(text: str):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` (see :class:`vxlp_model.train.TrainConfig` for every setting)."""
    t = subparsers.add_parser(
        "train",
        help="train a stage (recot | projector | finetune) on LLaVA JSON / YAML mixtures; FSDP2, exact resume",
        description="Train one stage of the Video-XL-Pro recipe (SPEC §3, §6). One process, or several under "
        "torchrun (FSDP2). Writes checkpoints, metrics.jsonl, loss.png, summary.json and the exported model "
        "(OUT/model) into --out; --resume continues a run exactly.",
    )
    g = t.add_argument_group("what to train")
    g.add_argument("--stage", required=True, choices=("recot", "projector", "finetune"))
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="start from this folder: a vxlp checkpoint, a converted release, or a previous run (its model/)")
    src.add_argument("--config", choices=("tiny", "real"), help="start from a freshly initialised model of this preset")
    g.add_argument("--tokenizer", help="tokenizer folder for --config (required for real: a Qwen2.5 tokenizer)")
    g.add_argument("--data", required=True, help="LLaVA-style JSON / JSONL, or a YAML mixture of JSON files")
    g.add_argument("--video-root", help="folder that relative video paths are resolved against (default: the JSON's folder)")
    g.add_argument("--image-root", help="folder that relative image paths are resolved against (default: the JSON's folder)")
    g.add_argument("--out", required=True, help="run folder (checkpoints, metrics, the exported model/)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out (fresh start when none)")
    g.add_argument("--freeze", type=_names, default=(), help="finetune: comma-separated groups kept fixed (vision,dts,projector,selector,llm)")
    o = t.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, help="optimizer steps (default: --epochs over the records)")
    o.add_argument("--epochs", type=float, default=1.0)
    o.add_argument("--batch-size", type=int, default=1, help="samples per micro-batch per process")
    o.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    o.add_argument("--global-batch-size", type=int, help="samples per step over all processes (sets --grad-accum)")
    o.add_argument("--lr", type=float, help="peak learning rate (default: recot 1e-4, projector 5e-4, finetune 1e-5)")
    o.add_argument("--warmup-ratio", type=float, default=0.03)
    o.add_argument("--min-lr-ratio", type=float, default=0.0)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm (0: no clipping)")
    o.add_argument("--adam-betas", type=_floats(2), default=(0.9, 0.999))
    o.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    o.add_argument("--no-activation-checkpointing", dest="activation_checkpointing", action="store_false")
    o.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    o.add_argument("--seed", type=int, default=0)
    d = t.add_argument_group("data")
    d.add_argument("--fps", type=_floats(), default=(3.0, 2.0, 1.0), help="candidate frame rates, e.g. 3,2,1 (variable sampling) or 1")
    d.add_argument("--max-frames", type=int, default=360)
    d.add_argument("--max-length", type=int, help="skip samples longer than this many tokens")
    d.add_argument("--num-workers", type=int, default=2, help="decoding workers per process (0: decode in the training process)")
    d.add_argument("--sample-timeout", type=float, default=300.0, help="seconds allowed to decode one sample")
    d.add_argument("--loader-timeout", type=float, help="seconds without any sample before the workers are restarted")
    d.add_argument("--max-bad-fraction", type=float, default=0.1, help="abort when more of the samples read are bad")
    d.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    s = t.add_argument_group("stage settings")
    s.add_argument("--selector-mode", choices=("off", "ratio", "budget"), help="default: ratio (finetune), off (projector)")
    s.add_argument("--keep-ratio-range", type=_floats(2), default=(0.70, 0.95))
    s.add_argument("--vst-ratios", type=int, nargs="+", default=(2, 4, 8, 16),
                   help="VST models: compression ratios of the training curriculum (mild first, all by the end)")
    s.add_argument("--selector-budget", type=int)
    s.add_argument("--distill-weight", type=float, default=0.0, help="selector relevance distillation weight (0: released training)")
    s.add_argument("--distill-temperature", type=float, default=10.0)
    s.add_argument("--distill-negatives", action="store_true",
                   help="the distillation also ranks each sample's tokens above the micro-batch's low-relevance tokens of other samples asked the same question")
    s.add_argument("--mask-ratio", type=float, default=0.5, help="ReCoT: SGM mask ratio")
    s.add_argument("--pool", type=float, default=0.75, help="ReCoT: SGM candidate pool")
    s.add_argument("--score-loss-weight", type=float, default=0.1)
    s.add_argument("--clips-per-video", type=int, default=1, help="ReCoT: clips drawn from each video")
    s.add_argument("--recot-decoder-layers", type=int, default=4, help="ReCoT: decoder depth added to a model without one")
    s.add_argument("--lora-rank", type=int, default=0, help="finetune: train LoRA adapters of this rank on the LLM instead of its weights (needs peft)")
    s.add_argument("--lora-alpha", type=float, default=16.0)
    s.add_argument("--lora-dropout", type=float, default=0.0)
    s.add_argument("--lora-targets", type=_names, default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    c = t.add_argument_group("checkpoints and output")
    c.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
    c.add_argument("--keep-checkpoints", type=int, default=2)
    c.add_argument("--stop-after", type=int, help="save and stop after this many steps of this invocation (continue with --resume)")
    c.add_argument("--export-dir", help="where to export the trained model (default OUT/model)")
    c.add_argument("--export-dtype", choices=("float32", "bfloat16"), default="float32")
    c.add_argument("--log-every", type=int, default=1)
    c.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs the tensorboard package)")
    c.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(func=run_train)
    return t


def config_from_args(args):
    from .trainer import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run_train(args) -> int:
    """``func`` of ``vxlp train``."""
    try:
        from .trainer import train

        result = train(config_from_args(args))
    except _ERRORS as e:
        print(f"vxlp train: error: {e}", file=sys.stderr)
        return 2
    if _rank() == 0:
        s = result.summary
        print(f"{s.get('stage')}: {s.get('status')} at step {result.step}/{result.total_steps}; loss {s.get('first_loss')} → "
              f"{s.get('final_loss')} (last 10 steps); {s.get('bad_samples', 0)} bad samples skipped")
        print(f"run folder {result.out} (metrics.jsonl, loss.png, summary.json)")
        if result.model_dir:
            print(f"wrote {result.model_dir}")
    return 0


def add_prune_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prune`` (see :func:`vxlp_model.train.prune_dataset`)."""
    p = subparsers.add_parser(
        "prune",
        help="drop visually redundant videos (SigLIP frame similarity) per task subset",
        description="Per video, SigLIP embeddings of --frames uniformly sampled frames; redundancy = mean cosine "
        "similarity; records whose video exceeds the threshold of their subset (captioning, mcq, openqa) are dropped. "
        "Writes the pruned data and a report (report.json, redundancy.png); resumes after a kill.",
    )
    p.add_argument("--data", required=True, help="LLaVA-style JSON / JSONL or a YAML mixture")
    p.add_argument("--threshold", required=True, help="one value for every subset, or captioning=0.95,mcq=0.9,openqa=0.9")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="vxlp checkpoint folder whose SigLIP embeds the frames")
    src.add_argument("--config", choices=("tiny",), help="a random tiny SigLIP (tests only)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--similarity", choices=("pairwise", "consecutive"), default="pairwise")
    p.add_argument("--out", help="pruned file (default: <data>.pruned.json / .pruned.yaml)")
    p.add_argument("--report", dest="report_dir", help="report folder (default: <out>.report)")
    p.add_argument("--video-root")
    p.add_argument("--image-root")
    p.add_argument("--batch-videos", type=int, default=8)
    p.add_argument("--batch-frames", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--sample-timeout", type=float, default=300.0)
    p.add_argument("--device")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_prune)
    return p


def run_prune(args) -> int:
    """``func`` of ``vxlp prune``."""
    from .prune import prune_dataset

    try:
        report = prune_dataset(
            args.data, args.threshold, out=args.out, report_dir=args.report_dir, model=args.model, config=args.config,
            frames=args.frames, similarity=args.similarity, video_root=args.video_root, image_root=args.image_root,
            batch_videos=args.batch_videos, batch_frames=args.batch_frames, num_workers=args.num_workers,
            sample_timeout=args.sample_timeout, device=args.device, progress=args.progress,
        )
    except _ERRORS as e:
        print(f"vxlp prune: error: {e}", file=sys.stderr)
        return 2
    for task, c in report.subsets.items():
        print(f"{task:>11}: {c['videos']} records with video, kept {c['kept']}, dropped {c['dropped']}, unreadable {c['unreadable']}")
    print(f"images kept: {report.images}; records kept {report.kept}, dropped {report.dropped}")
    print("wrote " + ", ".join(report.outputs) + f"; report in {report.report_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vxlp_model.train", description="vxlp training and data pruning")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_prune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m vxlp_model.train [train] --stage … | prune …``: the ``train`` word may be left out."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "prune", "-h", "--help"):
        argv = ["train"] + argv
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
