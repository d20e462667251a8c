"""One finetune step of Video-XL-Pro under FSDP2, timed: tokens/s, frames/s and peak memory.

Default: the real-width *shallow* model (SigLIP so400m and Qwen2.5-3B widths, 2 SigLIP layers, 2 LLM layers, the full
DTS, 384×384 frames) in bf16 mixed precision with activation checkpointing, on one GPU::

    python benchmarks/train_step_gpu.py                              # cuda, real-width shallow, bf16
    torchrun --nproc_per_node 8 benchmarks/train_step_gpu.py         # FSDP2 over 8 GPUs (per-process batch)
    python benchmarks/train_step_gpu.py --device cpu --size tiny     # a CPU smoke run (seconds)

It builds the model exactly as ``vxlp train --stage finetune`` does (``set_trainable``, ``shard_model``: FSDP2
``fully_shard`` per block + root, ``MixedPrecisionPolicy(bf16, fp32 reduce)``, ``checkpoint_wrapper``), feeds a
synthetic video of ``--frames`` random 384×384 frames with a question and an answer through the processor, and runs
``--warmup`` untimed then ``--steps`` timed optimizer steps (forward with the selector in ratio mode, backward,
clipping, AdamW). Reports per step: wall time (s), LLM input tokens/s (before selection), frames/s and peak memory
(``torch.cuda.max_memory_allocated``, bytes; on CPU the process's peak RSS). Writes a JSON record (device name,
torch version, git commit, settings, results) to ``--out`` (default ``benchmarks/results/train_step_<device>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build(size: str, vision_layers: int, llm_layers: int):
    from vxlp_model import VideoXLProConfig, VideoXLProForConditionalGeneration, VideoXLProProcessor, VideoXLProVideoProcessor
    from vxlp_model.processing import build_tiny_tokenizer

    tok = build_tiny_tokenizer(["red", "blue", "green", "video", "colour"])
    vid = tok.convert_tokens_to_ids("<|vision_pad|>")
    if size == "tiny":
        cfg = VideoXLProConfig.tiny(video_token_id=vid, recot_decoder_layers=1)
    else:
        d = VideoXLProConfig.real(video_token_id=vid, recot_decoder_layers=1).to_dict()
        d["vision_config"]["num_hidden_layers"] = vision_layers
        d["text_config"]["num_hidden_layers"] = llm_layers
        d["text_config"].pop("layer_types", None)  # rebuilt for the new depth
        cfg = VideoXLProConfig.from_dict(d)
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg)
    vp = VideoXLProVideoProcessor(size=cfg.vision_config.image_size, frames_per_group=cfg.frames_per_group)
    return model, VideoXLProProcessor(vp, tok, tokens_per_group=cfg.tokens_per_group)


def synthetic_batch(processor, frames: int, batch_size: int, seed: int = 0):
    from vxlp_model import conversation

    g = torch.Generator().manual_seed(seed)
    s = processor.video_processor.size
    videos = [torch.randint(0, 256, (frames, s, s, 3), generator=g, dtype=torch.uint8) for _ in range(batch_size)]
    q = "Which colour is the square in the video, and where does it move over time?"
    a = "The square is red and it moves from the left edge of the frame to the right edge."
    prompts = [processor.apply_chat_template(conversation(q, a)) for _ in range(batch_size)]
    stamps = [torch.arange(frames, dtype=torch.float64) for _ in range(batch_size)]
    return processor(text=prompts, videos=videos, video_timestamps=stamps, return_labels=True, padding_side="right")


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None


def main(argv: list[str] | None = None) -> dict:
    from vxlp_model.train.distributed import init_distributed, local_value, shard_model, shutdown
    from vxlp_model.train.trainer import set_trainable

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--size", choices=("shallow", "tiny"), default=None, help="real-width shallow (default on cuda) or tiny (default on cpu)")
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 128 on cuda, 8 on cpu)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--no-activation-checkpointing", dest="ac", action="store_false")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--keep-ratio", type=float, default=0.85)
    p.add_argument("--out", help="result JSON (default benchmarks/results/train_step_<device>.json)")
    args = p.parse_args(argv)
    size = args.size or ("shallow" if args.device.startswith("cuda") else "tiny")
    frames = args.frames or (128 if args.device.startswith("cuda") else 8)
    info = init_distributed(args.device)
    try:
        dev = info.device
        model, processor = build(size, args.vision_layers, args.llm_layers)
        trainable = set_trainable(model, "finetune")
        model.to(dev)
        model.train()
        shard_model(model, device=dev, precision=args.precision, activation_checkpointing=args.ac)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        batch = synthetic_batch(processor, frames, args.batch_size, seed=info.rank).to(dev)
        tokens = int(batch["attention_mask"].sum())
        n_frames = int(batch["pixel_values_videos"].shape[0])

        def step():
            out = model(**batch, selector_mode="ratio", selector_keep_ratio=args.keep_ratio, use_cache=False)
            out.loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(out.loss.detach()), float(local_value(norm))

        cuda = dev.type == "cuda"
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)
        times, losses = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss, _ = step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(loss)
        peak = torch.cuda.max_memory_allocated(dev) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t = sum(times) / len(times)
        result = {
            "benchmark": "finetune step (FSDP2)",
            "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
            "world_size": info.world, "torch": torch.__version__, "commit": _commit(),
            "settings": {"size": size, "vision_layers": args.vision_layers if size == "shallow" else None,
                         "llm_layers": args.llm_layers if size == "shallow" else None, "frames": frames,
                         "batch_size": args.batch_size, "precision": args.precision, "activation_checkpointing": args.ac,
                         "keep_ratio": args.keep_ratio},
            "parameters": model.parameter_counts() if hasattr(model, "parameter_counts") else None,
            "trainable_parameters": sum(trainable.values()),
            "tokens_per_step_per_process": tokens, "frames_per_step_per_process": n_frames,
            "step_time_s": t, "step_times_s": times,
            "tokens_per_s": tokens * info.world / t, "frames_per_s": n_frames * info.world / t,
            "peak_memory_bytes": int(peak), "peak_memory_gib": peak / 2**30, "peak_memory_kind": "cuda max allocated" if cuda else "process peak RSS",
            "losses": losses,
        }
        if info.is_main:
            out = args.out or os.path.join(ROOT, "benchmarks", "results", f"train_step_{dev.type}.json")
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(result, f, indent=1)
            print(f"{result['device']} × {info.world}: {size} model, {frames} frames, {args.precision}: step {t:.3f} s, "
                  f"{result['tokens_per_s']:.0f} tokens/s, {result['frames_per_s']:.1f} frames/s, peak {result['peak_memory_gib']:.2f} GiB")
            print(f"wrote {out}")
        return result
    finally:
        shutdown(info)


if __name__ == "__main__":
    main()
