"""Streaming inference: encode a video once, ask many questions (the scale issue; SPEC §1 "stream this").

:class:`VideoChat` decodes a file in the background (:func:`vxlp_model.iter_video`, optionally over several
segments in parallel) while SigLIP → DTS → projector → pool run chunk by chunk; only the compact visual tokens
(``[G, 144, d]``, ≈ 0.6 MB per 4 frames at d = 2048 in bf16) are kept — on the model's device, or in (pinned) host
memory past ``offload_threshold_gb``. An encoding cache (safetensors, keyed by the file's content hash, the model and
the sampling) lets later sessions skip encoding. Questions go through the selector (whose budget mode bounds the
prompt at any video length), a prefill and greedy generation, each timed.

``vxlp chat`` is the command-line face of this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .processing import conversation, group_start_times

CACHE_FORMAT = 1


@dataclass
class EncodedVideo:
    """A video's compact visual tokens: ``tokens`` ``[G, P, d]``, ``group_starts`` (s, one per group),
    ``num_frames`` (= frames_per_group · G, after the tail padding), ``source``, cache ``key``, ``timings`` (s) of the
    encoding (``decode``, ``vision``, ``dts``), ``from_cache``."""

    tokens: torch.Tensor
    group_starts: list
    num_frames: int
    source: str = ""
    key: str | None = None
    timings: dict = field(default_factory=dict)
    from_cache: bool = False


@dataclass
class Answer:
    """One answer: ``text``, the new token ids, ``timings`` (s: ``selector``, ``prefill``, ``generation``), the
    number of prompt tokens the LLM saw after the selector (``llm_tokens``) and of visual tokens kept."""

    text: str
    token_ids: list
    timings: dict
    llm_tokens: int
    visual_tokens_kept: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _timer(timings: dict, key: str, device: torch.device):
    _sync(device)
    t = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t


def file_hash(path: str, block: int = 1 << 22) -> str:
    """sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def model_fingerprint(model) -> str:
    """A hash of the model's configuration and of a sample of every parameter (names, shapes, dtypes, the first
    and last values): any converted, fine-tuned or re-initialised model gets another key."""
    h = hashlib.sha256(model.config.to_json_string().encode())
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def peak_memory() -> dict:
    """Peak memory so far: ``device_gib`` (CUDA allocator peak, None on CPU) and ``host_rss_gib`` (process max RSS)."""
    dev = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"device_gib": dev, "host_rss_gib": rss}


class VideoChat:
    """Encode once, ask many (the scale issue, deliverables 3–4).

    Args:
        model: :class:`VideoXLProForConditionalGeneration` (put in eval mode here); processor: its
            :class:`VideoXLProProcessor`.
        chunk_frames: frames through vision + DTS at a time (default ``config.chunk_frames``).
        cache_dir: folder of the encoding cache (None: no cache).
        offload_threshold_gb: compact tokens beyond this many GiB go to host memory (pinned on CUDA); None keeps
            them all on the model's device.
        decode_workers: parallel decoding segments (:func:`vxlp_model.iter_video` ``workers``).

    Deterministic: the same video, model and question give the same answer.
    """

    def __init__(self, model, processor, *, chunk_frames=None, cache_dir=None, offload_threshold_gb=None, decode_workers: int = 1):
        self.model = model.eval()
        self.processor = processor
        self.chunk_frames = model.model._chunk_size(chunk_frames)
        self.cache_dir = cache_dir
        self.offload_threshold_gb = offload_threshold_gb
        self.decode_workers = int(decode_workers)
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {decode_workers}")
        self._fingerprint = None

    @classmethod
    def from_pretrained(cls, path: str, *, device: str = "cpu", dtype: str | torch.dtype | None = None, **kwargs) -> "VideoChat":
        """Load a local folder (model + processor); ``dtype`` e.g. ``"bf16"``/``torch.bfloat16`` (default: as saved)."""
        from .modeling import VideoXLProForConditionalGeneration
        from .processing import VideoXLProProcessor

        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder not found: {path}")
        dt = _parse_dtype(dtype)
        model = VideoXLProForConditionalGeneration.from_pretrained(path, **({"dtype": dt} if dt is not None else {}))
        return cls(model.to(device), VideoXLProProcessor.from_pretrained(path), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ encoding
    def cache_key(self, path: str, fps, max_frames) -> str:
        vp = self.processor.video_processor
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        parts = {
            "format": CACHE_FORMAT,
            "file": file_hash(path),
            "model": self._fingerprint,
            "fps": fps,
            "max_frames": max_frames,
            "processor": [vp.size, vp.resample, vp.image_mean, vp.image_std, vp.frames_per_group, vp.tail],
            "dtype": str(self.model.dtype),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]

    @torch.no_grad()
    def encode(self, video, *, fps: float | None = 1.0, max_frames: int | None = None, timestamps=None, progress: bool = True) -> EncodedVideo:
        """Encode a file path (decoded in the background at ``fps``, at most ``max_frames`` frames, as
        :func:`vxlp_model.read_video` selects them) or uint8 frames ``[N, H, W, 3]`` with ``timestamps``.

        Raises: FileNotFoundError / VideoDecodeError for a bad file (clear message, no partial result); ValueError
        for bad frames or timestamps.
        """
        from tqdm.auto import tqdm

        from .video import iter_video

        vp = self.processor.video_processor
        t_per = vp.frames_per_group
        key = None
        if isinstance(video, (str, os.PathLike)):
            path = os.fspath(video)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"video not found: {path}")
            if self.cache_dir is not None:
                key = self.cache_key(path, fps, max_frames)
                hit = self._load_cached(key)
                if hit is not None:
                    hit.source = path
                    return hit
            chunks = iter_video(path, fps=fps, max_frames=max_frames, chunk_size=self.chunk_frames, prefetch=2, workers=self.decode_workers)
            source = path
        else:
            if timestamps is None:
                raise ValueError("timestamps (seconds per frame) are required with a frame tensor")
            all_ts = torch.as_tensor(timestamps, dtype=torch.float64)
            if not isinstance(video, torch.Tensor) or video.dim() != 4 or all_ts.shape[0] != video.shape[0]:
                raise ValueError(f"frames must be uint8 [N, H, W, 3] with N timestamps, got {getattr(video, 'shape', None)} and {tuple(all_ts.shape)}")
            chunks = _split_frames(video, all_ts, self.chunk_frames)
            source = "<frames>"
        dev = self.device
        timings: dict = {}
        # the tokens go into one preallocated [G, P, d] buffer (never concatenated at the end, which would hold them
        # twice): the group count is exact for a frame tensor and an upper bound from the container for a file
        if isinstance(video, (str, os.PathLike)):
            n_est = _estimate_frames(path, fps, max_frames)
        else:
            n_est = video.shape[0]
        parts = _TokenSink(-(-n_est // t_per) if n_est else None, self.offload_threshold_gb)
        stamps, pending, pending_ts = [], [], []
        bar = tqdm(desc="encode", unit="frame", disable=not progress, dynamic_ncols=True)
        it = iter(chunks)
        try:
            while True:
                t = time.perf_counter()
                item = next(it, None)
                timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t
                if item is None:
                    break
                frames, ts = item
                pending.append(frames)
                pending_ts.append(torch.as_tensor(ts, dtype=torch.float64).reshape(-1))
                n = sum(f.shape[0] for f in pending)
                if n >= self.chunk_frames:
                    allf, allt = torch.cat(pending), torch.cat(pending_ts)
                    use = n - n % t_per
                    parts.append(self._encode_chunk(allf[:use], timings, dev))
                    stamps.append(allt[:use])
                    pending, pending_ts = [allf[use:]], [allt[use:]]
                    bar.update(use)
            n = sum(f.shape[0] for f in pending)
            if n:
                allf, allt = torch.cat(pending), torch.cat(pending_ts)
                if vp.tail == "drop" and (n + sum(s.shape[0] for s in stamps)) >= t_per and n % t_per:
                    allf, allt, n = allf[: n - n % t_per], allt[: n - n % t_per], n - n % t_per
                if n:
                    rest = (-n) % t_per
                    if rest:
                        allf = torch.cat([allf, allf[-1:].expand(rest, *allf.shape[1:])])
                        allt = torch.cat([allt, allt[-1:].expand(rest)])
                    parts.append(self._encode_chunk(allf, timings, dev))
                    stamps.append(allt)
                    bar.update(n)
        finally:
            bar.close()
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if not parts:
            raise ValueError(f"{source}: no frames to encode")
        tokens = parts.result()
        all_ts = torch.cat(stamps)
        enc = EncodedVideo(tokens, group_start_times(all_ts, t_per), int(all_ts.shape[0]), source, key, timings)
        if key is not None:
            self._store_cached(enc)
        return enc

    def _encode_chunk(self, frames: torch.Tensor, timings: dict, dev: torch.device) -> torch.Tensor:
        inner = self.model.model
        with _timer(timings, "vision", dev):
            px = self.processor.video_processor.pixel_values(frames).to(dev)
            feats = inner.vision_features(px)
        with _timer(timings, "dts", dev):
            tokens = inner.compress_groups(feats)
        return tokens

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, f"{key}.safetensors")

    def _load_cached(self, key: str) -> EncodedVideo | None:
        from safetensors import safe_open

        path = self._cache_path(key)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata()
                tokens = f.get_tensor("tokens")
        except Exception:  # a damaged entry is ignored (and rewritten)
            return None
        info = json.loads(meta["vxlp"])
        return EncodedVideo(tokens.to(self.device), info["group_starts"], info["num_frames"], key=key, timings={}, from_cache=True)

    def _store_cached(self, enc: EncodedVideo) -> None:
        from safetensors.torch import save_file

        os.makedirs(self.cache_dir, exist_ok=True)
        path = self._cache_path(enc.key)
        tmp = f"{path}.tmp-{os.getpid()}"
        meta = {"vxlp": json.dumps({"group_starts": enc.group_starts, "num_frames": enc.num_frames, "format": CACHE_FORMAT})}
        save_file({"tokens": enc.tokens.detach().to("cpu").contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ questions
    @torch.no_grad()
    def ask(self, encoded: EncodedVideo, question: str, **kwargs) -> Answer:
        """Answer one question about an encoded video; see :meth:`ask_many` for the keyword arguments."""
        return self.ask_many([(encoded, question)], **kwargs)[0]

    @torch.no_grad()
    def ask_many(
        self,
        pairs: list,
        *,
        max_new_tokens: int = 64,
        selector_mode: str | None = None,
        selector_budget: int | None = None,
        selector_keep_ratio: float | None = None,
        **generate_kwargs,
    ) -> list[Answer]:
        """Answer ``(EncodedVideo, question)`` pairs in one batch (ragged lengths; greedy by default).

        The results equal one-by-one :meth:`ask` calls. Timings are for the whole batch: ``selector`` (splice +
        selection), ``prefill`` (up to the first new token), ``generation`` (the rest).
        """
        if not pairs:
            return []
        proc, model, dev = self.processor, self.model, self.device
        prompts = [proc.apply_chat_template(conversation(q), add_generation_prompt=True) for _, q in pairs]
        enc = proc.encode_prompts(prompts, [e.group_starts for e, _ in pairs])
        enc = {k: v.to(dev) for k, v in enc.items()}
        timings: dict = {}
        with _timer(timings, "selector", dev):
            spliced = model.model.splice_video(
                enc["input_ids"], enc["token_type_ids"], [e.tokens for e, _ in pairs], enc["attention_mask"],
                selector_mode=selector_mode, selector_budget=selector_budget, selector_keep_ratio=selector_keep_ratio,
            )
        marks: list = []

        def mark(input_ids, scores):
            _sync(dev)
            marks.append(time.perf_counter())
            return scores

        generate_kwargs.setdefault("do_sample", False)
        _sync(dev)
        t0 = time.perf_counter()
        if model.config.llm_compression != "none":
            # VST / LP-Comp run inside forward: the prefill splices (and selects) again, then compresses; its time
            # is in "prefill" (the "selector" row above is the splice measured alone)
            fpg = model.config.frames_per_group
            out = model.generate(
                input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"], attention_mask=enc["attention_mask"],
                video_embeds=torch.cat([e.tokens.to(dev) for e, _ in pairs]),
                video_num_frames=torch.tensor([e.tokens.shape[0] * fpg for e, _ in pairs], device=dev),
                selector_mode=selector_mode, selector_budget=selector_budget, selector_keep_ratio=selector_keep_ratio,
                max_new_tokens=max_new_tokens, logits_processor=[mark], **generate_kwargs,
            )[:, enc["input_ids"].shape[1] :]
        else:
            out = model.generate(
                inputs_embeds=spliced["inputs_embeds"],
                attention_mask=spliced["attention_mask"],
                max_new_tokens=max_new_tokens,
                logits_processor=[mark],
                **generate_kwargs,
            )
        _sync(dev)
        t1 = time.perf_counter()
        first = marks[0] if marks else t1
        timings["prefill"] = first - t0
        timings["generation"] = t1 - first
        eos = set(_as_list(model.generation_config.eos_token_id))
        answers = []
        for i, ids in enumerate(out):
            ids = ids.tolist()
            cut = next((j for j, t in enumerate(ids) if t in eos), len(ids))
            text = proc.tokenizer.decode(ids[:cut], skip_special_tokens=True)
            sel = spliced["selection"][i]
            answers.append(Answer(text, ids[:cut], dict(timings), int(spliced["attention_mask"][i].sum()), int(sel["positions"].numel())))
        return answers


class _TokenSink:
    """The encoded tokens, chunk by chunk: written into one preallocated ``[G, P, d]`` buffer when the group count is
    known or bounded (no end-of-encode concatenation), else kept as parts and concatenated at the end. Past
    ``offload_threshold_gb`` the tokens live in (pinned) host memory, so the result is always one tensor on one
    device."""

    def __init__(self, groups, offload_threshold_gb):
        self.groups = groups
        self.limit = None if offload_threshold_gb is None else offload_threshold_gb * 2**30
        self.buf, self.parts, self.filled, self.bytes, self.on_host = None, [], 0, 0, False

    def __bool__(self):
        return self.filled > 0

    @staticmethod
    def _host(t):
        t = t.to("cpu")
        return t.pin_memory() if torch.cuda.is_available() else t

    def append(self, t: torch.Tensor) -> None:
        self.bytes += t.numel() * t.element_size()
        if self.groups is not None and self.buf is None:
            total = self.groups * t[0].numel() * t.element_size()
            host = self.limit is not None and total > self.limit
            self.buf = torch.empty((self.groups, *t.shape[1:]), dtype=t.dtype, device="cpu" if host else t.device,
                                   pin_memory=host and torch.cuda.is_available())
        if self.buf is not None and self.filled + t.shape[0] <= self.buf.shape[0]:
            self.buf[self.filled : self.filled + t.shape[0]] = t
        else:  # no bound, or the bound was too small: parts
            if self.buf is not None:
                self.parts, self.buf = [self.buf[: self.filled]], None
            if self.limit is not None and self.bytes > self.limit and not self.on_host:
                self.parts, self.on_host = [self._host(p) for p in self.parts], True
            self.parts.append(self._host(t) if self.on_host else t)
        self.filled += t.shape[0]

    def result(self) -> torch.Tensor:
        return self.buf[: self.filled] if self.buf is not None else torch.cat(self.parts)


def _estimate_frames(path: str, fps, max_frames) -> int | None:
    """An upper bound of the frames :func:`vxlp_model.read_video` selects (None if the container does not say)."""
    from .video import probe_video

    try:
        info = probe_video(path)
    except Exception:  # the decoder will report a bad file with its own clear error
        return None
    n = info.num_frames or None
    if fps is not None and info.duration > 0:
        n = min(n or 1 << 62, int(info.duration * fps) + 2)
    if max_frames is not None:
        n = min(n or max_frames, max_frames)
    return n


def _split_frames(frames: torch.Tensor, ts: torch.Tensor, size: int):
    for i in range(0, frames.shape[0], size):
        yield frames[i : i + size], ts[i : i + size]


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]
