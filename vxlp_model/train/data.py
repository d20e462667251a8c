"""Training data (SPEC §6): LLaVA-style JSON, YAML mixtures of JSON files, video/image loading, per-sample encoding.

Record format (LLaVA, SPEC §6)::

    {"id": "v001", "video": "clips/v001.mp4",          # or "image": "imgs/i001.jpg"
     "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                       {"from": "gpt", "value": "A goal."},
                       {"from": "human", "value": "Who scores?"},
                       {"from": "gpt", "value": "The striker."}]}

- Roles: ``human``/``user`` → user, ``gpt``/``assistant`` → assistant, ``system`` → system (first turn only).
  Every assistant turn is trained (the processor's labels cover all of them).
- The ``<video>`` (or ``<image>``) marker places the media in a user turn; without a marker it goes before the text
  of the first user turn (the LLaVA convention). At most one marker per record.
- An image is trained as a static clip: the image repeated ``frames_per_group`` (4) times at t = 0 s (SPEC §3).
- Relative media paths are resolved against ``video_root`` / ``image_root`` (CLI ``--video-root`` /
  ``--image-root``, or a mixture entry's own roots), else against the JSON file's folder.

Mixture YAML (a list of entries, or ``{"datasets": [...]}`` as in LLaVA-OneVision)::

    datasets:
      - json_path: captions.json          # relative to the YAML file's folder
        sampling_strategy: random:50%     # all | first:N | first:P% | random:N | random:P%
        video_root: /data/videos          # optional
        task: captioning                  # optional: captioning | mcq | openqa (for vxlp prune)
      - qa.json                           # a bare path = {json_path: qa.json, sampling_strategy: all}

``random:`` draws without replacement with a generator seeded by the run seed and the entry's position, so the
mixture is the same on every rank and after a resume.

Records are validated when loaded (a malformed record is an error naming the file and the record) and stored
compactly (:class:`RecordTable`: one byte buffer, no Python object per record), so DataLoader workers do not copy
them. Media files are only opened when a sample is built; a missing or undecodable file then makes a *bad sample*,
which the training loop skips, logs and counts (see :mod:`vxlp_model.train.loader`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch

TASKS = ("captioning", "mcq", "openqa")
MEDIA_MARKERS = ("<video>", "<image>")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_ENTRY_KEYS = {"json_path", "sampling_strategy", "video_root", "image_root", "task"}


class DataError(ValueError):
    """Malformed training data (the message names the file and, where it applies, the record)."""


class SampleError(ValueError):
    """One sample cannot be built (the training loop skips and counts it; the message says why)."""


# ---------------------------------------------------------------------------------------------------------- records
@dataclass
class Record:
    """One normalised training record.

    Attributes:
        id: the record's ``id`` (or ``"<file>#<index>"`` when absent).
        media: absolute path of the video or image file.
        kind: ``"video"`` or ``"image"``.
        messages: chat messages for :meth:`VideoXLProProcessor.apply_chat_template` (``role`` and ``content``; the
            media is a ``{"type": "video"}`` item of one user turn). Empty when the record has no conversation
            (allowed for ReCoT only).
        source: the JSON file the record came from; index: its position there.
        task: ``captioning`` | ``mcq`` | ``openqa`` from the record's ``task`` field or its mixture entry, else None.
    """

    id: str
    media: str
    kind: str
    messages: list = field(default_factory=list)
    source: str = ""
    index: int = 0
    task: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            [self.id, self.media, self.kind, self.messages, self.source, self.index, self.task], ensure_ascii=False
        ).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> "Record":
        return cls(*json.loads(raw.decode("utf-8")))

    @property
    def question(self) -> str:
        """Text of the first user turn (markers removed)."""
        for m in self.messages:
            if m["role"] == "user":
                return _content_text(m["content"])
        return ""

    @property
    def answer(self) -> str:
        """Text of the first assistant turn."""
        for m in self.messages:
            if m["role"] == "assistant":
                return _content_text(m["content"])
        return ""


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(item.get("text", "") for item in content if item.get("type") == "text")


class RecordTable:
    """Records stored as one uint8 buffer plus offsets (no per-record Python objects to copy-on-write into workers).

    ``len(table)``, ``table[i] -> Record``. Build with :func:`load_records`.
    """

    def __init__(self, records: list[Record]):
        blobs = [r.to_json() for r in records]
        self._offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=self._offsets[1:])
        self._buf = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(f"record index {i} out of range [0, {len(self)})")
        return Record.from_json(self._buf[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def parse_record(
    rec,
    i: int,
    path: str,
    *,
    video_root: str | None = None,
    image_root: str | None = None,
    task: str | None = None,
    require_conversation: bool = True,
) -> Record:
    """Normalise one LLaVA record (see the module docstring).

    Raises:
        DataError: naming ``path`` and the record, for: not an object; neither or both of ``video`` / ``image``; a
            non-string media path; ``conversations`` missing (when ``require_conversation``), not a list, with an
            unknown role, a non-string value, no assistant turn after a user turn, more than one media marker, or a
            marker outside a user turn; an unknown ``task``.
    """
    where = f"{path}: record {i}"
    if not isinstance(rec, dict):
        raise DataError(f"{where} is a {type(rec).__name__}, expected an object")
    rid = str(rec.get("id", f"{os.path.basename(path)}#{i}"))
    where = f"{path}: record {i} (id {rid!r})"
    has_v, has_i = rec.get("video") is not None, rec.get("image") is not None
    if has_v == has_i:
        raise DataError(
            f"{where} must have exactly one of 'video' or 'image' (text-only records are not supported)"
            if not has_v
            else f"{where} has both 'video' and 'image'"
        )
    kind = "video" if has_v else "image"
    media = rec[kind]
    if not isinstance(media, str) or not media:
        raise DataError(f"{where}: '{kind}' must be one file path (a string), got {type(media).__name__}")
    root = (video_root if kind == "video" else image_root) or os.path.dirname(os.path.abspath(path))
    media = media if os.path.isabs(media) else os.path.normpath(os.path.join(root, media))
    rtask = rec.get("task", task)
    if rtask is not None and rtask not in TASKS:
        raise DataError(f"{where}: task must be one of {TASKS}, got {rtask!r}")
    conv = rec.get("conversations")
    if conv is None:
        if require_conversation:
            raise DataError(f"{where} has no 'conversations'")
        return Record(rid, media, kind, [], path, i, rtask)
    if not isinstance(conv, list):
        raise DataError(f"{where}: 'conversations' must be a list of {{from, value}} turns")
    messages, markers, seen_user, seen_answer = [], 0, False, False
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise DataError(
                f"{where}: turn {t} must be {{'from': one of {sorted(_ROLES)}, 'value': a string}}, got {turn!r}"[:400]
            )
        role, value = _ROLES[turn["from"]], turn["value"]
        if role == "system" and t != 0:
            raise DataError(f"{where}: a system turn may only come first (turn {t})")
        n = sum(value.count(m) for m in MEDIA_MARKERS)
        if n and role != "user":
            raise DataError(f"{where}: the media marker is in a {role} turn (turn {t}); it belongs in a user turn")
        markers += n
        if markers > 1:
            raise DataError(f"{where} has more than one <video>/<image> marker (one media file per record)")
        if role == "user":
            seen_user = True
            content = _split_markers(value)
        elif role == "assistant":
            if not seen_user:
                raise DataError(f"{where}: turn {t} is an assistant turn before any user turn")
            seen_answer = True
            content = [{"type": "text", "text": value}]
        else:
            content = value
        messages.append({"role": role, "content": content})
    if not seen_answer:
        if require_conversation:
            raise DataError(f"{where} has no assistant ('gpt') turn to train on")
        return Record(rid, media, kind, [], path, i, rtask)
    if markers == 0:
        first = next(m for m in messages if m["role"] == "user")
        first["content"] = [{"type": "video"}] + first["content"]
    return Record(rid, media, kind, messages, path, i, rtask)


def _split_markers(value: str) -> list[dict]:
    """User text → content items; the marker becomes ``{"type": "video"}`` (one newline after it is absorbed: the
    chat template writes it back)."""
    pattern = "|".join(re.escape(m) for m in MEDIA_MARKERS)
    parts = re.split(f"({pattern})", value)
    items: list[dict] = []
    for k, part in enumerate(parts):
        if part in MEDIA_MARKERS:
            items.append({"type": "video"})
            if k + 1 < len(parts) and parts[k + 1].startswith("\n"):
                parts[k + 1] = parts[k + 1][1:]
        elif part:
            items.append({"type": "text", "text": part})
    return items or [{"type": "text", "text": ""}]


def load_json_records(
    path: str,
    *,
    video_root: str | None = None,
    image_root: str | None = None,
    task: str | None = None,
    require_conversation: bool = True,
) -> list[Record]:
    """Parse a LLaVA-style JSON list (or JSON Lines: one record per line, for ``.jsonl``) into :class:`Record` s.

    Raises:
        FileNotFoundError: ``path`` is missing.
        DataError: invalid JSON (with the line), not a list, empty, or a malformed record (see :func:`parse_record`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training data file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                data = [json.loads(line) for line in f if line.strip()]
            else:
                data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: no records")
    return [
        parse_record(rec, i, path, video_root=video_root, image_root=image_root, task=task, require_conversation=require_conversation)
        for i, rec in enumerate(data)
    ]


def parse_sampling_strategy(strategy: str, n: int, where: str) -> tuple[str, int]:
    """``all`` | ``first:N`` | ``first:P%`` | ``random:N`` | ``random:P%`` → ``(kind, count)`` for ``n`` records.

    Raises ``DataError`` naming ``where`` for an unknown form, a count < 1 or above ``n``, or a percentage outside
    (0, 100].
    """
    s = str(strategy).strip()
    if s == "all":
        return "all", n
    m = re.fullmatch(r"(first|random):(\d+(?:\.\d+)?)(%?)", s)
    if not m:
        raise DataError(f"{where}: sampling_strategy must be all, first:N, first:P%, random:N or random:P%, got {strategy!r}")
    kind, num, pct = m.group(1), float(m.group(2)), bool(m.group(3))
    if pct:
        if not 0 < num <= 100:
            raise DataError(f"{where}: percentage must be in (0, 100], got {strategy!r}")
        count = int(math.floor(n * num / 100.0 + 1e-9))
    else:
        if num != int(num):
            raise DataError(f"{where}: a count must be an integer, got {strategy!r}")
        count = int(num)
    if count < 1:
        raise DataError(f"{where}: {strategy!r} selects no record out of {n}")
    if count > n:
        raise DataError(f"{where}: {strategy!r} asks for {count} records but the file holds {n}")
    return kind, count


def load_records(
    data: str,
    *,
    video_root: str | None = None,
    image_root: str | None = None,
    seed: int = 0,
    require_conversation: bool = True,
) -> RecordTable:
    """Load a JSON / JSONL file or a YAML mixture (``.yaml`` / ``.yml``) into a :class:`RecordTable`.

    ``video_root`` / ``image_root`` apply to entries that do not set their own. ``seed`` drives ``random:``
    strategies (entry k uses ``numpy.random.default_rng([seed, k])``).

    Raises:
        FileNotFoundError: the data file or a JSON file of the mixture is missing.
        DataError: malformed YAML (an unknown key, a missing ``json_path``, a bad strategy), or any error of
            :func:`load_json_records`; messages name the file and the entry or record.
    """
    if not os.path.isfile(data):
        raise FileNotFoundError(f"training data file not found: {data}")
    if not data.endswith((".yaml", ".yml")):
        return RecordTable(load_json_records(data, video_root=video_root, image_root=image_root, require_conversation=require_conversation))
    records: list[Record] = []
    for k, entry in enumerate(read_mixture(data)):
        recs = load_json_records(
            entry["json_path"],
            video_root=entry.get("video_root") or video_root,
            image_root=entry.get("image_root") or image_root,
            task=entry.get("task"),
            require_conversation=require_conversation,
        )
        kind, count = parse_sampling_strategy(entry.get("sampling_strategy", "all"), len(recs), f"{data}: entry {k} ({entry['json_path']})")
        if kind == "first":
            recs = recs[:count]
        elif kind == "random":
            idx = np.sort(np.random.default_rng([seed, k]).choice(len(recs), size=count, replace=False))
            recs = [recs[i] for i in idx]
        records += recs
    return RecordTable(records)


def read_mixture(path: str) -> list[dict]:
    """Read a mixture YAML into entries with absolute ``json_path`` (and roots); see the module docstring.

    Raises ``DataError`` naming the file and the entry for malformed YAML or entries.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: invalid YAML: {e}") from None
    if isinstance(doc, dict):
        if set(doc) - {"datasets"}:
            raise DataError(f"{path}: unknown top-level keys {sorted(set(doc) - {'datasets'})} (expected 'datasets')")
        doc = doc.get("datasets")
    if not isinstance(doc, list) or not doc:
        raise DataError(f"{path}: expected a non-empty list of entries (or 'datasets:' with one)")
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    for k, e in enumerate(doc):
        if isinstance(e, str):
            e = {"json_path": e}
        if not isinstance(e, dict) or "json_path" not in e:
            raise DataError(f"{path}: entry {k} must be a path or a mapping with 'json_path', got {e!r}"[:300])
        unknown = set(e) - _ENTRY_KEYS
        if unknown:
            raise DataError(f"{path}: entry {k} has unknown keys {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
        if e.get("task") is not None and e["task"] not in TASKS:
            raise DataError(f"{path}: entry {k}: task must be one of {TASKS}, got {e['task']!r}")
        e = dict(e)
        for key in ("json_path", "video_root", "image_root"):
            if e.get(key) is not None:
                v = os.path.expanduser(str(e[key]))
                e[key] = v if os.path.isabs(v) else os.path.normpath(os.path.join(base, v))
        entries.append(e)
    return entries


# ----------------------------------------------------------------------------------------------- temporal sampling
@dataclass(frozen=True)
class VideoSampling:
    """Variable frame sampling (SPEC §6, paper): short videos at a high rate, long ones at 1 fps, capped.

    The rate is the highest of ``fps`` (frames/s) whose frame count ``duration · rate`` fits in ``max_frames``;
    a video too long even at the lowest rate is sampled at the lowest rate and thinned uniformly to ``max_frames``
    (:func:`vxlp_model.read_video`'s rule). Defaults ``fps=(3, 2, 1)``, ``max_frames=360``: ≤ 120 s at 3 fps,
    ≤ 180 s at 2 fps, longer at 1 fps capped at 360 frames. ``fps=(1,)``, ``max_frames=240`` is the paper's fixed
    recipe.

    Raises ``ValueError`` for an empty or non-positive rate list or ``max_frames < 1``.
    """

    fps: tuple[float, ...] = (3.0, 2.0, 1.0)
    max_frames: int = 360

    def __post_init__(self):
        rates = tuple(float(r) for r in self.fps)
        if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
            raise ValueError(f"fps must be a non-empty list of positive frame rates, got {self.fps!r}")
        if int(self.max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        object.__setattr__(self, "fps", tuple(sorted(rates, reverse=True)))
        object.__setattr__(self, "max_frames", int(self.max_frames))

    def rate(self, duration: float) -> float:
        """Sampling rate (frames/s) for a video of ``duration`` seconds (unknown duration ≤ 0: the lowest rate)."""
        if duration > 0:
            for r in self.fps:
                if duration * r <= self.max_frames:
                    return r
        return self.fps[-1]


def load_video(path: str, sampling: VideoSampling) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a video at the rate :meth:`VideoSampling.rate` picks for its duration.

    Returns ``(frames uint8 [N, H, W, 3], timestamps float64 [N] s)``. Raises FileNotFoundError / VideoDecodeError.
    """
    from ..video import probe_video, read_video

    info = probe_video(path)
    frames, ts, _ = read_video(path, fps=sampling.rate(info.duration), max_frames=sampling.max_frames)
    return frames, ts


def load_image(path: str) -> torch.Tensor:
    """An image file → uint8 ``[H, W, 3]`` (RGB). Raises FileNotFoundError or SampleError (unreadable image)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path!r}")
    try:
        with open(path, "rb") as f:  # a plain open: a stuck file system is caught by the sample timeout
            with Image.open(f) as img:
                arr = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise SampleError(f"cannot read image {path!r}: {e}") from e
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SampleError(f"image {path!r} has shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_media(record: Record, sampling: VideoSampling, frames_per_group: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The record's frames: a video (:func:`load_video`) or an image as a static clip of ``frames_per_group``
    copies at t = 0 s. Returns ``(uint8 [N, H, W, 3], float64 [N] s)``."""
    if record.kind == "image":
        img = load_image(record.media)
        return img[None].expand(frames_per_group, *img.shape).contiguous(), torch.zeros(frames_per_group, dtype=torch.float64)
    return load_video(record.media, sampling)


def read_clips(path: str, starts: list[float], frames: int, fps: float) -> list[torch.Tensor]:
    """Decode short clips of a video without decoding the whole file: for each start time (seconds, ascending), the
    ``frames`` frames at ``start + k / fps`` (the first frame at or after each target time). A clip that runs past
    the end repeats its last frame.

    Seeks to the keyframe before the first start and decodes forward once (PyAV, with the same open/read timeouts
    and loop bounds as :func:`vxlp_model.read_video`).

    Returns one uint8 ``[frames, H, W, 3]`` tensor per start. Raises FileNotFoundError / VideoDecodeError.
    """
    from ..video import VideoDecodeError, _check_path, _loop_bound, _open, _video_stream

    p, size = _check_path(path)
    flat = sorted((s + k / fps, c, k) for c, s in enumerate(starts) for k in range(frames))
    out: list[list] = [[None] * frames for _ in starts]
    j, n_frames, last_frame = 0, 0, None
    bound = _loop_bound(size)
    with _open(p) as container:
        stream = _video_stream(container, p)
        tb = stream.time_base
        start_pts = stream.start_time or 0
        if flat and flat[0][0] > 0 and tb is not None:
            try:
                container.seek(int(start_pts + flat[0][0] / float(tb)), stream=stream, backward=True, any_frame=False)
            except Exception:  # not seekable: decode from the beginning instead
                pass
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    raise VideoDecodeError(f"{p!r}: truncated or corrupt packet (pts {packet.pts})")
                for frame in packet.decode():
                    n_frames += 1
                    if n_frames > bound:
                        raise VideoDecodeError(f"decoding {p!r} did not terminate after {bound} frames")
                    last_frame = frame
                    t = float((frame.pts - start_pts) * tb) if frame.pts is not None and tb is not None else 0.0
                    if j < len(flat) and t + 1e-9 >= flat[j][0]:
                        rgb = frame.to_ndarray(format="rgb24")
                        while j < len(flat) and t + 1e-9 >= flat[j][0]:
                            out[flat[j][1]][flat[j][2]] = rgb
                            j += 1
                if j >= len(flat):
                    break
            if j < len(flat) and last_frame is not None:  # the clip runs past the end: repeat the last frame
                rgb = last_frame.to_ndarray(format="rgb24")
                for _, c, k in flat[j:]:
                    out[c][k] = rgb
        except VideoDecodeError:
            raise
        except Exception as e:  # PyAV / FFmpeg errors
            raise VideoDecodeError(f"error while decoding {p!r}: {e}") from e
    if n_frames == 0:
        raise VideoDecodeError(f"{p!r} contains no decodable video frames")
    clips = []
    for row in out:
        shape = next(r.shape for r in row if r is not None)
        if any(r.shape != shape for r in row):  # resolution change mid-stream
            raise VideoDecodeError(f"{p!r} changes resolution inside a clip")
        clips.append(torch.from_numpy(np.stack(row)))
    return clips


# ------------------------------------------------------------------------------------------------------- samples
def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The random generator of the sample at global ``position`` of the data stream (independent of ranks, workers
    and resumes)."""
    return np.random.default_rng([int(seed), int(position)])


def build_lm_sample(record: Record, processor, sampling: VideoSampling, max_length: int | None = None) -> dict:
    """Encode one record for the projector / finetune stages.

    Returns a dict with int64 ``[L]`` ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (every
    assistant turn), float32 ``pixel_values_videos`` ``[N', 3, S, S]`` (N' = N padded to a multiple of 4),
    ``video_num_frames`` int64 ``[1]``, and ``frames`` (N'), ``tokens`` (L), ``label_tokens``.

    Raises: SampleError (no conversation, no labelled token, longer than ``max_length``), and the errors of
    :func:`load_media` and the processor (bad timestamps, decode errors).
    """
    if not record.messages:
        raise SampleError(f"record {record.id!r} has no conversation to train on")
    frames, ts = load_media(record, sampling, processor.frames_per_group)
    prompt = processor.apply_chat_template(record.messages)
    enc = processor(text=[prompt], videos=[frames], video_timestamps=[ts], return_labels=True, padding_side="right")
    n_labels = int((enc["labels"][0, 1:] != -100).sum())
    if n_labels == 0:
        raise SampleError(f"record {record.id!r}: no assistant token to train on")
    length = int(enc["input_ids"].shape[1])
    if max_length is not None and length > max_length:
        raise SampleError(f"record {record.id!r}: {length} tokens exceed --max-length {max_length}")
    out = {k: enc[k][0] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    out["pixel_values_videos"] = enc["pixel_values_videos"]
    out["video_num_frames"] = enc["video_num_frames"]
    out["frames"] = int(enc["pixel_values_videos"].shape[0])
    out["tokens"] = length
    out["label_tokens"] = n_labels
    return out


def collate_lm(samples: list[dict], pad_token_id: int) -> dict:
    """Right-pad :func:`build_lm_sample` outputs into a batch, as ``processor(..., padding_side="right")`` does for
    the same prompts: ``input_ids`` (pad id), ``attention_mask`` (0), ``token_type_ids`` (TEXT = 0), ``labels``
    (-100) int64 ``[B, L]``; videos concatenated (``pixel_values_videos`` ``[ΣN, 3, S, S]``, ``video_num_frames``
    ``[B]``)."""
    from ..processing import IGNORE_INDEX, TEXT

    length = max(s["input_ids"].shape[0] for s in samples)
    fills = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": TEXT, "labels": IGNORE_INDEX}
    batch = {}
    for key, fill in fills.items():
        rows = []
        for s in samples:
            v = s[key]
            rows.append(torch.cat([v, v.new_full((length - v.shape[0],), fill)]) if v.shape[0] < length else v)
        batch[key] = torch.stack(rows)
    batch["pixel_values_videos"] = torch.cat([s["pixel_values_videos"] for s in samples])
    batch["video_num_frames"] = torch.cat([s["video_num_frames"] for s in samples])
    return batch


def build_clip_sample(record: Record, processor, sampling: VideoSampling, rng: np.random.Generator, clips: int = 1) -> dict:
    """ReCoT clips of one record, streamed from disk (SPEC §3): ``clips`` clips of ``frames_per_group`` frames at
    the record's sampling rate, each from a random start (drawn with ``rng``); an image is a static clip (its
    ``clips`` copies are identical).

    Returns ``{"pixels": float32 [clips·4, 3, S, S], "frames": clips·4}``. Raises FileNotFoundError /
    VideoDecodeError / SampleError.
    """
    t = processor.frames_per_group
    if record.kind == "image":
        img = load_image(record.media)
        frames = img[None].expand(clips * t, *img.shape).contiguous()
    else:
        from ..video import probe_video

        info = probe_video(record.media)
        rate = sampling.rate(info.duration)
        span = t / rate
        room = max(0.0, info.duration - span)
        starts = sorted(float(rng.uniform(0.0, room)) if room > 0 else 0.0 for _ in range(clips))
        frames = torch.cat(read_clips(record.media, starts, t, rate))
    pixels = processor.video_processor.pixel_values(frames)
    return {"pixels": pixels, "frames": int(pixels.shape[0])}


def collate_clips(samples: list[dict]) -> dict:
    """Concatenate :func:`build_clip_sample` outputs: ``{"pixels": [Σ clips·4, 3, S, S]}``."""
    return {"pixels": torch.cat([s["pixels"] for s in samples])}


# ------------------------------------------------------------------------------------------------ backward compat
@dataclass
class VideoQARecord:
    """One-turn view of a record (the first layout's API): video path, question and answer."""

    id: str
    video: str
    question: str
    answer: str


def load_llava_json(path: str) -> list[VideoQARecord]:
    """Parse a LLaVA-style JSON file into one-turn records (first question and answer).

    Raises FileNotFoundError (missing file) and DataError (a ValueError naming the file and record)."""
    return [VideoQARecord(r.id, r.media, r.question.strip(), r.answer.strip()) for r in load_json_records(path)]
