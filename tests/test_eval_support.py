"""Shared helpers for the tests of ``vxlp eval`` (no tests here): a tiny checkpoint that answers with option
letters, short generated mp4 clips, and small annotation files in each benchmark's official format."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import numpy as np
import torch

from vxlp_model import (
    VideoXLProConfig,
    VideoXLProForConditionalGeneration,
    VideoXLProProcessor,
    VideoXLProVideoProcessor,
    build_tiny_tokenizer,
)
from vxlp_model.train.checkpoint import save_checkpoint


def write_clip(path, n=8, size=32, seed=0, fps=4):
    """An n-frame random-noise H.264 mp4 at ``fps`` frames/s (PyAV), ``size``×``size`` pixels."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps, 1))
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def make_tiny_model(folder, seed=0, fps=4.0, max_frames=8, paren=False):
    """Save a tiny Video-XL-Pro (random weights, std 0.2) whose greedy answers are option letters that depend on
    the prompt and the video: the embeddings of "A".."D" (tied to the output layer) are scaled up so they win
    the argmax (with ``paren`` also ")", so answers like "B)" occur, as the needle protocol reads them). The
    processor samples ``fps`` frames/s, at most ``max_frames``."""
    tok = build_tiny_tokenizer([])
    cfg = VideoXLProConfig.tiny(video_token_id=tok.convert_tokens_to_ids("<|vision_pad|>"))
    proc = VideoXLProProcessor(
        VideoXLProVideoProcessor(size=32, fps=fps, max_frames=max_frames), tok, tokens_per_group=cfg.tokens_per_group
    )
    torch.manual_seed(seed)
    model = VideoXLProForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
        emb = model.get_input_embeddings().weight
        letters = [tok.convert_tokens_to_ids(c) for c in "ABCD" + (")" if paren else "")]
        emb[letters] *= 8.0
    return save_checkpoint(model, str(folder), processor=proc)


OPTIONS = ["red", "green", "blue", "yellow", "purple", "orange"]


def make_mlvu(root, per_task=2, tasks=("1_plotQA", "2_needle", "4_count"), seed=0):
    """MLVU dev layout: ``root/json/<N_task>.json`` (official fields) and ``root/video/<N_task>/<video>``."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "json"), exist_ok=True)
    k = 0
    for stem in tasks:
        recs = []
        for i in range(per_task):
            name = f"{stem.split('_', 1)[1]}_{i}.mp4"
            write_clip(os.path.join(root, "video", stem, name), n=6 + i, seed=100 + k)
            k += 1
            cands = [str(c) for c in rng.permutation(OPTIONS)[:4]]
            recs.append({"video": name, "duration": 2.0, "question": f"What colour is shown in clip {i}?",
                         "candidates": cands, "answer": cands[int(rng.integers(4))],
                         "question_type": "findNeedle" if "needle" in stem else stem.split("_", 1)[1]})
        with open(os.path.join(root, "json", f"{stem}.json"), "w") as f:
            json.dump(recs, f, indent=1)
    return str(root)


def videomme_rows(n=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        vid = f"vm{i // 2:03d}"
        cands = [str(c) for c in rng.permutation(OPTIONS)[:4]]
        rows.append({"video_id": f"{i // 2 + 1:03d}", "duration": ("short", "medium", "long")[i % 3], "domain": "Knowledge",
                     "sub_category": "Humanity & History", "url": f"https://example.invalid/{vid}", "videoID": vid,
                     "question_id": f"{i // 2 + 1:03d}-{i % 2 + 1}", "task_type": "Counting Problem",
                     "question": f"Which colour appears in part {i}?",
                     "options": [f"{letter}. {c}" for letter, c in zip("ABCD", cands)], "answer": "ABCD"[int(rng.integers(4))]})
    return rows


def make_videomme(root, n=6, seed=0):
    """Video-MME layout: ``root/videomme/test-00000-of-00001.parquet`` and ``root/data/<videoID>.mp4``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = videomme_rows(n, seed)
    os.makedirs(os.path.join(root, "videomme"), exist_ok=True)
    for r in rows:
        path = os.path.join(root, "data", r["videoID"] + ".mp4")
        if not os.path.exists(path):
            write_clip(path, n=7, seed=int(r["videoID"][2:]) + 7)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, "videomme", "test-00000-of-00001.parquet"))
    return str(root)


def make_lvb(root, n=5, seed=0):
    """LongVideoBench layout: ``root/lvb_val.json`` (official fields) and ``root/videos/<video_path>``."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        k = 4 + i % 2  # 4 or 5 candidates, as in the official file
        cands = [str(c) for c in rng.permutation(OPTIONS)[:k]]
        recs.append({"video_id": f"lv{i}", "question": f"What is in segment {i}?", "question_wo_referring_query": "?",
                     "candidates": cands, "correct_choice": int(rng.integers(k)), "position": [0, 4],
                     "topic_category": "NP-News-Programs", "question_category": ("S2E", "T3O")[i % 2], "level": "L1-Perception",
                     "id": f"lv{i}_0", "video_path": f"lv{i}.mp4", "subtitle_path": f"lv{i}_en.json",
                     "duration_group": (15, 60)[i % 2], "starting_timestamp_for_subtitles": 0, "duration": 2.0, "view_count": 1})
        write_clip(os.path.join(root, "videos", f"lv{i}.mp4"), n=5 + i, seed=200 + i)
    with open(os.path.join(root, "lvb_val.json"), "w") as f:
        json.dump(recs, f, indent=1)
    return str(root)


def make_vnbench(root, questions=3, seed=0):
    """VNBench layout: ``root/VNBench-main-4try.json`` (4 rotations per question) and ``root/video/<name>``."""
    rng = np.random.default_rng(seed)
    types = ["ret_edit1", "ord_insert1", "cnt_edit1"]
    recs = []
    for q in range(questions):
        name = f"v{q}_{types[q % 3]}.mp4"
        write_clip(os.path.join(root, "video", name), n=6, seed=300 + q)
        opts = [str(c) for c in rng.permutation(OPTIONS)[:4]]
        gt = opts[int(rng.integers(4))]
        for t in range(4):
            rot = opts[t:] + opts[:t]
            recs.append({"video": f"./VNBench/{name}", "question": f"What is the secret word {q}?", "options": rot,
                         "gt": gt, "type": types[q % 3], "try": t})
    with open(os.path.join(root, "VNBench-main-4try.json"), "w") as f:
        json.dump(recs, f, indent=1)
    return str(root)
