"""Decode throughput of :mod:`vxlp_model.video` on generated 720p H.264 clips (CPU).

Usage::

    python benchmarks/bench_decode.py                      # 60-s clips, results in benchmarks/results/
    python benchmarks/bench_decode.py --seconds 20 --out /tmp/res --reps 3
    python benchmarks/bench_decode.py --legacy-ref 20ac7d8 # also time the read_video of that git commit

Clips (generated once with PyAV/libx264 and cached in ``--cache``, default
``$TMPDIR/vxlp_bench_decode``): ``pan25`` -- 25 fps, keyframe every 250 frames
(x264's default), a camera pan over a 1/f-noise "landscape" with a moving
object; ``drift30`` -- 30 fps, keyframe every 60 frames (2 s, common for
streaming), two texture layers drifting in opposite directions (parallax) with
flicker. Both ``preset=fast`` (3 B-frames, B-pyramid), yuv420p, 1280x720.

Rows (each a "source frames/s" = frames in the clip / seconds for the call):

=================  ============================================================
decode_all         every frame decoded by PyAV, FFmpeg frame threads on all
                   cores, no RGB conversion -- the "decoding every frame" base
decode_all_1t      the same on one thread
read_fps1          ``read_video(path, fps=1)`` (defaults: FFmpeg threads auto)
legacy_fps1        ``read_video(path, fps=1)`` of ``--legacy-ref`` (optional)
fps1_1core         ``read_video(path, fps=1, threads=1)``
fps1_w2            ``read_video(path, fps=1, workers=2, threads=1)``: segment-
                   parallel, two threads (what the library does)
fps1_proc1/2       the same segments decoded in 1 / 2 forked processes, frames
                   pickled back (the alternative design, measured for the
                   record; the pool start is included, as threads' is)
all_stream_w1/w2   ``iter_video(path, chunk_size=50, prefetch=2, workers=1|2,
                   threads=1)`` over every frame, chunks dropped (background
                   streaming, segment-parallel with 2)
=================  ============================================================

Targets (from the scale issue): ``read_fps1 / decode_all >= 0.9`` and
``fps1_w2 / fps1_1core >= 1.8`` (2 cores vs 1), on each clip.

Each sample also records the process CPU seconds (all threads, plus reaped
child processes): on a loaded machine the CPU work of two rows is a steadier
comparison than their wall time, but the targets are wall-clock.

Method: every row is timed ``--reps`` times (default 3), interleaved (round r
times every row of every clip before round r + 1), and the best time is kept;
ratios come from the same run. Before each timing the machine must be quiet:
1-min load average ``<= --max-load`` (0.5), or -- since the load average lags
our own previous measurement by minutes -- at most 10 % of the CPUs busy over
a 1-s sample while this process is idle. The script waits (up to ``--max-wait``
s, default 600, per measurement, and ``--max-total-wait``, default 1800, in
all) and otherwise measures anyway; each sample's
load average, busy fraction and wait are in the JSON, and the summary says
whether any measurement was taken on a busy machine.

Output: ``<out>/decode_<slug>.json`` (environment, clips, every sample, best
times, ratios, targets met or missed) and ``decode_<slug>.png`` (bar chart),
written atomically; a table on stdout. ``slug`` is ``cpu<N>`` (N usable cores)
unless ``--tag`` is given. Correctness is checked first: the fps=1 frames of
every method must be identical (the run aborts otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import av  # noqa: E402


def _load_video_module():
    """``vxlp_model.video`` of this checkout, loaded by path (importing the package pulls in transformers)."""
    name = "vxlp_model.video"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location("vxlp_bench_video", os.path.join(REPO, "vxlp_model", "video.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vxlp_bench_video"] = mod
    spec.loader.exec_module(mod)
    return mod


V = _load_video_module()

CLIP_SPECS = {
    "pan25": dict(rate=25, gop=250, pattern="pan", seed=0),
    "drift30": dict(rate=30, gop=60, pattern="drift", seed=1),
}


# --------------------------------------------------------------------------------------------- clips


def _texture(rng: np.random.Generator, h: int, w: int, slope: float = 0.9) -> np.ndarray:
    """1/f-noise RGB texture uint8 ``[h, w, 3]`` (natural-image-like spectrum)."""
    spec = rng.standard_normal((h, w, 3)) + 1j * rng.standard_normal((h, w, 3))
    fy = np.fft.fftfreq(h)[:, None, None]
    fx = np.fft.fftfreq(w)[None, :, None]
    spec /= (1e-3 + fx**2 + fy**2) ** slope
    tex = np.real(np.fft.ifft2(spec, axes=(0, 1)))
    tex = (tex - tex.mean()) / (tex.std() + 1e-12)
    return np.clip(128 + 45 * tex, 0, 255).astype(np.uint8)


def make_clip(
    path: str,
    seconds: float,
    rate: int,
    gop: int,
    width: int = 1280,
    height: int = 720,
    pattern: str = "pan",
    seed: int = 0,
    preset: str = "fast",
) -> str:
    """Write an H.264 (libx264, yuv420p) mp4 of ``seconds * rate`` frames; returns ``path``.

    ``pattern="pan"``: a camera pan over a 1/f-noise texture plus a moving ellipse;
    ``"drift"``: two texture layers drifting in opposite directions, blended, with a
    slow brightness flicker. Written to ``path + ".part"`` and renamed when complete.
    """
    if pattern not in ("pan", "drift"):
        raise ValueError(f"pattern must be 'pan' or 'drift', got {pattern!r}")
    rng = np.random.default_rng(seed)
    mh, mw = height // 2 + 8, width // 2 + 8
    tex = _texture(rng, height + 2 * mh, width + 2 * mw)
    tex2 = _texture(rng, height + 2 * mh, width + 2 * mw, slope=1.1) if pattern == "drift" else None
    yy, xx = np.mgrid[0:height, 0:width]
    n = int(round(seconds * rate))
    tmp = path + ".part"
    with av.open(tmp, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.options = {"preset": preset, "keyint_min": str(min(gop, 25))}
        for i in range(n):
            t = i / rate
            ox = int(mw + (mw - 1) * np.sin(0.31 * t))
            oy = int(mh + (mh - 1) * np.sin(0.23 * t + 1.0))
            img = tex[oy : oy + height, ox : ox + width]
            if pattern == "pan":
                img = img.copy()
                cx = width / 2 + 0.3 * width * np.cos(0.9 * t)
                cy = height / 2 + 0.28 * height * np.sin(1.3 * t)
                m = (xx - cx) ** 2 / (0.07 * width) ** 2 + (yy - cy) ** 2 / (0.08 * height) ** 2 < 1
                img[m] = (230, 80 + (i % 100), 40)
            else:
                img2 = tex2[2 * mh - oy : 2 * mh - oy + height, 2 * mw - ox : 2 * mw - ox + width]
                gain = 0.85 + 0.15 * np.sin(2.1 * t)
                img = ((img.astype(np.uint16) + img2) * (gain / 2)).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)
    return path


def clip_info(path: str) -> dict:
    """Frames, keyframes, size, bitrate of a clip (demux only)."""
    with av.open(path) as c:
        s = c.streams.video[0]
        n = keys = 0
        for p in c.demux(s):
            if p.size:
                n += 1
                keys += bool(p.is_keyframe)
        dur = float(s.duration * s.time_base) if s.duration else n / float(s.average_rate)
        return {
            "path": path,
            "frames": n,
            "keyframes": keys,
            "fps": float(s.average_rate),
            "seconds": dur,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "codec": s.codec_context.name,
            "bytes": os.path.getsize(path),
            "mbit_per_s": os.path.getsize(path) * 8 / dur / 1e6,
        }


def get_clips(cache: str, seconds: float, width: int, height: int, names=None) -> Dict[str, str]:
    os.makedirs(cache, exist_ok=True)
    out = {}
    for name, spec in CLIP_SPECS.items():
        if names and name not in names:
            continue
        path = os.path.join(cache, f"{name}_{width}x{height}_{seconds:g}s_gop{spec['gop']}.mp4")
        if not os.path.exists(path):
            t = time.perf_counter()
            make_clip(path, seconds, spec["rate"], spec["gop"], width, height, spec["pattern"], spec["seed"])
            print(f"generated {path} in {time.perf_counter() - t:.1f} s", flush=True)
        out[name] = path
    return out


# --------------------------------------------------------------------------------------------- methods


def decode_every_frame(path: str, threads: int = 0) -> int:
    """Decode every frame with PyAV (no RGB conversion); returns the frame count."""
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        if threads:
            s.codec_context.thread_count = threads
        for _ in c.decode(s):
            n += 1
    return n


def _proc_segment(args):
    sel, lo, hi, size = args
    return [(j, rgb.copy()) for j, rgb, _ in V._run_segment(sel, lo, hi, 1, None, seek=True, out_size=size)]


def read_segments_processes(path: str, fps: float, workers: int) -> np.ndarray:
    """The fps read of ``read_video(workers=N)``, but segments decoded in forked processes.

    Same packet table, selection and segments as the library (guided
    schedule, one FFmpeg thread each); frames come back pickled. Measured only
    to compare with the library's threads.
    """
    p, size = V._check_path(path)
    table = V._scan(p, size, strict=False)
    sel = V._select(table, fps, None)
    segs = sel.segments(workers=workers)
    out = np.empty((len(sel.sel), table.height, table.width, 3), np.uint8)
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        for part in pool.imap(_proc_segment, [(sel, lo, hi, (table.width, table.height)) for lo, hi in segs]):
            for j, rgb in part:
                out[j] = rgb
    return out


def _legacy_module(ref: str, repo: str = REPO):
    """``vxlp_model/video.py`` as of git ``ref``, loaded as a module (None if git fails)."""
    try:
        src = subprocess.run(
            ["git", "show", f"{ref}:vxlp_model/video.py"], cwd=repo, capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout
    except Exception as e:  # noqa: BLE001
        print(f"legacy ref {ref!r} unavailable: {e}", file=sys.stderr)
        return None
    d = tempfile.mkdtemp(prefix="vxlp_legacy_")
    fn = os.path.join(d, "video_legacy.py")
    with open(fn, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("vxlp_bench_video_legacy", fn)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vxlp_bench_video_legacy"] = mod
    spec.loader.exec_module(mod)
    return mod


def _drain(it) -> int:
    n = 0
    with it:
        for frames, _ in it:
            n += frames.shape[0]
    return n


def methods(legacy=None) -> Dict[str, Callable[[str], object]]:
    m: Dict[str, Callable[[str], object]] = {
        "decode_all": lambda p: decode_every_frame(p, 0),
        "decode_all_1t": lambda p: decode_every_frame(p, 1),
        "read_fps1": lambda p: V.read_video(p, fps=1),
        "fps1_1core": lambda p: V.read_video(p, fps=1, threads=1),
        "fps1_w2": lambda p: V.read_video(p, fps=1, workers=2, threads=1),
        "fps1_proc1": lambda p: read_segments_processes(p, 1.0, 1),
        "fps1_proc2": lambda p: read_segments_processes(p, 1.0, 2),
        "all_stream_w1": lambda p: _drain(V.iter_video(p, chunk_size=50, prefetch=2, workers=1, threads=1)),
        "all_stream_w2": lambda p: _drain(V.iter_video(p, chunk_size=50, prefetch=2, workers=2, threads=1)),
    }
    if legacy is not None:
        m["legacy_fps1"] = lambda p: legacy.read_video(p, fps=1)
    return m


RATIOS = [
    # (name, numerator row, denominator row, target or None)
    ("fps1_vs_full_decode", "read_fps1", "decode_all", 0.9),
    ("fps1_2cores_vs_1core", "fps1_w2", "fps1_1core", 1.8),
    ("fps1_proc_2_vs_1", "fps1_proc2", "fps1_proc1", None),
    ("fps1_threads_vs_procs_2workers", "fps1_w2", "fps1_proc2", None),
    ("all_stream_2_vs_1", "all_stream_w2", "all_stream_w1", None),
    ("legacy_fps1_vs_full_decode", "legacy_fps1", "decode_all", None),
    ("fps1_vs_legacy", "read_fps1", "legacy_fps1", None),
]


def check_equal(clips: Dict[str, str], legacy=None) -> Dict[str, bool]:
    """fps=1 frames of every method are identical (raises AssertionError otherwise)."""
    out = {}
    for name, path in clips.items():
        ref, ts, _ = V.read_video(path, fps=1, threads=1)
        got = {
            "read_fps1": V.read_video(path, fps=1)[0],
            "fps1_w2": V.read_video(path, fps=1, workers=2, threads=1)[0],
            "fps1_proc2": read_segments_processes(path, 1.0, 2),
        }
        chunks = list(V.iter_video(path, fps=1, chunk_size=7, prefetch=2, workers=2, threads=1))
        got["iter_w2"] = np.concatenate([c[0].numpy() for c in chunks])
        if legacy is not None:
            got["legacy_fps1"] = legacy.read_video(path, fps=1)[0]
        for k, v in got.items():
            v = v.numpy() if hasattr(v, "numpy") else v
            assert v.shape == tuple(ref.shape) and np.array_equal(v, ref.numpy()), f"{name}: {k} differs"
        out[name] = True
    return out


# --------------------------------------------------------------------------------------------- quiet machine


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def busy_fraction(seconds: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs busy over ``seconds`` (None where /proc/stat is missing)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_load: float, max_wait: float, busy_max: float = 0.10) -> dict:
    """Wait until load1 <= max_load or < busy_max of the CPUs are busy (at most max_wait s)."""
    t0 = time.monotonic()
    while True:
        load = os.getloadavg()[0]
        busy = None if load <= max_load else busy_fraction(1.0)
        quiet = load <= max_load or (busy is not None and busy < busy_max)
        waited = time.monotonic() - t0
        if quiet or waited >= max_wait:
            return {"load1": round(load, 2), "busy": None if busy is None else round(busy, 3),
                    "waited_s": round(waited, 1), "quiet": quiet}
        time.sleep(min(10.0, max(0.0, max_wait - waited)))


# --------------------------------------------------------------------------------------------- run


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "vxlp_model/video.py"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:  # noqa: BLE001
        commit, dirty = "unknown", None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "usable_cores": V._cpu_count(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "numpy": np.__version__,
        "commit": commit,
        "video_py_modified": dirty,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: str, doc: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def write_png(path: str, doc: dict) -> Optional[str]:
    """Bar chart of best source frames/s per row and clip (atomic); None if matplotlib fails."""
    try:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"no chart: {type(e).__name__}: {e}", file=sys.stderr)
        return None
    clips = list(doc["best"])
    rows = [r for r in doc["rows_order"] if any(r in doc["best"][c] for c in clips)]
    fig, axes = plt.subplots(1, len(clips), figsize=(6.5 * len(clips), 4.8), squeeze=False)
    for ax, clip in zip(axes[0], clips):
        vals = [doc["best"][clip].get(r, {}).get("source_fps", 0.0) for r in rows]
        colors = ["#777777" if r.startswith("decode_all") else "#c44e52" if r.startswith("legacy")
                  else "#dd8452" if "proc" in r else "#4c72b0" for r in rows]
        ax.barh(range(len(rows)), vals, color=colors)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(rows, fontsize=8)
        ax.invert_yaxis()
        for k, v in enumerate(vals):
            ax.text(v, k, f" {v:.0f}", va="center", fontsize=7)
        info = doc["clips"][clip]
        ax.set_title(f"{clip}: {info['width']}x{info['height']} {info['fps']:g} fps, "
                     f"{info['frames']} frames, {info['keyframes']} keyframes", fontsize=9)
        ax.set_xlabel("source frames / s (best of %d)" % doc["settings"]["reps"])
        ax.set_xlim(0, max(vals) * 1.18 if vals and max(vals) > 0 else 1)
    lines = []
    for name, r in doc["ratios"].items():
        if r.get("target") is not None:
            vals = ", ".join(f"{c} {v:.2f}" for c, v in r["values"].items())
            lines.append(f"{name}: {vals} (target >= {r['target']}: {'met' if r['met'] else 'MISSED'})")
    fig.suptitle(
        f"vxlp read_video decode throughput -- {doc['environment']['cpu']} ({doc['environment']['usable_cores']} cores)"
        + ("" if doc["quiet"] else "  [some samples on a busy machine]"), fontsize=10)
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * len(lines), 1, 0.95))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())
    return path


def summarize(samples: List[dict], clips_info: Dict[str, dict], order: List[str]) -> tuple:
    best: Dict[str, Dict[str, dict]] = {}
    for s in samples:
        b = best.setdefault(s["clip"], {}).get(s["row"])
        if b is None or s["seconds"] < b["seconds"]:
            frames = clips_info[s["clip"]]["frames"]
            best[s["clip"]][s["row"]] = {
                "seconds": s["seconds"], "source_fps": frames / s["seconds"], "cpu_s": s.get("cpu_s"),
                "load1": s["load1"], "busy": s["busy"], "quiet": s["quiet"],
            }
    ratios = {}
    for name, num, den, target in RATIOS:
        vals = {c: best[c][num]["source_fps"] / best[c][den]["source_fps"]
                for c in best if num in best[c] and den in best[c]}
        if vals:
            ratios[name] = {"numerator": num, "denominator": den, "values": vals, "target": target,
                            "met": None if target is None else all(v >= target for v in vals.values())}
    return best, ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="clip length in seconds (default 60)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per row (best kept)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "vxlp_bench_decode"),
                    help="folder for the generated clips (reused)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--clips", nargs="*", choices=list(CLIP_SPECS), help="subset of clips")
    ap.add_argument("--rows", nargs="*", help="subset of rows (default all)")
    ap.add_argument("--legacy-ref", default=None, help="git ref whose read_video(fps=1) is also timed")
    ap.add_argument("--max-load", type=float, default=0.5, help="1-min load average counted as quiet")
    ap.add_argument("--max-wait", type=float, default=600.0, help="max seconds to wait for quiet, per sample")
    ap.add_argument("--max-total-wait", type=float, default=1800.0,
                    help="max seconds of waiting for quiet in the whole run; then samples are taken at once")
    ap.add_argument("--tag", default=None, help="results file suffix (default cpu<cores>)")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.reps < 1 or args.width < 16 or args.height < 16:
        ap.error("--seconds must be > 0, --reps >= 1, --width/--height >= 16")

    legacy = _legacy_module(args.legacy_ref) if args.legacy_ref else None
    clips = get_clips(args.cache, args.seconds, args.width, args.height, args.clips)
    info = {k: clip_info(p) for k, p in clips.items()}
    for k, i in info.items():
        print(f"{k}: {i['frames']} frames, {i['keyframes']} keyframes, {i['fps']:g} fps, "
              f"{i['mbit_per_s']:.2f} Mbit/s", flush=True)
    equal = check_equal(clips, legacy)
    print("fps=1 frames identical across methods:", equal, flush=True)
    ms = methods(legacy)
    order = [r for r in ms if not args.rows or r in args.rows]
    samples: List[dict] = []
    waited_total = 0.0
    t_start = time.time()
    for rep in range(args.reps):
        for clip, path in clips.items():
            for row in order:
                q = wait_quiet(args.max_load, max(0.0, min(args.max_wait, args.max_total_wait - waited_total)))
                waited_total += q["waited_s"]
                c0 = os.times()
                t = time.perf_counter()
                ms[row](path)
                dt = time.perf_counter() - t
                c1 = os.times()
                cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (
                    c0.user + c0.system + c0.children_user + c0.children_system)
                samples.append({"clip": clip, "row": row, "rep": rep, "seconds": dt, "cpu_s": round(cpu, 3), **q})
                print(f"[{rep}] {clip:8s} {row:15s} {dt:7.3f} s  {info[clip]['frames'] / dt:7.0f} src fps  "
                      f"cpu {cpu:6.2f} s  load1 {q['load1']:.2f} busy {q['busy']} waited {q['waited_s']} s",
                      flush=True)
    best, ratios = summarize(samples, info, order)
    quiet = all(s["quiet"] for s in samples)
    slug = args.tag or f"cpu{V._cpu_count()}"
    doc = {
        "what": "vxlp_model.video decode throughput (benchmarks/bench_decode.py)",
        "environment": environment(),
        "settings": {"seconds": args.seconds, "reps": args.reps, "max_load": args.max_load,
                     "max_wait_s": args.max_wait, "max_total_wait_s": args.max_total_wait,
                     "waited_total_s": round(waited_total, 1), "legacy_ref": args.legacy_ref},
        "clips": info,
        "fps1_frames_identical": equal,
        "rows_order": order,
        "samples": samples,
        "best": best,
        "ratios": ratios,
        "quiet": quiet,
        "note": "source frames/s = frames in the clip / wall seconds of the call; best of reps, interleaved"
        + ("" if quiet else "; some samples were taken on a busy machine (see load1/busy per sample)"),
        "elapsed_s": round(time.time() - t_start, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, f"decode_{slug}.json")
    write_json(jpath, doc)
    ppath = write_png(os.path.join(args.out, f"decode_{slug}.png"), doc)
    print()
    print(f"{'row':16s}" + "".join(f"{c:>22s}" for c in best))
    for row in order:
        cells = []
        for c in best:
            b = best[c].get(row)
            cells.append(f"{b['source_fps']:9.0f} fps {b['seconds']:6.3f}s" if b else f"{'-':>22s}")
        print(f"{row:16s}" + "".join(f"{x:>22s}" for x in cells))
    print()
    for name, r in ratios.items():
        vals = "  ".join(f"{c} {v:.2f}" for c, v in r["values"].items())
        tgt = "" if r["target"] is None else f"  target >= {r['target']}: {'met' if r['met'] else 'MISSED'}"
        print(f"{name:32s} {vals}{tgt}")
    print(f"\nquiet machine for every sample: {quiet}")
    print("results:", jpath, ppath or "(no chart)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
