"""Prefill cost of every in-LLM compressor (SPEC §8): wall time, visual K/V kept per frame, peak memory.

The LLM part only (the visual tokens are given as ``video_embeds``, random, ``P`` per group of 4 frames): for each
compressor row and frame count N, one prompt ``[system; video block; question]`` is prefilled (the forward that fills
the cache; no generation) ``--repeats`` times after one warm-up, and reported are the median wall time, the
visual K/V bytes per frame that stay in the cache (all layers; the text rows' K/V subtracted) and the peak memory
(``torch.cuda.max_memory_allocated`` on CUDA; the process's max RSS on CPU).

Rows: ``none`` (every visual token: only while the prompt fits the LLM's positions), ``selector`` (budget),
``qc_comp`` (budget), ``vst`` alone (windows of ``--vst-window-groups`` groups, ratio ``--vst-ratio``),
``vst + selector``, ``lp_comp`` (when the prompt fits), ``lp_comp + selector``.

Default: the real-width shallow model (Qwen2.5-3B widths, ``--llm-layers`` 4 layers) in bf16 on CUDA, N = 1,024 and
4,096 frames; ``--size tiny --device cpu`` runs in seconds (a CPU smoke run). Writes JSON (device, torch, commit,
settings, rows) to ``--out``.

    python benchmarks/compressors_prefill.py --device cuda --out benchmarks/results/compressors_prefill_<gpu>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ROWS = [
    ("none", "none", "none"),
    ("selector", "none", "selector"),
    ("qc_comp", "none", "qc_comp"),
    ("vst", "vst", "none"),
    ("vst + selector", "vst", "selector"),
    ("lp_comp", "lp_comp", "none"),
    ("lp_comp + selector", "lp_comp", "selector"),
]


def build(size: str, llm_layers: int, llm_compression: str, dtype, device, **extra):
    from vxlp_model import VideoXLProConfig, VideoXLProForConditionalGeneration, VideoXLProProcessor, VideoXLProVideoProcessor
    from vxlp_model.processing import build_tiny_tokenizer

    tok = build_tiny_tokenizer(["red", "blue", "green", "video", "colour"])
    vid = tok.convert_tokens_to_ids("<|vision_pad|>")
    common = dict(video_token_id=vid, recot_decoder_layers=0, llm_compression=llm_compression, selector_mode="budget", **extra)
    if size == "tiny":
        cfg = VideoXLProConfig.tiny(**common)
    else:
        d = VideoXLProConfig.real(**common).to_dict()
        d["vision_config"]["num_hidden_layers"] = 1
        d["text_config"]["num_hidden_layers"] = llm_layers
        d["text_config"].pop("layer_types", None)
        d["text_config"]["vocab_size"] = 512  # the embedding table is not what is measured
        cfg = VideoXLProConfig.from_dict(d)
    torch.manual_seed(0)
    model = VideoXLProForConditionalGeneration(cfg).to(device=device, dtype=dtype).eval()
    vp = VideoXLProVideoProcessor(size=cfg.vision_config.image_size, frames_per_group=cfg.frames_per_group)
    return model, VideoXLProProcessor(vp, tok, tokens_per_group=cfg.tokens_per_group)


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@torch.no_grad()
def measure(model, processor, frames: int, frame_selection: str, repeats: int, device) -> dict:
    from vxlp_model import conversation
    from vxlp_model.llm_compression import visual_kv_bytes

    cfg = model.config
    model.config.frame_selection = frame_selection
    groups = frames // cfg.frames_per_group
    prompt = processor.apply_chat_template(conversation("What happens in the video?"), add_generation_prompt=True)
    stamps = [float(i) for i in range(frames)]
    batch = processor(text=[prompt], videos=[torch.zeros(frames, 8, 8, 3, dtype=torch.uint8)], video_timestamps=[stamps], return_pixel_values=False)
    g = torch.Generator().manual_seed(0)
    batch["video_embeds"] = torch.randn(groups, cfg.tokens_per_group, cfg.hidden_size, generator=g).to(device=device, dtype=model.dtype)
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(**batch, use_cache=True)  # warm-up
    times = []
    peak_reset(device)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**batch, use_cache=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    visual, rows = visual_kv_bytes(out.cache, batch["token_type_ids"][0])
    return {
        "frames": frames,
        "prefill_s": statistics.median(times),
        "visual_kv_bytes_per_frame": visual / frames,
        "kv_rows_per_layer": rows,
        "llm_input_rows": int(out.logits.shape[1]) + (out.summary_tokens[0] if out.summary_tokens else 0),
        "peak_bytes": peak_bytes(device),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", choices=["real", "tiny"], default="real")
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--frames", type=int, nargs="+", default=None)
    ap.add_argument("--budget", type=int, default=9600)
    ap.add_argument("--vst-ratio", type=int, default=8)
    ap.add_argument("--vst-window-groups", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames_list = a.frames or ([1024, 4096] if a.size == "real" else [64, 256])
    budget = a.budget if a.size == "real" else 64
    results = []
    models = {}
    for name, comp, sel in ROWS:
        if comp not in models:
            models[comp] = build(a.size, a.llm_layers, comp, dtype, device, selector_budget=budget, vst_ratio=a.vst_ratio, vst_window_groups=a.vst_window_groups)
        model, processor = models[comp]
        for n in frames_list:
            try:
                row = measure(model, processor, n, sel, a.repeats, device)
            except (ValueError, torch.OutOfMemoryError) as e:
                row = {"frames": n, "skipped": str(e).split("\n")[0][:200]}
            row["row"] = name
            results.append(row)
            shown = f"{row['prefill_s'] * 1e3:9.1f} ms  {row['visual_kv_bytes_per_frame'] / 1e3:9.1f} KB/frame" if "prefill_s" in row else row["skipped"][:80]
            print(f"{name:>20} N={n:>6}: {shown}", flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        commit = None
    record = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "commit": commit,
        "settings": {"size": a.size, "llm_layers": a.llm_layers, "dtype": str(dtype), "budget": budget, "vst_ratio": a.vst_ratio,
                     "vst_window_groups": a.vst_window_groups, "repeats": a.repeats},
        "rows": results,
    }
    out = a.out or os.path.join(ROOT, "benchmarks", "results", f"compressors_prefill_{a.device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(out + ".tmp", out)
    return record


if __name__ == "__main__":
    main()
