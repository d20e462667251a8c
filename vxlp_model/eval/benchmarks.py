"""Benchmark annotation readers for ``vxlp eval``: MLVU (dev), Video-MME, LongVideoBench, VNBench.

Each reader takes the folder the user downloaded the benchmark into (``data_root``) and returns a
:class:`Benchmark`: one :class:`EvalItem` per question to ask (VNBench: per question *and* option rotation), with
the prompt text built as lmms-eval (or, for VNBench, the VideoNIAH release) builds it, the gold option letter, the
reporting category the scorer (:mod:`vxlp_model.eval.scoring`) expects, and the video's path. Nothing here opens a
video: a missing video is the runner's business (reported and counted, not fatal).

Annotation files and fields (sources and examples: docs/eval.md):

* **MLVU dev** — the seven multiple-choice JSONs of JUNJIE99/MLVU (``1_plotQA.json`` … ``7_topic_reasoning.json``)
  in ``DIR`` or ``DIR/json``: lists of ``{video, duration, question, candidates, answer, question_type}``, the
  answer given as the text of one candidate. Videos: ``DIR/video/<file stem>/<video>`` (the HF ``MLVU/MVLU``
  layout, e.g. ``video/1_plotQA/movie101_66.mp4``), else ``DIR/video/<task>/``, ``DIR/video/``, ``DIR/``.
* **Video-MME** — the parquet of ``lmms-lab/Video-MME`` (``DIR/videomme/test-00000-of-00001.parquet``, or any
  ``*.parquet`` in ``DIR``): ``video_id, duration, domain, sub_category, url, videoID, question_id, task_type,
  question, options, answer``; options carry their letter (``"A. ..."``), answer is a letter. Videos:
  ``DIR/data/<videoID>.mp4`` (also ``.MP4``, ``.mkv``, and ``DIR/videos/``).
* **LongVideoBench** — ``DIR/lvb_val.json``: ``{video_id, question, candidates, correct_choice, id,
  video_path, subtitle_path, duration_group, question_category, duration, ...}``, ``correct_choice`` an index.
  Videos: ``DIR/videos/<video_path>``.
* **VNBench** — ``DIR/VNBench-main-4try.json``: ``{video, question, options, gt, type, try}``, ``gt`` the text of
  the correct option, four records per question (``try`` 0–3, options rotated). Videos: ``video`` as given when it
  exists (absolute, or relative to ``DIR``), else ``DIR/video/<basename>``, ``DIR/videos/<basename>``,
  ``DIR/<basename>``.

Errors in an annotation file raise :class:`AnnotationError` (a ``ValueError``) naming the file and the record.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

__all__ = [
    "BENCHMARKS",
    "AnnotationError",
    "EvalItem",
    "Benchmark",
    "load_benchmark",
    "read_mlvu",
    "read_videomme",
    "read_longvideobench",
    "read_vnbench",
    "MLVU_FILES",
    "VNBENCH_FILE",
    "LVB_FILE",
]

BENCHMARKS = ("mlvu", "videomme", "longvideobench", "vnbench")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# MLVU dev multiple-choice files (JUNJIE99/MLVU data/, HF MLVU/MVLU json/) → the scorer's task names.
MLVU_FILES = {
    "1_plotQA.json": "plotQA",
    "2_needle.json": "needle",
    "3_ego.json": "ego",
    "4_count.json": "count",
    "5_order.json": "order",
    "6_anomaly_reco.json": "anomaly_reco",
    "7_topic_reasoning.json": "topic_reasoning",
}
MLVU_OPEN_ENDED = ("8_sub_scene.json", "9_summary.json")
VNBENCH_FILE = "VNBench-main-4try.json"
LVB_FILE = "lvb_val.json"

# Prompt pieces, as the task code that produced the published numbers builds them (docs/eval.md, "Prompts").
# lmms-eval tasks/videomme/utils.py videomme_doc_to_text + videomme.yaml default post_prompt:
VIDEOMME_PRE = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_POST = "\nAnswer with the option's letter from the given choices directly."
# lmms-eval tasks/mlvu/mlvu_dev.yaml default post_prompt:
MLVU_POST = "\nOnly give the best option.\nBest option: ("
# lmms-eval tasks/longvideobench/longvideobench_val_v.yaml default post_prompt; also LongVideoBench's own dataset:
LVB_POST = "Answer with the option's letter from the given choices directly.\n"
# joez17/VideoNIAH README "Prompt" (and llava_examples/model_video_niah.py):
VNBENCH_POST = "Answer with the option's letter from the given choices directly."


class AnnotationError(ValueError):
    """A benchmark annotation file is missing, unreadable, or has a malformed record (the message names the file
    and, for a record, its index and id)."""


@dataclass(frozen=True)
class EvalItem:
    """One question to ask the model.

    Attributes:
        id: unique within the benchmark (VNBench: per question and rotation, ``"<video stem>#try<k>"``).
        task: the benchmark (``mlvu``, ``videomme``, ``longvideobench``, ``vnbench``, ``niah``).
        category: the scorer's reporting group (Video-MME duration, LongVideoBench duration group, MLVU task,
            VNBench task type, NIAH cell).
        question: the full user text of the prompt (question, options, post-prompt); the video goes before it.
        answer: the gold option letter.
        options: option texts in letter order (without letters).
        video: absolute path of the video file (``None`` when ``frames`` supplies the frames).
        group: VNBench: the id its four rotations share (the video path).
        subcategory: LongVideoBench question category (e.g. ``S2E``).
        rotation: VNBench ``try`` (0–3).
        source: ``FILE#index`` of the annotation record, for messages.
        frames: a callable returning ``(frames uint8 [N, H, W, 3], timestamps float64 [N] seconds)`` instead of
            a file (the needle grid builds its videos in memory).
        extra: more fields to write into the answer record (e.g. NIAH ``length``/``depth``).
    """

    id: str
    task: str
    category: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    video: str | None = None
    group: str | None = None
    subcategory: str | None = None
    rotation: int | None = None
    source: str = ""
    frames: Callable | None = field(default=None, compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False)

    def record(self, pred: str | None) -> dict:
        """The answer record written to the JSONL log (vxlp JSONL, docs/scoring.md), with ``pred`` the raw text."""
        rec = {"id": self.id, "task": self.task, "category": self.category, "pred": pred, "answer": self.answer}
        if self.group is not None:
            rec["group"] = self.group
        if self.rotation is not None:
            rec["try"] = self.rotation
        if self.subcategory is not None:
            rec["subcategory"] = self.subcategory
        if self.options:
            rec["options"] = list(self.options)
        if self.video is not None:
            rec["video"] = self.video
        rec.update(self.extra)
        return rec


@dataclass(frozen=True)
class Benchmark:
    """The items of one benchmark, the annotation files they came from, and notes (records skipped, and why)."""

    task: str
    items: tuple[EvalItem, ...]
    files: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def limited(self, limit: int | None) -> "Benchmark":
        """The first ``limit`` questions (VNBench: questions, each with all its rotations); ``None`` keeps all."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        if self.task != "vnbench":
            return Benchmark(self.task, self.items[:limit], self.files, self.notes)
        keep, groups = [], set()
        for it in self.items:
            if it.group not in groups:
                if len(groups) == limit:
                    continue
                groups.add(it.group)
            keep.append(it)
        return Benchmark(self.task, tuple(keep), self.files, self.notes)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: str):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: is a directory, not an annotation file") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None


def _records(data, path: str) -> list:
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    if not data:
        raise AnnotationError(f"{path}: no records")
    return data


def _where(path: str, i: int, rec) -> str:
    rid = None
    if isinstance(rec, dict):
        for key in ("id", "question_id", "video"):
            if key in rec:
                rid = rec[key]
                break
    return f"{path}: record {i}" + (f" ({rid!r})" if rid is not None else "")


def _need(rec, keys: Sequence[str], where: str) -> None:
    if not isinstance(rec, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise AnnotationError(f"{where}: missing field(s) {', '.join(missing)} (needs {', '.join(keys)})")


def _text(value, where: str, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise AnnotationError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")


def _texts(value, where: str, name: str, n: tuple[int, int] = (2, 26)) -> tuple[str, ...]:
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        raise AnnotationError(f"{where}: field {name!r} must be a list of strings, got {value!r}")
    if not n[0] <= len(value) <= n[1]:
        raise AnnotationError(f"{where}: field {name!r} must hold {n[0]} to {n[1]} options, got {len(value)}")
    return tuple(str(v) for v in value)


def _lettered(options: Sequence[str], style: str) -> str:
    if style == "paren":
        return "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _find_video(candidates: Sequence[str]) -> str:
    """The first existing candidate path (absolute), else the first candidate (reported missing later)."""
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    return os.path.abspath(candidates[0])


def _check_root(data_root: str) -> str:
    if data_root is None:
        raise AnnotationError("--data-root is required for this task")
    root = os.path.abspath(os.fspath(data_root))
    if not os.path.isdir(root):
        raise AnnotationError(f"{data_root}: data root is not a directory")
    return root


def _check_unique(items: list[EvalItem]) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise AnnotationError(f"{it.source}: duplicate id {it.id!r} (also {seen[it.id]})")
        seen[it.id] = it.source


# ----------------------------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------------------------


def read_mlvu(data_root: str, annotation: str | None = None) -> Benchmark:
    """MLVU dev (multiple choice): the seven task JSONs in ``data_root`` or ``data_root/json``.

    ``annotation``: one task file instead (its task from its name, e.g. ``2_needle.json``). A record whose
    ``answer`` is not one of its ``candidates`` (two such records in ``2_needle.json`` of JUNJIE99/MLVU) cannot be
    scored and is skipped with a note. Raises :class:`AnnotationError` if no task file is found or a record is
    malformed.
    """
    root = _check_root(data_root)
    if annotation is not None:
        name = os.path.basename(annotation)
        if name not in MLVU_FILES:
            raise AnnotationError(f"{annotation}: not an MLVU dev multiple-choice file (expected one of {', '.join(MLVU_FILES)})")
        files = [os.path.abspath(annotation)]
    else:
        folder = next((d for d in (os.path.join(root, "json"), root) if any(os.path.isfile(os.path.join(d, f)) for f in MLVU_FILES)), None)
        if folder is None:
            raise AnnotationError(
                f"{data_root}: no MLVU dev annotation file found (looked for {', '.join(MLVU_FILES)} in {root} and {root}/json)"
            )
        files = [os.path.join(folder, f) for f in MLVU_FILES if os.path.isfile(os.path.join(folder, f))]
    items, notes = [], []
    present = {MLVU_FILES[os.path.basename(f)] for f in files}
    missing_tasks = [t for t in MLVU_FILES.values() if t not in present]
    if missing_tasks:
        notes.append(f"MLVU task file(s) not found: {', '.join(missing_tasks)} (M-Avg then averages the tasks present)")
    for path in files:
        stem = os.path.basename(path)[: -len(".json")]
        task = MLVU_FILES[os.path.basename(path)]
        bare = stem.split("_", 1)[1]
        for i, rec in enumerate(_records(_read_json(path), path)):
            where = _where(path, i, rec)
            _need(rec, ("video", "question", "candidates", "answer"), where)
            candidates = _texts(rec["candidates"], where, "candidates")
            answer_text = _text(rec["answer"], where, "answer")
            if answer_text not in candidates:
                notes.append(f"{where}: answer {answer_text!r} is not one of its candidates: skipped")
                continue
            video = _text(rec["video"], where, "video")
            question = _text(rec["question"], where, "question")
            vdir = os.path.join(root, "video")
            items.append(
                EvalItem(
                    id=f"{task}-{i:04d}",
                    task="mlvu",
                    category=task,
                    question=f"{question}\n{_lettered(candidates, 'paren')}{MLVU_POST}",
                    answer=LETTERS[candidates.index(answer_text)],
                    options=candidates,
                    video=_find_video([os.path.join(vdir, stem, video), os.path.join(vdir, task, video),
                                       os.path.join(vdir, bare, video), os.path.join(vdir, video), os.path.join(root, video)]),
                    source=f"{path}#{i}",
                )
            )
    _check_unique(items)
    return Benchmark("mlvu", tuple(items), tuple(files), tuple(notes))


_VIDEOMME_FIELDS = ("videoID", "question_id", "duration", "question", "options", "answer")
_OPTION_LETTER = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


def _parquet_rows(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise AnnotationError(
            f"{path}: reading Video-MME's parquet needs pyarrow (pip install pyarrow; it comes with the "
            "lmms-eval extra)"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses for non-parquet input
        raise AnnotationError(f"{path}: not a readable parquet file ({e})") from None


def read_videomme(data_root: str, annotation: str | None = None) -> Benchmark:
    """Video-MME: the ``lmms-lab/Video-MME`` parquet (``data_root/videomme/*.parquet`` or ``data_root/*.parquet``;
    ``annotation`` names one file instead). A JSON list with the same fields is accepted too.

    Options keep their letter in the prompt (``"A. ..."``, as lmms-eval prints them); the stored option texts drop
    it. Raises :class:`AnnotationError` for a missing file or a malformed record (e.g. an answer letter beyond the
    options).
    """
    root = _check_root(data_root)
    if annotation is not None:
        files = [os.path.abspath(annotation)]
        if not os.path.isfile(files[0]):
            raise AnnotationError(f"{annotation}: no such file")
    else:
        files = sorted(glob.glob(os.path.join(root, "videomme", "*.parquet"))) or sorted(glob.glob(os.path.join(root, "*.parquet")))
        if not files:
            raise AnnotationError(
                f"{data_root}: no Video-MME parquet found (looked for {root}/videomme/*.parquet and {root}/*.parquet)"
            )
    items = []
    for path in files:
        rows = _records(_read_json(path), path) if path.endswith(".json") else _parquet_rows(path)
        if not rows:
            raise AnnotationError(f"{path}: no records")
        for i, rec in enumerate(rows):
            where = _where(path, i, rec)
            _need(rec, _VIDEOMME_FIELDS, where)
            options = _texts(rec["options"], where, "options")
            answer = _text(rec["answer"], where, "answer").strip()
            if len(answer) != 1 or answer not in LETTERS[: len(options)]:
                raise AnnotationError(f"{where}: answer must be one of {', '.join(LETTERS[: len(options)])}, got {answer!r}")
            duration = _text(rec["duration"], where, "duration")
            if duration not in ("short", "medium", "long"):
                raise AnnotationError(f"{where}: duration must be short, medium or long, got {duration!r}")
            vid = _text(rec["videoID"], where, "videoID")
            question = _text(rec["question"], where, "question")
            bare = tuple(_OPTION_LETTER.sub("", o, count=1) for o in options)
            text = f"{VIDEOMME_PRE}\n{question}\n" + "\n".join(options) + f"\n{VIDEOMME_POST}"
            cands = [os.path.join(root, sub, vid + ext) for sub in ("data", "videos", "") for ext in (".mp4", ".MP4", ".mkv")]
            items.append(
                EvalItem(
                    id=_text(rec["question_id"], where, "question_id"),
                    task="videomme",
                    category=duration,
                    question=text,
                    answer=answer,
                    options=bare,
                    video=_find_video(cands),
                    subcategory=str(rec.get("task_type")) if rec.get("task_type") else None,
                    source=f"{path}#{i}",
                )
            )
    _check_unique(items)
    return Benchmark("videomme", tuple(items), tuple(files))


_LVB_FIELDS = ("id", "video_path", "question", "candidates", "correct_choice", "duration_group")


def read_longvideobench(data_root: str, annotation: str | None = None) -> Benchmark:
    """LongVideoBench validation: ``data_root/lvb_val.json`` (or ``annotation``); videos in ``data_root/videos``.

    Category: ``duration_group`` (15, 60, 600, 3600); subcategory: ``question_category``. Raises
    :class:`AnnotationError` for a missing file or a malformed record (e.g. ``correct_choice`` out of range; the
    test split's ``lvb_test_wo_gt.json`` has no answers and is refused).
    """
    root = _check_root(data_root)
    path = os.path.abspath(annotation) if annotation else os.path.join(root, LVB_FILE)
    items = []
    for i, rec in enumerate(_records(_read_json(path), path)):
        where = _where(path, i, rec)
        _need(rec, _LVB_FIELDS, where)
        candidates = _texts(rec["candidates"], where, "candidates", (2, 5))
        choice = rec["correct_choice"]
        if not (isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(candidates)):
            raise AnnotationError(f"{where}: correct_choice must be an index 0..{len(candidates) - 1}, got {choice!r}")
        question = _text(rec["question"], where, "question")
        cat = rec.get("question_category")
        video_path = _text(rec["video_path"], where, "video_path")
        items.append(
            EvalItem(
                id=_text(rec["id"], where, "id"),
                task="longvideobench",
                category=_text(rec["duration_group"], where, "duration_group"),
                question=f"{question}\n{_lettered(candidates, 'dot')}\n{LVB_POST}",
                answer=LETTERS[choice],
                options=candidates,
                video=_find_video([os.path.join(root, "videos", video_path), os.path.join(root, video_path)]),
                subcategory=str(cat) if cat else None,
                source=f"{path}#{i}",
            )
        )
    _check_unique(items)
    return Benchmark("longvideobench", tuple(items), (path,))


def read_vnbench(data_root: str, annotation: str | None = None) -> Benchmark:
    """VNBench: ``data_root/VNBench-main-4try.json`` (or ``annotation``, e.g. the file ``vxlp make-vnbench``
    writes). Each record is one rotation of a question; rotations are grouped by their video.

    Raises :class:`AnnotationError` for a missing file or a malformed record (``gt`` not among ``options``,
    ``try`` outside 0–3, not exactly four options).
    """
    root = _check_root(data_root)
    path = os.path.abspath(annotation) if annotation else os.path.join(root, VNBENCH_FILE)
    base = os.path.dirname(path)
    items = []
    for i, rec in enumerate(_records(_read_json(path), path)):
        where = _where(path, i, rec)
        _need(rec, ("video", "question", "options", "gt", "type", "try"), where)
        options = _texts(rec["options"], where, "options", (4, 4))
        gt = _text(rec["gt"], where, "gt")
        if gt not in options:
            raise AnnotationError(f"{where}: gt {gt!r} is not one of its options")
        rot = rec["try"]
        if not (isinstance(rot, int) and not isinstance(rot, bool) and 0 <= rot <= 3):
            raise AnnotationError(f"{where}: try must be an integer 0..3, got {rot!r}")
        video = _text(rec["video"], where, "video")
        name = os.path.basename(video)
        cands = [video] if os.path.isabs(video) else [os.path.join(base, video), os.path.join(root, video)]
        cands += [os.path.join(root, sub, name) for sub in ("video", "videos", "")]
        question = _text(rec["question"], where, "question")
        stem = os.path.splitext(name)[0]
        items.append(
            EvalItem(
                id=f"{stem}#try{rot}",
                task="vnbench",
                category=_text(rec["type"], where, "type"),
                question=f"{question}\n{_lettered(options, 'dot')}\n{VNBENCH_POST}",
                answer=LETTERS[options.index(gt)],
                options=options,
                video=_find_video(cands),
                group=stem,
                rotation=rot,
                source=f"{path}#{i}",
            )
        )
    _check_unique(items)
    return Benchmark("vnbench", tuple(items), (path,))


_READERS = {
    "mlvu": read_mlvu,
    "videomme": read_videomme,
    "longvideobench": read_longvideobench,
    "vnbench": read_vnbench,
}


def load_benchmark(task: str, data_root: str, annotation: str | None = None, limit: int | None = None) -> Benchmark:
    """Read benchmark ``task`` (one of :data:`BENCHMARKS`) from ``data_root``; keep the first ``limit`` questions.

    Raises :class:`AnnotationError` (file or record problems) or ``ValueError`` (unknown task, bad limit).
    """
    if task not in _READERS:
        raise ValueError(f"unknown benchmark {task!r} (expected one of {', '.join(BENCHMARKS)})")
    return _READERS[task](data_root, annotation).limited(limit)
