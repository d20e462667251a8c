"""Convert and run a real-width synthetic released checkpoint; report time and peak memory (RELEASED.md; issue 6).

A synthetic Video-XL-Pro-3B (pro-v2) checkpoint with the released key names at the real widths (SigLIP so400m,
DTS C = 1152, Qwen2.5-3B d = 2048) with 2 SigLIP and 2 LLM layers is written in bf16 with
``tests/released_fixtures.py``, converted with ``vxlp_model.convert_released``, loaded in bf16 on ``--device``, and
asked one question about ``--frames`` frames (greedy, ``--new-tokens`` tokens). Prints and writes (``--out``,
default ``$OUT`` or benchmarks/results) a JSON with the wall time of each step, the peak device memory
(``torch.cuda.max_memory_allocated``) and the versions.

    python benchmarks/released_checkpoint.py --device cuda --frames 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--keep-ratio", type=float, default=0.9)
    p.add_argument("--out", default=os.environ.get("OUT", os.path.join(HERE, "results")))
    args = p.parse_args(argv)

    import transformers
    from released_fixtures import write_released_checkpoint

    from vxlp_model import VideoXLProForConditionalGeneration, VideoXLProProcessor, conversation, convert_released

    dev = torch.device(args.device)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        src = write_released_checkpoint(os.path.join(tmp, "src"), "pro-v2", geometry="real2", dtype=torch.bfloat16, num_shards=2)
        times["write_synthetic_s"] = time.perf_counter() - t
        t = time.perf_counter()
        convert_released(src, os.path.join(tmp, "dst"))
        times["convert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model = VideoXLProForConditionalGeneration.from_pretrained(os.path.join(tmp, "dst"), dtype=torch.bfloat16).to(dev).eval()
        proc = VideoXLProProcessor.from_pretrained(os.path.join(tmp, "dst"))
        times["load_s"] = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (args.frames, 360, 640, 3), generator=g, dtype=torch.uint8)
    ts = [float(i) for i in range(args.frames)]
    t = time.perf_counter()
    prompt = proc.apply_chat_template(conversation("What happens in the video?"), add_generation_prompt=True)
    inputs = proc(text=prompt, videos=frames, video_timestamps=ts).to(dev)
    times["preprocess_s"] = time.perf_counter() - t

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for label, fn in (
            ("encode_video_s", lambda: model.get_video_features(inputs["pixel_values_videos"].to(torch.bfloat16), inputs["video_num_frames"])),
            ("prefill_s", lambda: model(**inputs, selector_keep_ratio=args.keep_ratio, logits_to_keep=1)),
            ("generate_s", lambda: model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, selector_keep_ratio=args.keep_ratio)),
        ):
            fn()  # warm-up
            sync()
            t = time.perf_counter()
            out = fn()
            sync()
            times[label] = time.perf_counter() - t
    new = out[0, inputs["input_ids"].shape[1] :]
    report = {
        "what": "synthetic released pro-v2 checkpoint at real widths (2 SigLIP + 2 LLM layers), bf16",
        "frames": args.frames,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "new_tokens": int(new.numel()),
        "keep_ratio": args.keep_ratio,
        **{k: round(v, 4) for k, v in times.items()},
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if dev.type == "cuda" else None,
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(report, indent=2))
    os.makedirs(args.out, exist_ok=True)
    name = "released_checkpoint_" + ("".join(c if c.isalnum() else "-" for c in report["device"]).strip("-").lower() or "cpu") + ".json"
    path = os.path.join(args.out, name)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
