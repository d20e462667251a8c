"""Video dataset pruning by visual redundancy (Video-XL-Pro paper, SPEC §6): ``vxlp prune``.

Per video: ``frames`` (20) frames sampled uniformly over the whole video (:func:`vxlp_model.read_video` with
``max_frames``), SigLIP embeddings (the model's vision tower, tokens mean-pooled per frame), redundancy = the mean
cosine similarity between the frames' embeddings — over all pairs (``pairwise``, default) or between consecutive
frames (``consecutive``). A record is dropped when its video's redundancy exceeds the threshold of its task subset:

- ``mcq``: the question lists lettered options (``A.`` / ``(A)`` / ``A)`` on two or more lines) or the answer is a
  bare option letter;
- ``captioning``: the question asks for a description / caption / summary (``describe``, ``caption``,
  ``summar…``, ``narrat…``, ``what is happening`` …);
- ``openqa``: everything else.

A record's own ``task`` field, or its mixture entry's ``task``, overrides the heuristic. Images are never pruned
(kept, counted). A video that cannot be decoded (or times out) is dropped and reported as unreadable.

Embeddings are computed in batches of videos (decoding in DataLoader workers, with the training loader's
timeouts), with a progress bar. Every finished batch is appended to ``embeddings.jsonl`` in the report folder
(flushed and fsynced), keyed by path, size, modification time, frame count and model: a killed run continues where
it stopped. Outputs (pruned data, ``report.json``, ``redundancy.png``) are written atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from .data import TASKS, DataError, Record, RecordTable, parse_record, read_mixture
from .loader import EpochOrder, RobustLoader, SampleDataset
from .metrics import read_metrics
from .state import write_atomic

SIMILARITIES = ("pairwise", "consecutive")
_OPTION_LINE = re.compile(r"(?m)^\s*(?:\(?[A-H]\)|[A-H][.:])\s+\S")
_LETTER_ANSWER = re.compile(r"^\s*\(?[A-H]\)?[.:)]?\s*$|^\s*\(?[A-H][.:)]\s")
_CAPTION = re.compile(r"\b(describe|description|caption|summar\w*|narrat\w*|what is happening|what happens in (?:the|this) video|in detail)\b", re.I)


def classify_task(record: Record) -> str:
    """The record's task subset (``captioning`` | ``mcq`` | ``openqa``): its ``task`` if set, else the heuristic of
    the module docstring."""
    if record.task:
        return record.task
    q, a = record.question, record.answer
    if len(_OPTION_LINE.findall(q)) >= 2 or _LETTER_ANSWER.match(a or ""):
        return "mcq"
    if _CAPTION.search(q):
        return "captioning"
    return "openqa"


def redundancy(embeddings: torch.Tensor, similarity: str = "pairwise") -> float:
    """Mean cosine similarity of frame embeddings ``[n, C]`` (float64): over the ``n(n-1)`` ordered pairs i ≠ j
    (``pairwise``) or the ``n-1`` consecutive pairs (``consecutive``). One frame: 1.0.

    Raises ValueError for an unknown ``similarity``."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"--similarity must be one of {SIMILARITIES}, got {similarity!r}")
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    n = e.shape[0]
    if n < 2:
        return 1.0
    if similarity == "consecutive":
        return float((e[1:] * e[:-1]).sum(-1).mean())
    sim = e @ e.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def parse_thresholds(value) -> dict[str, float]:
    """``0.9`` (every subset) or ``"captioning=0.95,mcq=0.9"`` (subsets not named are not pruned) or a dict.

    Raises ValueError naming ``--threshold`` for a malformed value or an unknown subset."""
    if isinstance(value, dict):
        items = value
    else:
        text = str(value).strip()
        try:
            t = float(text)
            return {k: t for k in TASKS}
        except ValueError:
            pass
        items = {}
        for part in text.split(","):
            if "=" not in part:
                raise ValueError(f"--threshold must be a number or subset=value pairs ({', '.join(TASKS)}), got {value!r}")
            k, v = part.split("=", 1)
            try:
                items[k.strip()] = float(v)
            except ValueError:
                raise ValueError(f"--threshold: {v!r} is not a number") from None
    unknown = set(items) - set(TASKS)
    if unknown:
        raise ValueError(f"--threshold: unknown subsets {sorted(unknown)} (choose from {', '.join(TASKS)})")
    return {k: float(v) for k, v in items.items()}


@dataclass
class PruneReport:
    """Result of :func:`prune_dataset`: ``outputs`` (written data files), ``report_dir``, per-subset ``subsets``
    (``videos``, ``kept``, ``dropped``, ``unreadable`` record counts), ``images`` (image records, kept),
    ``kept`` / ``dropped`` record totals and ``videos`` (per unique video: ``media``, ``redundancy`` or ``error``)."""

    outputs: list
    report_dir: str
    subsets: dict
    images: int
    kept: int
    dropped: int
    videos: list = field(default_factory=list)


def _load_sources(data: str, video_root, image_root):
    """``[(json_path, raw records, parsed records, entry or None)]`` for a JSON/JSONL file or a mixture YAML."""
    if not os.path.isfile(data):
        raise FileNotFoundError(f"--data {data}: not found")
    entries = read_mixture(data) if data.endswith((".yaml", ".yml")) else [{"json_path": os.path.abspath(data)}]
    out = []
    for e in entries:
        path = e["json_path"]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                raw = [json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl") else json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{path}: expected a non-empty JSON list of records")
        recs = [
            parse_record(r, i, path, video_root=e.get("video_root") or video_root, image_root=e.get("image_root") or image_root,
                         task=e.get("task"), require_conversation=False)
            for i, r in enumerate(raw)
        ]
        out.append((path, raw, recs, e if data.endswith((".yaml", ".yml")) else None))
    return out


def load_vision_tower(model_dir: str | None, config_name: str | None, seed: int = 0):
    """``(vision tower, video processor, fingerprint)`` from a vxlp checkpoint folder (only the ``model.vision_tower.*``
    weights are read) or a fresh ``tiny`` config (seeded; tests).

    Raises FileNotFoundError / ValueError naming ``--model``."""
    from ..config import VideoXLProConfig
    from ..processing import VideoXLProVideoProcessor
    from ..vision import VisionTower

    if (model_dir is None) == (config_name is None):
        raise ValueError("give exactly one of --model DIR or --config tiny")
    if config_name is not None:
        if config_name != "tiny":
            raise ValueError("--config: only 'tiny' builds a tower without weights (tests); pass --model DIR for real SigLIP")
        config = VideoXLProConfig.tiny()
        torch.manual_seed(seed)
        tower = VisionTower(config)
        for m in tower.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                torch.nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
        return tower, VideoXLProVideoProcessor(size=config.vision_config.image_size), f"tiny-seed{seed}"
    from .trainer import resolve_model_dir

    path = resolve_model_dir(model_dir)
    config = VideoXLProConfig.from_pretrained(path)
    tower = VisionTower(config)
    state = _read_prefixed(path, "model.vision_tower.")
    if not state:  # another layout (e.g. the first vxlp layout): load the whole model
        from ..modeling import VideoXLProForConditionalGeneration

        tower = VideoXLProForConditionalGeneration.from_pretrained(path, dtype=torch.float32).model.vision_tower
    else:
        result = tower.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"--model {path}: vision tower weights mismatch: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    try:
        from ..processing import VideoXLProProcessor

        vp = VideoXLProProcessor.from_pretrained(path).video_processor
    except Exception:
        vp = VideoXLProVideoProcessor(size=config.vision_config.image_size)
    stamp = max(os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path))
    return tower.float(), vp, f"{os.path.abspath(path)}@{stamp:.0f}"


def _read_prefixed(path: str, prefix: str) -> dict:
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        return {}
    out = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as f:
            for k in f.keys():
                if k.startswith(prefix):
                    out[k[len(prefix) :]] = f.get_tensor(k).float()
    return out


@torch.no_grad()
def _embed_batch(tower, pixels: torch.Tensor, device, batch_frames: int) -> torch.Tensor:
    """Frame embeddings ``[n, C]``: SigLIP tokens mean-pooled per frame (float32)."""
    grid = tower.image_size // tower.embeddings.patch_size
    out = [tower(pixels[i : i + batch_frames].to(device), grid).float().mean(1).cpu() for i in range(0, pixels.shape[0], batch_frames)]
    return torch.cat(out)


def _video_key(path: str, frames: int, model_fp: str) -> str:
    try:
        st = os.stat(path)
        sig = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        sig = "missing"
    return f"{path}|{sig}|{frames}|{model_fp}"


def prune_dataset(
    data: str,
    threshold,
    *,
    out: str | None = None,
    report_dir: str | None = None,
    model: str | None = None,
    config: str | None = None,
    frames: int = 20,
    similarity: str = "pairwise",
    video_root: str | None = None,
    image_root: str | None = None,
    batch_videos: int = 8,
    batch_frames: int = 64,
    num_workers: int = 2,
    sample_timeout: float | None = 300.0,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PruneReport:
    """Prune a LLaVA JSON (or every JSON of a mixture YAML) by video redundancy; see the module docstring.

    Args:
        data: a JSON / JSONL file or a mixture YAML.
        threshold: a float for every subset, ``"subset=value,…"``, or a dict (subsets not named are kept whole).
        out: the pruned JSON (default ``<data>.pruned.json`` beside ``data``); for a YAML, the pruned YAML (default
            ``<data>.pruned.yaml``) — each JSON's pruned copy is written beside it as ``<json>.pruned.json``.
        report_dir: ``report.json``, ``redundancy.png`` and the embedding cache (default ``<out>.report/``).
        model / config: a vxlp checkpoint folder (its SigLIP), or ``tiny`` (random; tests).
        frames: frames per video (20, paper); similarity: ``pairwise`` | ``consecutive``.
        batch_videos, batch_frames: videos per batch and frames per vision-tower call; num_workers, sample_timeout:
            decoding workers and the per-video timeout (seconds).

    Returns :class:`PruneReport`. Raises FileNotFoundError / ValueError (naming the flag, file or record).
    """
    from tqdm.auto import tqdm

    from .distributed import resolve_device

    thresholds = parse_thresholds(threshold)
    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"--similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if batch_videos < 1 or batch_frames < 1 or num_workers < 0:
        raise ValueError("--batch-videos and --batch-frames must be >= 1, --num-workers >= 0")
    data = os.path.abspath(data)
    is_yaml = data.endswith((".yaml", ".yml"))
    stem = os.path.splitext(data)[0]
    out = os.path.abspath(out or stem + (".pruned.yaml" if is_yaml else ".pruned.json"))
    if out == data:
        raise ValueError(f"--out {out} would overwrite --data")
    report_dir = os.path.abspath(report_dir or out + ".report")
    sources = _load_sources(data, video_root, image_root)
    dev = resolve_device(device)
    tower, vproc, model_fp = load_vision_tower(model, config, seed)
    tower.to(dev).eval()

    videos = sorted({r.media for _, _, recs, _ in sources for r in recs if r.kind == "video"})
    os.makedirs(report_dir, exist_ok=True)
    cache_path = os.path.join(report_dir, "embeddings.jsonl")
    cache = {}
    if os.path.isfile(cache_path):
        for row in read_metrics(cache_path):
            cache[row.get("key")] = row
    keys = {v: _video_key(v, frames, model_fp) for v in videos}
    pending = [v for v in videos if keys[v] not in cache]

    if pending:
        table = RecordTable([Record(id=v, media=v, kind="video") for v in pending])

        def build(record, position):
            from ..video import read_video

            f, _, _ = read_video(record.media, max_frames=frames)
            return {"pixels": vproc.pixel_values(f)}

        dataset = SampleDataset(table, EpochOrder(len(table), 0, shuffle=False), build, sample_timeout)
        loader = RobustLoader(dataset, list(range(len(table))), num_workers=num_workers,
                              loader_timeout=(4 * sample_timeout + 60) if sample_timeout else None)
        bar = tqdm(total=len(videos), initial=len(videos) - len(pending), desc="vxlp prune: embedding", unit="video", disable=not progress, dynamic_ncols=True)
        with open(cache_path, "a", encoding="utf-8") as fcache:
            batch: list = []

            def flush():
                good = [x for x in batch if x.sample is not None]
                rows = []
                if good:
                    emb = _embed_batch(tower, torch.cat([x.sample["pixels"] for x in good]), dev, batch_frames)
                    for x, e in zip(good, emb.split([x.sample["pixels"].shape[0] for x in good])):
                        v = pending[x.index]
                        rows.append({"key": keys[v], "media": v, "frames": int(e.shape[0]),
                                     "pairwise": redundancy(e, "pairwise"), "consecutive": redundancy(e, "consecutive")})
                for x in batch:
                    if x.bad is not None:
                        v = pending[x.index]
                        rows.append({"key": keys[v], "media": v, "error": x.bad.reason})
                for row in rows:
                    fcache.write(json.dumps(row) + "\n")
                    cache[row["key"]] = row
                fcache.flush()
                os.fsync(fcache.fileno())
                bar.update(len(batch))
                batch.clear()

            for item in loader:
                batch.append(item)
                if len(batch) >= batch_videos:
                    flush()
            if batch:
                flush()
        bar.close()

    # decisions
    per_video = {v: cache[keys[v]] for v in videos}
    subsets = {t: Counter(videos=0, kept=0, dropped=0, unreadable=0) for t in TASKS}
    images = kept_total = dropped_total = 0
    hist = defaultdict(list)
    outputs = []
    pruned_entries = []
    for path, raw, recs, entry in sources:
        kept = []
        for rec_raw, rec in zip(raw, recs):
            if rec.kind == "image":
                images += 1
                keep = True
            else:
                task = classify_task(rec)
                info = per_video[rec.media]
                subsets[task]["videos"] += 1
                if "error" in info:
                    subsets[task]["unreadable"] += 1
                    keep = False
                else:
                    r = info[similarity]
                    hist[task].append(r)
                    keep = not (task in thresholds and r > thresholds[task])
                    subsets[task]["kept" if keep else "dropped"] += 1
            if keep:
                kept.append(_portable(rec_raw, rec))
                kept_total += 1
            else:
                dropped_total += 1
        target = (os.path.splitext(path)[0] + ".pruned.json") if is_yaml else out
        write_atomic(target, json.dumps(kept, ensure_ascii=False, indent=1))
        outputs.append(target)
        if entry is not None:
            e = {k: v for k, v in entry.items() if k != "json_path"}
            e["json_path"] = target
            pruned_entries.append(e)
    if is_yaml:
        import yaml

        write_atomic(out, yaml.safe_dump({"datasets": pruned_entries}, sort_keys=False))
        outputs.append(out)

    report = {
        "data": data, "outputs": outputs, "thresholds": thresholds, "similarity": similarity, "frames": frames,
        "model": model_fp, "subsets": {t: dict(c) for t, c in subsets.items()}, "images_kept": images,
        "records": {"kept": kept_total, "dropped": dropped_total},
        "videos": [{"media": v, **{k: val for k, val in per_video[v].items() if k != "key"}} for v in videos],
    }
    write_atomic(os.path.join(report_dir, "report.json"), json.dumps(report, indent=1))
    _plot_hist(hist, thresholds, subsets, os.path.join(report_dir, "redundancy.png"), similarity)
    return PruneReport(outputs, report_dir, report["subsets"], images, kept_total, dropped_total, report["videos"])


def _portable(raw: dict, rec: Record) -> dict:
    """The raw record with its media path made absolute (so the pruned file works from any folder)."""
    out = dict(raw)
    out[rec.kind] = rec.media
    return out


def _plot_hist(hist: dict, thresholds: dict, subsets: dict, path: str, similarity: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.2), sharey=False)
    for ax, task in zip(axes, TASKS):
        vals = hist.get(task, [])
        if vals:
            lo = min(vals + [thresholds.get(task, 1.0)])
            lo = max(-1.0, lo - 0.05 * max(1e-3, 1.0 - lo))
            ax.hist(vals, bins=40, range=(lo, max(1.0, max(vals)) + 1e-6), color="tab:blue", alpha=0.8)
        if task in thresholds:
            ax.axvline(thresholds[task], color="tab:red", lw=1.5, label=f"threshold {thresholds[task]:g}")
            ax.legend(fontsize=7)
        c = subsets[task]
        ax.set_title(f"{task}: kept {c['kept']}, dropped {c['dropped']}, unreadable {c['unreadable']}", fontsize=8)
        ax.set_xlabel(f"redundancy ({similarity} cosine similarity)")
        ax.set_ylabel("videos")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
