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
  ``max_frames`` uniformly) into one ``[N, H, W, 3]`` tensor; ``workers=N``
  decodes segments of the file in parallel.
* :func:`iter_video` -- the same selection as an iterator, for long videos;
  with ``prefetch=K`` and/or ``workers=N`` it decodes ahead in the background
  (:class:`BackgroundVideoIterator`) with bounded memory.

Every path (sequential, segment-parallel, background) returns exactly the same
frames and timestamps for the same ``fps`` / ``max_frames``.

Selection rule (shared by every reader)
---------------------------------------
1. ``fps=None`` keeps every frame. ``fps=f`` keeps, for each target time
   ``k / f`` (k = 0, 1, ...), the first frame whose timestamp is ``>= k / f``
   (1e-9 s tolerance for float rounding); a frame is never kept twice, so the
   output may have fewer than ``duration * f`` frames when ``f`` exceeds the
   source rate.
2. ``max_frames=M``: if more than ``M`` candidates remain after step 1, keep
   the candidates at indices ``round(linspace(0, n - 1, M))`` (numpy rounding,
   includes the first and last candidate).

Timestamps are ``(pts - stream.start_time) * stream.time_base`` in seconds, so
the first frame of a normal file is at 0.0.

How frames are decoded
----------------------
``fps=None`` without ``max_frames`` decodes every frame in one forward pass.
With ``fps`` or ``max_frames``, a demux-only pass (packets, no decoding; about
2 % of the cost of decoding a 720p H.264 file) first reads every packet's
timestamp and keyframe flag, and the selection is made on those timestamps.
The decode pass then

* converts only the selected frames to RGB;
* decodes every other frame with ``skip_frame="NONREF"``: FFmpeg skips it when
  no later frame references it (B-frames, typically), and decodes it when it
  is a reference -- the selected frames are therefore bit-identical to a full
  decode;
* does not decode at all the runs of packets that no selected frame depends
  on (from the packet after a selected frame up to the keyframe the next
  selected frame is decoded from), like a seek: the decoder is drained and
  flushed, and restarts at that keyframe. A selected frame is decoded from the
  last keyframe before it (in decode order) whose timestamp is not after its
  own, so open-GOP leading pictures keep their references.

Each decoded frame is checked against the packet table (its timestamp must be
a packet's, selected frames must arrive in order); if anything disagrees
(missing or duplicate timestamps, a decoder that drops a selected frame, a
demuxer that returns different packets the second time), the call falls back
to decoding every frame and selecting on decoded timestamps, which is the
definition above -- so the shortcut can cost time, never change a result.

Parallel decoding (``workers=N``)
---------------------------------
The file is split at keyframes into segments (a keyframe qualifies when no
selected frame after it needs an earlier one, and every selected frame before
it is presented earlier); N threads each open the file, seek to their
segment's first keyframe (checked against the packet table by byte position /
timestamps, with a fallback to reading from the start), decode it single-
threaded with the same skipping and write the selected frames straight into
the preallocated output (``read_video``) or into a bounded per-segment queue
(``iter_video``). PyAV releases the GIL while demuxing, decoding and
converting, so threads scale like processes without copying frames between
processes (``benchmarks/bench_decode.py`` measures both). Files without
packet timestamps, or that cannot be split, are decoded sequentially (same
result).

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
conceals (garbled bytes inside a frame that still parses), damage confined to
frames that a subsampled read (``fps`` / ``max_frames``) does not need to
decode, and an mp4 cut exactly at a packet boundary with its index at the
front (the frames before the cut are returned; :func:`probe_video` still
reports the indexed count).
Loops are bounded (packets and frames at most ``2 * file_size + 100000``),
every container read has a timeout, and every wait on a background thread
polls with a timeout and checks that the thread is alive, so garbage input
cannot hang the caller.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "BackgroundVideoIterator",
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
# A run of fewer unneeded packets than this between two decoded ranges is
# decoded (NONREF-skipped) rather than jumped over: a jump drains and flushes
# the decoder, which idles frame threads.
_MIN_GAP = 8
# Poll interval (s) of every blocking queue operation and thread join.
_POLL_S = 0.05
# How long close() waits for background threads to notice the stop flag.
_JOIN_S = 10.0
# Default stall limit (s) of a background iterator: next() raises if no item
# arrives for this long while the decoder thread is alive.
_DEFAULT_TIMEOUT_S = 300.0
# Frames per batch handed from a segment thread to the iterator when frames are
# yielded one at a time (chunk_size=None).
_SINGLE_BATCH = 8


class VideoDecodeError(ValueError):
    """A file could not be decoded as video (empty, truncated, corrupt, no video stream).

    The message names the file path; the underlying exception, if any, is
    chained as ``__cause__``.
    """


class _PlanMismatch(Exception):
    """Decoding disagreed with the packet table: redo the read the plain way."""


class _Cancelled(Exception):
    """A stop flag was set (iterator closed); unwind quietly."""


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


def _validate_int(name: str, value: object, minimum: int, allow_none: bool) -> Optional[int]:
    if value is None and allow_none:
        return None
    what = f"None or an int >= {minimum}" if allow_none else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _validate_timeout(timeout: object) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise ValueError(f"timeout must be None or a number of seconds > 0, got {timeout!r}")
    t = float(timeout)
    if not (t > 0) or math.isnan(t):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return t


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _decoder_threads(workers: int, threads: Optional[int]) -> int:
    """FFmpeg threads per decoder: 0 = FFmpeg's automatic choice."""
    if threads is not None:
        return threads
    return 0 if workers == 1 else max(1, _cpu_count() // workers)


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


def _check_stop(stop: Optional[threading.Event]) -> None:
    if stop is not None and stop.is_set():
        raise _Cancelled()


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


def _video_stream(container, path: str, threads: int = 0):
    """The first real video stream, set up for decoding with ``threads`` FFmpeg threads (0 = auto)."""
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
    if threads:
        stream.codec_context.thread_count = threads
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


def _fps_keep(times: Sequence[float], fps: float) -> List[int]:
    """Positions kept by the fps rule (first frame with t >= k/fps) in ascending ``times``."""
    kept: List[int] = []
    k = 0
    for i, t in enumerate(times):
        if t >= k / fps - _EPS:
            kept.append(i)
            k = max(k + 1, math.floor((t + _EPS) * fps) + 1)
    return kept


def _fps_filter(times: Sequence[float], fps: float) -> List[float]:
    """Apply the fps rule (first frame with t >= k/fps) to ascending ``times``."""
    return [times[i] for i in _fps_keep(times, fps)]


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
# packet table (demux-only pass) and selection
# --------------------------------------------------------------------------


@dataclass
class _Table:
    """Every packet of the video stream in decode order (demux-only pass).

    ``complete`` is False when the pass stopped at a corrupt packet or a demux
    error (non-strict scan): the table then holds the packets before it, and
    the decode pass raises when it reaches that point.
    """

    path: str
    pts: List[Optional[int]]
    dts: List[Optional[int]]
    pos: List[int]
    key: List[bool]
    data: List[bool]  # size > 0 and not an edit-list discard packet
    complete: bool
    start: Optional[int]  # stream.start_time (pts units)
    time_base: object
    src_fps: float
    width: int
    height: int


def _scan(p: str, size: int, strict: bool, stop: Optional[threading.Event] = None) -> _Table:
    """Demux-only pass over the video stream (no decoding).

    ``strict``: raise :class:`VideoDecodeError` at a corrupt packet / demux
    error ("(demux pass)" in the message); otherwise stop there and return an
    incomplete table. Errors opening the file always raise.
    """
    bound = _loop_bound(size)
    pts: List[Optional[int]] = []
    dts: List[Optional[int]] = []
    pos: List[int] = []
    key: List[bool] = []
    data: List[bool] = []
    complete = True
    with _open(p) as container:
        stream = _video_stream(container, p)
        n_data = 0
        try:
            for packet in container.demux(stream):
                if len(pts) >= bound:
                    raise VideoDecodeError(f"demuxing {p!r} did not terminate after {bound} packets")
                if len(pts) % 512 == 0:
                    _check_stop(stop)
                if packet.is_corrupt:
                    if strict:
                        raise VideoDecodeError(
                            f"{p!r}: truncated or corrupt packet after {n_data} packets (demux pass)"
                        )
                    complete = False
                    break
                is_data = _is_data_packet(packet)
                n_data += is_data
                pts.append(packet.pts)
                dts.append(packet.dts)
                pos.append(packet.pos if packet.pos is not None else -1)
                key.append(bool(packet.is_keyframe))
                data.append(is_data)
        except (VideoDecodeError, _Cancelled):
            raise
        except Exception as e:
            if strict:
                raise VideoDecodeError(
                    f"error while demuxing {p!r} after {n_data} packets: {e}"
                ) from e
            complete = False
        cc = stream.codec_context
        return _Table(
            path=p,
            pts=pts,
            dts=dts,
            pos=pos,
            key=key,
            data=data,
            complete=complete,
            start=stream.start_time,
            time_base=stream.time_base,
            src_fps=_stream_fps(stream),
            width=int(cc.width or stream.width or 0),
            height=int(cc.height or stream.height or 0),
        )


class _Plan:
    """Legacy selection plan: ``mode`` is 'all', 'fps' (lazy k/fps targets) or 'targets'."""

    def __init__(self, mode: str, targets: Optional[List[float]] = None,
                 total: Optional[int] = None, cap: Optional[int] = None):
        self.mode = mode
        self.targets = targets or []
        self.total = total  # expected number of output frames (progress bar)
        self.cap = cap  # hard upper bound on output frames


def _legacy_plan(
    table: _Table, fps: Optional[float], max_frames: Optional[int]
) -> Tuple[_Plan, Optional[int]]:
    """Selection plan for the decode-everything path, and the pts origin (None: first frame)."""
    if max_frames is None:
        return _Plan("fps" if fps is not None else "all"), None
    pts = [x for x, d in zip(table.pts, table.data) if d]
    if not pts:
        raise VideoDecodeError(f"{table.path!r} has no video packets")
    start = table.start
    if start is None and all(x is not None for x in pts):
        start = min(pts)  # type: ignore[type-var]
    times = _candidate_times(pts, start, table.time_base, table.src_fps)
    cands = _fps_filter(times, fps) if fps is not None else times
    n = len(cands)
    if n <= max_frames:
        return _Plan("fps" if fps is not None else "all", total=n, cap=max_frames), start
    idx = _uniform_indices(n, max_frames)
    targets = [cands[i] for i in idx]
    return _Plan("targets", targets=targets, total=max_frames, cap=max_frames), start


class _Selection:
    """The selected frames of a file and what to decode for them.

    Attributes:
        table: the packet table.
        sel: decode indices of the selected packets, in presentation order.
        times: their timestamps in seconds (float, ascending).
        out_index: pts -> output index (position in ``sel``).
        pts_set: pts of every data packet.
        act: per packet: 0 = not decoded, 1 = decoded with skip_frame NONREF
            (not selected), 2 = selected (decoded, converted).
        everything: every data packet is selected (nothing to skip).
        range_start: decode index of the keyframe each selected packet is
            decoded from (same order as ``sel``).
    """

    def __init__(self, table: _Table, sel: List[int], times: List[float], n_data: int):
        self.table = table
        self.sel = sel
        self.times = times
        pts = table.pts
        self.out_index: Dict[int, int] = {pts[d]: j for j, d in enumerate(sel)}  # type: ignore[misc]
        self.pts_set = {x for x, d in zip(pts, table.data) if d}
        self.everything = len(sel) == n_data
        n = len(pts)
        keys = [i for i in range(n) if table.key[i] and pts[i] is not None]
        diff = [0] * (n + 1)
        self.range_start: List[int] = []
        for d in sel:
            k = bisect.bisect_right(keys, d) - 1
            while k >= 0 and pts[keys[k]] > pts[d]:  # type: ignore[operator]
                k -= 1
            s = keys[k] if k >= 0 else 0
            self.range_start.append(s)
            diff[s] += 1
            diff[d + 1] -= 1
        act = bytearray(n)
        c = 0
        for i in range(n):
            c += diff[i]
            if c > 0:
                act[i] = 1
        for d in sel:
            act[d] = 2
        # decode short gaps instead of jumping over them
        last_nz = -1
        for i in range(n):
            if act[i]:
                if last_nz >= 0 and 1 < i - last_nz <= _MIN_GAP:
                    for g in range(last_nz + 1, i):
                        act[g] = 1
                last_nz = i
        self.act = act
        self._by_rs: Optional[Tuple[List[int], List[int]]] = None

    def _by_range_start(self) -> Tuple[List[int], List[int]]:
        """Selected frames ordered by (range start, decode index): (range starts, output indices)."""
        if self._by_rs is None:
            order = sorted(range(len(self.sel)), key=lambda j: (self.range_start[j], self.sel[j]))
            self._by_rs = ([self.range_start[j] for j in order], order)
        return self._by_rs

    def segment(self, lo: int, hi: int) -> Optional[Tuple[int, int, int, int]]:
        """What the worker of packets ``[lo, hi)`` does: ``(first, last, j_lo, j_hi)``.

        It owns the selected frames decoded from a keyframe in ``[lo, hi)``
        (output indices ``[j_lo, j_hi)``), sends packets ``first..last``
        (``last`` may lie past ``hi``: open-GOP leading pictures of the next
        segment's keyframe belong to this one) and ignores the other selected
        frames it decodes. None when the segment owns nothing.
        """
        rs, js = self._by_range_start()
        a, b = bisect.bisect_left(rs, lo), bisect.bisect_left(rs, hi)
        if a == b:
            return None
        owned = js[a:b]
        j_lo, j_hi = min(owned), max(owned) + 1
        if j_hi - j_lo != len(owned):
            raise _PlanMismatch("segment outputs are not contiguous")
        act = self.act
        first = next(i for i in range(lo, hi) if act[i])
        last = max(self.sel[j] for j in owned)
        return first, last, j_lo, j_hi

    def boundaries(self) -> List[int]:
        """Keyframes where the decode order can be cut into independent segments.

        Each selected frame belongs to the segment holding the keyframe it is
        decoded from (:attr:`range_start`). A keyframe ``b`` qualifies when
        the frames decoded from keyframes before ``b`` are all presented before
        those decoded from ``b`` on (each segment owns a contiguous block of
        outputs) and both sides own frames.
        """
        pts = self.table.pts
        rs, js = self._by_range_start()
        m = len(js)
        sel_pts = [pts[self.sel[j]] for j in js]
        prefix_max = [-math.inf] * (m + 1)
        for q in range(m):
            prefix_max[q + 1] = max(prefix_max[q], sel_pts[q])  # type: ignore[type-var]
        suffix_min = [math.inf] * (m + 1)
        for q in range(m - 1, -1, -1):
            suffix_min[q] = min(suffix_min[q + 1], sel_pts[q])  # type: ignore[type-var]
        out = []
        for b in range(1, len(pts)):
            if not self.table.key[b] or pts[b] is None:
                continue
            q = bisect.bisect_left(rs, b)
            if 0 < q < m and prefix_max[q] < suffix_min[q]:
                out.append(b)
        return out

    def segments(
        self, workers: Optional[int] = None, max_selected: Optional[int] = None
    ) -> List[Tuple[int, int]]:
        """Cut the decode order into ``[lo, hi)`` packet ranges at :meth:`boundaries`.

        ``workers``: segments for that many workers taking them in order
        (guided self-scheduling): each about ``1 / (2 * workers)`` of the
        remaining decode work (packets decoded), at least ``1 / (4 * workers)``
        of the total, so segments shrink towards the end and the workers finish
        together; cuts at the boundaries nearest to those shares.
        ``max_selected``: also cut so that a segment has at most that many
        selected frames where the boundaries allow (bounded memory when a
        segment runs ahead of an in-order consumer).
        """
        n = len(self.table.pts)
        cuts = [0] + self.boundaries() + [n]
        act = self.act
        rs = self._by_range_start()[0]
        pieces = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            cost = sum(1 for i in range(lo, hi) if act[i])
            nsel = bisect.bisect_left(rs, hi) - bisect.bisect_left(rs, lo)
            pieces.append((lo, hi, cost, nsel))
        cuts_at = {0, len(pieces)}  # piece indices where a segment starts (or the end)
        if workers is not None:
            cum = [0]
            for p_ in pieces:
                cum.append(cum[-1] + p_[2])
            total = cum[-1]
            pos, last_c = 0.0, 0
            while True:
                pos += max((total - pos) / (2 * workers), total / (4 * workers))
                if pos >= total * (1 - 1e-9):
                    break
                c = min(range(1, len(pieces)), key=lambda q: abs(cum[q] - pos), default=None)
                if c is not None and c > last_c:
                    cuts_at.add(c)
                    last_c = c
        if max_selected is not None:
            starts = sorted(cuts_at)
            for a, b in zip(starts[:-1], starts[1:]):
                acc = 0
                for q in range(a, b):
                    if acc and acc + pieces[q][3] > max_selected:
                        cuts_at.add(q)
                        acc = 0
                    acc += pieces[q][3]
        starts = sorted(cuts_at)
        bounds = [pieces[q][0] for q in starts[:-1]] + [n]
        segs = list(zip(bounds[:-1], bounds[1:]))
        return [sg for sg in segs if self.segment(*sg) is not None]


def _select(table: _Table, fps: Optional[float], max_frames: Optional[int]) -> Optional[_Selection]:
    """Apply the selection rule to packet timestamps; None when they cannot be trusted."""
    pts = table.pts
    data_idx = [i for i, d in enumerate(table.data) if d]
    if not data_idx or table.time_base is None:
        return None
    if any(pts[i] is None for i in data_idx):
        return None
    if len({pts[i] for i in data_idx}) != len(data_idx):
        return None
    start = table.start if table.start is not None else min(pts[i] for i in data_idx)  # type: ignore[type-var]
    order = sorted(data_idx, key=lambda i: pts[i])  # type: ignore[arg-type,return-value]
    times = [_to_seconds(pts[i], start, table.time_base) for i in order]  # type: ignore[arg-type]
    cand = list(range(len(order))) if fps is None else _fps_keep(times, fps)
    if max_frames is not None and len(cand) > max_frames:
        cand = [cand[i] for i in _uniform_indices(len(cand), max_frames)]
    if not cand:
        return None
    return _Selection(table, [order[c] for c in cand], [times[c] for c in cand], len(data_idx))


# --------------------------------------------------------------------------
# decoding: every frame (reference path) and planned segments
# --------------------------------------------------------------------------


def _next_packet(packets, p: str, n_decoded: int):
    """The demuxer's next packet, None at the end; a demux error becomes :class:`VideoDecodeError`."""
    try:
        return next(packets)
    except StopIteration:
        return None
    except Exception as e:
        raise VideoDecodeError(f"error while demuxing {p!r} after {n_decoded} decoded frames: {e}") from e


def _to_rgb(frame, p: str, index: int, size: Optional[Tuple[int, int]]) -> np.ndarray:
    try:
        if size is None or (frame.width, frame.height) == size:
            return frame.to_ndarray(format="rgb24")
        # resolution change mid-stream: keep one output size
        return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
    except Exception as e:
        raise VideoDecodeError(f"cannot convert frame {index} of {p!r} to RGB: {e}") from e


def _decode_all(
    p: str,
    size: int,
    fps: Optional[float],
    max_frames: Optional[int],
    plan: _Plan,
    start: Optional[int],
    progress: bool,
    threads: int,
    stop: Optional[threading.Event],
) -> Iterator[Tuple[np.ndarray, float, float]]:
    """Decode every frame, keep those selected on decoded timestamps (the reference path).

    Yields ``(rgb uint8 [H, W, 3], timestamp s, source fps)``.
    """
    bound = _loop_bound(size)
    bar = None
    n_decoded = 0
    n_out = 0
    with _open(p) as container:
        stream = _video_stream(container, p, threads)
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
                _check_stop(stop)
                packet = _next_packet(packets, p, n_decoded)
                if packet is None:
                    break
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
                    if size0 is None:
                        size0 = (frame.width, frame.height)
                    rgb = _to_rgb(frame, p, index, size0)
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


def _packet_key_maps(table: _Table):
    """Maps identifying a packet read after a seek: byte position -> index over the
    data packets (None unless every one has a distinct position), else
    (pts, dts) -> index (None unless distinct)."""
    by_pos: Optional[Dict[int, int]] = {}
    by_ts: Optional[Dict[Tuple, int]] = {}
    for i, (x, y, ps, d) in enumerate(zip(table.pts, table.dts, table.pos, table.data)):
        if not d:
            continue
        if by_pos is not None:
            if ps < 0 or ps in by_pos:
                by_pos = None
            else:
                by_pos[ps] = i
        if by_ts is not None:
            if (x, y) in by_ts:
                by_ts = None
            else:
                by_ts[(x, y)] = i
    return (by_pos, None) if by_pos is not None else (None, by_ts)


def _identify(packet, by_pos, by_ts) -> Optional[int]:
    if by_pos is not None:
        return by_pos.get(packet.pos if packet.pos is not None else -1)
    if by_ts is not None:
        return by_ts.get((packet.pts, packet.dts))
    return None


def _seek_to(container, stream, table: _Table, first: int, maps) -> Optional[Tuple[int, object]]:
    """Seek so that demuxing continues at or before packet ``first`` (decode index).

    Seeks (backward, keyframes only) to the packet's pts (dts if none) in the
    stream's time base, and further back (1, 4, 16, 64 s) while the demuxer
    lands after it. The packet found is identified in the table by byte
    position (or (pts, dts) when positions are unknown).
    Returns ``(index, (packet, demux iterator))`` for the first packet read,
    or None when seeking cannot be trusted (the caller reads from the start).
    """
    by_pos, by_ts = maps
    if by_pos is None and by_ts is None:
        return None
    target = table.pts[first] if table.pts[first] is not None else table.dts[first]
    if target is None or stream.time_base is None:
        return None
    step = max(1, int(round(1.0 / float(stream.time_base))))  # one second in stream units
    for back in (0, step, 4 * step, 16 * step, 64 * step):
        try:
            container.seek(int(target - back), backward=True, any_frame=False, stream=stream)
            demux = container.demux(stream)
            packet = next(demux)
        except Exception:
            return None
        idx = _identify(packet, by_pos, by_ts)
        if idx is None:
            return None
        if idx <= first:
            return idx, (packet, demux)
        demux.close()
    return None


def _run_segment(
    sel: _Selection,
    lo: int,
    hi: int,
    threads: int,
    stop: Optional[threading.Event],
    *,
    seek: bool,
    out_size: Optional[Tuple[int, int]],
    to_end: bool = False,
) -> Iterator[Tuple[int, np.ndarray, float]]:
    """Decode the selected frames owned by segment ``[lo, hi)`` (see :meth:`_Selection.segment`).

    Yields ``(output index, rgb uint8 [H, W, 3], timestamp s)`` in output order.
    ``seek``: start by seeking to the segment's first decoded keyframe (else
    demux from the start of the file). ``out_size``: ``(width, height)`` of
    the output (None: the first selected frame's size). ``to_end``: keep
    demuxing after the last needed packet (an incomplete table: the decode pass
    must reach the error). Raises :class:`_PlanMismatch` when the decoder's
    output disagrees with the packet table.
    """
    table = sel.table
    p = table.path
    plan = sel.segment(lo, hi)
    if plan is None:
        return
    first, last, j_next, j_end = plan
    j_lo = j_next
    act = sel.act
    n_tab = len(table.pts)
    bound = _loop_bound(os.path.getsize(p)) if os.path.exists(p) else 10**9
    n_decoded = 0
    n_packets = 0
    size0 = out_size
    out_index = sel.out_index
    pts_set = sel.pts_set
    times = sel.times

    def handle(frames):
        nonlocal n_decoded, j_next, size0
        for frame in frames:
            n_decoded += 1
            if n_decoded > bound:
                raise VideoDecodeError(f"decoding {p!r} did not terminate after {bound} frames")
            fp = frame.pts
            if fp is None or fp not in pts_set:
                raise _PlanMismatch(f"decoded frame with pts {fp} not in the packet table")
            j = out_index.get(fp)
            if j is None or not j_lo <= j < j_end:
                continue  # not selected, or another segment's (decoded here only as a reference)
            if j != j_next:
                raise _PlanMismatch(f"selected frame {j} arrived, expected {j_next}")
            j_next += 1
            if size0 is None:
                size0 = (frame.width, frame.height)
            elif j == 0 and (frame.width, frame.height) != size0:
                raise _PlanMismatch("first frame size differs from the stream's")
            yield j, _to_rgb(frame, p, j, size0), times[j]

    def decode(packet):
        try:
            return packet.decode() if packet is not None else cc.decode(None)
        except Exception as e:
            raise VideoDecodeError(
                f"error while decoding {p!r} after {n_decoded} decoded frames"
                f"{'' if lo == 0 else f' (segment from packet {first})'}: {e}"
            ) from e

    container = _open(p)
    try:
        stream = _video_stream(container, p, threads)
        cc = stream.codec_context
        i = 0
        demux = None
        pending = None
        maps = _packet_key_maps(table)
        # after a seek, demuxers may compute other dts (mkv): check positions when known
        by_pos = maps[0] is not None
        if seek and first > 0:
            found = _seek_to(container, stream, table, first, maps)
            if found is not None:
                i, (pending, demux) = found
        if demux is None:
            if seek and first > 0:  # could not seek reliably: read from the start
                container.close()
                container = _open(p)
                stream = _video_stream(container, p, threads)
                cc = stream.codec_context
            demux = container.demux(stream)
        skip_mode = None
        sent = False
        gap = False
        try:
            while True:
                _check_stop(stop)
                if pending is not None:
                    packet, pending = pending, None
                else:
                    packet = _next_packet(demux, p, n_decoded)
                    if packet is None:
                        break
                n_packets += 1
                if n_packets > bound:
                    raise VideoDecodeError(f"demuxing {p!r} did not terminate after {bound} packets")
                if packet.is_corrupt:
                    raise VideoDecodeError(
                        f"{p!r}: truncated or corrupt packet (pts {packet.pts}) after "
                        f"{n_decoded} decoded frames"
                    )
                if i >= n_tab:
                    if packet.size == 0 and packet.pts is None:
                        i += 1
                        continue  # end-of-stream flush packet
                    raise _PlanMismatch("more packets than the demux-only pass found")
                ppos = packet.pos if packet.pos is not None else -1
                if packet.pts != table.pts[i] or (
                    (ppos != table.pos[i]) if by_pos else (packet.dts != table.dts[i])
                ):
                    raise _PlanMismatch(f"packet {i} differs from the demux-only pass")
                idx = i
                i += 1
                if idx > last:
                    if to_end:
                        continue
                    break
                a = act[idx] if idx >= first else 0
                if a == 0:
                    gap = sent
                    continue
                if gap:
                    # jump: emit what the decoder still holds, then restart at a keyframe
                    yield from handle(decode(None))
                    cc.flush_buffers()
                    gap = False
                if a == 2 and not j_lo <= out_index[table.pts[idx]] < j_end:  # type: ignore[index]
                    a = 1  # another segment's frame: needed here only if it is a reference
                mode = "DEFAULT" if a == 2 else "NONREF"
                if mode != skip_mode:
                    cc.skip_frame = mode
                    skip_mode = mode
                sent = True
                yield from handle(decode(packet))
            if not table.complete and to_end:
                raise _PlanMismatch("the demux-only pass stopped early but decoding did not")
            if sent:
                yield from handle(decode(None))
        finally:
            demux.close()
    finally:
        container.close()
    if j_next != j_end:
        raise _PlanMismatch(f"decoded {j_next} of {j_end} selected frames")


# --------------------------------------------------------------------------
# sequential and parallel drivers
# --------------------------------------------------------------------------


def _frames_sequential(
    p: str,
    size: int,
    fps: Optional[float],
    max_frames: Optional[int],
    progress: bool,
    threads: int,
    stop: Optional[threading.Event] = None,
    table: Optional[_Table] = None,
) -> Iterator[Tuple[np.ndarray, float, float]]:
    """Yield ``(rgb uint8 [H, W, 3], timestamp s, source fps)`` for the selected frames, in order."""
    if fps is None and max_frames is None and table is None:
        yield from _decode_all(p, size, None, None, _Plan("all"), None, progress, threads, stop)
        return
    if table is None:
        table = _scan(p, size, strict=max_frames is not None, stop=stop)
    sel = _select(table, fps, max_frames)
    emitted: List[float] = []
    if sel is not None and not sel.everything:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(sel.sel), unit="frame", desc=os.path.basename(p))
        try:
            for _, rgb, t in _run_segment(
                sel, 0, len(table.pts), threads, stop, seek=False, out_size=None,
                to_end=not table.complete,
            ):
                emitted.append(t)
                if bar is not None:
                    bar.update(1)
                yield rgb, t, table.src_fps
            return
        except _PlanMismatch:
            pass  # decode every frame instead (below), skipping what was already yielded
        finally:
            if bar is not None:
                bar.close()
    plan, start = _legacy_plan(table, fps, max_frames)
    yield from _after_emitted(
        _decode_all(p, size, fps, max_frames, plan, start, progress and not emitted, threads, stop), emitted, p
    )


def _after_emitted(frames, emitted: List[float], p: str):
    """The frames of a redone read after the ``emitted`` timestamps, which must come first and identical."""
    for n, (rgb, t, src_fps) in enumerate(frames):
        if n < len(emitted):
            if t != emitted[n]:
                raise VideoDecodeError(
                    f"decoding {p!r} twice gave different frames (timestamp {t} != {emitted[n]})"
                )
            continue
        yield rgb, t, src_fps


def _read_parallel(
    p: str,
    size: int,
    fps: Optional[float],
    max_frames: Optional[int],
    progress: bool,
    workers: int,
    threads: int,
) -> Optional[Tuple[np.ndarray, List[float], float]]:
    """Segment-parallel read into a preallocated array; None when the file cannot be split."""
    table = _scan(p, size, strict=max_frames is not None)
    if not table.complete or not table.width or not table.height:
        return None
    sel = _select(table, fps, max_frames)
    if sel is None:
        return None
    try:
        segs = sel.segments(workers=workers)
    except _PlanMismatch:
        return None
    if len(segs) < 2:
        return None
    out = np.empty((len(sel.sel), table.height, table.width, 3), np.uint8)
    stop = threading.Event()
    lock = threading.Lock()
    todo = list(range(len(segs)))
    errors: List[BaseException] = []
    done = [0]  # frames written (progress bar, updated by this thread)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sel.sel), unit="frame", desc=os.path.basename(p))

    def work():
        try:
            while not stop.is_set():
                with lock:
                    if not todo:
                        return
                    s = todo.pop(0)
                lo, hi = segs[s]
                for j, rgb, _ in _run_segment(
                    sel, lo, hi, threads, stop, seek=True, out_size=(table.width, table.height)
                ):
                    out[j] = rgb
                    with lock:
                        done[0] += 1
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001  (re-raised in the calling thread)
            with lock:
                errors.append(e)
            stop.set()

    pool = [threading.Thread(target=work, name=f"vxlp-decode-{k}", daemon=True) for k in range(workers)]
    try:
        for t in pool:
            t.start()
        for t in pool:
            while t.is_alive():
                t.join(_POLL_S)
                if bar is not None:
                    bar.update(done[0] - bar.n)
        if bar is not None:
            bar.update(done[0] - bar.n)
    finally:
        stop.set()
        for t in pool:
            t.join(_JOIN_S)
        if bar is not None:
            bar.close()
    for e in errors:
        if isinstance(e, VideoDecodeError):
            raise e
    for e in errors:
        if not isinstance(e, _PlanMismatch):
            raise e
    if errors:
        return None  # a mismatch: the caller decodes sequentially
    return out, sel.times, table.src_fps


def _put(q: "queue.Queue", item, stop: threading.Event) -> bool:
    """Put with a timeout loop; False (item dropped) once ``stop`` is set."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: "queue.Queue", thread: threading.Thread, stop: Optional[threading.Event],
         timeout: Optional[float], what: str):
    """Get with a timeout loop that checks ``thread`` is alive and the stall limit."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        _check_stop(stop)
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            pass
        if not thread.is_alive():
            try:
                return q.get_nowait()
            except queue.Empty:
                raise VideoDecodeError(f"{what}: decoder thread exited without a result") from None
        if deadline is not None and time.monotonic() > deadline:
            raise VideoDecodeError(f"{what}: no decoded frames for {timeout:g} s (decoder stalled)")


def _segment_worker(sel, lo, hi, threads, q, stop, out_size, batch):
    try:
        buf = []
        for item in _run_segment(sel, lo, hi, threads, stop, seek=True, out_size=out_size):
            buf.append(item)
            if len(buf) >= batch:
                if not _put(q, ("batch", buf), stop):
                    return
                buf = []
        if buf and not _put(q, ("batch", buf), stop):
            return
        _put(q, ("end", None), stop)
    except _Cancelled:
        pass
    except BaseException as e:  # noqa: BLE001  (handed to the consumer)
        _put(q, ("error", e), stop)


def _frames_parallel(
    p: str,
    size: int,
    fps: Optional[float],
    max_frames: Optional[int],
    workers: int,
    threads: int,
    batch: int,
    queue_batches: int,
    stop: threading.Event,
    timeout: Optional[float],
) -> Iterator[Tuple[np.ndarray, float, float]]:
    """Ordered segment-parallel decoding for the background iterator (bounded memory).

    At most ``workers`` segment threads run; each may hold ``queue_batches``
    batches of ``batch`` frames ahead of the consumer.
    """
    table = _scan(p, size, strict=max_frames is not None, stop=stop)
    sel = _select(table, fps, max_frames) if table.complete and table.width and table.height else None
    try:
        segs = sel.segments(workers=workers, max_selected=batch * queue_batches) if sel is not None else []
    except _PlanMismatch:
        segs = []
    if len(segs) < 2:
        yield from _frames_sequential(
            p, size, fps, max_frames, False, _decoder_threads(1, None), stop, table=table
        )
        return
    # Stops this call's segment threads. The caller's ``stop`` reaches them through
    # here: a consumer waiting in _get() sees ``stop`` and unwinds, a consumer
    # blocked in _put() returns and closes this generator; both run the finally.
    local = threading.Event()
    jobs: Dict[int, Tuple["queue.Queue", threading.Thread]] = {}
    out_size = (table.width, table.height)

    def start(s):
        if s < len(segs) and s not in jobs:
            q: "queue.Queue" = queue.Queue(maxsize=queue_batches)
            th = threading.Thread(
                target=_segment_worker,
                args=(sel, segs[s][0], segs[s][1], threads, q, local, out_size, batch),
                name=f"vxlp-decode-seg{s}",
                daemon=True,
            )
            jobs[s] = (q, th)
            th.start()

    emitted: List[float] = []
    mismatch = False
    try:
        for s in range(len(segs)):
            for w in range(workers):
                start(s + w)
            q, th = jobs[s]
            while True:
                kind, val = _get(q, th, stop, timeout, f"decoding {p!r}")
                if kind == "batch":
                    for j, rgb, t in val:
                        if j != len(emitted):
                            raise _PlanMismatch(f"segment output {j} out of order")
                        emitted.append(t)
                        yield rgb, t, table.src_fps
                elif kind == "end":
                    break
                else:
                    raise val
            del jobs[s]
    except _PlanMismatch:
        mismatch = True
    finally:
        local.set()
        for q, th in list(jobs.values()):
            th.join(_JOIN_S)
    if not mismatch:
        return
    # decode sequentially, skipping the frames already yielded (checked identical)
    yield from _after_emitted(
        _frames_sequential(p, size, fps, max_frames, False, _decoder_threads(1, None), stop, table=table), emitted, p
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
    workers: int = 1,
    threads: Optional[int] = None,
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
        workers: int >= 1. ``1`` decodes in one pass; ``N > 1`` splits the
            file at keyframes and decodes the segments on N threads (same
            result; see the module docstring). Falls back to one pass for
            files that cannot be split (no packet timestamps, a single GOP).
        threads: FFmpeg decoding threads per worker, ``None`` (default: FFmpeg's
            automatic choice with one worker, ``cpu_count // workers`` with
            several) or an int >= 1. Results do not depend on it.

    Returns:
        ``(frames, timestamps, source_fps)``:
        ``frames`` uint8 ``[N, H, W, 3]`` (N frames, height, width, RGB),
        ``timestamps`` float64 ``[N]`` in seconds (``pts * time_base``
        relative to the stream start, ascending for normal files),
        ``source_fps`` float, the stream's average frame rate in frames/s
        (0.0 if unknown). If the resolution changes mid-stream, later frames
        are rescaled to the first kept frame's size.

    Raises:
        ValueError: invalid ``fps``, ``max_frames``, ``workers`` or ``threads``
            (message names the argument).
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: directory, empty (0-byte) file, not a video / no
            video stream, zero decodable frames, or any demux/decode error
            (e.g. a truncated file); the message names the path and how many
            frames decoded before the error. No partial result is returned.
    """
    fps_v, max_v = _validate_args(fps, max_frames)
    n_workers = _validate_int("workers", workers, 1, allow_none=False)
    n_threads = _validate_int("threads", threads, 1, allow_none=True)
    p, size = _check_path(path)
    if n_workers > 1:
        got = _read_parallel(
            p, size, fps_v, max_v, progress, n_workers, _decoder_threads(n_workers, n_threads)
        )
        if got is not None:
            out, times, src_fps = got
            return torch.from_numpy(out), torch.tensor(times, dtype=torch.float64), float(src_fps)
    arrays: List[np.ndarray] = []
    times = []
    src_fps = 0.0
    seq_threads = n_threads if n_threads is not None else 0
    for rgb, t, src_fps in _frames_sequential(p, size, fps_v, max_v, progress, seq_threads):
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
    try:
        for rgb, t, _ in gen:
            arrays.append(rgb)
            times.append(t)
            if len(arrays) == chunk_size:
                yield torch.from_numpy(np.stack(arrays)), torch.tensor(times, dtype=torch.float64)
                arrays, times = [], []
        if arrays:
            yield torch.from_numpy(np.stack(arrays)), torch.tensor(times, dtype=torch.float64)
    finally:
        gen.close()


def _iter_single(
    gen: Iterator[Tuple[np.ndarray, float, float]]
) -> Iterator[Tuple[torch.Tensor, float]]:
    try:
        for rgb, t, _ in gen:
            yield torch.from_numpy(rgb), t
    finally:
        gen.close()


def _produce(make: Callable[[threading.Event], Iterator], q: "queue.Queue", stop: threading.Event) -> None:
    """Background thread body: run the iterator, hand items to ``q`` (bounded), then 'done' or 'error'."""
    gen = None
    try:
        gen = make(stop)
        for item in gen:
            if not _put(q, ("item", item), stop):
                return
        _put(q, ("done", None), stop)
    except _Cancelled:
        pass
    except BaseException as e:  # noqa: BLE001  (re-raised by the consumer)
        _put(q, ("error", e), stop)
    finally:
        if gen is not None:
            try:
                gen.close()
            except BaseException:  # noqa: BLE001
                pass


def _shutdown(stop: threading.Event, q: "queue.Queue") -> None:
    stop.set()
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


class BackgroundVideoIterator:
    """Iterator over a video decoded ahead in a background thread (returned by :func:`iter_video`).

    Items are those of :func:`iter_video` (``(frames, timestamps)`` chunks or
    ``(frame, timestamp)`` pairs), in order. At most ``prefetch`` items wait
    in a bounded queue, so memory stays bounded however far the consumer lags.
    A decode error is raised by ``next()`` at the point of failure (after the
    items decoded before it), as the original exception
    (:class:`VideoDecodeError` for anything FFmpeg reports).

    ``next()`` never blocks without bound: it polls the queue, raises
    :class:`VideoDecodeError` if the decoder thread died without a result, or
    if no item arrived for ``timeout`` seconds. :meth:`close` (also called by
    ``with``, on exhaustion, on error, and when the iterator is garbage-
    collected) stops the decoder thread and any segment threads and frees the
    queue; it is idempotent. Usable as a context manager::

        with iter_video(path, fps=1, chunk_size=64, prefetch=2, workers=2) as it:
            for frames, timestamps in it:
                ...
    """

    def __init__(self, path: str, make: Callable[[threading.Event], Iterator], prefetch: int,
                 timeout: Optional[float]):
        self.path = path
        self._timeout = timeout
        self._q: "queue.Queue" = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_produce, args=(make, self._q, self._stop), name="vxlp-decode-producer", daemon=True
        )
        self._done = False
        # stops the thread when this object is collected (the thread holds no reference to it)
        self._finalizer = weakref.finalize(self, _shutdown, self._stop, self._q)
        self._thread.start()

    def __iter__(self) -> "BackgroundVideoIterator":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        try:
            kind, val = _get(self._q, self._thread, None, self._timeout, f"decoding {self.path!r}")
        except BaseException:
            self.close()
            raise
        if kind == "item":
            return val
        self.close()
        if kind == "done":
            raise StopIteration
        raise val

    def close(self) -> None:
        """Stop background decoding and release its threads and queued frames (idempotent)."""
        self._done = True
        self._finalizer()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_S)

    @property
    def alive(self) -> bool:
        """Whether the background decoder thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> "BackgroundVideoIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_video(
    path: PathLike,
    fps: Optional[float] = None,
    max_frames: Optional[int] = None,
    *,
    chunk_size: Optional[int] = None,
    prefetch: int = 0,
    workers: int = 1,
    threads: Optional[int] = None,
    timeout: Optional[float] = _DEFAULT_TIMEOUT_S,
) -> Iterator[Tuple[torch.Tensor, Union[torch.Tensor, float]]]:
    """Decode a video lazily or in the background, with the selection rule of :func:`read_video`.

    Arguments are validated and the path is checked at call time; the
    container is opened on the first ``next()`` (lazy mode) or at once in a
    background thread.

    Args:
        path: file path (``str`` or ``os.PathLike``).
        fps: ``None`` or a finite number > 0 (frames/s); see :func:`read_video`.
        max_frames: ``None`` or an int >= 1; see :func:`read_video`.
        chunk_size: ``None`` or an int >= 1.
        prefetch: int >= 0. ``0`` with ``workers=1``: decode lazily in the
            calling thread (a generator). ``K >= 1``: decode in a background
            thread, at most ``K`` items (chunks, or frames when ``chunk_size``
            is None) waiting; returns a :class:`BackgroundVideoIterator`.
        workers: int >= 1. ``N > 1`` decodes segments of the file on N
            threads (implies background decoding; ``prefetch=0`` then means
            1). Each segment thread may run ahead by ``max(prefetch, 1)``
            batches of ``chunk_size`` (or 8) frames, so memory is bounded by
            about ``(workers + 1) * max(prefetch, 1) * chunk_size`` frames;
            segments hold at most that many selected frames where the
            keyframes allow, so they decode without waiting for the consumer.
        threads: FFmpeg threads per decoder; ``None`` or an int >= 1 (see
            :func:`read_video`).
        timeout: background mode only: ``next()`` raises
            :class:`VideoDecodeError` when no item arrives for this many
            seconds while the decoder thread is alive (a stalled decoder);
            ``None`` waits as long as the thread lives. Default 300 s.

    Yields:
        With ``chunk_size=None``: ``(frame, timestamp)`` with ``frame`` uint8
        ``[H, W, 3]`` (RGB) and ``timestamp`` a float in seconds.
        Otherwise: ``(frames, timestamps)`` chunks with ``frames`` uint8
        ``[n, H, W, 3]`` and ``timestamps`` float64 ``[n]`` in seconds,
        ``1 <= n <= chunk_size`` (only the last chunk may be shorter).
        The frames are exactly those of :func:`read_video` with the same
        ``fps`` / ``max_frames``, whatever ``prefetch`` / ``workers``.

    Raises:
        ValueError: invalid ``fps``, ``max_frames``, ``chunk_size``,
            ``prefetch``, ``workers``, ``threads`` or ``timeout`` (at call time).
        FileNotFoundError: ``path`` does not exist (at call time).
        VideoDecodeError: directory or empty file (at call time); a file that
            is not a decodable video, or a demux/decode error (during
            iteration, after the items decoded before it; frames already
            yielded stay yielded); in background mode also a decoder thread
            that stalls for ``timeout`` s or dies.
    """
    fps_v, max_v = _validate_args(fps, max_frames)
    chunk = _validate_int("chunk_size", chunk_size, 1, allow_none=True)
    n_prefetch = _validate_int("prefetch", prefetch, 0, allow_none=False)
    n_workers = _validate_int("workers", workers, 1, allow_none=False)
    n_threads = _validate_int("threads", threads, 1, allow_none=True)
    t_out = _validate_timeout(timeout)
    p, size = _check_path(path)

    def wrap(gen):
        return _iter_single(gen) if chunk is None else _iter_chunks(gen, chunk)

    if n_workers == 1 and n_prefetch == 0:
        return wrap(_frames_sequential(p, size, fps_v, max_v, False, n_threads or 0))
    depth = max(1, n_prefetch)
    if n_workers == 1:
        def make(stop):
            return wrap(_frames_sequential(p, size, fps_v, max_v, False, n_threads or 0, stop))
    else:
        per = _decoder_threads(n_workers, n_threads)
        batch = chunk if chunk is not None else _SINGLE_BATCH

        def make(stop):
            return wrap(
                _frames_parallel(p, size, fps_v, max_v, n_workers, per, batch, depth, stop, t_out)
            )
    return BackgroundVideoIterator(p, make, depth, t_out)
