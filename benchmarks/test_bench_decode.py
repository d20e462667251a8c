"""Decode throughput of ``vxlp_model.video`` at small sizes (seconds on CPU): the suite's smoke rows.

The 60-s 720p numbers behind the scale issue's targets come from ``python benchmarks/bench_decode.py``
(``results/decode_cpu<N>.json``); this file runs the same methods (:func:`bench_decode.methods`) on two
generated 4-s 320x180 clips (``VXLP_BENCH_DECODE_SECONDS`` overrides the length) so that ``pytest benchmarks``
keeps them working. Each row first checks its frames against ``read_video(path, fps=1, threads=1)`` (the
fps=1 rows) or its frame count (the every-frame rows), then times 3 rounds; nothing is asserted about speed.
Rows go to ``results/decode_small_<slug>.json`` when the suite writes results (``--benchmark-only`` or
``VXLP_BENCH_OUT``; see ``conftest.py``), never to the 60-s file.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import _bench as B
import bench_decode as BD

SECONDS = float(os.environ.get("VXLP_BENCH_DECODE_SECONDS", "4"))
WIDTH, HEIGHT = 320, 180
ROWS = ["decode_all", "decode_all_1t", "read_fps1", "fps1_1core", "fps1_w2", "all_stream_w1", "all_stream_w2"]
ROUNDS = 3
_RESULTS: list = []


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    paths = BD.get_clips(str(tmp_path_factory.mktemp("decode_clips")), SECONDS, WIDTH, HEIGHT)
    info = {k: BD.clip_info(p) for k, p in paths.items()}
    refs = {k: BD.V.read_video(p, fps=1, threads=1)[0].numpy() for k, p in paths.items()}
    yield paths, info, refs
    if B.STORE.out_dir and _RESULTS:
        os.makedirs(B.STORE.out_dir, exist_ok=True)
        doc = {
            "what": "vxlp_model.video decode throughput, small clips (benchmarks/test_bench_decode.py)",
            "environment": BD.environment(),
            "clips": info,
            "rows": _RESULTS,
            "load1_at_end": os.getloadavg()[0],
            "note": f"{SECONDS:g}-s {WIDTH}x{HEIGHT} clips, best of {ROUNDS}: a smoke test of the methods; "
            "see decode_cpu<N>.json (bench_decode.py) for the 720p numbers",
        }
        BD.write_json(os.path.join(B.STORE.out_dir, f"decode_small_cpu{BD.V._cpu_count()}.json"), doc)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("clip", list(BD.CLIP_SPECS))
def test_decode_throughput(benchmark, clips, clip, row):
    paths, info, refs = clips
    path = paths[clip]
    fn = BD.methods()[row]
    out = fn(path)
    if row.startswith(("read_fps1", "fps1")):
        frames = out[0].numpy()
        assert frames.shape == refs[clip].shape and np.array_equal(frames, refs[clip]), f"{row}: frames differ"
    else:
        assert out == info[clip]["frames"], f"{row}: decoded {out} of {info[clip]['frames']} frames"
    times = []

    def timed():
        t = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    best = min(times)
    row_doc = {
        "clip": clip,
        "row": row,
        "best_s": best,
        "source_fps": info[clip]["frames"] / best,
        "rounds": len(times),
        "load1": os.getloadavg()[0],
    }
    _RESULTS.append(row_doc)
    benchmark.extra_info.update({k: row_doc[k] for k in ("source_fps", "load1")})
