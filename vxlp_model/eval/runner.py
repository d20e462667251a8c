"""Resumable, batched, deterministic evaluation: the engine behind ``vxlp eval``.

Given :class:`~vxlp_model.eval.benchmarks.EvalItem` s, a model and its processor, :func:`answer_items` decodes each
item's video (PyAV via :func:`vxlp_model.read_video`, sampled at the processor's ``fps`` / ``max_frames`` unless
told otherwise), asks the questions in batches with greedy decoding and appends one JSON line per answer to an
append-only log (``flush`` + ``fsync`` per line). The output folder holds:

* ``run.json`` — the settings the answers depend on (model, task, sampling, decoding); a resumed run must match
  them, so answers of two different runs are never mixed;
* ``answers.part-<rank>.jsonl`` — each process's log while it runs (one writer per file);
* ``answers.jsonl`` — all answers, merged and sorted by id (natural order), written atomically at the end;
* ``score.json`` + ``score.png`` (benchmarks, scored by :mod:`vxlp_model.eval.scoring`) or ``niah.json`` +
  ``niah.png`` (the needle grid); ``missing_videos.txt`` when videos were not found.

Resume: on start every log in the folder is read; answered ids are never asked again. A kill in the middle of a
write leaves a last line without its newline: it is dropped (the file is cut back to the last complete line), so
the answer is asked again once and never duplicated. Under ``torchrun`` rank ``r`` of ``W`` takes the items with
index ``i % W == r``, writes its own part file, and rank 0 merges after a barrier (torch.distributed, gloo on CPU,
NCCL on GPU).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch

from ..processing import conversation
from ..train.state import write_atomic
from ..video import VideoDecodeError, read_video
from .benchmarks import EvalItem

__all__ = [
    "EvalError",
    "ANSWERS",
    "RUN_FILE",
    "part_path",
    "read_answer_log",
    "AnswerLog",
    "answered_records",
    "check_run_config",
    "answer_items",
    "merge_answers",
    "natural_key",
    "write_json_atomic",
    "plot_scores",
    "Distributed",
]

ANSWERS = "answers.jsonl"
RUN_FILE = "run.json"
MISSING_FILE = "missing_videos.txt"
_PART = re.compile(r"^answers\.part-(\d+)\.jsonl$")
# settings that change answers: a resumed run must match them (batch size, device and --limit may differ)
RUN_KEYS = ("task", "model", "fps", "max_frames", "max_new_tokens", "generate", "dtype", "prompt_format", "niah")


class EvalError(ValueError):
    """Bad input or state for an evaluation run (the message names the file or argument)."""


def part_path(out_dir: str, rank: int) -> str:
    """The log file process ``rank`` appends to: ``OUT/answers.part-<rank>.jsonl``."""
    return os.path.join(out_dir, f"answers.part-{rank}.jsonl")


def natural_key(text: str) -> list:
    """Sort key putting ``"a2"`` before ``"a10"`` (digit runs compare as numbers)."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(text)))]


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _write_lines_atomic(path: str, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))


def read_answer_log(path: str, repair: bool = False) -> list[dict]:
    """The records of an answer log (JSON Lines); ``[]`` if the file does not exist.

    Only lines ending in a newline count: bytes after the last newline are the remains of a write cut short by a
    kill. With ``repair`` they are removed from the file (truncated to the last complete line); without, they are
    ignored. Raises :class:`EvalError` (``FILE:LINE``) for a complete line that is not a JSON object with an
    ``id`` — corruption that resuming must not paper over.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EvalError(f"{path}: cannot read the answer log ({e.strerror or e})") from None
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EvalError(f"{path}:{lineno}: corrupt answer line ({e}); move the file away to start over") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise EvalError(f"{path}:{lineno}: not an answer record (a JSON object with an 'id')")
        records.append(rec)
    return records


class AnswerLog:
    """An append-only answer log: :meth:`append` writes one JSON line and makes it durable (flush + fsync).

    Opening repairs a cut-short last line (see :func:`read_answer_log`). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, path: str):
        self.path = path
        read_answer_log(path, repair=True)
        self._f = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _log_files(out_dir: str) -> list[str]:
    parts = sorted((n for n in os.listdir(out_dir) if _PART.match(n)), key=natural_key) if os.path.isdir(out_dir) else []
    files = [os.path.join(out_dir, ANSWERS)] + [os.path.join(out_dir, n) for n in parts]
    return [f for f in files if os.path.exists(f)]


def answered_records(out_dir: str) -> dict[str, dict]:
    """Every answer recorded in ``out_dir`` (the merged log and all part logs), by id.

    The same id in two files is accepted when the records are identical (a merge interrupted before it removed
    the part files); different answers to one id raise :class:`EvalError` naming both files.
    """
    seen: dict[str, tuple[dict, str]] = {}
    for path in _log_files(out_dir):
        for rec in read_answer_log(path):
            key = str(rec["id"])
            prev = seen.get(key)
            if prev is not None and prev[0] != rec:
                raise EvalError(f"{path}: id {key!r} was answered differently in {prev[1]}; the folder mixes runs")
            seen.setdefault(key, (rec, path))
    return {k: v[0] for k, v in seen.items()}


def check_run_config(out_dir: str, config: dict, write: bool) -> None:
    """Refuse to resume into a folder whose ``run.json`` records other answer-changing settings
    (:data:`RUN_KEYS`); write ``config`` there when ``write`` and the file is absent.

    Raises :class:`EvalError` naming the file and the first differing setting.
    """
    path = os.path.join(out_dir, RUN_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{path}: unreadable run settings ({e}); remove the file or use another --out") from None
        for key in RUN_KEYS:
            if old.get(key) != config.get(key):
                raise EvalError(
                    f"{path}: this folder holds answers of a different run ({key}: {old.get(key)!r} there, "
                    f"{config.get(key)!r} now); use another --out or delete the folder"
                )
        return
    if write:
        write_json_atomic(path, config)


def _load_video(item: EvalItem, fps, max_frames):
    if item.frames is not None:
        return item.frames()
    frames, ts, _ = read_video(item.video, fps=fps, max_frames=max_frames)
    return frames, ts


def _load_batch(items: Sequence[EvalItem], fps, max_frames) -> list:
    out = []
    for it in items:
        try:
            out.append(_load_video(it, fps, max_frames))
        except (VideoDecodeError, FileNotFoundError) as e:
            out.append(e)
    return out


def _encode(processor, pairs):
    prompts = [processor.apply_chat_template(conversation(it.question), add_generation_prompt=True) for it, _ in pairs]
    return processor(text=prompts, videos=[v[0] for _, v in pairs], video_timestamps=[v[1] for _, v in pairs])


@torch.no_grad()
def answer_items(
    items: Sequence[EvalItem],
    model,
    processor,
    log_path: str,
    *,
    batch_size: int = 1,
    max_new_tokens: int = 16,
    fps: float | None = None,
    max_frames: int | None = None,
    generate_kwargs: dict | None = None,
    progress: bool = True,
    desc: str = "eval",
    skip_ids: Iterable[str] = (),
) -> dict:
    """Ask every item not in ``skip_ids``; append each answer to ``log_path`` as soon as its batch is decoded.

    Args:
        items: the questions, asked in order, ``batch_size`` at a time (left-padded, ragged videos).
        model, processor: a :class:`~vxlp_model.VideoXLProForConditionalGeneration` in eval mode and its processor.
        log_path: the append-only JSONL log (created if absent; a cut-short last line is repaired first).
        max_new_tokens: generation length; decoding is greedy (``do_sample=False``, one beam): deterministic.
        fps, max_frames: frame sampling for video files (see :func:`vxlp_model.read_video`).
        generate_kwargs: more ``generate`` arguments (e.g. ``selector_keep_ratio``).
        skip_ids: ids already answered (never asked again).

    Videos of the next batch are decoded in a background thread while the current one generates. A video that
    cannot be used — missing, PyAV fails, or the processor refuses it (e.g. timestamps beyond the range of its time
    text) — is reported, not asked, and not logged, so a later run retries it; the rest of its batch is asked.

    Returns ``{"answered": n, "unreadable": [{"id", "video", "error"}], "seconds": s}``. Raises ``ValueError`` for
    a bad batch size; errors of the model (e.g. out of memory) propagate — the log keeps every answer before it.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    skip = set(map(str, skip_ids))
    pending = [it for it in items if it.id not in skip]
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    gen_args = dict(generate_kwargs or {})
    gen_args.update(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    device = getattr(model, "device", torch.device("cpu"))
    unreadable, answered = [], 0
    t0 = time.time()
    bar = tqdm(total=len(pending), desc=desc, disable=not progress, dynamic_ncols=True, unit="q")
    with AnswerLog(log_path) as log, ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(_load_batch, batches[0], fps, max_frames) if batches else None
        for k, batch in enumerate(batches):
            loaded = future.result()
            if k + 1 < len(batches):
                future = pool.submit(_load_batch, batches[k + 1], fps, max_frames)
            ok = []
            for it, got in zip(batch, loaded):
                if isinstance(got, Exception):
                    unreadable.append({"id": it.id, "video": it.video, "error": str(got)})
                else:
                    ok.append((it, got))
            if ok:
                try:
                    inputs = _encode(processor, ok)
                except ValueError:  # isolate the item(s) the processor refuses (e.g. times beyond its time text)
                    good = []
                    for pair in ok:
                        try:
                            _encode(processor, [pair])
                            good.append(pair)
                        except ValueError as e:
                            unreadable.append({"id": pair[0].id, "video": pair[0].video, "error": f"processor: {e}"})
                    ok = good
                    inputs = _encode(processor, ok) if ok else None
            if ok:
                inputs = inputs.to(device)
                out = model.generate(**inputs, **gen_args)
                texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                for (it, _), text in zip(ok, texts):
                    log.append(it.record(text))
                answered += len(ok)
            bar.update(len(batch))
    bar.close()
    return {"answered": answered, "unreadable": unreadable, "seconds": time.time() - t0}


def merge_answers(out_dir: str, keep_ids: Iterable[str] | None = None) -> list[dict]:
    """Merge every log in ``out_dir`` into ``answers.jsonl`` (sorted by :func:`natural_key` of the id, written
    atomically), then remove the part logs. Returns the merged records (only those in ``keep_ids`` when given;
    the file keeps all). Raises :class:`EvalError` for conflicting answers (see :func:`answered_records`)."""
    records = answered_records(out_dir)
    merged = [records[k] for k in sorted(records, key=natural_key)]
    _write_lines_atomic(os.path.join(out_dir, ANSWERS), merged)
    for path in _log_files(out_dir):
        if _PART.match(os.path.basename(path)):
            os.unlink(path)
    if keep_ids is not None:
        keep = set(map(str, keep_ids))
        merged = [r for r in merged if str(r["id"]) in keep]
    return merged


def plot_scores(score, path: str, title: str) -> None:
    """Write a horizontal bar chart of a :class:`~vxlp_model.eval.scoring.Score` (one bar per reported line,
    accuracy in percent, ``correct/total`` printed on each bar, the official overall as a dashed line) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = list(score.lines)
    aggregate = {"sample_weighted", "ret", "ord", "cnt"}
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.42 * max(1, len(lines))))
    ys = range(len(lines))
    colours = ["#8c8c8c" if ln.name in aggregate else "#3b75af" for ln in lines]
    ax.barh(list(ys), [ln.accuracy for ln in lines], color=colours)
    for y, ln in zip(ys, lines):
        ax.text(min(ln.accuracy, 100) + 1, y, f"{ln.accuracy:.1f}  ({ln.correct}/{ln.total})", va="center", fontsize=8)
    ax.axvline(score.overall, color="#c0392b", linestyle="--", linewidth=1.2, label=f"overall {score.overall:.2f}")
    ax.set_yticks(list(ys), [ln.name for ln in lines])
    ax.invert_yaxis()
    ax.set_xlim(0, 115)
    ax.set_xlabel("accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


class Distributed:
    """The process group of a ``torchrun`` launch (or a single process): ``rank``, ``world_size``, ``device``.

    ``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; then the group is initialised (NCCL on CUDA, gloo on
    CPU, with a long timeout because ranks finish their shards at different times) and each rank uses
    ``cuda:<LOCAL_RANK>`` when ``device`` asks for CUDA. :meth:`barrier` and :meth:`gather` are no-ops for one
    process.
    """

    def __init__(self, device: str = "auto", timeout_hours: float = 24.0):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise EvalError("--device cuda: no CUDA device is available")
            if device == "cuda":
                device = f"cuda:{local}" if self.world_size > 1 else "cuda"
        elif device != "cpu":
            raise EvalError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
        self.device = torch.device(device)
        self._group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                dist.init_process_group(backend, timeout=timedelta(hours=timeout_hours))
                self._group = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` on rank 0 (a list in rank order); ``[obj]`` for one process, ``None`` off rank 0."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False
