"""Scorers for VNBench, Video-MME, MLVU and LongVideoBench (vxlp_model.eval.scoring) and the ``vxlp score`` CLI.

Synthetic logs with hand-computed results; one check against the public logs in ``<repo>/../shared/fixtures/
eval-logs`` (other models' published logs, never part of the project) is skipped when they are absent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vxlp_model.eval.score_cli import add_score_parser, main
from vxlp_model.eval.scoring import (
    Sample,
    ScoreInputError,
    extract_videomme_answer,
    format_score,
    load_log,
    mlvu_task_counts,
    parse_log_text,
    parse_longvideobench_answer,
    parse_mlvu_answer,
    parse_vnbench_answer,
    score_longvideobench,
    score_mlvu,
    score_mlvu_counts,
    score_samples,
    score_videomme,
    score_vnbench,
)

PUBLIC_LOGS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "eval-logs"


def _lines(score):
    return {line.name: (round(line.accuracy, 2), line.correct, line.total) for line in score.lines}


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- Video-MME


@pytest.mark.parametrize(
    "text, official, lmms",
    [
        ("A", "A", "A"),
        ("  C. (a)(c)(b).", "C", "C"),
        ("The best answer is B.", "B", "B"),
        ("The correct answer is (D)", "D", "D"),
        ("Answer: C", "C", "A"),  # the official script strips "Answer:"; lmms-eval reads the A of "Answer"
        ("Best answer: C", "B", "B"),  # both lists join "Best answer:" "Best option:" (missing comma): B of "Best"
        ("I cannot tell from the video.", "", ""),
        ("d", "", ""),  # lower case is not a letter to either script
        ("", "", ""),
        (None, "", ""),
    ],
)
def test_videomme_extractor(text, official, lmms):
    assert extract_videomme_answer(text) == official
    assert extract_videomme_answer(text, rule="lmms-eval") == lmms


def test_videomme_extractor_rejects_unknown_rule():
    with pytest.raises(ValueError, match="unknown Video-MME rule"):
        extract_videomme_answer("A", rule="strict")


def _videomme_samples():
    rows = [
        ("q1", "short", "A", "A"),  # right
        ("q2", "short", "The answer is C", "C"),  # right (prefix stripped)
        ("q3", "short", "I don't know", "B"),  # unparsable
        ("q4", "short", "D", "B"),  # wrong
        ("q5", "medium", "Answer: B", "B"),  # official: B (right); lmms-eval: A (wrong)
        ("q6", "medium", "", "A"),  # empty: unparsable
        ("q7", "long", "B. Because the man runs.", "B"),  # right
    ]
    return [Sample(id=i, category=c, pred=p, answer=a) for i, c, p, a in rows]


def test_videomme_official_rule_excludes_unparsed():
    score = score_videomme(_videomme_samples())
    # short 2 right of 3 answered (q3 left out); medium 1/1 (q6 left out); long 1/1; overall 4/5.
    assert _lines(score) == {"short": (66.67, 2, 3), "medium": (100.0, 1, 1), "long": (100.0, 1, 1)}
    assert round(score.overall, 2) == 80.0
    assert [line.excluded for line in score.lines] == [1, 1, 0]
    assert "left out of the denominator" in score.notes[0]


def test_videomme_lmms_eval_rule_counts_unparsed_wrong():
    score = score_videomme(_videomme_samples(), rule="lmms-eval")
    # short 2/4; medium 0/2 ("Answer: B" reads as A); long 1/1; overall 3/7 = 42.857.
    assert _lines(score) == {"short": (50.0, 2, 4), "medium": (0.0, 0, 2), "long": (100.0, 1, 1)}
    assert round(score.overall, 2) == 42.86
    assert [line.unparsed for line in score.lines] == [1, 1, 0]


def test_videomme_rejects_bad_duration_and_duplicates():
    with pytest.raises(ScoreInputError, match="short, medium, long"):
        score_videomme([Sample("q", "mid", "A", "A", where="f.jsonl:3")])
    with pytest.raises(ScoreInputError, match=r"f:2: duplicate sample id 'q' \(first seen at f:1\)"):
        score_videomme([Sample("q", "short", "A", "A", where="f:1"), Sample("q", "long", "A", "A", where="f:2")])
    with pytest.raises(ScoreInputError, match="no samples"):
        score_videomme([])


def test_format_score_videomme():
    text = format_score(score_videomme(_videomme_samples()))
    assert text.splitlines() == [
        "short    66.67  (2/3)  [1 unparsed: excluded]",
        "medium  100.00  (1/1)  [1 unparsed: excluded]",
        "long    100.00  (1/1)",
        "overall 80.00",
    ]


# ---------------------------------------------------------------------------------------------- VNBench


@pytest.mark.parametrize(
    "pred, letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("B) a red car", "B"),
        ("  C\n", "C"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("As shown in the video, C", "C"),  # the official pred[0] would read the A of "As"
        ("Apple", ""),
        ("b", ""),
        ("", ""),  # the official script raises IndexError here
        ("   ", ""),
        (None, ""),
    ],
)
def test_vnbench_parser(pred, letter):
    assert parse_vnbench_answer(pred) == letter


def _vnbench_samples():
    out = []

    def question(group, task_type, preds, golds="ABCD"):
        for k, (p, g) in enumerate(zip(preds, golds)):
            out.append(Sample(f"{group}#{k}", task_type, p, g, group=group))

    question("q1", "ret_edit1", ["A", "B.", " C", "The answer is D"])  # all 4 right
    question("q2", "ret_edit1", ["A", "B", "C", "A"])  # 3 of 4: wrong
    question("q3", "ret_insert1", ["A", "B", "C", "D"])  # right
    question("q4", "ord_edit1", ["", "B", "C", "D"])  # empty prediction: wrong, no crash
    question("q5", "cnt_edit1", ["A", "B", "C"])  # only 3 rotations: wrong
    question("q6", "cnt_edit1", ["A", "B", "C", "D"])  # right
    question("q7", "cnt_edit2", ["D", "D", "D", "A"])  # wrong
    return out


def test_vnbench_all_rotations_and_family_means():
    score = score_vnbench(_vnbench_samples())
    assert _lines(score) == {
        "ret_edit1": (50.0, 1, 2),
        "ret_insert1": (100.0, 1, 1),
        "ord_edit1": (0.0, 0, 1),
        "cnt_edit1": (50.0, 1, 2),
        "cnt_edit2": (0.0, 0, 1),
        "ret": (75.0, 2, 3),  # mean of 50 and 100, not 2/3
        "ord": (0.0, 0, 1),
        "cnt": (25.0, 1, 3),  # mean of 50 and 0
        "sample_weighted": (42.86, 3, 7),
    }
    assert round(score.overall, 2) == 33.33  # (75 + 0 + 25) / 3
    names = [line.name for line in score.lines]
    assert names[:5] == ["ret_edit1", "ret_insert1", "ord_edit1", "cnt_edit1", "cnt_edit2"]
    assert any("fewer than 4 rotations" in n for n in score.notes)
    assert {line.name: line.unparsed for line in score.lines}["ord"] == 1


def test_vnbench_result_jsonl(tmp_path):
    rows = []
    for video, task_type, preds in [("v1.mp4", "ret_edit1", "ABCD"), ("v2.mp4", "cnt_insert1", "ABCA")]:
        for k, p in enumerate(preds):
            rows.append({"video_path": video, "prompt": "...", "pred": p + ".", "gt": "ABCD"[k],
                         "task_type": task_type, "try": k, "model_id": "m"})
    log = load_log(_write_jsonl(tmp_path / "res.jsonl", rows), "vnbench")
    assert log.format == "vnbench-jsonl" and len(log.samples) == 8
    assert log.samples[0].group == "v1.mp4" and log.samples[0].where.endswith("res.jsonl:1")
    score = score_samples("vnbench", log.samples)
    assert _lines(score)["ret"] == (100.0, 1, 1) and _lines(score)["cnt"] == (0.0, 0, 1)
    assert round(score.overall, 2) == 50.0


def test_vnbench_errors():
    ok = dict(category="ret_edit1", pred="A", answer="A")
    with pytest.raises(ScoreInputError, match="needs a 'group'"):
        score_vnbench([Sample("a", **ok)])
    with pytest.raises(ScoreInputError, match="none of the families"):
        score_vnbench([Sample("a", "retrieval", "A", "A", group="g")])
    with pytest.raises(ScoreInputError, match="has task type 'ord_edit1' here"):
        score_vnbench([Sample("a", group="g", **ok), Sample("b", "ord_edit1", "A", "A", group="g")])
    with pytest.raises(ScoreInputError, match="more than 4 rotations"):
        score_vnbench([Sample(str(k), group="g", **ok) for k in range(5)])
    with pytest.raises(ScoreInputError, match=r"x:2: 'try' must be an integer 0..3"):
        text = '\n{"video_path": "v", "pred": "A", "gt": "A", "task_type": "ret_edit1", "try": 4}\n'
        parse_log_text(text, "vnbench", "x")


# ---------------------------------------------------------------------------------------------- MLVU


@pytest.mark.parametrize(
    "pred, letter",
    [("(B) a dog", "B"), ("B) a dog", "B"), ("B", "B"), (" B \n", "B"), ("B.", ""), (")", ""), ("The answer is B", ""),
     ("", ""), (None, "")],
)
def test_mlvu_parser(pred, letter):
    assert parse_mlvu_answer(pred) == letter


def test_mlvu_macro_and_sample_weighted_differ():
    samples = [Sample(f"p{i}", "plotQA", "A) x", "A") for i in range(3)]  # 3/3
    samples.append(Sample("n0", "NQA", "A.", "A"))  # lmms-eval code for needle; "A." is wrong officially: 0/1
    samples += [Sample(t, t, "(C) y", "C") for t in ("ego", "count", "order", "anomaly_reco", "topic_reasoning")]
    assert mlvu_task_counts(samples)["needle"] == (0, 1, 1)
    score = score_mlvu(samples)
    assert round(score.overall, 2) == 85.71  # M-Avg: (100 + 0 + 5 * 100) / 7
    assert _lines(score)["sample_weighted"] == (88.89, 8, 9)  # 8/9
    assert [line.name for line in score.lines][:2] == ["plotQA", "needle"] and not score.notes


def test_mlvu_counts_and_summary():
    summary = {
        "holistic": {"total": 6, "correct": 5, "accuracy": 83.3},
        "plotQA": {"total": 4, "correct": 3, "accuracy": 75.0},
        "needle": {"total": 2, "correct": 2, "accuracy": 100.0},
        "global": {"total": 6, "correct": 5, "accuracy": 83.3},
    }
    log = parse_log_text(json.dumps(summary, indent=4), "mlvu", "sum.json")
    assert log.format == "mlvu-summary-json" and dict(log.counts) == {"plotQA": (3, 4), "needle": (2, 2)}
    score = score_mlvu_counts(log.counts)
    assert round(score.overall, 2) == 87.5 and _lines(score)["sample_weighted"] == (83.33, 5, 6)
    assert "M-Avg over 2 of 7 tasks" in score.notes[0]
    with pytest.raises(ScoreInputError, match="invalid counts"):
        score_mlvu_counts({"plotQA": (5, 4)})
    with pytest.raises(ScoreInputError, match="not one of"):
        score_mlvu_counts({"sub_scene": (1, 4)})
    with pytest.raises(ScoreInputError, match="but --task is videomme"):
        parse_log_text(json.dumps(summary), "videomme", "sum.json")


def test_mlvu_rejects_generation_task():
    with pytest.raises(ScoreInputError, match="not one of the 7 multiple-choice tasks"):
        score_mlvu([Sample("s", "sub_scene", "A", "A")])


# ---------------------------------------------------------------------------------------------- LongVideoBench

OPTS = ("a blue car", "a red umbrella", "a dog", "a green hat")


@pytest.mark.parametrize(
    "pred, letter",
    [
        ("(B)", "B"),
        ("B", "B"),
        ("B.", "B"),
        ("D. A book", "D"),  # the first letter (the old MMMU-style parser read A)
        ("The answer is (C), not (A)", "C"),
        ("Best option: C", "C"),  # LongVideoBench's prefix list has its commas
        ("The best option is E", "E"),
        ("I think it is b", ""),  # lower case is not read
        ("no idea", ""),  # lmms-eval would pick at random
        ("", ""),
        (None, ""),
    ],
)
def test_longvideobench_parser(pred, letter):
    assert parse_longvideobench_answer(pred) == letter


def test_longvideobench_groups():
    samples = [
        Sample("a", "15", "(A)", "A", options=OPTS, subcategory="S2E"),
        Sample("b", "15", "hmm", "B", options=OPTS, subcategory="S2E"),  # unparsable: wrong
        Sample("c", "600", "C", "C", options=OPTS, subcategory="T3O"),
        Sample("d", "3600", "D", "A", options=OPTS, subcategory="T3O"),
    ]
    score = score_longvideobench(samples)
    assert [line.name for line in score.lines] == ["duration_15", "duration_600", "duration_3600", "S2E", "T3O"]
    assert _lines(score) == {
        "duration_15": (50.0, 1, 2),
        "duration_600": (100.0, 1, 1),
        "duration_3600": (0.0, 0, 1),
        "S2E": (50.0, 1, 2),
        "T3O": (50.0, 1, 2),
    }
    assert score.overall == 50.0 and score.lines[0].unparsed == 1


def test_longvideobench_lmms_eval_jsonl(tmp_path):
    def rec(doc_id, resp, correct, group, cat, n_opts):
        doc = {"id": f"vid_{doc_id}", "duration_group": group, "question_category": cat, "correct_choice": correct}
        doc |= {f"option{i}": (OPTS[i] if i < n_opts else "N/A") for i in range(5)}
        return {"doc_id": doc_id, "doc": doc, "target": correct,
                "arguments": ["prompt", {}, doc_id, "longvideobench_val_v", "test"],
                "resps": [[resp]], "filtered_resps": [resp]}

    path = _write_jsonl(tmp_path / "lvb.jsonl", [rec(0, "(B)", 1, 600, "S2E", 4), rec(1, "A.", 2, 15, "E2O", 4)])
    log = load_log(path, "longvideobench")
    assert log.format == "lmms-eval-jsonl" and log.samples[0].options == OPTS and log.samples[1].category == "15"
    score = score_samples("longvideobench", log.samples)
    assert _lines(score)["duration_600"] == (100.0, 1, 1) and _lines(score)["E2O"] == (0.0, 0, 1)
    assert score.overall == 50.0
    with pytest.raises(ScoreInputError, match="lvb.jsonl:1: an lmms-eval log of task 'longvideobench_val_v', but"):
        load_log(path, "mlvu")


# ---------------------------------------------------------------------------------------------- loaders


def _lmms_videomme_log(rows, task="videomme_short"):
    logs = []
    for i, (qid, duration, resp, answer) in enumerate(rows):
        doc = {"video_id": qid[:3], "duration": duration, "question_id": qid, "task_type": "Counting Problem",
               "options": ["A. x", "B. y", "C. z", "D. w"], "answer": answer}
        logs.append({"doc_id": i, "doc": doc, "target": answer, "arguments": ["prompt", {}, i, task, "test"],
                     "resps": [[resp]], "filtered_resps": [resp],
                     "videomme_percetion_score": {"question_id": qid, "duration": duration, "answer": answer}})
    return {"args": {"tasks": task}, "model_configs": {"task": task}, "logs": logs, "time": "0"}


def test_lmms_eval_json_log_and_error_line(tmp_path):
    log = _lmms_videomme_log([("001-1", "short", "A", "A"), ("001-2", "short", "Answer: B", "B"),
                              ("001-3", "short", "none", "C")])
    path = tmp_path / "videomme_short.json"
    path.write_text(json.dumps(log, indent=4), encoding="utf-8")
    loaded = load_log(path, "videomme")
    assert loaded.format == "lmms-eval-json" and [s.id for s in loaded.samples] == ["001-1", "001-2", "001-3"]
    assert _lines(score_videomme(loaded.samples)) == {"short": (100.0, 2, 2)}
    assert _lines(score_videomme(loaded.samples, rule="lmms-eval")) == {"short": (33.33, 1, 3)}

    del log["logs"][1]["doc"]["duration"]
    text = json.dumps(log, indent=4)
    path.write_text(text, encoding="utf-8")
    line = text[: text.index('"doc_id": 1')].count("\n") + 1
    message = rf"videomme_short.json:{line}: lmms-eval sample has no doc field duration"
    with pytest.raises(ScoreInputError, match=message):
        load_log(path, "videomme")


def test_videomme_official_results_json():
    videos = [
        {"video_id": "001", "duration": "short", "domain": "Knowledge", "questions": [
            {"question_id": "001-1", "task_type": "Counting Problem", "answer": "C", "response": "C. Berries."},
            {"question_id": "001-2", "task_type": "Information Synopsis", "answer": "A", "response": "B"}]},
        {"video_id": "301", "duration": "medium", "questions": [
            {"question_id": "301-1", "task_type": "OCR Problems", "answer": "D", "response": "unsure"}]},
    ]
    text = json.dumps(videos, indent=2)
    log = parse_log_text(text, "videomme", "res.json")
    line = text[: text.index('"question_id": "301-1"')].count("\n") + 1
    assert log.format == "videomme-official-json" and log.samples[2].where == f"res.json:{line}"
    score = score_videomme(log.samples)
    assert _lines(score) == {"short": (50.0, 1, 2), "medium": (0.0, 0, 0)} and score.overall == 50.0


def test_vxlp_jsonl_schema_errors():
    good = {"id": "1", "task": "videomme", "category": "short", "pred": "A", "answer": "A"}
    assert parse_log_text(json.dumps(good), "videomme", "v.jsonl").samples[0].answer == "A"
    cases = [
        ({**good, "task": "mlvu"}, "v.jsonl:1: record of task 'mlvu', but --task is videomme"),
        ({k: v for k, v in good.items() if k != "category"}, "v.jsonl:1: vxlp record lacks category"),
        ({**good, "answer": "yes"}, "answer must be an option letter"),
        ({**good, "pred": 3}, "pred must be a string"),
        ({**good, "options": "A, B"}, "options must be a list of strings"),
        ({"question": "?", "response": "A"}, "v.jsonl:1: unrecognised record"),
    ]
    for record, message in cases:
        with pytest.raises(ScoreInputError, match=message):
            parse_log_text(json.dumps(record), "videomme", "v.jsonl")
    with pytest.raises(ScoreInputError, match="v.jsonl:2: a VNBench result line in a file of a vxlp JSONL records"):
        parse_log_text(json.dumps(good) + "\n" + json.dumps(
            {"video_path": "v", "pred": "A", "gt": "A", "task_type": "ret_edit1", "try": 0}), "videomme", "v.jsonl")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_vxlp_jsonl(tmp_path, capsys):
    rows = [{"id": s.id, "task": "videomme", "category": s.category, "pred": s.pred, "answer": s.answer}
            for s in _videomme_samples()]
    path = _write_jsonl(tmp_path / "vm.jsonl", rows)
    assert main(["--task", "videomme", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "overall 80.00" and out.splitlines()[0].startswith("short    66.67  (2/3)")
    assert "left out of the denominator" in err
    assert main(["--task", "videomme", "--rule", "lmms-eval", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "overall 42.86"


def test_cli_several_files_and_vnbench(tmp_path, capsys):
    samples = _vnbench_samples()
    rows = [{"id": s.id, "task": "vnbench", "category": s.category, "pred": s.pred, "answer": s.answer,
             "group": s.group} for s in samples]
    a = _write_jsonl(tmp_path / "a.jsonl", rows[:10])
    b = _write_jsonl(tmp_path / "b.jsonl", rows[10:])
    assert main(["--task", "vnbench", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out == [
        "ret_edit1         50.00  (1/2)",
        "ret_insert1      100.00  (1/1)",
        "ord_edit1          0.00  (0/1)  [1 unparsed: counted wrong]",
        "cnt_edit1         50.00  (1/2)",
        "cnt_edit2          0.00  (0/1)",
        "ret               75.00  (2/3)",
        "ord                0.00  (0/1)  [1 unparsed: counted wrong]",
        "cnt               25.00  (1/3)",
        "sample_weighted   42.86  (3/7)  [1 unparsed: counted wrong]",
        "overall 33.33",
    ]
    assert "note: 1 question(s) with fewer than 4 rotations counted wrong" in captured.err


def test_cli_registers_as_subcommand(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vxlp")
    add_score_parser(parser.add_subparsers(dest="command", required=True))
    path = _write_jsonl(tmp_path / "m.jsonl", [
        {"id": "1", "task": "mlvu", "category": "count", "pred": "(A) 3", "answer": "A"},
        {"id": "2", "task": "mlvu", "category": "count", "pred": "B", "answer": "A"},
        {"id": "3", "task": "mlvu", "category": "ego", "pred": "C)", "answer": "C"},
    ])
    args = parser.parse_args(["score", "--task", "mlvu", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["ego              100.00  (1/1)", "count             50.00  (1/2)",
                   "sample_weighted   66.67  (2/3)", "overall 75.00"]


@pytest.mark.parametrize(
    "content, argv_task, message",
    [
        (None, "videomme", "no such file"),
        ('{"id": "1", "task": "videomme", "category": "short", "pred": "A", "answer": "A"}\n\n{"id": 2,\n',
         "videomme", "bad.jsonl:3: invalid JSON"),
        ('{"video_path": "v", "prompt": "", "pred": "A", "gt": "A", "task_type": "ret_edit1", "try": 0}\n',
         "videomme", "bad.jsonl:1: a VNBench result line"),
        ('{"results": {"videomme": {}}, "configs": {}}', "videomme", "aggregate scores only"),
        ("", "mlvu", "bad.jsonl: empty file"),
        ("task,pred\n", "mlvu", "bad.jsonl:1: not JSON"),
        (b"\xff\xfe{}", "mlvu", "bad.jsonl:1: not UTF-8"),
        ("{\n  \"logs\": [\n", "videomme", "bad.jsonl:3: invalid JSON"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, content, argv_task, message):
    path = tmp_path / "bad.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["--task", argv_task, str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and str(path) in err and "Traceback" not in err
    assert err.startswith("vxlp score: error: ")


def test_cli_usage_errors(tmp_path, capsys):
    record = {"id": "1", "task": "mlvu", "category": "ego", "pred": "A", "answer": "A"}
    path = _write_jsonl(tmp_path / "x.jsonl", [record])
    assert main(["--task", "egoschema", str(path)]) == 2
    assert "invalid choice: 'egoschema'" in capsys.readouterr().err
    assert main(["--task", "mlvu", "--rule", "lmms-eval", str(path)]) == 2
    assert "--rule applies to --task videomme only" in capsys.readouterr().err
    assert main(["--task", "mlvu"]) == 2
    assert main(["--task", "mlvu", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- public logs


def test_public_logs_reproduce_published_numbers(capsys):
    """Other models' public logs (see SOURCES.md there) must give the published numbers exactly."""
    if not PUBLIC_LOGS.is_dir():
        pytest.skip(f"public eval logs not present ({PUBLIC_LOGS})")
    vnbench = PUBLIC_LOGS / "vnbench" / "llava-ov-7b-videoniah-result.jsonl"
    assert main(["--task", "vnbench", str(vnbench)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "overall 51.78"  # LLaVA-OneVision-7B, VideoNIAH README
    families = {line.split()[0]: line.split()[1] for line in out[:-1]}
    assert [families[f] for f in ("ret", "ord", "cnt")] == ["77.11", "52.44", "25.78"]

    videomme = [str(PUBLIC_LOGS / "videomme" / f"videomme_{d}.json") for d in ("short", "mid", "long")]
    expected = ["short    76.78  (691/900)", "medium   64.33  (579/900)", "long     58.00  (522/900)", "overall 66.37"]
    for rule in ("official", "lmms-eval"):  # no unparsable answer in these logs: both rules agree
        assert main(["--task", "videomme", "--rule", rule, *videomme]) == 0
        assert capsys.readouterr().out.splitlines() == expected

    # lmms-eval's extractor reproduces every logged pred_answer from the raw response.
    for path in videomme:
        for rec in json.loads(Path(path).read_text(encoding="utf-8"))["logs"]:
            logged = rec["videomme_percetion_score"]["pred_answer"]
            assert extract_videomme_answer(rec["filtered_resps"][0], rule="lmms-eval") == logged

    summaries = list((PUBLIC_LOGS / "mlvu" / "w_chunk_bilevel").glob("mlvu.json_results_each_dataset_*.json"))
    assert len(summaries) == 1
    assert main(["--task", "mlvu", str(summaries[0])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["sample_weighted   74.79  (1626/2174)", "overall 72.91"]  # results.json says 74.79 (micro)
