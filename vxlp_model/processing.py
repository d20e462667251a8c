"""The processor: a chat template, a video processor, and the prompt splice layout (SPEC §5; RELEASED.md §3, §5).

:class:`VideoXLProProcessor` (a transformers ``ProcessorMixin``) holds a Qwen2 tokenizer, a
:class:`VideoXLProVideoProcessor` and a ChatML chat template. ``apply_chat_template`` renders a conversation, with
``<video>`` where a video goes; ``__call__`` tokenises it and expands each ``<video>`` into the video block: per
group of ``frames_per_group`` frames, the tokens of ``time_format`` at the group's first timestamp, then
``tokens_per_group`` visual placeholders (``<|vision_pad|>``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    Time 00:00:00.0: <|vision_pad|>×144  Time 00:00:04.0: <|vision_pad|>×144 …
    \\n{question}<|im_end|>\\n<|im_start|>assistant\\n

Every position gets a token type (:data:`TEXT`, :data:`QUERY` = the user's text, :data:`TIME`, :data:`VIDEO`,
:data:`ANSWER` = assistant replies and their ``<|im_end|>``) in ``token_type_ids``; ``labels`` (when asked) are the
ids of ANSWER tokens and -100 elsewhere, so the loss covers every assistant turn.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

TEXT, QUERY, TIME, VIDEO, ANSWER = 0, 1, 2, 3, 4
IGNORE_INDEX = -100
VIDEO_MARKER = "<video>"
RELEASED_TIME_FORMAT = "Time {t:06.1f}s:"  # the released Video-XL-Pro's (RELEASED.md §4): fixed width up to 9999.9 s
DEFAULT_TIME_FORMAT = "Time {h:02d}:{m:02d}:{s:04.1f}:"  # vxlp's: fixed width (and token count) up to 99:59:59.9
# the largest timestamp each fixed-width format writes without widening (and so changing its token count)
FIXED_WIDTH_LIMITS = {RELEASED_TIME_FORMAT: 9999.9, DEFAULT_TIME_FORMAT: 359999.9}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_pad|>")
RESAMPLE_MODES = ("bilinear", "pil_bicubic")

# ChatML (Qwen2.5's layout); a video item renders as "<video>", followed by "\n" when more content follows it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'video' -%}{{ '<video>' }}{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_SPLIT = re.compile(r"(<\|im_start\|>(?:system|user|assistant)\n|<\|im_end\|>|<video>)")


def format_time(time_format: str, t: float) -> str:
    """The time text of a group starting at ``t`` seconds.

    ``time_format`` is a ``str.format`` template over ``t`` (seconds, float) and ``h``, ``m``, ``s`` (hours, minutes
    (int) and seconds (float) of ``t`` rounded to a tenth of a second, so ``s`` never shows 60.0): e.g.
    :data:`DEFAULT_TIME_FORMAT` ``"Time {h:02d}:{m:02d}:{s:04.1f}:"`` → ``"Time 01:02:03.4:"``, the released
    ``"Time {t:06.1f}s:"`` → ``"Time 3723.4s:"``.
    """
    tenths = int(round(t * 10))
    h, rest = divmod(tenths, 36000)
    m, tenth_s = divmod(rest, 600)
    return time_format.format(t=t, h=h, m=m, s=tenth_s / 10)


def conversation(question: str, answer: str | None = None, *, video: bool = True) -> list[dict]:
    """The messages of one video question (and its answer, for training), for ``apply_chat_template``."""
    content = ([{"type": "video"}] if video else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def group_start_times(timestamps, frames_per_group: int) -> list[float]:
    """Timestamp (s) of the first frame of each group of ``frames_per_group`` frames (the last group may be short).

    Raises ``ValueError`` for an empty, non-finite, negative or decreasing timestamp list.
    """
    ts = [float(t) for t in (timestamps.tolist() if hasattr(timestamps, "tolist") else timestamps)]
    if not ts:
        raise ValueError("timestamps must hold at least one frame time")
    if any(not math.isfinite(t) or t < 0 for t in ts):
        raise ValueError("timestamps must be finite and >= 0 (seconds)")
    if any(b < a for a, b in zip(ts, ts[1:])):
        raise ValueError("timestamps must be non-decreasing (seconds)")
    return ts[::frames_per_group]


class VideoXLProVideoProcessor(VideoProcessorMixin):
    """Frames → SigLIP pixel values, each video padded to a multiple of ``frames_per_group`` frames.

    Args:
        size: output side in pixels (384 for so400m-patch14-384).
        resample: ``"bilinear"`` (torch, antialiased, on float frames: the vxlp default) or ``"pil_bicubic"`` (the
            released preprocessing, RELEASED.md §3.1: PIL bicubic on the uint8 frame, aspect ratio not kept).
        image_mean, image_std: per-channel normalisation after ×1/255 (SigLIP: 0.5, 0.5).
        frames_per_group: the frame count of each video is made a multiple of this (``tail``).
        tail: ``"repeat"`` pads by repeating the last frame and its timestamp (vxlp, and the released code's
            deterministic equivalent, RELEASED.md §3.3) or ``"drop"`` drops the last ``N mod frames_per_group`` frames
            (Video-XL-2's evaluation); a video shorter than one group is always padded.
        fps, max_frames: sampling when a video is given as a file path (decoded with :func:`vxlp_model.read_video`).

    ``__call__(videos, video_timestamps=None, fps=None, video_metadata=None)`` returns a ``BatchFeature`` with
    ``pixel_values_videos`` float32 ``[ΣN_v, 3, size, size]`` (all videos concatenated) and ``video_num_frames``
    int64 ``[V]``. A video is a uint8 ``[N, H, W, 3]`` tensor or array, or a path.
    """

    model_input_names = ["pixel_values_videos", "video_num_frames"]

    def __init__(
        self,
        size: int = 384,
        resample: str = "bilinear",
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        frames_per_group: int = 4,
        tail: str = "repeat",
        fps: float = 1.0,
        max_frames: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if isinstance(size, dict):
            size = int(size.get("height", size.get("shortest_edge")))
        self.size = int(size)
        self.resample = resample
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.frames_per_group = int(frames_per_group)
        if tail not in ("repeat", "drop"):
            raise ValueError(f"tail must be 'repeat' or 'drop', got {tail!r}")
        self.tail = tail
        self.fps = fps
        self.max_frames = max_frames
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or any(s <= 0 for s in self.image_std):
            raise ValueError("image_mean and image_std must hold 3 values, std > 0")

    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos, video_timestamps=None, fps=None, video_metadata=None, return_tensors=None, **kwargs) -> BatchFeature:
        pixels, counts, _ = self.prepare(videos, video_timestamps=video_timestamps, fps=fps, video_metadata=video_metadata)
        return BatchFeature({"pixel_values_videos": pixels, "video_num_frames": counts}, tensor_type=return_tensors)

    def prepare(self, videos, video_timestamps=None, fps=None, video_metadata=None, return_pixel_values: bool = True):
        """Decode (paths), pad, resize and normalise.

        Returns ``(pixel_values_videos float32 [ΣN_v, 3, S, S], video_num_frames int64 [V], group_starts)`` where
        ``group_starts[v]`` lists each group's first timestamp (seconds). With ``return_pixel_values=False`` the
        pixels are not computed (None): the layout alone, for videos whose visual tokens are already encoded.

        Timestamps come, in this order, from ``video_timestamps`` (one sequence per video), the decoder (paths),
        ``video_metadata`` (``frames_indices / fps``), or ``fps`` (frame i at ``i / fps`` s). A frame array with none
        of these raises ``ValueError``: a wrong time text would be a silently wrong prompt.

        Raises: ValueError (bad frames or timestamps, naming the video), FileNotFoundError / VideoDecodeError (paths).
        """
        from .video import read_video

        if isinstance(videos, (str, os.PathLike)) or _is_frames(videos):
            videos = [videos]
        videos = list(videos)
        n = len(videos)
        stamps = _per_video(video_timestamps, n, "video_timestamps")
        metas = _per_video(video_metadata, n, "video_metadata")
        pixels, counts, starts = [], [], []
        for i, video in enumerate(videos):
            ts = stamps[i]
            if isinstance(video, (str, os.PathLike)):
                video, decoded_ts, _ = read_video(video, fps=self.fps, max_frames=self.max_frames)
                ts = decoded_ts if ts is None else ts
            frames = _as_frames(video, i)
            if ts is None and metas[i] is not None:
                meta = metas[i]
                m_fps, idx = meta["fps"], meta.get("frames_indices") if hasattr(meta, "get") else meta["frames_indices"]
                if m_fps and idx is not None:
                    ts = [float(j) / float(m_fps) for j in idx]
            if ts is None and fps is not None:
                if not fps > 0:
                    raise ValueError(f"fps must be > 0, got {fps}")
                ts = [j / float(fps) for j in range(frames.shape[0])]
            if ts is None:
                raise ValueError(
                    f"video {i}: no timestamps; pass video_timestamps (seconds per frame, e.g. from read_video), "
                    "video_metadata, or fps"
                )
            ts = [float(t) for t in (ts.tolist() if hasattr(ts, "tolist") else ts)]
            if len(ts) != frames.shape[0]:
                raise ValueError(f"video {i}: {frames.shape[0]} frames but {len(ts)} timestamps")
            t = self.frames_per_group
            if self.tail == "drop" and frames.shape[0] >= t and frames.shape[0] % t:
                keep = frames.shape[0] - frames.shape[0] % t
                frames, ts = frames[:keep], ts[:keep]
            rest = (-frames.shape[0]) % t
            if rest:
                frames = torch.cat([frames, frames[-1:].expand(rest, *frames.shape[1:])])
                ts = ts + [ts[-1]] * rest
            starts.append(group_start_times(ts, self.frames_per_group))
            if return_pixel_values:
                pixels.append(self.pixel_values(frames))
            counts.append(frames.shape[0])
        return (torch.cat(pixels) if return_pixel_values else None), torch.tensor(counts, dtype=torch.long), starts

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` → normalised float32 ``[N, 3, size, size]`` (see ``resample``).

        Values are the float32 rounding of ``(x / 255 − mean) / std`` computed in float64 (a 256-entry table per
        channel when no float resize is involved).
        """
        frames = _as_frames(frames, 0)
        s = self.size
        if self.resample == "pil_bicubic" and frames.shape[1:3] != (s, s):
            from PIL import Image

            arr = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC)) for f in frames.cpu().numpy()])
            frames = torch.from_numpy(np.ascontiguousarray(arr))
        if frames.shape[1:3] == (s, s):
            # uint8 in, no float resize: an exact per-channel lookup table
            table = (torch.arange(256, dtype=torch.float64)[None, :] / 255.0 - torch.tensor(self.image_mean, dtype=torch.float64)[:, None])
            table = (table / torch.tensor(self.image_std, dtype=torch.float64)[:, None]).to(torch.float32)  # [3, 256]
            idx = frames.to(torch.long) + torch.tensor([0, 256, 512])  # [N, s, s, 3]: one flat table of the 3 channels
            return table.reshape(-1)[idx].permute(0, 3, 1, 2).contiguous()
        x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True).to(torch.float64)
        mean = torch.tensor(self.image_mean, dtype=torch.float64)[None, :, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float64)[None, :, None, None]
        return ((x - mean) / std).to(torch.float32)


class VideoXLProProcessor(ProcessorMixin):
    """Builds Video-XL-Pro inputs: chat template, tokenisation, video block expansion, pixel preprocessing.

    Args:
        video_processor: :class:`VideoXLProVideoProcessor`.
        tokenizer: a Qwen2 tokenizer holding ``<|im_start|>``, ``<|im_end|>`` and ``video_token``.
        chat_template: Jinja template (default: ChatML with the released system prompt, :data:`CHAT_TEMPLATE`).
        tokens_per_group: visual placeholders per group (144 for the real model).
        time_format: the time text before each group, see :func:`format_time` (default
            :data:`DEFAULT_TIME_FORMAT`, ``"Time 01:02:03.4:"``, one token count for every time up to 99:59:59.9 —
            day-long video; the released Video-XL-Pro: ``"Time {t:06.1f}s:"``; Video-XL-2: ``"Time {t:.1f}s:"``; ``""``
            for none, as the paper-era model).
        video_token: the visual placeholder token (``<|vision_pad|>`` = 151654 in Qwen2.5).

    Raises: ValueError: ``video_token`` is not a single token of the tokenizer, or a malformed ``time_format``.
    """

    valid_processor_kwargs = None

    def __init__(
        self,
        video_processor=None,
        tokenizer=None,
        chat_template=None,
        tokens_per_group: int = 144,
        time_format: str = DEFAULT_TIME_FORMAT,
        video_token: str = "<|vision_pad|>",
        **kwargs,
    ):
        if chat_template is None:
            chat_template = CHAT_TEMPLATE
        self.tokens_per_group = int(tokens_per_group)
        self.time_format = time_format
        self.video_token = video_token
        super().__init__(video_processor, tokenizer, chat_template=chat_template)
        ids = tokenizer.encode(video_token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"video_token {video_token!r} must be one token of the tokenizer, got ids {ids}")
        self.video_token_id = ids[0]
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if time_format:
            format_time(time_format, 0.0)  # raises on a malformed format
        self._time_cache: dict[float, list[int]] = {}

    @property
    def frames_per_group(self) -> int:
        return self.video_processor.frames_per_group

    def time_ids(self, t: float) -> list[int]:
        """Token ids of ``time_format`` at ``t`` seconds (empty for an empty format).

        A fixed-width format (:data:`FIXED_WIDTH_LIMITS`: the default up to 359,999.9 s, the released one up to
        9,999.9 s) keeps one token count over its range; beyond it the text would widen, so it raises ``ValueError``
        there (as for a negative or non-finite t).
        """
        if not self.time_format:
            return []
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"timestamp must be finite and >= 0 s, got {t}")
        limit = FIXED_WIDTH_LIMITS.get(self.time_format)
        if limit is not None and round(t, 1) > limit:
            raise ValueError(f"timestamp {t} s exceeds {limit} s, the range of the fixed-width time text {self.time_format!r}")
        if t not in self._time_cache:
            if len(self._time_cache) > 100_000:
                self._time_cache.clear()
            self._time_cache[t] = self.tokenizer.encode(format_time(self.time_format, t), add_special_tokens=False)
        return list(self._time_cache[t])

    def video_block(self, group_starts: Sequence[float]) -> tuple[list[int], list[int]]:
        """Ids and token types of one video block: per group its time text (TIME) then P placeholders (VIDEO)."""
        ids, types = [], []
        p = self.tokens_per_group
        for t in group_starts:
            tid = self.time_ids(float(t))
            ids += tid + [self.video_token_id] * p
            types += [TIME] * len(tid) + [VIDEO] * p
        return ids, types

    def tokenize_prompt(self, text: str, group_starts_iter) -> tuple[list[int], list[int]]:
        """Tokenise one rendered prompt piece by piece (as the released code does), expanding ``<video>``."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        chatml = "<|im_start|>" in text
        ids, types = [], []
        role = None
        for piece in _SPLIT.split(text):
            if not piece:
                continue
            if piece == VIDEO_MARKER:
                try:
                    starts = next(group_starts_iter)
                except StopIteration:
                    raise ValueError("the text has more <video> markers than videos were given") from None
                bi, bt = self.video_block(starts)
                ids += bi
                types += bt
                continue
            piece_ids = self.tokenizer.encode(piece, add_special_tokens=False)
            if piece.startswith("<|im_start|>"):
                role = piece[len("<|im_start|>") : -1]
                kind = TEXT
            elif piece == "<|im_end|>":
                kind = ANSWER if role == "assistant" else TEXT
                role = None
            elif role == "user" or (role is None and not chatml):
                kind = QUERY
            elif role == "assistant":
                kind = ANSWER
            else:
                kind = TEXT
            ids += piece_ids
            types += [kind] * len(piece_ids)
        return ids, types

    def __call__(
        self,
        text=None,
        videos=None,
        video_timestamps=None,
        fps: float | None = None,
        video_metadata=None,
        return_labels: bool = False,
        padding_side: str | None = None,
        return_tensors="pt",
        return_pixel_values: bool = True,
        **kwargs,
    ) -> BatchFeature:
        """Tokenise prompts and process their videos.

        Args:
            text: a rendered prompt (``apply_chat_template``) or a list of them; each ``<video>`` takes the next
                video in order.
            videos: one video or a list (uint8 ``[N, H, W, 3]`` tensors/arrays or file paths).
            video_timestamps / fps / video_metadata: the frames' times (see :meth:`VideoXLProVideoProcessor.prepare`).
            return_labels: also return ``labels`` (ANSWER tokens, -100 elsewhere).
            padding_side: ``"left"`` (default, as generation needs) or ``"right"``.
            return_pixel_values: False skips the pixels (``video_num_frames`` and the prompt layout only), for
                videos whose visual tokens are passed as ``video_embeds``.

        Returns:
            ``BatchFeature`` with ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 ``[B, L]``
            (+ ``labels``), and with videos ``pixel_values_videos`` float32 ``[ΣN_v, 3, S, S]`` and
            ``video_num_frames`` int64 ``[V]``.

        Raises:
            ValueError: no text, markers and videos that do not pair up, bad timestamps, an unknown padding side.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if text is None:
            raise ValueError("text is required (render it with apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text must hold at least one prompt")
        side = padding_side or "left"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        out = {}
        starts = []
        if videos is not None:
            pixels, counts, starts = self.video_processor.prepare(
                videos, video_timestamps=video_timestamps, fps=fps, video_metadata=video_metadata,
                return_pixel_values=return_pixel_values,
            )
            if pixels is not None:
                out["pixel_values_videos"] = pixels
            out["video_num_frames"] = counts
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        out.update(self.encode_prompts(texts, starts, return_labels=return_labels, padding_side=side))
        return BatchFeature(out)

    def encode_prompts(
        self, texts, video_group_starts, return_labels: bool = False, padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """Tokenise rendered prompts whose ``<video>`` markers take videos with the given group start times.

        The text side of :meth:`__call__`, for videos already encoded (e.g. ``model.encode_video`` or an encoding
        cache): ``video_group_starts[v]`` are the start times (s) of video v's groups, in marker order.

        Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` (+ ``labels``) int64 ``[B, L]``, padded on
        ``padding_side``. Raises ``ValueError`` when markers and videos do not pair up.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        starts_iter = iter(video_group_starts)
        encoded = [self.tokenize_prompt(t, starts_iter) for t in texts]
        if next(starts_iter, None) is not None:
            raise ValueError("more videos were given than the text has <video> markers")
        length = max(len(ids) for ids, _ in encoded)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cols = {"input_ids": [], "attention_mask": [], "token_type_ids": [], "labels": []}
        for ids, types in encoded:
            n = length - len(ids)
            labels = [i if t == ANSWER else IGNORE_INDEX for i, t in zip(ids, types)]
            rows = {"input_ids": (ids, pad_id), "attention_mask": ([1] * len(ids), 0), "token_type_ids": (types, TEXT), "labels": (labels, IGNORE_INDEX)}
            for key, (vals, fill) in rows.items():
                cols[key].append([fill] * n + vals if padding_side == "left" else vals + [fill] * n)
        keys = ("input_ids", "attention_mask", "token_type_ids") + (("labels",) if return_labels else ())
        return {key: torch.tensor(cols[key], dtype=torch.long) for key in keys}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``ProcessorMixin.from_pretrained``; a legacy vxlp folder (tokenizer files only, see
        :mod:`vxlp_model.legacy`) gets the processor its config describes."""
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "processor_config.json")):
            from .legacy import legacy_processor

            proc = legacy_processor(cls, path)
            if proc is not None:
                return proc
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        """transformers resolves ``VideoProcessorMixin`` through torchvision-only mappings; check it here."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"video_processor must be a VideoXLProVideoProcessor, got {type(argument).__name__}")
            return type(argument)
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the tokenizer (``AutoTokenizer``) and the video processor directly (transformers'
        ``AutoVideoProcessor`` requires torchvision, which vxlp does not need)."""
        from transformers import AutoTokenizer

        kwargs.pop("subfolder", None)
        vp = (processor_dict or {}).get("video_processor")
        if isinstance(vp, dict):
            video_processor = VideoXLProVideoProcessor.from_dict({k: v for k, v in vp.items() if k != "video_processor_type"})
        else:
            video_processor = VideoXLProVideoProcessor.from_pretrained(pretrained_model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path)
        return [video_processor, tokenizer]

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values_videos", "video_num_frames"]


def _is_frames(x) -> bool:
    return (isinstance(x, torch.Tensor) or isinstance(x, np.ndarray)) and x.ndim == 4


def _as_frames(video, i: int) -> torch.Tensor:
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8 or video.shape[0] == 0:
        desc = f"{video.dtype} {tuple(video.shape)}" if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video {i} must be uint8 frames [N >= 1, H, W, 3] or a file path, got {desc}")
    return video


def _per_video(values, n: int, name: str) -> list:
    if values is None:
        return [None] * n
    if n == 1 and not (isinstance(values, (list, tuple)) and len(values) == 1 and not isinstance(values[0], (int, float))):
        if isinstance(values, (list, tuple)) and len(values) == 1 and isinstance(values[0], dict):
            return list(values)
        return [values]
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} must hold one entry per video ({n}), got {len(values)}")
    return values


def build_tiny_tokenizer(words=()) -> Qwen2Tokenizer:
    """A byte-level BPE Qwen2 tokenizer with whole-word merges for ``words`` (tests and the demo; no download).

    Every byte is a token, so any text encodes; digits stay single tokens (Qwen2's pre-tokenizer), which keeps the
    time-text token count fixed. Special tokens: ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos),
    ``<|vision_pad|>``. The vocabulary has 256 bytes + merges + 4 specials. Padding side: left (generation).
    """
    b2u = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(b2u[b] for b in range(256))}
    merges = []
    base = ["system", "user", "assistant", "You", "are", "a", "helpful", "Time", "Best", "option"]
    for word in dict.fromkeys(list(base) + list(words)):
        for form in (word, " " + word):
            sym = "".join(b2u[b] for b in form.encode("utf-8"))
            cur = sym[0]
            for ch in sym[1:]:
                nxt = cur + ch
                if nxt not in vocab:
                    merges.append((cur, ch))
                    vocab[nxt] = len(vocab)
                cur = nxt
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return tok
