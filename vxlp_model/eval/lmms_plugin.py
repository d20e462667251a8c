"""lmms-eval (0.7.x) model plugin: ``lmms-eval --model vxlp --model_args pretrained=DIR --tasks ...``.

vxlp's package metadata declares the entry point ``vxlp = "vxlp_model.eval.lmms_plugin:model_manifest"`` in the
``lmms_eval.models`` group (pyproject.toml). lmms-eval 0.7 loads every entry point of that group when its model
registry is built (``lmms_eval.models.MODEL_REGISTRY_V2.load_entrypoint_manifests``); the payload is a callable
returning a ``ModelManifest`` naming :class:`VideoXLPro` as the ``simple`` implementation. Nothing in lmms-eval
needs modifying; :func:`register` does the same registration by hand (for a source checkout that is not
installed).

``--model_args`` (strings, as lmms-eval passes them): ``pretrained`` (a local vxlp folder: ``save_pretrained``
model + processor), ``device`` (``auto``/``cpu``/``cuda``/``cuda:N``; under ``accelerate``/``torchrun`` each rank
uses ``cuda:<LOCAL_RANK>``), ``dtype`` (``auto``, ``float32``, ``bfloat16``, ``float16``), ``batch_size``, ``fps``
and ``max_frames`` (video sampling; default the processor's), ``max_new_tokens`` (when the task gives none: 16),
``selector_mode``/``selector_budget``/``selector_keep_ratio``.

Requests (``Instance.args``):

* ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` — greedy unless the task asks
  to sample; the text is cut at the first ``until`` string.
* ``loglikelihood``: ``(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)`` — the summed
  log-probability of the continuation's tokens after the prompt, and whether greedy decoding would produce it.
* ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)`` —
  after round 0, ``doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)`` returns the next
  ``(visuals, context, terminal_signal, round_results, round_info)``, as lmms-eval's own models call it.

Visuals: video paths (decoded with PyAV through :func:`vxlp_model.read_video`, each its own ``<video>``), or PIL
images (each a one-frame video). Anything else raises ``ValueError`` naming the task and document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

__all__ = ["VideoXLPro", "model_manifest", "register", "MODEL_ID"]

MODEL_ID = "vxlp"


def model_manifest():
    """The entry-point payload: lmms-eval's ``ModelManifest`` for ``--model vxlp``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VideoXLPro")


def register() -> None:
    """Register ``vxlp`` with a running lmms-eval by hand (what the installed entry point does on import)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(model_manifest(), overwrite=True)


def _to_int(value, name: str, default=None):
    if value is None:
        return default
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"vxlp model_args: {name} must be an integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"vxlp model_args: {name} must be >= 1, got {v}")
    return v


def _to_float(value, name: str):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"vxlp model_args: {name} must be a number, got {value!r}") from None
    if not v > 0:
        raise ValueError(f"vxlp model_args: {name} must be > 0, got {v}")
    return v


class VideoXLPro(lmms):
    """lmms-eval model wrapper around :class:`vxlp_model.VideoXLProForConditionalGeneration` (see the module
    docstring for the arguments and the request formats).

    Raises ``ValueError`` (naming the argument) for a missing ``pretrained`` folder or a bad argument.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size=1,
        fps=None,
        max_frames=None,
        max_new_tokens=16,
        selector_mode: str | None = None,
        selector_budget=None,
        selector_keep_ratio=None,
        **kwargs,
    ) -> None:
        super().__init__()
        from transformers import AutoProcessor

        import vxlp_model  # noqa: F401  (registers the Auto classes)
        from vxlp_model.modeling import VideoXLProForConditionalGeneration

        unknown = sorted(k for k in kwargs if k not in ("max_batch_size",))
        if unknown:
            raise ValueError(f"vxlp model_args: unknown argument(s) {', '.join(unknown)}")
        if not pretrained:
            raise ValueError("vxlp model_args: pretrained=DIR (a local vxlp checkpoint folder) is required")
        if not os.path.isfile(os.path.join(str(pretrained), "config.json")):
            raise ValueError(f"vxlp model_args: pretrained={pretrained}: no config.json there (a save_pretrained folder)")
        if dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"vxlp model_args: dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        self.batch_size_per_gpu = 1 if str(batch_size).startswith("auto") else _to_int(batch_size, "batch_size", 1)
        self.fps = _to_float(fps, "fps")
        self.max_frames = _to_int(max_frames, "max_frames")
        self.max_new_tokens = _to_int(max_new_tokens, "max_new_tokens", 16)
        self.generate_kwargs = {}
        if selector_mode is not None:
            self.generate_kwargs["selector_mode"] = str(selector_mode)
        if selector_budget is not None:
            self.generate_kwargs["selector_budget"] = _to_int(selector_budget, "selector_budget")
        if selector_keep_ratio is not None:
            self.generate_kwargs["selector_keep_ratio"] = _to_float(selector_keep_ratio, "selector_keep_ratio")
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self._device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(str(pretrained))
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self._model = VideoXLProForConditionalGeneration.from_pretrained(str(pretrained), dtype=torch_dtype)
        self._model.to(self._device).eval()
        vp = self.processor.video_processor
        if self.fps is None:
            self.fps = getattr(vp, "fps", None)
        if self.max_frames is None:
            self.max_frames = getattr(vp, "max_frames", None)
        self.pretrained = str(pretrained)

    # lmms-eval reads these
    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    # ------------------------------------------------------------------------------------------------------------
    def _videos(self, visuals, where: str) -> tuple[list, list]:
        """Visual list → (frames list, timestamps list): paths are decoded, PIL images become one-frame videos."""
        from vxlp_model import read_video

        if visuals is None:
            return [], []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        frames, stamps = [], []
        for v in visuals:
            if isinstance(v, (str, os.PathLike)):
                f, ts, _ = read_video(v, fps=self.fps, max_frames=self.max_frames)
            elif hasattr(v, "convert") and hasattr(v, "size"):  # PIL image
                f = torch.from_numpy(np.asarray(v.convert("RGB"), dtype=np.uint8).copy())[None]
                ts = torch.zeros(1, dtype=torch.float64)
            else:
                raise ValueError(f"vxlp: {where}: visual of type {type(v).__name__} is not a video path or an image")
            frames.append(f)
            stamps.append(ts)
        return frames, stamps

    def _prompt(self, context: str, n_videos: int) -> str:
        content = [{"type": "video"} for _ in range(n_videos)] + [{"type": "text", "text": context}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _inputs(self, contexts: Sequence[str], visuals: Sequence, wheres: Sequence[str]):
        all_frames, all_stamps, prompts = [], [], []
        for ctx, vis, where in zip(contexts, visuals, wheres):
            f, ts = self._videos(vis, where)
            all_frames += f
            all_stamps += ts
            prompts.append(self._prompt(ctx, len(f)))
        kw = {"videos": all_frames, "video_timestamps": all_stamps} if all_frames else {}
        return self.processor(text=prompts, **kw).to(self._device)

    def _generate(self, contexts, visuals, wheres, gen_kwargs: dict) -> list[str]:
        gen = dict(gen_kwargs or {})
        until = gen.pop("until", None)
        if isinstance(until, str):
            until = [until]
        args = dict(self.generate_kwargs)
        args["max_new_tokens"] = int(gen.pop("max_new_tokens", self.max_new_tokens) or self.max_new_tokens)
        do_sample = bool(gen.pop("do_sample", False)) and float(gen.get("temperature", 0) or 0) > 0
        args["do_sample"] = do_sample
        args["num_beams"] = int(gen.pop("num_beams", 1) or 1)
        if do_sample:
            for k in ("temperature", "top_p", "top_k"):
                if gen.get(k) is not None:
                    args[k] = gen[k]
        inputs = self._inputs(contexts, visuals, wheres)
        with torch.no_grad():
            out = self._model.generate(**inputs, **args)
        texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        if until:
            cut = []
            for t in texts:
                for stop in until:
                    if stop and stop in t:
                        t = t.split(stop, 1)[0]
                cut.append(t)
            texts = cut
        return texts

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    # ------------------------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers for ``generate_until`` requests, in request order, ``batch_size`` at a time (requests of
        one batch must share their ``gen_kwargs``; a change starts a new batch)."""
        results: list[str] = []
        bar = tqdm(total=len(requests), desc="vxlp responding", disable=self.rank != 0)
        i = 0
        while i < len(requests):
            first = requests[i].args[1]
            batch = [requests[i]]
            while len(batch) < self.batch_size and i + len(batch) < len(requests) and requests[i + len(batch)].args[1] == first:
                batch.append(requests[i + len(batch)])
            contexts, visuals, wheres = [], [], []
            for req in batch:
                context, _, doc_to_visual, doc_id, task, split = req.args
                contexts.append(context)
                visuals.append(doc_to_visual(self._doc(task, split, doc_id)))
                wheres.append(f"task {task} doc {doc_id}")
            texts = self._generate(contexts, visuals, wheres, first)
            for req, text in zip(batch, texts):
                self.cache_hook.add_partial("generate_until", (req.args[0], req.args[1]), text)
            results += texts
            bar.update(len(batch))
            i += len(batch)
        bar.close()
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation tokens | prompt), greedy)`` per request (one forward pass each).

        The prompt is the chat template of the context (with its videos) up to the assistant turn; the
        continuation is tokenised as the start of the assistant's reply.
        """
        out = []
        for req in tqdm(requests, desc="vxlp loglikelihood", disable=self.rank != 0):
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            if callable(continuation):
                continuation = continuation(doc)
            if isinstance(continuation, (list, tuple)):
                continuation = continuation[0]
            continuation = str(continuation)
            where = f"task {task} doc {doc_id}"
            frames, stamps = self._videos(doc_to_visual(doc), where)
            prompt = self._prompt(context, len(frames))
            kw = {"videos": frames, "video_timestamps": stamps} if frames else {}
            full = self.processor(text=[prompt + continuation], **kw).to(self._device)
            n_cont = len(self.tokenizer.encode(continuation, add_special_tokens=False))
            if n_cont == 0:
                out.append((0.0, True))
                continue
            with torch.no_grad():
                logits = self._model(**full).logits[0].float()
            targets = full["input_ids"][0, -n_cont:]
            logp = torch.log_softmax(logits[-n_cont - 1 : -1], dim=-1)
            total = float(logp.gather(-1, targets[:, None]).sum())
            greedy = bool((logp.argmax(-1) == targets).all())
            out.append((total, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (total, greedy))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list:
        """Multi-round generation, one request at a time: round 0 answers the context; each later round gets its
        visuals and context from the task's ``doc_to_text`` until it signals the end. Returns, per request, the
        list of round answers."""
        results = []
        for req in tqdm(requests, desc="vxlp multi-round", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            where = f"task {task} doc {doc_id}"
            visuals = doc_to_visual(doc)
            rounds: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx > 0:
                    visuals, context, terminal, previous, info = doc_to_text(
                        doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                    )
                    if isinstance(previous, (list, tuple)):  # the task may rewrite the answers so far
                        rounds = [str(r) for r in previous]
                    if terminal:
                        break
                rounds += self._generate([context], [visuals], [where], gen_kwargs)
                round_idx += 1
            results.append(rounds)
        return results
