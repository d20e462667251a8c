"""Generated training data for the training tests: tiny mp4 clips (PyAV), PNG images, LLaVA JSON and mixtures."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import numpy as np

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def write_clip(path, frames: np.ndarray, fps: int = 4) -> str:
    """Encode uint8 ``[N, H, W, 3]`` frames as an H.264 mp4 at ``fps``."""
    n, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps, 1))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "10"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def colour_frames(colour: str, n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """A video whose frames are mostly ``colour`` with a little noise and a moving bright square."""
    rng = np.random.default_rng(seed)
    f = np.zeros((n, size, size, 3), dtype=np.uint8)
    f[:] = COLOURS[colour]
    f = np.clip(f.astype(int) + rng.integers(-20, 20, f.shape), 0, 255).astype(np.uint8)
    for i in range(n):
        x = (3 * i) % (size - 6)
        f[i, 4:10, x : x + 6] = 250
    return f


def write_png(path, img: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(img).save(str(path))
    return str(path)


def colour_dataset(root, n_videos: int = 4, n_images: int = 2, frames: int = 8, multi_turn: bool = True) -> str:
    """A LLaVA JSON of red / blue videos and images with "Which colour?" questions (multi-turn: a second question
    whose answer is the same colour). Returns the JSON path (media paths relative to ``root``)."""
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    records = []
    for i in range(n_videos):
        colour = ["red", "blue"][i % 2]
        write_clip(os.path.join(root, "clips", f"v{i}.mp4"), colour_frames(colour, frames, seed=i))
        conv = [{"from": "human", "value": "<video>\nWhich colour?"}, {"from": "gpt", "value": colour}]
        if multi_turn:
            conv += [{"from": "human", "value": "Again?"}, {"from": "gpt", "value": colour}]
        records.append({"id": f"v{i}", "video": f"clips/v{i}.mp4", "conversations": conv})
    for i in range(n_images):
        colour = ["blue", "red"][i % 2]
        write_png(os.path.join(root, "clips", f"i{i}.png"), colour_frames(colour, 1, seed=100 + i)[0])
        records.append({"id": f"i{i}", "image": f"clips/i{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhich colour?"}, {"from": "gpt", "value": colour}]})
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def equivalence_settings(stage: str) -> dict:
    """Settings shared by the one-process and two-process runs of the distributed-equivalence test."""
    common = dict(config="tiny", steps=3, batch_size=2, num_workers=0, progress=False, save_every=100, seed=3,
                  fps=(4.0,), max_frames=8, activation_checkpointing=True, warmup_ratio=0.0)
    if stage == "recot":
        return dict(common, lr=3e-3, clips_per_video=2)
    return dict(common, lr=3e-3, distill_weight=0.2)
