"""`vxlp eval`: the official annotation readers, the append-only answer log, end-to-end runs on generated videos
with a tiny checkpoint (scores from vxlp_model.eval.scoring), missing videos, resume after a kill, run-setting
checks, the needle grid, and torchrun sharding equal to a single-process run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_eval_support import make_lvb, make_mlvu, make_tiny_model, make_videomme, make_vnbench, write_clip
from vxlp_model.eval import eval_cli
from vxlp_model.eval.benchmarks import AnnotationError, load_benchmark
from vxlp_model.eval.runner import AnswerLog, EvalError, read_answer_log
from vxlp_model.eval.scoring import load_log, score_samples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    model = make_tiny_model(root / "model")
    return {
        "root": root,
        "model": model,
        "mlvu": make_mlvu(str(root / "mlvu")),
        "lvb": make_lvb(str(root / "lvb")),
        "vnbench": make_vnbench(str(root / "vnbench")),
    }


def _cli(*argv):
    return eval_cli.main([str(a) for a in argv])


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


# ---------------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------------


def test_mlvu_reader_official_fields_and_layout(data):
    bench = load_benchmark("mlvu", data["mlvu"])
    assert [it.id for it in bench.items][:2] == ["plotQA-0000", "plotQA-0001"]
    assert {it.category for it in bench.items} == {"plotQA", "needle", "count"}
    recs = json.load(open(os.path.join(data["mlvu"], "json", "2_needle.json")))
    needle = [it for it in bench.items if it.category == "needle"]
    for rec, it in zip(recs, needle):
        assert it.answer == "ABCD"[rec["candidates"].index(rec["answer"])]
        assert it.options == tuple(rec["candidates"])
        assert it.video == os.path.join(data["mlvu"], "video", "2_needle", rec["video"]) and os.path.isfile(it.video)
        opts = "\n".join(f"({letter}) {c}" for letter, c in zip("ABCD", rec["candidates"]))
        assert it.question == f"{rec['question']}\n{opts}\nOnly give the best option.\nBest option: ("
    assert any("ego" in n for n in bench.notes)  # missing task files are noted, not fatal
    assert len(bench.limited(4).items) == 4


def test_videomme_reader_reads_the_parquet(tmp_path):
    pytest.importorskip("pyarrow", reason="Video-MME's parquet needs pyarrow (the lmms-eval extra installs it)")
    from test_eval_support import videomme_rows

    root = make_videomme(str(tmp_path / "vm"))
    bench = load_benchmark("videomme", root)
    rows = videomme_rows()
    assert [it.id for it in bench.items] == [r["question_id"] for r in rows]
    for r, it in zip(rows, bench.items):
        assert (it.category, it.answer) == (r["duration"], r["answer"])
        assert it.options == tuple(o[3:] for o in r["options"])  # "A. red" -> "red"
        assert it.video == os.path.join(root, "data", r["videoID"] + ".mp4")
        assert it.question.startswith("Select the best answer") and "\n".join(r["options"]) in it.question
        assert it.question.endswith("\n\nAnswer with the option's letter from the given choices directly.")


def test_longvideobench_and_vnbench_readers(data):
    lvb = load_benchmark("longvideobench", data["lvb"])
    recs = json.load(open(os.path.join(data["lvb"], "lvb_val.json")))
    for rec, it in zip(recs, lvb.items):
        assert (it.id, it.category, it.subcategory) == (rec["id"], str(rec["duration_group"]), rec["question_category"])
        assert it.answer == "ABCDE"[rec["correct_choice"]] and len(it.options) == len(rec["candidates"])
        assert it.question.endswith("Answer with the option's letter from the given choices directly.\n")
    vnb = load_benchmark("vnbench", data["vnbench"])
    assert len(vnb.items) == 12
    first = vnb.items[:4]
    assert {it.group for it in first} == {"v0_ret_edit1"} and [it.rotation for it in first] == [0, 1, 2, 3]
    assert sorted(it.answer for it in first) == ["A", "B", "C", "D"]  # rotations move the answer through every letter
    assert first[0].video == os.path.join(data["vnbench"], "video", "v0_ret_edit1.mp4")
    assert len(vnb.limited(2).items) == 8  # --limit counts VNBench questions, each with its 4 rotations


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def test_reader_errors_name_the_file_and_record(tmp_path):
    with pytest.raises(AnnotationError, match="not a directory"):
        load_benchmark("vnbench", str(tmp_path / "nope"))
    with pytest.raises(AnnotationError, match="VNBench-main-4try.json: no such file"):
        load_benchmark("vnbench", str(tmp_path))
    rec = {"video": "a.mp4", "question": "q", "options": ["a", "b", "c", "d"], "gt": "z", "type": "ret_edit1", "try": 0}
    _write(tmp_path / "VNBench-main-4try.json", [rec])
    with pytest.raises(AnnotationError, match=r"VNBench-main-4try.json: record 0 .*gt 'z' is not one of its options"):
        load_benchmark("vnbench", str(tmp_path))
    _write(tmp_path / "VNBench-main-4try.json", [{k: v for k, v in rec.items() if k != "type"}])
    with pytest.raises(AnnotationError, match=r"record 0 .*missing field\(s\) type"):
        load_benchmark("vnbench", str(tmp_path))
    (tmp_path / "VNBench-main-4try.json").write_text("[{")
    with pytest.raises(AnnotationError, match="invalid JSON"):
        load_benchmark("vnbench", str(tmp_path))
    lvb = {"id": "x_0", "video_path": "x.mp4", "question": "q", "candidates": ["a", "b"], "correct_choice": 2, "duration_group": 15}
    _write(tmp_path / "lvb_val.json", [lvb])
    with pytest.raises(AnnotationError, match=r"lvb_val.json: record 0 \('x_0'\): correct_choice must be an index 0..1"):
        load_benchmark("longvideobench", str(tmp_path))
    with pytest.raises(AnnotationError, match="no MLVU dev annotation file"):
        load_benchmark("mlvu", str(tmp_path))
    ml = {"video": "n.mp4", "duration": 3, "question": "q", "candidates": ["a", "b", "c", "d"], "answer": "e", "question_type": "findNeedle"}
    _write(tmp_path / "2_needle.json", [ml, dict(ml, answer="b")])
    bench = load_benchmark("mlvu", str(tmp_path))  # the official file has two such records: skipped, noted
    assert [it.answer for it in bench.items] == ["B"] and any("not one of its candidates" in n for n in bench.notes)
    with pytest.raises(AnnotationError, match="no Video-MME parquet"):
        load_benchmark("videomme", str(tmp_path))


def test_answer_log_drops_a_cut_short_last_line_and_refuses_corruption(tmp_path):
    path = str(tmp_path / "log.jsonl")
    with AnswerLog(path) as log:
        log.append({"id": "a", "pred": "B"})
        log.append({"id": "b", "pred": "C"})
    with open(path, "a") as f:
        f.write('{"id": "c", "pr')  # a kill in the middle of a write
    assert [r["id"] for r in read_answer_log(path)] == ["a", "b"]
    with AnswerLog(path) as log:  # opening repairs the tail, so the next line starts clean
        log.append({"id": "c", "pred": "D"})
    assert [r["id"] for r in read_answer_log(path)] == ["a", "b", "c"]
    with open(path, "a") as f:
        f.write("garbage\n")
    with pytest.raises(EvalError, match=r"log.jsonl:4: corrupt answer line"):
        read_answer_log(path)


# ---------------------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------------------


def test_a_video_the_processor_refuses_is_reported_and_the_batch_goes_on(data, tmp_path):
    """One item the processor refuses (here: timestamps that go backwards, as a broken file can give; also times
    beyond the range of a fixed-width time text) is reported; the other items of its batch are answered."""
    from transformers import AutoProcessor

    from vxlp_model import VideoXLProForConditionalGeneration
    from vxlp_model.eval.benchmarks import EvalItem
    from vxlp_model.eval.runner import answer_items

    frames = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    items = [EvalItem(id=f"q{i}", task="mlvu", category="count", question="How many? (A) 1 (B) 2", answer="A",
                      frames=lambda sign=sign: (frames, sign * torch.arange(4, dtype=torch.float64) + 10.0))
             for i, sign in enumerate([1.0, -1.0, 1.0])]
    model = VideoXLProForConditionalGeneration.from_pretrained(data["model"]).eval()
    processor = AutoProcessor.from_pretrained(data["model"])
    stats = answer_items(items, model, processor, str(tmp_path / "log.jsonl"), batch_size=3, max_new_tokens=1,
                         progress=False)
    assert [r["id"] for r in read_answer_log(str(tmp_path / "log.jsonl"))] == ["q0", "q2"]
    assert stats["answered"] == 2 and [u["id"] for u in stats["unreadable"]] == ["q1"]
    assert "processor:" in stats["unreadable"][0]["error"] and "non-decreasing" in stats["unreadable"][0]["error"]


def test_eval_mlvu_end_to_end_with_a_missing_video(data, tmp_path, capsys):
    root = str(tmp_path / "mlvu")
    shutil.copytree(data["mlvu"], root)
    gone = os.path.join(root, "video", "4_count", "count_1.mp4")
    os.unlink(gone)
    out = tmp_path / "out"
    assert _cli("--task", "mlvu", "--data-root", root, "--model", data["model"], "--out", out, "--batch-size", 2,
                "--max-new-tokens", 1, "--no-progress") == 0
    captured = capsys.readouterr()
    assert "1 of 6 videos missing" in captured.err and "overall" in captured.out
    answers = _lines(out / "answers.jsonl")
    assert [a["id"] for a in answers] == ["count-0000", "needle-0000", "needle-0001", "plotQA-0000", "plotQA-0001"]
    # one greedy token of the letter model: a letter (or a special token, decoded as "")
    assert all(a["pred"] in ("", "A", "B", "C", "D") for a in answers) and sum(a["pred"] != "" for a in answers) >= 3
    summary = json.loads((out / "score.json").read_text())
    assert (summary["questions"], summary["answered"], summary["missing_videos"]) == (6, 5, 1)
    assert (out / "missing_videos.txt").read_text().strip() == f"count-0001\t{gone}"
    # the reported score is vxlp_model.eval.scoring's on the written log
    score = score_samples("mlvu", load_log(out / "answers.jsonl", "mlvu").samples)
    assert summary["overall"] == pytest.approx(score.overall)
    assert [ln["name"] for ln in summary["lines"]] == [ln.name for ln in score.lines]
    by_task = {}
    for a in answers:
        by_task.setdefault(a["category"], []).append(a["pred"] == a["answer"])
    assert score.overall == pytest.approx(100 * sum(sum(v) / len(v) for v in by_task.values()) / len(by_task))
    assert (out / "score.png").read_bytes()[:8] == PNG
    # a second run finds everything answered and asks nothing
    assert _cli("--task", "mlvu", "--data-root", root, "--model", data["model"], "--out", out, "--max-new-tokens", 1,
                "--no-progress") == 0
    assert json.loads((out / "score.json").read_text())["answered_now"] == 0
    assert _lines(out / "answers.jsonl") == answers
    # another setting that changes answers must not resume into this folder
    assert _cli("--task", "mlvu", "--data-root", root, "--model", data["model"], "--out", out, "--max-new-tokens", 2,
                "--no-progress") == 2
    assert "run.json: this folder holds answers of a different run (max_new_tokens" in capsys.readouterr().err


def test_eval_longvideobench_scores_five_options(data, tmp_path):
    out = tmp_path / "out"
    assert _cli("--task", "longvideobench", "--data-root", data["lvb"], "--model", data["model"], "--out", out,
                "--batch-size", 5, "--max-new-tokens", 1, "--no-progress") == 0
    answers = _lines(out / "answers.jsonl")
    summary = json.loads((out / "score.json").read_text())
    correct = sum(a["pred"] == a["answer"] for a in answers)
    assert summary["overall"] == pytest.approx(100 * correct / 5)
    assert {ln["name"] for ln in summary["lines"]} == {"duration_15", "duration_60", "S2E", "T3O"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "mlvu", "--model", "{model}"], "--data-root is required"),
        (["--task", "mlvu", "--data-root", "{root}/nope", "--model", "{model}"], "data root is not a directory"),
        (["--task", "vnbench", "--data-root", "{root}", "--model", "{root}/nope"], "--model {root}/nope: no such folder"),
        (["--task", "vnbench", "--data-root", "{root}", "--model", "{root}"], "no config.json"),
        (["--task", "vnbench", "--data-root", "{root}", "--model", "{model}", "--limit", "0"], "--limit must be >= 1"),
        (["--task", "mlvu", "--data-root", "{root}", "--model", "{model}", "--rule", "official"], "--rule applies to"),
        (["--task", "niah", "--model", "{model}", "--haystack", "{root}/none.mp4"], "--haystack {root}/none.mp4: no such file"),
    ],
)
def test_eval_cli_errors_are_messages(data, argv, message, capsys):
    fill = {"model": data["model"], "root": str(data["root"])}
    assert _cli(*[a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err and "Traceback" not in err


def test_subcommands_register_on_the_vxlp_parser(data, tmp_path, capsys):
    """`vxlp eval` and `vxlp make-vnbench` as the `vxlp` command registers them (add_*_parser + func)."""
    import argparse

    parser = argparse.ArgumentParser(prog="vxlp")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_cli.add_eval_parser(sub)
    eval_cli.add_make_vnbench_parser(sub)
    args = parser.parse_args(["eval", "--task", "longvideobench", "--data-root", data["lvb"], "--model", data["model"],
                              "--out", str(tmp_path / "o"), "--limit", "1", "--max-new-tokens", "1", "--no-progress"])
    assert args.func(args) == 0 and len(_lines(tmp_path / "o" / "answers.jsonl")) == 1
    args = parser.parse_args(["make-vnbench", "--out", str(tmp_path / "g"), "--videos", str(tmp_path / "none.mp4")])
    assert args.func(args) == 2 and "none.mp4: no such file" in capsys.readouterr().err


def test_eval_all_videos_missing_is_an_error(data, tmp_path, capsys):
    root = tmp_path / "vnb"
    root.mkdir()
    shutil.copy(os.path.join(data["vnbench"], "VNBench-main-4try.json"), root)
    assert _cli("--task", "vnbench", "--data-root", root, "--model", data["model"], "--out", tmp_path / "o") == 2
    assert "none of the 12 videos were found" in capsys.readouterr().err


def test_resume_after_kill_never_loses_or_reasks(data, tmp_path):
    """Kill a real run (SIGKILL) mid-way, also cut its log mid-line, resume: every question is answered exactly
    once and the result equals an uninterrupted run's."""
    argv = ["--task", "vnbench", "--data-root", data["vnbench"], "--model", data["model"], "--batch-size", "1",
            "--max-new-tokens", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    part = killed / "answers.part-0.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "vxlp_model.eval.eval_cli", *argv, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = read_answer_log(str(part))
    assert 3 <= len(before) < 12 and not (killed / "answers.jsonl").exists()
    with open(part, "ab") as f:
        f.write(b'{"id": "v2_cnt_edit1#try3", "task": "vnb')  # a write cut short by the kill
    assert eval_cli.main([*argv, "--out", str(killed)]) == 0
    resumed = _lines(killed / "answers.jsonl")
    summary = json.loads((killed / "score.json").read_text())
    assert summary["answered_now"] == 12 - len(before)  # only the unanswered questions were asked
    assert len({a["id"] for a in resumed}) == len(resumed) == 12
    assert all(a in resumed for a in before)
    clean = tmp_path / "clean"
    assert eval_cli.main([*argv, "--out", str(clean)]) == 0
    assert (killed / "answers.jsonl").read_bytes() == (clean / "answers.jsonl").read_bytes()
    assert not part.exists()  # merged into answers.jsonl


def _torchrun():
    path = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return path if os.path.exists(path) else shutil.which("torchrun")


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not found")
def test_torchrun_sharded_run_equals_single_run(data, tmp_path):
    argv = ["--task", "vnbench", "--data-root", data["vnbench"], "--model", data["model"], "--batch-size", "1",
            "--max-new-tokens", "3", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "vxlp_model.eval.eval_cli", *argv,
                          "--out", str(tmp_path / "sharded")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    single = subprocess.run([sys.executable, "-m", "vxlp_model.eval.eval_cli", *argv, "--out", str(tmp_path / "single")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded, alone = tmp_path / "sharded", tmp_path / "single"
    assert (sharded / "answers.jsonl").read_bytes() == (alone / "answers.jsonl").read_bytes()
    assert len(_lines(sharded / "answers.jsonl")) == 12
    s1, s2 = (json.loads((d / "score.json").read_text()) for d in (sharded, alone))
    assert s1["processes"] == 2 and s2["processes"] == 1
    assert (s1["overall"], s1["lines"]) == (s2["overall"], s2["lines"])
    assert not list(sharded.glob("answers.part-*"))


def test_needle_grid_matches_the_demo_protocol(tmp_path):
    """`vxlp eval --task niah` asks exactly vxlp demo's needle questions and scores them as evaluate_niah does."""
    from transformers import AutoProcessor

    from vxlp_model import VideoXLProForConditionalGeneration
    from vxlp_model.demo import evaluate_niah
    from vxlp_model.eval.niah import load_haystack

    # seed 2: this letter model also emits ")", so some needle answers parse (the comparison is not all zeros)
    model_dir = make_tiny_model(tmp_path / "model", seed=2, paren=True)
    hay = write_clip(tmp_path / "hay.mp4", n=40, size=48, seed=5)
    out = tmp_path / "niah"
    assert _cli("--task", "niah", "--model", model_dir, "--haystack", hay, "--lengths", 4, 8, "--depths", 0, 1,
                "--samples-per-cell", 4, "--batch-size", 4, "--out", out, "--no-progress") == 0
    report = json.loads((out / "niah.json").read_text())
    assert (out / "niah.png").read_bytes()[:8] == PNG
    assert len(report["cells"]) == 4 and report["answered"] == 16
    model = VideoXLProForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    haystack = load_haystack([hay], processor.video_processor.size, max_frames_per_clip=1024)
    ref = evaluate_niah(model, processor, haystack, [4, 8], depths=(0.0, 1.0), samples_per_cell=4, seed=1000,
                        batch_size=4, progress=False, variant="single")
    assert [(c["length"], c["depth"], c["correct"], c["total"]) for c in report["cells"]] == [
        (c["length"], c["depth"], c["correct"], c["total"]) for c in ref["cells"]
    ]
    assert report["accuracy"] == pytest.approx(ref["accuracy"])
    answers = _lines(out / "answers.jsonl")
    assert {(a["length"], a["depth"]) for a in answers} == {(4, 0.0), (4, 1.0), (8, 0.0), (8, 1.0)}
    assert all(len(a["needle_indices"]) == 1 and a["variant"] == "single" for a in answers)
