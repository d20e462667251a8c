"""Official scorers for long-video benchmarks: VNBench, Video-MME, MLVU (dev, multiple choice), LongVideoBench.

The scoring functions (``parse_*``, ``extract_videomme_answer``, ``score_*``, :func:`format_score`) are pure: they
take samples or counts and return values, with no I/O. The loaders (:func:`load_log`, and :func:`parse_log_text`,
which does the parsing without touching the file system) turn public log files into :class:`Sample` records.
``vxlp score`` (:mod:`vxlp_model.eval.score_cli`) wires the two together. Every rule names its official source;
docs/scoring.md has the full list with commits, and the known quirks of each official script.

Log formats read (detected from the content, not the file name):

* **vxlp JSONL** — one JSON object per line: ``id``, ``task``, ``category``, ``pred``, ``answer`` and optionally
  ``group``, ``options``, ``subcategory``, ``try`` (see docs/scoring.md, "vxlp JSONL").
* **VNBench result JSONL** (joez17/VideoNIAH ``llava_examples``): ``video_path, prompt, pred, gt, task_type, try``.
* **lmms-eval ``log_samples``** — the per-task JSON (``{"args", "model_configs", "logs": [...]}``) or the JSONL
  of newer lmms-eval versions (one sample record per line); Video-MME, MLVU and LongVideoBench tasks.
* **Video-MME official results JSON** (the template of Video-MME's ``eval_your_results.py``): a list of videos
  with ``duration`` and ``questions`` (``question_id, task_type, answer, response``).
* **MLVU per-task summary JSON** (``{"plotQA": {"correct": .., "total": ..}, ...}``, as Video-XL-2's logs hold):
  counts only, for ``--task mlvu``.

Errors in the input raise :class:`ScoreInputError` (a ``ValueError``) whose message starts with ``FILE:LINE``.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "TASKS",
    "VIDEOMME_RULES",
    "VIDEOMME_DURATIONS",
    "VNBENCH_FAMILIES",
    "VNBENCH_ROTATIONS",
    "MLVU_TASKS",
    "ScoreInputError",
    "Sample",
    "Line",
    "Score",
    "LoadedLog",
    "extract_videomme_answer",
    "parse_vnbench_answer",
    "parse_mlvu_answer",
    "parse_longvideobench_answer",
    "score_videomme",
    "score_vnbench",
    "mlvu_task_counts",
    "score_mlvu_counts",
    "score_mlvu",
    "score_longvideobench",
    "score_samples",
    "score_logs",
    "format_score",
    "parse_log_text",
    "load_log",
]

TASKS = ("vnbench", "videomme", "mlvu", "longvideobench")
VIDEOMME_RULES = ("official", "lmms-eval")
VIDEOMME_DURATIONS = ("short", "medium", "long")
VNBENCH_FAMILIES = ("ret", "ord", "cnt")
VNBENCH_ROTATIONS = 4
MLVU_TASKS = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
# lmms-eval's MLVU task codes (lmms_eval/tasks/mlvu/utils.py TASK_TYPES) for the same 7 multiple-choice tasks.
_MLVU_CODES = {
    "PQA": "plotQA",
    "NQA": "needle",
    "ER": "ego",
    "AC": "count",
    "AO": "order",
    "AR": "anomaly_reco",
    "TR": "topic_reasoning",
}
_MLVU_LOOKUP = {t.lower(): t for t in MLVU_TASKS} | {k.lower(): v for k, v in _MLVU_CODES.items()}
# Keys of Video-XL-2's MLVU summary that are groupings of the 7 tasks, not tasks.
_MLVU_SUMMARY_GROUPS = {"holistic", "single", "multi", "global"}


class ScoreInputError(ValueError):
    """Bad scorer input: an unreadable or malformed file, a record of the wrong format or task, an invalid field.

    The message names the file and line (``FILE:LINE: ...``) when the input came from a file.
    """


@dataclass(frozen=True)
class Sample:
    """One model answer to one multiple-choice question.

    ``id``: unique per (question, rotation). ``category``: the reporting group — Video-MME duration
    (short/medium/long), LongVideoBench duration group, MLVU task, VNBench task type (e.g. ``ret_edit1``) or family
    (``ret``/``ord``/``cnt``). ``pred``: the raw generated text (None = no answer). ``answer``: the gold option
    letter. ``group``: VNBench only, the question id shared by its option rotations. ``options``: option texts in
    letter order (kept for reference; no official rule here reads them). ``subcategory``: an extra reporting group
    (LongVideoBench question category). ``where``: ``FILE:LINE`` of the record, for messages.
    """

    id: str
    category: str
    pred: str | None
    answer: str
    group: str | None = None
    options: tuple[str, ...] | None = None
    subcategory: str | None = None
    where: str = ""


@dataclass(frozen=True)
class Line:
    """One reported category: ``accuracy`` in percent, over ``correct``/``total``.

    ``unparsed``: predictions without a recognisable option letter that are counted wrong (inside ``total``);
    ``excluded``: unparsed predictions left out of ``total`` (Video-MME's official rule).
    """

    name: str
    accuracy: float
    correct: int
    total: int
    unparsed: int = 0
    excluded: int = 0


@dataclass(frozen=True)
class Score:
    """A benchmark score: per-category ``lines`` (printed in order), the official ``overall`` (percent), ``notes``."""

    task: str
    rule: str
    lines: tuple[Line, ...]
    overall: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedLog:
    """A parsed log file: its ``format`` name, its ``samples``, and (MLVU summaries only) per-task ``counts``
    as ``{task: (correct, total)}``."""

    path: str
    format: str
    samples: tuple[Sample, ...] = ()
    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Answer extraction (pure)
# ----------------------------------------------------------------------------------------------------------------

# Video-MME's answer prefixes, as the official script *executes* them: in its list two pairs of string literals
# lack a separating comma, so Python joins them ("The best option is" "The correct option is" is one string).
# Both the official script and lmms-eval have the same quirk; the official one later added four more prefixes.
_VIDEOMME_PREFIXES_LMMS_EVAL = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
_VIDEOMME_PREFIXES_OFFICIAL = _VIDEOMME_PREFIXES_LMMS_EVAL + (
    "Answer:",
    "Option:",
    "The correct answer",
    "The correct option",
)
_LETTER_ABCD = re.compile(r"[ABCD]")


def extract_videomme_answer(response: str | None, *, rule: str = "official") -> str:
    """The option letter (A–D) Video-MME's official extractor reads from a response, or ``""`` if unparsable.

    Rule (``extract_characters_regex``): strip whitespace; delete every occurrence of each answer prefix, in
    order; return the first upper-case A, B, C or D anywhere in what is left, else ``""``. (The script's extra
    "more than 10 words and no letter → ``""``" branch gives the same result and is folded in.) Case matters and
    the letter need not stand alone, so "Best answer: C" reads as "B" (the joined-prefix quirk above) and an
    answer in lower case is unparsable — exactly as in the official script.

    ``rule="official"``: the prefix list of the current official script, thanku-all/parse_answer
    ``eval_your_results.py`` @ afd52cf (linked from the Video-MME README; it replaced BradyFU/Video-MME
    ``evaluation/eval_your_results.py``), which also strips "Answer:", "Option:", "The correct answer",
    "The correct option". ``rule="lmms-eval"``: the shorter list of lmms-eval ``lmms_eval/tasks/videomme/utils.py``
    (v0.2–v0.5, e.g. bb3fd824; the version that wrote Video-XL-2's public logs — their ``pred_answer`` fields
    all agree with it). ``None`` reads as ``""``. Raises ``ValueError`` for an unknown rule.
    """
    prefixes = _videomme_prefixes(rule)
    if response is None:
        return ""
    s = response.strip()
    for prefix in prefixes:
        s = s.replace(prefix, "")
    m = _LETTER_ABCD.search(s)
    return m.group(0) if m else ""


def _videomme_prefixes(rule: str) -> tuple[str, ...]:
    if rule == "official":
        return _VIDEOMME_PREFIXES_OFFICIAL
    if rule == "lmms-eval":
        return _VIDEOMME_PREFIXES_LMMS_EVAL
    raise ValueError(f"unknown Video-MME rule {rule!r} (expected one of {', '.join(VIDEOMME_RULES)})")


_ANSWER_PHRASE = re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*[:：]?\s*\(?([ABCD])(?![A-Za-z])")
_STANDALONE_ABCD = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


def parse_vnbench_answer(pred: str | None) -> str:
    """The option letter (A–D) of a VNBench prediction, or ``""`` when there is none.

    Official rule (joez17/VideoNIAH ``llava_examples/evaluation_utils.py``, the script that scored the published
    LLaVA-OneVision result): the first character of ``pred`` is the answer (``pred[0] == gt``). It raises
    ``IndexError`` on an empty prediction and misreads text such as "The answer is B". vxlp keeps the official
    reading whenever it yields a letter that stands alone — after stripping whitespace, a first character A–D
    not followed by a letter ("B", "B.", "B) cat") — and otherwise falls back to the letter after "answer",
    "option" or "choice" ("The answer is (C)" → C), else the first stand-alone A–D. ``None``, empty or
    letter-free text → ``""`` (scored wrong).
    """
    if pred is None:
        return ""
    s = pred.strip()
    if not s:
        return ""
    if s[0] in "ABCD" and (len(s) == 1 or not s[1].isalpha()):
        return s[0]
    m = _ANSWER_PHRASE.search(s) or _STANDALONE_ABCD.search(s)
    return m.group(1) if m else ""


def parse_mlvu_answer(pred: str | None) -> str:
    """The option letter of an MLVU multiple-choice prediction, or ``""`` when there is none.

    Official rule (JUNJIE99/MLVU ``evaluation/multiple_choice_evaluation/choice_bench.py``, ``check_ans``; the
    prompt ends with "Best Option: ("): if the prediction contains ")", the answer is the character just before
    the first ")"; otherwise the whole prediction must be the letter. vxlp also strips surrounding whitespace
    first (the official script does not, so " A" would be wrong there). Returns an upper-case letter or ``""``;
    ``None`` → ``""``. "(B) dog" → B, "B) dog" → B, "B" → B, "B." → ``""`` (wrong, as officially).
    """
    if pred is None:
        return ""
    s = pred.strip()
    if ")" in s:
        i = s.index(")")
        s = s[i - 1 : i] if i > 0 else ""
    return s if len(s) == 1 and "A" <= s <= "Z" else ""


_LVB_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is",
    "The correct option is",
    "Best answer:",
    "Best option:",
)
_LETTER_ABCDE = re.compile(r"[ABCDE]")


def parse_longvideobench_answer(pred: str | None) -> str:
    """The option letter (A–E) of a LongVideoBench prediction, or ``""`` when there is none.

    Rule: lmms-eval ``lmms_eval/tasks/longvideobench/utils.py`` ``parse_multi_choice_response`` since c0bc79f1
    (Nov 2024, by LongVideoBench's first author: "same as original LongVideoBench paper"; the LongVideoBench
    README points to lmms-eval for evaluation): strip whitespace; delete every occurrence of each answer prefix
    ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
    "The correct option is", "Best answer:", "Best option:"); return the first upper-case A–E anywhere in what is
    left. So "D. A book" reads as D (the earlier MMMU-style parser read A). Deviation: where lmms-eval assigns a
    *random* letter to an unparsable response, vxlp returns ``""`` (scored wrong), so scores are deterministic.
    ``None`` → ``""``.
    """
    if pred is None:
        return ""
    s = pred.strip()
    for prefix in _LVB_PREFIXES:
        s = s.replace(prefix, "")
    m = _LETTER_ABCDE.search(s)
    return m.group(0) if m else ""


# ----------------------------------------------------------------------------------------------------------------
# Scoring (pure)
# ----------------------------------------------------------------------------------------------------------------


def _pct(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else 0.0


def _where(s: Sample) -> str:
    return s.where or f"sample {s.id!r}"


def _check_samples(samples: Sequence[Sample]) -> None:
    if not samples:
        raise ScoreInputError("no samples to score")
    seen: dict[str, Sample] = {}
    for s in samples:
        prev = seen.get(s.id)
        if prev is not None:
            raise ScoreInputError(f"{_where(s)}: duplicate sample id {s.id!r} (first seen at {_where(prev)})")
        seen[s.id] = s


def score_videomme(samples: Iterable[Sample], *, rule: str = "official") -> Score:
    """Video-MME accuracy per duration (short, medium, long) and overall, pooled over questions.

    Inputs: samples whose ``category`` is the duration and ``answer`` the gold letter; ``rule``:

    * ``"official"`` (default) — thanku-all/parse_answer ``eval_your_results.py`` (the script the Video-MME
      README links): answers are read by :func:`extract_videomme_answer` (official prefixes) and an **unparsable
      answer is left out of the denominator** (only "answered" questions count). Overall = all correct / all
      answered (pooled, not the mean of the three durations).
    * ``"lmms-eval"`` — lmms-eval ``videomme_process_results`` / ``videomme_aggregate_results`` (v0.2–v0.5): its
      prefix list, and **every question counts**: an unparsable answer is wrong.

    Output: a :class:`Score` with one :class:`Line` per duration present and the pooled ``overall``.
    Raises :class:`ScoreInputError` for no samples, duplicate ids or a duration other than short/medium/long;
    ``ValueError`` for an unknown rule.
    """
    _videomme_prefixes(rule)
    samples = list(samples)
    _check_samples(samples)
    stats: dict[str, list[int]] = {}  # duration -> [correct, answered, unparsed]
    for s in samples:
        if s.category not in VIDEOMME_DURATIONS:
            raise ScoreInputError(
                f"{_where(s)}: Video-MME category must be one of {', '.join(VIDEOMME_DURATIONS)}, got {s.category!r}"
            )
        letter = extract_videomme_answer(s.pred, rule=rule)
        st = stats.setdefault(s.category, [0, 0, 0])
        if letter == "":
            st[2] += 1
            if rule == "official":
                continue
        st[1] += 1
        st[0] += letter == s.answer
    lines = []
    for d in VIDEOMME_DURATIONS:
        if d in stats:
            c, n, u = stats[d]
            excluded = u if rule == "official" else 0
            lines.append(Line(d, _pct(c, n), c, n, unparsed=u - excluded, excluded=excluded))
    correct = sum(st[0] for st in stats.values())
    answered = sum(st[1] for st in stats.values())
    notes = []
    unparsed = sum(st[2] for st in stats.values())
    if unparsed:
        how = "left out of the denominator (official rule)" if rule == "official" else "counted wrong (lmms-eval rule)"
        notes.append(f"{unparsed} unparsable answer(s) {how}")
    if answered == 0:
        notes.append("no answer could be parsed; accuracy reported as 0")
    return Score("videomme", rule, tuple(lines), _pct(correct, answered), tuple(notes))


def _vnbench_family(category: str) -> str | None:
    head = category.split("_", 1)[0]
    return head if head in VNBENCH_FAMILIES else None


def score_vnbench(samples: Iterable[Sample]) -> Score:
    """VNBench accuracy: per task type, per family (ret, ord, cnt) and overall.

    Inputs: one sample per option rotation; ``group`` is the question (shared by its rotations), ``category`` the
    task type (``ret_edit1``, ``ord_insert2``, ...; its prefix before "_" is the family) or a family itself.
    Rules (joez17/VideoNIAH ``llava_examples/evaluation_utils.py`` ``get_detail_result``; VNBench paper,
    arXiv 2406.09367): a question counts as correct only if **all 4 rotations** are answered correctly (letters
    by :func:`parse_vnbench_answer`); a task type's accuracy is over its questions; a family's is the **mean of
    its task types' accuracies**; ``overall`` is the **mean of the three families**. On the official set (150
    questions per task type) this equals the accuracy over all questions, which is also reported, as
    ``sample_weighted``. A question with fewer than 4 rotations cannot be fully right: it counts wrong (noted).

    Output: lines for each task type, each family, ``sample_weighted``; ``overall``. A family line's
    (correct/total) counts questions. Raises :class:`ScoreInputError` for no samples, duplicate ids, a missing
    ``group``, an unknown family, rotations of one question with different task types, or more than 4
    rotations.
    """
    samples = list(samples)
    _check_samples(samples)
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        if not s.group:
            raise ScoreInputError(
                f"{_where(s)}: a VNBench sample needs a 'group' (the question id its rotations share)"
            )
        if _vnbench_family(s.category) is None:
            raise ScoreInputError(
                f"{_where(s)}: VNBench task type {s.category!r} is in none of the families "
                f"{', '.join(VNBENCH_FAMILIES)} (expected e.g. ret_edit1, ord_insert2, cnt_edit1)"
            )
        rows = groups.setdefault(s.group, [])
        if rows and rows[0].category != s.category:
            raise ScoreInputError(
                f"{_where(s)}: question {s.group!r} has task type {s.category!r} here but "
                f"{rows[0].category!r} at {_where(rows[0])}"
            )
        rows.append(s)
        if len(rows) > VNBENCH_ROTATIONS:
            raise ScoreInputError(f"{_where(s)}: question {s.group!r} has more than {VNBENCH_ROTATIONS} rotations")
    per_type: dict[str, list[int]] = {}  # task type -> [correct questions, questions, unparsed predictions]
    incomplete = 0
    for rows in groups.values():
        st = per_type.setdefault(rows[0].category, [0, 0, 0])
        letters = [parse_vnbench_answer(r.pred) for r in rows]
        st[2] += sum(x == "" for x in letters)
        complete = len(rows) == VNBENCH_ROTATIONS
        incomplete += not complete
        st[0] += complete and all(x == r.answer for x, r in zip(letters, rows))
        st[1] += 1
    lines = []
    for t in sorted(per_type, key=lambda t: (VNBENCH_FAMILIES.index(_vnbench_family(t)), t)):
        if t not in VNBENCH_FAMILIES:
            c, n, u = per_type[t]
            lines.append(Line(t, _pct(c, n), c, n, unparsed=u))
    family_acc = {}
    for f in VNBENCH_FAMILIES:
        types = [t for t in per_type if _vnbench_family(t) == f]
        if types:
            family_acc[f] = sum(_pct(per_type[t][0], per_type[t][1]) for t in types) / len(types)
            c = sum(per_type[t][0] for t in types)
            n = sum(per_type[t][1] for t in types)
            u = sum(per_type[t][2] for t in types)
            lines.append(Line(f, family_acc[f], c, n, unparsed=u))
    c = sum(st[0] for st in per_type.values())
    n = sum(st[1] for st in per_type.values())
    lines.append(Line("sample_weighted", _pct(c, n), c, n, unparsed=sum(st[2] for st in per_type.values())))
    notes = []
    if incomplete:
        notes.append(f"{incomplete} question(s) with fewer than {VNBENCH_ROTATIONS} rotations counted wrong")
    if len(family_acc) < len(VNBENCH_FAMILIES):
        missing = [f for f in VNBENCH_FAMILIES if f not in family_acc]
        notes.append(f"overall is the mean of {len(family_acc)} famil(ies); missing: {', '.join(missing)}")
    return Score("vnbench", "official", tuple(lines), sum(family_acc.values()) / len(family_acc), tuple(notes))


def _mlvu_task(name: str) -> str | None:
    return _MLVU_LOOKUP.get(name.strip().lower())


def mlvu_task_counts(samples: Iterable[Sample]) -> dict[str, tuple[int, int, int]]:
    """Per MLVU task, ``(correct, total, unparsed)`` with letters read by :func:`parse_mlvu_answer`.

    ``category`` is the task: one of :data:`MLVU_TASKS` or lmms-eval's code (PQA, NQA, ER, AC, AO, AR, TR),
    case-insensitive. Raises :class:`ScoreInputError` for no samples, duplicate ids or another task (the
    generation tasks sub_scene / summary are not multiple-choice).
    """
    samples = list(samples)
    _check_samples(samples)
    out: dict[str, list[int]] = {}
    for s in samples:
        task = _mlvu_task(s.category)
        if task is None:
            raise ScoreInputError(
                f"{_where(s)}: MLVU task {s.category!r} is not one of the 7 multiple-choice tasks "
                f"({', '.join(MLVU_TASKS)})"
            )
        letter = parse_mlvu_answer(s.pred)
        st = out.setdefault(task, [0, 0, 0])
        st[0] += letter == s.answer
        st[1] += 1
        st[2] += letter == ""
    return {t: (c, n, u) for t, (c, n, u) in out.items()}


def score_mlvu_counts(counts: Mapping[str, Sequence[int]]) -> Score:
    """MLVU (dev, multiple choice) M-Avg from per-task counts.

    Inputs: ``{task: (correct, total)}`` or ``(correct, total, unparsed)``; tasks as in :func:`mlvu_task_counts`.
    Rule (MLVU paper, arXiv 2406.04264, "M-Avg"; JUNJIE99/MLVU ``choice_bench.py``: ``final_res['Avg']`` = sum of
    the per-task accuracies / number of tasks): ``overall`` = **mean of the 7 task accuracies**. The accuracy over
    all questions — what Video-XL-2's ``results.json`` reports as its MLVU score — is also given, as the line
    ``sample_weighted``; it is not the official number. Output: one line per task (official order),
    ``sample_weighted``, ``overall``; a note names any missing task (M-Avg then averages those present).
    Raises :class:`ScoreInputError` for an unknown task, a count that is not an integer, ``total <= 0`` or
    ``correct`` outside ``0..total``, or no counts.
    """
    norm: dict[str, list[int]] = {}
    for name, value in counts.items():
        task = _mlvu_task(name)
        if task is None:
            raise ScoreInputError(f"MLVU task {name!r} is not one of {', '.join(MLVU_TASKS)}")
        vals = list(value)
        if len(vals) == 2:
            vals.append(0)
        if len(vals) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise ScoreInputError(f"MLVU task {name!r}: counts must be integers (correct, total[, unparsed])")
        c, n, u = vals
        if n <= 0 or not 0 <= c <= n or not 0 <= u <= n:
            raise ScoreInputError(f"MLVU task {name!r}: invalid counts correct={c}, total={n}")
        st = norm.setdefault(task, [0, 0, 0])
        for i, v in enumerate((c, n, u)):
            st[i] += v
    if not norm:
        raise ScoreInputError("no MLVU tasks to score")
    lines = [Line(t, _pct(*norm[t][:2]), norm[t][0], norm[t][1], unparsed=norm[t][2]) for t in MLVU_TASKS if t in norm]
    c = sum(st[0] for st in norm.values())
    n = sum(st[1] for st in norm.values())
    u = sum(st[2] for st in norm.values())
    lines.append(Line("sample_weighted", _pct(c, n), c, n, unparsed=u))
    m_avg = sum(_pct(st[0], st[1]) for st in norm.values()) / len(norm)
    notes = []
    if len(norm) < len(MLVU_TASKS):
        missing = [t for t in MLVU_TASKS if t not in norm]
        notes.append(f"M-Avg over {len(norm)} of {len(MLVU_TASKS)} tasks; missing: {', '.join(missing)}")
    return Score("mlvu", "official", tuple(lines), m_avg, tuple(notes))


def score_mlvu(samples: Iterable[Sample]) -> Score:
    """MLVU M-Avg from samples: :func:`score_mlvu_counts` of :func:`mlvu_task_counts` (see both for rules/errors)."""
    return score_mlvu_counts(mlvu_task_counts(samples))


def _numeric_key(name: str) -> tuple[int, float, str]:
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def score_longvideobench(samples: Iterable[Sample]) -> Score:
    """LongVideoBench accuracy per duration group, per question category (when given) and overall.

    Inputs: samples with ``category`` = duration group (lmms-eval: 15, 60, 600, 3600 — upper bounds in
    seconds) and optional ``subcategory`` = question category (e.g. S2E, T3O).
    Rule (lmms-eval ``lmms_eval/tasks/longvideobench/utils.py``: ``evaluate_longvideobench``,
    ``longvideobench_aggregate_results``): letters by :func:`parse_longvideobench_answer`; accuracy = correct /
    all questions in the group; ``overall`` = correct / all questions (lmms-eval's instance-weighted mean over
    groups is the same number). Unparsable answers are wrong (lmms-eval guesses at random instead).
    Output: lines ``duration_<group>`` (numeric order), then question categories (sorted); ``overall``.
    Raises :class:`ScoreInputError` for no samples or duplicate ids.
    """
    samples = list(samples)
    _check_samples(samples)
    by_dur: dict[str, list[int]] = {}
    by_cat: dict[str, list[int]] = {}
    for s in samples:
        letter = parse_longvideobench_answer(s.pred)
        ok, bad = letter == s.answer, letter == ""
        keys = [(by_dur, s.category)] + ([(by_cat, s.subcategory)] if s.subcategory else [])
        for table, key in keys:
            st = table.setdefault(key, [0, 0, 0])
            st[0] += ok
            st[1] += 1
            st[2] += bad
    lines = [Line(f"duration_{d}", _pct(*by_dur[d][:2]), by_dur[d][0], by_dur[d][1], unparsed=by_dur[d][2])
             for d in sorted(by_dur, key=_numeric_key)]
    lines += [Line(k, _pct(*by_cat[k][:2]), by_cat[k][0], by_cat[k][1], unparsed=by_cat[k][2]) for k in sorted(by_cat)]
    c = sum(st[0] for st in by_dur.values())
    n = sum(st[1] for st in by_dur.values())
    return Score("longvideobench", "official", tuple(lines), _pct(c, n))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ScoreInputError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")


def score_samples(task: str, samples: Iterable[Sample], *, rule: str | None = None) -> Score:
    """Score ``samples`` with the official rules of ``task`` (one of :data:`TASKS`).

    ``rule`` applies to Video-MME only (``"official"`` by default, or ``"lmms-eval"``). Raises
    :class:`ScoreInputError` for an unknown task, a rule given for another task, or the scorer's own errors.
    """
    _check_task(task)
    if task == "videomme":
        if rule is not None and rule not in VIDEOMME_RULES:
            raise ScoreInputError(f"unknown Video-MME rule {rule!r} (expected one of {', '.join(VIDEOMME_RULES)})")
        return score_videomme(samples, rule=rule or "official")
    if rule is not None:
        raise ScoreInputError(f"--rule applies to --task videomme only, not {task}")
    if task == "vnbench":
        return score_vnbench(samples)
    if task == "mlvu":
        return score_mlvu(samples)
    return score_longvideobench(samples)


def score_logs(logs: Iterable[LoadedLog], task: str, *, rule: str | None = None) -> Score:
    """Score the samples (and, for MLVU, the per-task counts) of loaded logs together.

    Same rules and errors as :func:`score_samples`; MLVU summary counts are added to the samples' counts.
    Raises :class:`ScoreInputError` if the logs hold nothing to score or counts come with a task other than MLVU.
    """
    logs = list(logs)
    _check_task(task)
    samples = [s for log in logs for s in log.samples]
    summaries = [log for log in logs if log.counts]
    if not summaries:
        if not samples:
            where = f" in {', '.join(log.path for log in logs)}" if logs else ""
            raise ScoreInputError(f"no samples to score{where}")
        return score_samples(task, samples, rule=rule)
    if task != "mlvu":
        raise ScoreInputError(f"{summaries[0].path}: per-task counts can only be scored with --task mlvu")
    if rule is not None:
        raise ScoreInputError("--rule applies to --task videomme only, not mlvu")
    merged: dict[str, list[int]] = {}
    if samples:
        for t, (c, n, u) in mlvu_task_counts(samples).items():
            merged[t] = [c, n, u]
    for log in summaries:
        for t, (c, n) in log.counts.items():
            st = merged.setdefault(t, [0, 0, 0])
            st[0] += c
            st[1] += n
    return score_mlvu_counts(merged)


def format_score(score: Score) -> str:
    """The report printed by ``vxlp score``: one line per category, ``name  NN.NN  (correct/total)``, followed
    (when there are unparsable answers) by ``[N unparsed: counted wrong]`` or ``[N unparsed: excluded]``; the
    last line is ``overall NN.NN``. No trailing newline."""
    width = max((len(line.name) for line in score.lines), default=0)
    out = []
    for line in score.lines:
        text = f"{line.name:<{width}}  {line.accuracy:6.2f}  ({line.correct}/{line.total})"
        if line.unparsed:
            text += f"  [{line.unparsed} unparsed: counted wrong]"
        if line.excluded:
            text += f"  [{line.excluded} unparsed: excluded]"
        out.append(text)
    out.append(f"overall {score.overall:.2f}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------------------

_GOLD = re.compile(r"^\(?([A-Z])\)?(?:$|[\s.:)])")
_LMMS_TASK_PREFIX = {"videomme": "videomme", "mlvu": "mlvu", "longvideobench": "longvideobench"}
_VNBENCH_KEYS = ("video_path", "pred", "gt", "task_type", "try")
_VXLP_KEYS = ("id", "task", "category", "pred", "answer")


def _gold_letter(value: object, where: str, field_name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 26:
        return chr(ord("A") + value)
    if isinstance(value, str):
        m = _GOLD.match(value.strip())
        if m:
            return m.group(1)
    raise ScoreInputError(f"{where}: {field_name} must be an option letter (A, B, ...), got {value!r}")


def _text_or_none(value: object, where: str, field_name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ScoreInputError(f"{where}: {field_name} must be a string (the generated text) or null, got {value!r}")


def _label(value: object, where: str, field_name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ScoreInputError(f"{where}: {field_name} must be a non-empty string, got {value!r}")


def _options(value: object, where: str, field_name: str = "options") -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(o, str) for o in value):
        return tuple(value)
    raise ScoreInputError(f"{where}: {field_name} must be a list of strings, got {value!r}")


def _missing(obj: Mapping, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k not in obj]


def _record_kind(obj: Mapping) -> str | None:
    if "doc" in obj and ("filtered_resps" in obj or "resps" in obj):
        return "lmms-eval"
    if "task" in obj and "answer" in obj:
        return "vxlp"
    if all(k in obj for k in ("video_path", "gt", "task_type")):
        return "vnbench"
    return None


_KIND_NAMES = {
    "lmms-eval": "an lmms-eval sample record",
    "vxlp": "a vxlp JSONL record",
    "vnbench": "a VNBench result line",
}


def _from_vxlp(obj: Mapping, task: str, where: str) -> Sample:
    missing = _missing(obj, _VXLP_KEYS)
    if missing:
        raise ScoreInputError(f"{where}: vxlp record lacks {', '.join(missing)} (needs {', '.join(_VXLP_KEYS)})")
    if obj["task"] != task:
        raise ScoreInputError(f"{where}: record of task {obj['task']!r}, but --task is {task}")
    group = obj.get("group")
    if task == "vnbench" and group is None:
        raise ScoreInputError(f"{where}: a vnbench record needs 'group' (the question id its rotations share)")
    sub = obj.get("subcategory")
    return Sample(
        id=_label(obj["id"], where, "id"),
        category=_label(obj["category"], where, "category"),
        pred=_text_or_none(obj["pred"], where, "pred"),
        answer=_gold_letter(obj["answer"], where, "answer"),
        group=None if group is None else _label(group, where, "group"),
        options=_options(obj.get("options"), where),
        subcategory=None if sub is None else _label(sub, where, "subcategory"),
        where=where,
    )


def _from_vnbench(obj: Mapping, task: str, where: str) -> Sample:
    if task != "vnbench":
        raise ScoreInputError(f"{where}: a VNBench result line ({', '.join(_VNBENCH_KEYS)}), but --task is {task}")
    missing = _missing(obj, _VNBENCH_KEYS)
    if missing:
        raise ScoreInputError(f"{where}: VNBench result line lacks {', '.join(missing)}")
    rot = obj["try"]
    if not (isinstance(rot, int) and not isinstance(rot, bool) and 0 <= rot < VNBENCH_ROTATIONS):
        raise ScoreInputError(f"{where}: 'try' must be an integer 0..{VNBENCH_ROTATIONS - 1}, got {rot!r}")
    video = _label(obj["video_path"], where, "video_path")
    return Sample(
        id=f"{video}#try{rot}",
        category=_label(obj["task_type"], where, "task_type"),
        pred=_text_or_none(obj["pred"], where, "pred"),
        answer=_gold_letter(obj["gt"], where, "gt"),
        group=video,
        where=where,
    )


def _lmms_pred(rec: Mapping, where: str) -> str | None:
    value = rec.get("filtered_resps")
    if value is None:
        value = rec.get("resps")
    while isinstance(value, list):
        if not value:
            return None
        value = value[0]
    return _text_or_none(value, where, "filtered_resps[0]")


def _lmms_task_name(rec: Mapping) -> str | None:
    args = rec.get("arguments")
    if isinstance(args, list) and len(args) >= 4 and isinstance(args[3], str):
        return args[3]
    return None


def _check_lmms_task(log_task: str | None, task: str, where: str) -> None:
    prefix = _LMMS_TASK_PREFIX.get(task)
    if prefix is None:
        raise ScoreInputError(f"{where}: an lmms-eval log, but --task {task} has no lmms-eval log format here")
    if log_task is not None and not log_task.lower().startswith(prefix):
        raise ScoreInputError(f"{where}: an lmms-eval log of task {log_task!r}, but --task is {task}")


def _from_lmms_eval(rec: Mapping, task: str, where: str, log_task: str | None) -> Sample:
    _check_lmms_task(_lmms_task_name(rec) or log_task, task, where)
    doc = rec["doc"]
    if not isinstance(doc, dict):
        raise ScoreInputError(f"{where}: lmms-eval sample's 'doc' is not an object")
    pred = _lmms_pred(rec, where)
    needs = {"videomme": ("answer", "duration"), "mlvu": ("answer", "task_type"),
             "longvideobench": ("correct_choice", "duration_group")}[task]
    missing = _missing(doc, needs)
    if missing:
        raise ScoreInputError(
            f"{where}: lmms-eval sample has no doc field {', '.join(missing)} (is this a {task} log?)"
        )
    doc_id = rec.get("doc_id")
    fallback_id = f"{log_task or _lmms_task_name(rec) or task}#{doc_id}"
    if task == "videomme":
        return Sample(
            id=str(doc.get("question_id", fallback_id)),
            category=_label(doc["duration"], where, "doc.duration"),
            pred=pred,
            answer=_gold_letter(doc["answer"], where, "doc.answer"),
            where=where,
        )
    if task == "mlvu":
        return Sample(
            id=str(doc.get("question_id", fallback_id)),
            category=_label(doc["task_type"], where, "doc.task_type"),
            pred=pred,
            answer=_gold_letter(doc["answer"], where, "doc.answer"),
            where=where,
        )
    options = []
    for i in range(5):
        o = doc.get(f"option{i}")
        if o is None or o == "N/A":  # lmms-eval stops at the first "N/A"
            break
        options.append(str(o))
    sub = doc.get("question_category")
    return Sample(
        id=str(doc.get("id", fallback_id)),
        category=_label(doc["duration_group"], where, "doc.duration_group"),
        pred=pred,
        answer=_gold_letter(doc["correct_choice"], where, "doc.correct_choice"),
        options=tuple(options) or None,
        subcategory=None if sub is None else _label(sub, where, "doc.question_category"),
        where=where,
    )


def _key_lines(text: str, key: str, n: int) -> list[int] | None:
    """Line numbers of the ``n`` occurrences of the JSON key ``key`` (None unless there are exactly ``n``).

    A key inside a JSON string has escaped quotes, so ``"key":`` only matches real keys."""
    starts = [m.start() for m in re.finditer(r'"' + re.escape(key) + r'"\s*:', text)]
    if len(starts) != n:
        return None
    newlines = [m.start() for m in re.finditer("\n", text)]
    return [bisect.bisect_left(newlines, p) + 1 for p in starts]


def _lmms_eval_json(whole: Mapping, text: str, task: str, name: str) -> LoadedLog:
    logs = whole["logs"]
    if not isinstance(logs, list):
        raise ScoreInputError(f"{name}: 'logs' is not a list of samples")
    log_task = None
    cfg = whole.get("model_configs")
    if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
        log_task = cfg["task"]
    _check_lmms_task(log_task, task, name)
    lines = _key_lines(text, "doc_id", len(logs))
    samples = []
    for i, rec in enumerate(logs):
        where = f"{name}:{lines[i]}" if lines else f"{name}: logs[{i}]"
        if not isinstance(rec, dict) or _record_kind(rec) != "lmms-eval":
            raise ScoreInputError(f"{where}: logs[{i}] is not an lmms-eval sample (needs doc and filtered_resps)")
        samples.append(_from_lmms_eval(rec, task, where, log_task))
    if not samples:
        raise ScoreInputError(f"{name}: lmms-eval log with no samples")
    return LoadedLog(name, "lmms-eval-json", tuple(samples))


def _is_videomme_official(whole: object) -> bool:
    return isinstance(whole, list) and bool(whole) and all(isinstance(v, dict) and "questions" in v for v in whole)


def _videomme_official_json(whole: list, text: str, task: str, name: str) -> LoadedLog:
    if task != "videomme":
        raise ScoreInputError(f"{name}: a Video-MME results file (videos with 'questions'), but --task is {task}")
    total = sum(len(v["questions"]) if isinstance(v["questions"], list) else 0 for v in whole)
    lines = _key_lines(text, "question_id", total)
    samples, k = [], 0
    for i, video in enumerate(whole):
        qs = video["questions"]
        if not isinstance(qs, list):
            raise ScoreInputError(f"{name}: [{i}].questions is not a list")
        duration = _label(video.get("duration"), f"{name}: [{i}]", "duration")
        for j, q in enumerate(qs):
            where = f"{name}:{lines[k]}" if lines else f"{name}: [{i}].questions[{j}]"
            k += 1
            if not isinstance(q, dict):
                raise ScoreInputError(f"{where}: a question is not an object")
            missing = _missing(q, ("question_id", "answer", "response"))
            if missing:
                raise ScoreInputError(f"{where}: question lacks {', '.join(missing)}")
            samples.append(Sample(
                id=_label(q["question_id"], where, "question_id"),
                category=duration,
                pred=_text_or_none(q["response"], where, "response"),
                answer=_gold_letter(q["answer"], where, "answer"),
                where=where,
            ))
    return LoadedLog(name, "videomme-official-json", tuple(samples))


def _is_mlvu_summary(whole: object) -> bool:
    return (
        isinstance(whole, dict)
        and bool(whole)
        and all(isinstance(v, dict) and "total" in v and "correct" in v for v in whole.values())
    )


def _mlvu_summary(whole: Mapping, task: str, name: str) -> LoadedLog:
    if task != "mlvu":
        raise ScoreInputError(f"{name}: an MLVU per-task summary (correct/total per task), but --task is {task}")
    counts: dict[str, tuple[int, int]] = {}
    for key, v in whole.items():
        if key.lower() in _MLVU_SUMMARY_GROUPS:
            continue
        t = _mlvu_task(key)
        if t is None:
            raise ScoreInputError(f"{name}: unknown MLVU task {key!r} in the summary")
        c, n = v["correct"], v["total"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (c, n)) or n <= 0 or not 0 <= c <= n:
            raise ScoreInputError(f"{name}: task {key!r}: invalid counts correct={c!r}, total={n!r}")
        counts[t] = (c, n)
    if not counts:
        raise ScoreInputError(f"{name}: an MLVU summary without per-task counts")
    return LoadedLog(name, "mlvu-summary-json", (), counts)


def _jsonl_objects(text: str, name: str) -> list[tuple[int, object]]:
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may occur inside strings
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ScoreInputError(f"{name}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    return out


def _records(objects: list[tuple[int, object]], task: str, name: str) -> LoadedLog:
    samples: list[Sample] = []
    kind = None
    log_task = None
    for lineno, obj in objects:
        where = f"{name}:{lineno}"
        if not isinstance(obj, dict):
            raise ScoreInputError(f"{where}: expected one JSON object per line, got {type(obj).__name__}")
        k = _record_kind(obj)
        if k is None:
            keys = ", ".join(sorted(obj)[:8])
            raise ScoreInputError(
                f"{where}: unrecognised record (keys: {keys}); expected vxlp JSONL ({', '.join(_VXLP_KEYS)}), "
                f"a VNBench result line ({', '.join(_VNBENCH_KEYS)}) or an lmms-eval sample (doc, filtered_resps)"
            )
        if kind is None:
            kind = k
        elif k != kind:
            raise ScoreInputError(f"{where}: {_KIND_NAMES[k]} in a file of {_KIND_NAMES[kind]}s")
        if k == "vxlp":
            samples.append(_from_vxlp(obj, task, where))
        elif k == "vnbench":
            samples.append(_from_vnbench(obj, task, where))
        else:
            log_task = _lmms_task_name(obj) or log_task
            samples.append(_from_lmms_eval(obj, task, where, log_task))
    if not samples:
        raise ScoreInputError(f"{name}: no records")
    fmt = {"vxlp": "vxlp-jsonl", "vnbench": "vnbench-jsonl", "lmms-eval": "lmms-eval-jsonl"}[kind]
    return LoadedLog(name, fmt, tuple(samples))


def parse_log_text(text: str, task: str, name: str = "<input>") -> LoadedLog:
    """Parse the text of a log file (any supported format, detected from the content) for ``task``.

    ``name`` is used in messages. Output: a :class:`LoadedLog`. Raises :class:`ScoreInputError` naming
    ``name:line`` for: empty or non-JSON text, invalid JSON, an unrecognised record, a file mixing record kinds,
    a record or file of another task or benchmark (e.g. a VNBench file with ``--task videomme``), an lmms-eval
    ``results.json`` (aggregates only), a missing or invalid field, or an unknown task.
    """
    _check_task(task)
    stripped = text.strip()
    if not stripped:
        raise ScoreInputError(f"{name}: empty file")
    if stripped[0] not in "[{":
        raise ScoreInputError(f"{name}:1: not JSON or JSON Lines (starts with {stripped[:20]!r})")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        whole_error = e
        whole = None
    else:
        whole_error = None
    if whole_error is not None:
        first = next(line for line in text.split("\n") if line.strip()).strip()
        if first in ("{", "["):  # pretty-printed JSON: the whole-file error is the useful one
            e = whole_error
            raise ScoreInputError(f"{name}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})")
        return _records(_jsonl_objects(text, name), task, name)
    if isinstance(whole, dict):
        if isinstance(whole.get("logs"), list):
            return _lmms_eval_json(whole, text, task, name)
        if "results" in whole and ("configs" in whole or "versions" in whole):
            raise ScoreInputError(
                f"{name}: an lmms-eval results.json (aggregate scores only); pass the per-sample log "
                "(lmms-eval --log_samples) instead"
            )
        if _is_mlvu_summary(whole):
            return _mlvu_summary(whole, task, name)
        first_line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        return _records([(first_line, whole)], task, name)  # a one-record JSONL file (or one pretty-printed record)
    if _is_videomme_official(whole):
        return _videomme_official_json(whole, text, task, name)
    raise ScoreInputError(f"{name}:1: a JSON {type(whole).__name__} is not a supported log format")


def load_log(path: str | os.PathLike, task: str) -> LoadedLog:
    """Read and parse one log file for ``task`` (see :func:`parse_log_text` for the formats and errors).

    Raises :class:`ScoreInputError` also for a missing file, a directory, an unreadable file or non-UTF-8 text.
    """
    name = os.fspath(path)
    _check_task(task)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ScoreInputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ScoreInputError(f"{name}: is a directory, not a log file") from None
    except OSError as e:
        raise ScoreInputError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ScoreInputError(f"{name}:{line}: not UTF-8 text") from None
    return parse_log_text(text, task, name)
