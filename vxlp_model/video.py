"""Video decoding and temporal sampling with PyAV (SPEC §1).

SPEC §1: video file -> decode + sample -> ``frames`` uint8 ``[N, H, W, 3]`` (RGB)
and ``timestamps`` float64 ``[N]`` in seconds.

Public API
----------
* :class:`VideoDecodeError` -- raised for an empty, truncated, corrupt or
  non-video file (a ``ValueError``; the message names the file path and the
  underlying PyAV/FFmpeg exception is chained as ``__cause__``).
* :class:`VideoInfo` / :func:`probe_video` -- stream metadata without decoding.
* :func:`read_video` -- decode (optionally resample to ``fps`` and/or keep
  ``max_frames`` uniformly) into one ``[N, H, W, 3]`` tensor.
* :func:`iter_video` -- the same selection as a lazy iterator, for long videos.

Selection rule (shared by :func:`read_video` and :func:`iter_video`)
------------------------------------------------------------------
1. ``fps=None`` keeps every frame. ``fps=f`` keeps, for each target time
   ``k / f`` (k = 0, 1, ...), the first decoded frame whose timestamp is
   ``>= k / f`` (1e-9 s tolerance for float rounding); a frame is never kept
   twice, so the output may have fewer than ``duration * f`` frames when
   ``f`` exceeds the source rate.
2. ``max_frames=M``: if more than ``M`` candidates remain after step 1, keep
   the candidates at indices ``round(linspace(0, n - 1, M))`` (numpy rounding,
   includes the first and last candidate). The candidate count ``n`` comes
   from a demux-only pass over packet timestamps (no decoding), then frames are
   decoded in one forward pass (never seeking) and only the selected ones are
   converted to RGB.

Timestamps are ``(frame.pts - stream.start_time) * stream.time_base`` in
seconds, so the first frame of a normal file is at 0.0.

Robustness
----------
Every PyAV/FFmpeg error while opening, demuxing or decoding becomes a
:class:`VideoDecodeError`; results are never partial. A file cut short
(truncated download) raises: without its ``moov`` index an mp4 cannot be
opened, and with the index at the front FFmpeg flags the partial last packet
as corrupt (``AV_PKT_FLAG_CORRUPT``), which is reported -- the message then
says how many frames decoded before the error. (Packet flags are checked
because frame-threaded decoding, ``thread_type="AUTO"``, does not raise on a
partial packet.) A text file is not video even though FFmpeg's ``tty``
demuxer offers it as an ANSI-art stream; such streams are ignored.
Not detected (frames are returned as decoded): damage that FFmpeg silently
conceals (garbled bytes inside a frame that still parses), and an mp4 cut
exactly at a packet boundary with its index at the front (the frames before
the cut are returned; :func:`probe_video` still reports the indexed count).
Loops are bounded (packets and frames at most ``2 * file_size + 100000``) and
every container read has a timeout, so garbage input cannot hang the caller.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "probe_video",
    "read_video",
    "iter_video",
]

PathLike = Union[str, "os.PathLike[str]"]

# Seconds allowed for opening the container and for each packet read.
_OPEN_TIMEOUT_S = 60.0
_READ_TIMEOUT_S = 60.0
# Float tolerance (seconds) when comparing a frame timestamp to a target time.
_EPS = 1e-9
# FFmpeg decodes any text file as ANSI "video" (tty demuxer); such text-art
# codecs are not video.
_TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


class VideoDecodeError(ValueError):
    """A file could not be decoded as video (empty, truncated, corrupt, no video stream).

    The message names the file path; the underlying exception, if any, is
    chained as ``__cause__``.
    """


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of the first (non cover-art) video stream of a file.

    Attributes:
        path: the file path as given (``str``).
        fps: average frame rate of the stream in frames/s (0.0 if unknown).
        num_frames: number of frames in the stream: container metadata when
            present, else counted by a demux-only pass (packets, no decoding).
        duration: stream duration in seconds (stream metadata, else container
            duration, else ``num_frames / fps``; 0.0 if unknown).
        width: frame width in pixels.
        height: frame height in pixels.
    """

    path: str
    fps: float
    num_frames: int
    duration: float
    width: int
    height: int


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _validate_args(fps: object, max_frames: object) -> Tuple[Optional[float], Optional[int]]:
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
            raise ValueError(f"fps must be None or a finite number > 0, got {fps!r}")
        fps_f = float(fps)
        if not math.isfinite(fps_f):
            raise ValueError(f"fps must be finite, got {fps!r}")
        if fps_f <= 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        fps = fps_f
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral):
            raise ValueError(f"max_frames must be None or an int >= 1, got {max_frames!r}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
        max_frames = int(max_frames)
    return fps, max_frames


def _check_path(path: PathLike) -> Tuple[str, int]:
    """Return ``(path_str, file_size)``; raise before any FFmpeg call."""
    try:
        p = os.fspath(path)
    except TypeError as e:
        raise TypeError(f"path must be str or os.PathLike, got {type(path).__name__}") from e
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not os.path.exists(p):
        raise FileNotFoundError(f"video file not found: {p!r}")
    if os.path.isdir(p):
        raise VideoDecodeError(f"{p!r} is a directory, not a video file")
    try:
        size = os.path.getsize(p)
    except OSError as e:
        raise VideoDecodeError(f"cannot stat video file {p!r}: {e}") from e
    if size == 0:
        raise VideoDecodeError(f"video file {p!r} is empty (0 bytes)")
    return p, size


def _loop_bound(file_size: int) -> int:
    # Every real packet/frame costs at least one byte of input; this bound only
    # trips on a demuxer/decoder that spins on garbage.
    return 2 * file_size + 100_000


def _open(path: str):
    try:
        return av.open(
            path,
            mode="r",
            metadata_errors="ignore",
            timeout=(_OPEN_TIMEOUT_S, _READ_TIMEOUT_S),
        )
    except Exception as e:  # av.FFmpegError, OSError, UnicodeError, ...
        raise VideoDecodeError(f"cannot open {path!r} as a video container: {e}") from e


def _codec_name(stream) -> Optional[str]:
    """Decoder name of a stream, or None when FFmpeg has no decoder for it."""
    try:
        cc = stream.codec_context
        return None if cc is None else cc.name
    except Exception:
        return None


def _video_stream(container, path: str):
    try:
        streams = list(container.streams.video)
    except Exception as e:
        raise VideoDecodeError(f"cannot list streams of {path!r}: {e}") from e
    attached = int(av.stream.Disposition.attached_pic)
    real = [
        s
        for s in streams
        if not (int(s.disposition) & attached)
        and _codec_name(s) is not None
        and _codec_name(s) not in _TEXT_ART_CODECS
    ]
    if not real:
        what = ""
        if streams:
            names = [_codec_name(s) for s in streams]
            what = f" (only undecodable, text-art or cover-art streams: {names})"
        raise VideoDecodeError(f"{path!r} has no video stream{what}")
    stream = real[0]
    stream.thread_type = "AUTO"
    return stream


def _stream_fps(stream) -> float:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        try:
            rate = getattr(stream, attr)
        except Exception:
            rate = None
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _is_data_packet(packet) -> bool:
    return packet.size > 0 and not packet.is_discard


def _demux_pts(container, stream, path: str, bound: int) -> List[Optional[int]]:
    """Demux-only pass: pts of every data packet of ``stream`` (decode order)."""
    out: List[Optional[int]] = []
    seen = 0
    try:
        for packet in container.demux(stream):
            seen += 1
            if seen > bound:
                raise VideoDecodeError(
                    f"demuxing {path!r} did not terminate after {bound} packets"
                )
            if packet.is_corrupt:
                raise VideoDecodeError(
                    f"{path!r}: truncated or corrupt packet after {len(out)} packets "
                    "(demux pass)"
                )
            if _is_data_packet(packet):
                out.append(packet.pts)
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(
            f"error while demuxing {path!r} after {len(out)} packets: {e}"
        ) from e
    return out


def _to_seconds(pts: int, start: int, time_base) -> float:
    return float((pts - start) * time_base)


def _candidate_times(
    pts: Sequence[Optional[int]], start: Optional[int], time_base, src_fps: float
) -> List[float]:
    """Presentation times (seconds, ascending) of the frames, from packet pts."""
    if pts and all(p is not None for p in pts) and time_base is not None:
        s = sorted(pts)  # decode order -> presentation order
        s0 = s[0] if start is None else start
        return [_to_seconds(p, s0, time_base) for p in s]
    rate = src_fps if src_fps > 0 else 1.0
    return [i / rate for i in range(len(pts))]


def _fps_filter(times: Sequence[float], fps: float) -> List[float]:
    """Apply the fps rule (first frame with t >= k/fps) to ascending ``times``."""
    kept: List[float] = []
    k = 0
    for t in times:
        if t >= k / fps - _EPS:
            kept.append(t)
            k = max(k + 1, math.floor((t + _EPS) * fps) + 1)
    return kept


def _uniform_indices(n: int, m: int) -> np.ndarray:
    return np.round(np.linspace(0, n - 1, m)).astype(np.int64)


# --------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------


def probe_video(path: PathLike) -> VideoInfo:
    """Read stream metadata of a video file without decoding frames.

    Args:
        path: file path (``str`` or ``os.PathLike``).

    Returns:
        :class:`VideoInfo` with ``fps`` in frames/s, ``num_frames`` (metadata,
        else a demux-only packet count), ``duration`` in seconds and the frame
        ``width`` / ``height`` in pixels.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: directory, empty file, or a file that cannot be
            opened / has no video stream / fails to demux.
    """
    p, size = _check_path(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        fps = _stream_fps(stream)
        num_frames = int(stream.frames or 0)
        if num_frames <= 0:
            num_frames = len(_demux_pts(container, stream, p, _loop_bound(size)))
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        elif fps > 0:
            duration = num_frames / fps
        cc = stream.codec_context
        width = int(cc.width or stream.width or 0)
        height = int(cc.height or stream.height or 0)
    return VideoInfo(
        path=p, fps=fps, num_frames=num_frames, duration=duration, width=width, height=height
    )


# --------------------------------------------------------------------------
# decoding core (one code path for read_video and iter_video)
# --------------------------------------------------------------------------


class _Plan:
    """What to keep: ``mode`` is 'all', 'fps' (lazy k/fps targets) or 'targets'."""

    def __init__(self, mode: str, targets: Optional[List[float]] = None,
                 total: Optional[int] = None, cap: Optional[int] = None):
        self.mode = mode
        self.targets = targets or []
        self.total = total  # expected number of output frames (progress bar)
        self.cap = cap  # hard upper bound on output frames


def _make_plan(
    p: str, size: int, fps: Optional[float], max_frames: Optional[int]
) -> Tuple[_Plan, Optional[int]]:
    """Return the selection plan and the pts origin found by the demux pass."""
    if max_frames is None:
        return _Plan("fps" if fps is not None else "all"), None
    with _open(p) as container:
        stream = _video_stream(container, p)
        src_fps = _stream_fps(stream)
        pts = _demux_pts(container, stream, p, _loop_bound(size))
        if not pts:
            raise VideoDecodeError(f"{p!r} has no video packets")
        start = stream.start_time
        if start is None and all(x is not None for x in pts):
            start = min(pts)  # type: ignore[type-var]
        times = _candidate_times(pts, start, stream.time_base, src_fps)
    cands = _fps_filter(times, fps) if fps is not None else times
    n = len(cands)
    if n <= max_frames:
        return _Plan("fps" if fps is not None else "all", total=n, cap=max_frames), start
    idx = _uniform_indices(n, max_frames)
    targets = [cands[i] for i in idx]
    return _Plan("targets", targets=targets, total=max_frames, cap=max_frames), start


def _decode_selected(
    p: str, size: int, fps: Optional[float], max_frames: Optional[int], progress: bool
) -> Iterator[Tuple[np.ndarray, float, float]]:
    """Yield ``(rgb uint8 [H, W, 3], timestamp s, source fps)`` for selected frames."""
    plan, start = _make_plan(p, size, fps, max_frames)
    bound = _loop_bound(size)
    bar = None
    n_decoded = 0
    n_out = 0
    with _open(p) as container:
        stream = _video_stream(container, p)
        src_fps = _stream_fps(stream)
        time_base = stream.time_base
        if start is None:
            start = stream.start_time
        if progress:
            from tqdm.auto import tqdm

            total = plan.total
            if total is None and plan.mode == "all" and stream.frames:
                total = int(stream.frames)
            bar = tqdm(total=total, unit="frame", desc=os.path.basename(p))
        k = 0  # next fps target index ('fps' mode)
        j = 0  # next target index ('targets' mode)
        size0: Optional[Tuple[int, int]] = None
        packets = container.demux(stream)
        n_packets = 0
        try:
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except Exception as e:
                    raise VideoDecodeError(
                        f"error while demuxing {p!r} after {n_decoded} decoded frames: {e}"
                    ) from e
                n_packets += 1
                if n_packets > bound:
                    raise VideoDecodeError(
                        f"demuxing {p!r} did not terminate after {bound} packets"
                    )
                if packet.is_corrupt:
                    # FFmpeg flags short reads (file cut mid-packet) and damaged
                    # packets; frame-threaded decoding would hide the error.
                    raise VideoDecodeError(
                        f"{p!r}: truncated or corrupt packet (pts {packet.pts}) after "
                        f"{n_decoded} decoded frames"
                    )
                # Discarded (edit-list pre-roll) packets are still decoded: later
                # frames may reference them; FFmpeg drops their output itself.
                try:
                    frames = packet.decode()
                except Exception as e:
                    raise VideoDecodeError(
                        f"error while decoding {p!r} after {n_decoded} decoded frames: {e}"
                    ) from e
                for frame in frames:
                    index = n_decoded
                    n_decoded += 1
                    if n_decoded > bound:
                        raise VideoDecodeError(
                            f"decoding {p!r} did not terminate after {bound} frames"
                        )
                    if frame.pts is not None and time_base is not None:
                        if start is None:
                            start = frame.pts
                        t = _to_seconds(frame.pts, start, time_base)
                    else:
                        t = index / src_fps if src_fps > 0 else float(index)
                    if plan.mode == "fps":
                        if t < k / fps - _EPS:  # type: ignore[operator]
                            continue
                        k = max(k + 1, math.floor((t + _EPS) * fps) + 1)  # type: ignore[operator]
                    elif plan.mode == "targets":
                        if j >= len(plan.targets) or t < plan.targets[j] - _EPS:
                            continue
                        while j < len(plan.targets) and plan.targets[j] <= t + _EPS:
                            j += 1
                    try:
                        if size0 is None:
                            size0 = (frame.width, frame.height)
                        if (frame.width, frame.height) == size0:
                            rgb = frame.to_ndarray(format="rgb24")
                        else:  # resolution change mid-stream: keep one output size
                            rgb = frame.to_ndarray(format="rgb24", width=size0[0], height=size0[1])
                    except Exception as e:
                        raise VideoDecodeError(
                            f"cannot convert frame {index} of {p!r} to RGB: {e}"
                        ) from e
                    n_out += 1
                    if bar is not None:
                        bar.update(1)
                    yield rgb, t, src_fps
                    if plan.cap is not None and n_out >= plan.cap:
                        return
                if plan.mode == "targets" and j >= len(plan.targets):
                    return  # every selected frame emitted; skip the rest of the file
        finally:
            if bar is not None:
                bar.close()
            packets.close()
    if n_decoded == 0:
        raise VideoDecodeError(f"{p!r} contains no decodable video frames")
    if n_out == 0:
        raise VideoDecodeError(
            f"none of the {n_decoded} frames of {p!r} matched the selection "
            f"(fps={fps}, max_frames={max_frames}); timestamps may be negative or broken"
        )


# --------------------------------------------------------------------------
# public readers
# --------------------------------------------------------------------------


def read_video(
    path: PathLike,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    *,
    progress: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Decode a video file into RGB frames with their presentation times.

    Args:
        path: file path (``str`` or ``os.PathLike``).
        fps: ``None`` keeps every frame; a finite number > 0 (frames/s)
            resamples in time: for each target ``k / fps`` s (k = 0, 1, ...)
            the first frame with timestamp ``>= k / fps`` is kept, without
            duplicates.
        max_frames: ``None`` or an int >= 1; if more than ``max_frames``
            frames remain after the fps step, keep the ones at indices
            ``round(linspace(0, n - 1, max_frames))`` (first and last included).
        progress: show a tqdm progress bar over output frames.

    Returns:
        ``(frames, timestamps, source_fps)``:
        ``frames`` uint8 ``[N, H, W, 3]`` (N frames, height, width, RGB),
        ``timestamps`` float64 ``[N]`` in seconds (``pts * time_base``
        relative to the stream start, ascending for normal files),
        ``source_fps`` float, the stream's average frame rate in frames/s
        (0.0 if unknown). If the resolution changes mid-stream, later frames
        are rescaled to the first kept frame's size.

    Raises:
        ValueError: invalid ``fps`` or ``max_frames`` (message names the argument).
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: directory, empty (0-byte) file, not a video / no
            video stream, zero decodable frames, or any demux/decode error
            (e.g. a truncated file); the message names the path and how many
            frames decoded before the error. No partial result is returned.
    """
    fps_v, max_v = _validate_args(fps, max_frames)
    p, size = _check_path(path)
    arrays: List[np.ndarray] = []
    times: List[float] = []
    src_fps = 0.0
    for rgb, t, src_fps in _decode_selected(p, size, fps_v, max_v, progress):
        arrays.append(rgb)
        times.append(t)
    frames = torch.from_numpy(np.stack(arrays))
    timestamps = torch.tensor(times, dtype=torch.float64)
    return frames, timestamps, float(src_fps)


def _iter_chunks(
    gen: Iterator[Tuple[np.ndarray, float, float]], chunk_size: int
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    arrays: List[np.ndarray] = []
    times: List[float] = []
    for rgb, t, _ in gen:
        arrays.append(rgb)
        times.append(t)
        if len(arrays) == chunk_size:
            yield torch.from_numpy(np.stack(arrays)), torch.tensor(times, dtype=torch.float64)
            arrays, times = [], []
    if arrays:
        yield torch.from_numpy(np.stack(arrays)), torch.tensor(times, dtype=torch.float64)


def _iter_single(
    gen: Iterator[Tuple[np.ndarray, float, float]]
) -> Iterator[Tuple[torch.Tensor, float]]:
    for rgb, t, _ in gen:
        yield torch.from_numpy(rgb), t


def iter_video(
    path: PathLike,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
) -> Iterator[Tuple[torch.Tensor, Union[torch.Tensor, float]]]:
    """Lazily decode a video with the same selection rule as :func:`read_video`.

    Arguments are validated and the path is checked at call time; the
    container is opened on the first ``next()``. Decoding is one forward pass
    (plus a demux-only pass when ``max_frames`` is given).

    Args:
        path: file path (``str`` or ``os.PathLike``).
        fps: ``None`` or a finite number > 0 (frames/s); see :func:`read_video`.
        max_frames: ``None`` or an int >= 1; see :func:`read_video`.
        chunk_size: ``None`` or an int >= 1.

    Yields:
        With ``chunk_size=None``: ``(frame, timestamp)`` with ``frame`` uint8
        ``[H, W, 3]`` (RGB) and ``timestamp`` a float in seconds.
        Otherwise: ``(frames, timestamps)`` chunks with ``frames`` uint8
        ``[n, H, W, 3]`` and ``timestamps`` float64 ``[n]`` in seconds,
        ``1 <= n <= chunk_size`` (only the last chunk may be shorter).

    Raises:
        ValueError: invalid ``fps``, ``max_frames`` or ``chunk_size`` (at call time).
        FileNotFoundError: ``path`` does not exist (at call time).
        VideoDecodeError: directory or empty file (at call time); a file that
            is not a decodable video, or a demux/decode error (during
            iteration; frames already yielded stay yielded).
    """
    fps_v, max_v = _validate_args(fps, max_frames)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
            raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    p, size = _check_path(path)
    gen = _decode_selected(p, size, fps_v, max_v, False)
    if chunk_size is None:
        return _iter_single(gen)
    return _iter_chunks(gen, int(chunk_size))
