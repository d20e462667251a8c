"""Needle tasks at any haystack length, for length generalisation (SPEC §7; the scale issue).

Built on :mod:`vxlp_model.eval.niah` (real-clip haystack, generated needles, ``Best option:(`` protocol):

- :func:`haystack_indices_any_length`: haystacks longer than the real footage are the real clips in order, looped
  from a random offset (every frame real, temporal order kept within each pass).
- :func:`make_needle_sample` — one task family, three variants:

  - ``"single"``: one needle; "What colour is the shape shown in one frame of the video?" (SPEC §7);
  - ``"two"``: two needles of different shapes and colours at different depths; the question names the shape
    ("What colour is the triangle?"), so only a selector that reads the question keeps the right one;
  - ``"none"``: the same question and options with no needle at all: a control whose accuracy must be chance.

  Timestamps are ``offset + i / fps``: the demo trains with random offsets over the whole range of the time text and
  random rates, so any position of a day-long video shows time texts seen in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .niah import COLOURS, LETTERS, QUESTION, SHAPES, haystack_indices, make_needle

VARIANTS = ("single", "two", "none")


@dataclass
class NeedleTaskSample:
    """frames uint8 ``[L', S, S, 3]``, timestamps float64 ``[L']`` (s), question, answer letter, the needles'
    frame indices and depth, the variant, and ``source_index`` int64 ``[L']``: the haystack frame each frame is
    (−1 for a generated needle)."""

    frames: torch.Tensor
    timestamps: torch.Tensor
    question: str
    answer: str
    needle_indices: list
    depth: float
    variant: str
    source_index: torch.Tensor


def haystack_indices_any_length(total: int, length: int, generator: torch.Generator, consecutive: bool = False) -> torch.Tensor:
    """``length`` frame indices of a ``total``-frame real video.

    Up to ``total`` (and not ``consecutive``): :func:`vxlp_model.eval.niah.haystack_indices` (uniform over a random
    window). Longer, or ``consecutive``: consecutive frames of the video looped in order from a random start frame,
    ``(start + i) mod total``.
    """
    if length < 1 or total < 1:
        raise ValueError(f"length and total must be >= 1, got {length}, {total}")
    if length <= total and not consecutive:
        return haystack_indices(total, length, generator)
    start = int(torch.randint(0, total, (), generator=generator))
    return (start + torch.arange(length)) % total


def _insert(frames: torch.Tensor, pos: int, frame: torch.Tensor) -> torch.Tensor:
    return torch.cat([frames[:pos], frame[None], frames[pos:]])


def _insert_index(index: torch.Tensor, pos: int, value: int) -> torch.Tensor:
    return torch.cat([index[:pos], torch.tensor([value]), index[pos:]])


def make_needle_sample(
    haystack: torch.Tensor,
    length: int,
    depth: float,
    generator: torch.Generator,
    *,
    variant: str = "single",
    fps: float = 1.0,
    time_offset: float = 0.0,
    consecutive: bool = False,
) -> NeedleTaskSample:
    """One sample: ``length`` real haystack frames (+ the needles), options in the fixed order of the first four
    :data:`COLOURS`, the answer uniform over A–D.

    ``depth`` places the (first) needle at ``round(depth · length)``; in ``"two"`` the second needle goes to a
    uniformly drawn other position. Frame i of the result is at ``time_offset + i / fps`` seconds. ``consecutive``:
    the haystack is consecutive real frames at any length (see :func:`haystack_indices_any_length`).

    Raises ``ValueError`` for a bad variant, length, depth or fps.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if length < 1 or not 0.0 <= depth <= 1.0 or not fps > 0 or time_offset < 0:
        raise ValueError(f"need length >= 1, 0 <= depth <= 1, fps > 0, time_offset >= 0; got {length}, {depth}, {fps}, {time_offset}")
    size = haystack.shape[1]
    options = list(COLOURS)[: len(LETTERS)]
    answer_slot = int(torch.randint(0, len(LETTERS), (), generator=generator))
    colour = options[answer_slot]
    shape = SHAPES[int(torch.randint(0, len(SHAPES), (), generator=generator))]
    index = haystack_indices_any_length(haystack.shape[0], length, generator, consecutive=consecutive)
    frames = haystack[index]
    pos = int(math.floor(depth * length + 0.5))
    positions = []
    if variant == "single":
        frames = _insert(frames, pos, make_needle(colour, shape, size, generator))
        index = _insert_index(index, pos, -1)
        positions = [pos]
        question = QUESTION
    elif variant == "none":
        filler = int(torch.randint(0, haystack.shape[0], (), generator=generator))
        frames = _insert(frames, pos, haystack[filler])
        index = _insert_index(index, pos, filler)
        question = QUESTION
    else:
        other_colour = options[(answer_slot + 1 + int(torch.randint(0, len(LETTERS) - 1, (), generator=generator))) % len(LETTERS)]
        other_shape = SHAPES[(SHAPES.index(shape) + 1 + int(torch.randint(0, len(SHAPES) - 1, (), generator=generator))) % len(SHAPES)]
        frames = _insert(frames, pos, make_needle(colour, shape, size, generator))
        index = _insert_index(index, pos, -1)
        pos2 = int(torch.randint(0, frames.shape[0] + 1, (), generator=generator))
        frames = _insert(frames, pos2, make_needle(other_colour, other_shape, size, generator))
        index = _insert_index(index, pos2, -1)
        positions = [pos + (1 if pos2 <= pos else 0), pos2]
        question = f"What colour is the {shape}?"
    timestamps = time_offset + torch.arange(frames.shape[0], dtype=torch.float64) / fps
    opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(options))
    return NeedleTaskSample(
        frames, timestamps, f"{question} {opts} Best option:(", LETTERS[answer_slot], positions, depth, variant, index
    )


def task_words() -> list[str]:
    """Words the demo's tiny tokenizer merges into single tokens for these tasks."""
    words = list(COLOURS) + list(SHAPES) + QUESTION.replace("?", "").split() + ["Best", "option", "the"]
    return list(dict.fromkeys(words))


class HaystackTokenCache:
    """Visual tokens of needle samples without re-encoding the haystack (exact; for evaluating long haystacks).

    SigLIP runs frame by frame, so each haystack frame's features are computed once; the DTS runs on groups of
    ``frames_per_group`` consecutive frames, so the tokens of every window of consecutive haystack frames
    (``(j, j+1, …) mod total``, the looped haystacks) are computed once too. A sample's groups that are such a window
    come from the cache; the others (needles, non-consecutive frames of uniformly sampled short haystacks, the padded
    tail) run the DTS on cached (or, for needles, fresh) features. The result equals ``model.get_video_features`` on
    the sample's pixels up to floating-point summation order.

    Args: model (:class:`VideoXLProForConditionalGeneration`, eval mode), video_processor, haystack uint8
    ``[T, S, S, 3]``.
    """

    @torch.no_grad()
    def __init__(self, model, video_processor, haystack: torch.Tensor, chunk: int = 256):
        self.model = model.model if hasattr(model, "model") else model
        self.vp = video_processor
        self.t = self.model.config.frames_per_group
        dev = self.model.sae.temporal_encoding.device
        total = haystack.shape[0]
        px = video_processor.pixel_values(haystack).to(dev)
        self.features = torch.cat([self.model.vision_features(px[i : i + chunk]) for i in range(0, total, chunk)])
        windows = (torch.arange(total)[:, None] + torch.arange(self.t)[None, :]) % total  # [T, t]
        self.windows = self._compress(self.features[windows.reshape(-1)].reshape(total, self.t, *self.features.shape[1:]), chunk)

    def _compress(self, groups: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """``[G, t, S, C]`` per-frame features → ``[G, P, d]`` visual tokens."""
        flat = groups.reshape(-1, *groups.shape[2:])
        step = chunk // self.t * self.t
        return torch.cat([self.model.compress_groups(flat[i : i + step]) for i in range(0, flat.shape[0], step)])

    @torch.no_grad()
    def encode(self, samples: list) -> list[torch.Tensor]:
        """Visual tokens ``[G_i, P, d]`` of each :class:`NeedleTaskSample` (frames padded as the processor pads)."""
        total = self.features.shape[0]
        out, live, live_owner = [], [], []
        for si, s in enumerate(samples):
            idx = s.source_index
            n = idx.shape[0]
            g = -(-n // self.t)
            padded = torch.cat([torch.arange(n), torch.full((g * self.t - n,), n - 1, dtype=torch.long)])
            frame_ids = padded.reshape(g, self.t)
            src = idx[frame_ids]  # [G, t]
            consecutive = (src >= 0).all(1) & ((src[:, 1:] - src[:, :-1]) % total == 1).all(1)
            tokens = torch.empty((g,) + tuple(self.windows.shape[1:]), dtype=self.windows.dtype, device=self.windows.device)
            tokens[consecutive] = self.windows[src[consecutive, 0]]
            for gi in (~consecutive).nonzero().squeeze(-1).tolist():
                feats = []
                for f, h in zip(frame_ids[gi].tolist(), src[gi].tolist()):
                    if h >= 0:
                        feats.append(self.features[h])
                    else:
                        px = self.vp.pixel_values(s.frames[f : f + 1]).to(self.features.device)
                        feats.append(self.model.vision_features(px)[0])
                live.append(torch.stack(feats))
                live_owner.append((si, gi))
            out.append(tokens)
        if live:
            computed = self._compress(torch.stack(live))
            for (si, gi), tok in zip(live_owner, computed):
                out[si][gi] = tok
        return out
