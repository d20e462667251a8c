"""``vxlp plan``: peak GPU memory of streaming inference, by component, and the most frames that fit.

The planner models what :class:`vxlp_model.pipeline.VideoChat` allocates on the model's device when it encodes
N frames (``encode``: SigLIP → DTS → projector → pool, ``chunk_frames`` at a time) and answers one question
(``ask``: ``splice_video`` + Query-aware Selector, then the prefill and greedy generation). Every term is the set
of tensors those code paths hold at the same moment (elements × bytes), read from the code and checked against
measured peaks (``tests/test_plan.py`` on CPU: within 2 % for a tiny and a real-width 2 + 2-layer model;
``benchmarks/test_bench_pipeline.py`` records the same comparison on a GPU). Only oneDNN's CPU convolution
buffers are calibrated (measured: one reordered copy of the weight and of the padded input); they do not exist on
a GPU. Notation (bytes; ``b`` = bytes of the model dtype): N frames, G = N/4 groups, P = 144 visual tokens per
group, d = LLM width, I = LLM MLP width, C = 1152 vision width, I_v = 4304 its MLP, T_v = 729 SigLIP tokens,
S = 576 DTS tokens per frame, n = chunk frames, e = n·S·C, R = G·n_t time-text rows (n_t tokens per group),
N_v = G·P visual tokens, L = prompt + R + N_v input ids, L' = prompt tokens after the selector.

Components (each phase's peak is their sum; the plan's peak is the largest phase):

- ``weights``: every parameter and buffer of the model built on the meta device (no memory, no weights file) ×
  its bytes; tied embeddings once.
- ``compact_tokens``: ``G·P·d·b`` (147,456 B per frame for the real model in bf16). During ``encode`` each chunk's
  tokens are copied into one preallocated buffer (``VideoChat``'s token sink), so the encode phase holds the whole
  buffer beside the last chunk (with host offload: only the chunk's own output on the device).
- ``chunk_activations`` (encode): the float32 pixels ``12·n·S_img²`` that ``_encode_chunk`` keeps, plus the
  largest step: the SigLIP MLP (patch embedding kept by the tower + layer input, residual, LayerNorm output, fc1
  and GELU: ``n·T_v·(4C + 2·I_v)·b``) or its attention (``n·T_v·8C·b``), the token-grid resize, and the DTS
  stage 1 beside the features, their grouped copy and the block input (``3·e·b``): GroupNorm's float32 copies
  (``4e·[b≠4] + 12e``), the spatial block's h, q, k, v, output (``5·e·b``), the temporal block's h, qkv, its
  permuted copy, the contiguous q/k/v and output (``8·e·b``), the merge convolution (the kernel's ``27·C²·b``
  weight copy). The CUDA frame_attention adds its ``[n, S, S]`` score workspace (float32 scores and P:
  ``n·S·⌈S⌉₈·(4 + b)``, at most 1 GiB of whole frames, ``vxlp_ops._cuda.frame_attention_workspace_bytes``). The
  reference ops (CPU) add their float32 copies, the ``[n, S, S]`` attention matrices and oneDNN's buffers.
- ``selector`` (select): ``splice_video`` keeps its loop locals, so all of these are alive together: the three
  prompt tensors and the compacted ids / types / masks (``43·L``), the time rows embedded for every group and
  their padded per-group copy (``2·R·d·b`` — the largest term per frame once the tokens are offloaded), positions
  and masks (``34·R + 9·N_v``); plus the largest of: one scoring chunk (``chunk_tokens`` = 65,536 visual tokens:
  ``nn.MultiheadAttention``'s projections, ``vis + attn`` and its float32 copy, ``max(3·b, b + 4)·d`` per token),
  the selection (float32 raw scores and scores, the budget selection's int64 order / group / rank / cost
  temporaries: ``≈ 56·N_v``), or the end of the splice (kept rows, the compacted prompt twice).
- ``kv_cache`` (prefill): ``layers · 2 · kv_heads · head_dim · b · (L' + new tokens)``.
- ``prefill_activations``: ``inputs_embeds`` and ``generate``'s copy of it (``2·L'·d·b``), RoPE cos/sin, and the
  largest decoder-layer live set, the MLP: ``L'·(3d + 3I)·b``; logits for the last position only.

Host offload (``VideoChat(offload_threshold_gb=0)``) keeps the compact tokens in pinned host memory; the device
then holds one scoring chunk of tokens at a time (the selector moves chunks to its device).

``device="cuda"`` counts device allocations only (pixel normalisation is host memory, reported in
``host_bytes``); ``device="cpu"`` (one memory) adds the host-side transients (uint8 chunk copies, the int64 index
of the pixel lookup) — the CPU tests check the planner in that mode. ``ops`` is the vxlp_ops backend of the DTS and
the selector: ``cuda`` / ``triton`` (kernels that allocate their outputs), ``reference`` (CPU).

CLI: ``vxlp plan --config real|DIR --gpu-mem 80GB [--budget K] [--dtype bf16] [--frames N] [--json]``
(``python -m vxlp_model.plan`` is the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
OPS = ("cuda", "triton", "reference")
DEVICES = ("cuda", "cpu")
GIB = 2**30
SELECTOR_CHUNK_TOKENS = 1 << 16  # QueryAwareSelector.forward's default chunk_tokens (splice_video does not override it)
# DEFAULT_TIME_FORMAT "Time 01:02:03.4:" under Qwen2.5's tokenizer (digits split one per token): 13 tokens;
# the released "Time 0012.0s:": 10 (RELEASED.md §4).
DEFAULT_TIME_TOKENS = 13
# prompt text outside the video block: ChatML system prompt and template (≈ 21 tokens under Qwen2.5) + a question
DEFAULT_PROMPT_TOKENS = 64
DEFAULT_NEW_TOKENS = 64
# CUDA context + allocator slack on top of the allocator's peak (an allowance, not a measurement: the GPU benchmark
# records NVML's used memory beside torch's peak to calibrate it)
DEFAULT_OVERHEAD_GIB = 1.0


class PlanError(ValueError):
    """A bad planner argument; the message names it."""


# ---------------------------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The sizes the planner reads from a :class:`VideoXLProConfig` (all counts, no bytes)."""

    image_size: int
    vision_tokens: int  # T_v (729)
    vision_width: int  # C (1152)
    vision_mlp: int  # I_v (4304)
    vision_layers: int
    grid: int  # DTS grid side (24)
    frames_per_group: int
    tokens_per_group: int  # P (144)
    hidden: int  # d
    llm_layers: int
    llm_mlp: int  # I
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int | None
    selector_impl: str
    selector_mode: str
    selector_budget: int
    selector_keep_ratio: float
    chunk_frames: int
    has_recot: bool

    @property
    def dts_tokens(self) -> int:
        return self.grid * self.grid


def geometry(config) -> Geometry:
    """The planner's view of ``config`` (a :class:`vxlp_model.VideoXLProConfig`)."""
    vc, tc = config.vision_config, config.text_config
    heads = tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return Geometry(
        image_size=vc.image_size,
        vision_tokens=(vc.image_size // vc.patch_size) ** 2,
        vision_width=vc.hidden_size,
        vision_mlp=vc.intermediate_size,
        vision_layers=vc.num_hidden_layers,
        grid=config.dts_grid,
        frames_per_group=config.frames_per_group,
        tokens_per_group=config.tokens_per_group,
        hidden=tc.hidden_size,
        llm_layers=tc.num_hidden_layers,
        llm_mlp=tc.intermediate_size,
        heads=heads,
        kv_heads=tc.num_key_value_heads,
        head_dim=head_dim,
        vocab=tc.vocab_size,
        max_positions=getattr(tc, "max_position_embeddings", None),
        selector_impl=config.selector_impl,
        selector_mode=config.selector_mode,
        selector_budget=config.selector_budget,
        selector_keep_ratio=config.selector_keep_ratio,
        chunk_frames=config.chunk_frames,
        has_recot=config.has_recot,
    )


_WEIGHT_CACHE: dict = {}


def weight_bytes(config, dtype_bytes: int) -> int:
    """Bytes of every parameter and buffer of ``VideoXLProForConditionalGeneration(config)`` in a model of
    ``dtype_bytes`` floats (the model is built on the meta device: no memory, no weights needed). Tied weights are
    counted once; integer buffers keep their size."""
    import torch

    from .modeling import VideoXLProForConditionalGeneration

    key = (config.to_json_string(), dtype_bytes)
    if key not in _WEIGHT_CACHE:
        with torch.device("meta"):
            model = VideoXLProForConditionalGeneration(config)
        seen, total = set(), 0
        for t in list(model.parameters()) + list(model.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * (dtype_bytes if t.is_floating_point() else t.element_size())
        _WEIGHT_CACHE[key] = total
    return _WEIGHT_CACHE[key]


# ---------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    """What a plan is made for (see :func:`plan` for the meaning of each field)."""

    frames: int
    dtype: str = "bf16"
    budget: int | None = None
    mode: str | None = None
    keep_ratio: float | None = None
    chunk_frames: int | None = None
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    time_tokens: int = DEFAULT_TIME_TOKENS
    new_tokens: int = DEFAULT_NEW_TOKENS
    device: str = "cuda"
    ops: str = "cuda"
    offload: bool = False
    chunk_tokens: int = SELECTOR_CHUNK_TOKENS

    def validate(self) -> None:
        def positive_int(name, v, low=1):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise PlanError(f"{name} must be an integer >= {low}, got {v!r}")

        positive_int("frames", self.frames)
        if self.dtype not in DTYPE_BYTES:
            raise PlanError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        bad_budget = isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 16 or self.budget % 16
        if self.budget is not None and bad_budget:
            raise PlanError(f"budget must be a positive multiple of 16, got {self.budget!r}")
        if self.mode is not None and self.mode not in ("off", "ratio", "budget"):
            raise PlanError(f"mode must be one of off, ratio, budget, got {self.mode!r}")
        if self.keep_ratio is not None and not (isinstance(self.keep_ratio, (int, float)) and 0 < self.keep_ratio <= 1):
            raise PlanError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if self.chunk_frames is not None:
            positive_int("chunk_frames", self.chunk_frames)
        positive_int("prompt_tokens", self.prompt_tokens)
        positive_int("time_tokens", self.time_tokens, low=0)
        positive_int("new_tokens", self.new_tokens)
        positive_int("chunk_tokens", self.chunk_tokens)
        if self.device not in DEVICES:
            raise PlanError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.ops not in OPS:
            raise PlanError(f"ops must be one of {OPS}, got {self.ops!r}")
        if self.device == "cpu" and self.ops != "reference":
            raise PlanError("ops must be 'reference' on device 'cpu' (the CUDA and Triton kernels need a GPU)")


# ---------------------------------------------------------------------------------------------- terms


def _chunk_terms(geo: Geometry, s: Settings, b: int, n: int) -> dict[str, float]:
    """Peak live bytes of each step of one chunk of ``n`` frames through the visual path (the chunk's own
    allocations; the compact tokens encoded before it are not included). See the module docstring."""
    c, tv, iv, sd = geo.vision_width, geo.vision_tokens, geo.vision_mlp, geo.dts_tokens
    cpu = s.device == "cpu"
    pix = n * 3 * geo.image_size**2
    px = 4 * pix  # float32 pixels (on the device; the host tensor itself on CPU), kept until _encode_chunk returns
    f32 = (lambda elems: 4 * elems) if b != 4 else (lambda elems: 0)  # a float32 copy, absent in a float32 model
    # encode() keeps the uint8 chunk it concatenated, and the previous chunk's storage through a view (host)
    base = px + (2 * pix if cpu else 0)
    steps = {}
    # pixel normalisation (VideoXLProVideoProcessor.pixel_values): int64 index + three float32 gathers + stack
    steps["pixels"] = (2 * pix + 8 * pix + 4 * pix + px) if cpu else px
    # SigLIP (VisionTower.forward; transformers' SiglipEncoderLayer): the patch embedding stays alive (`emb`)
    emb = n * tv * c * b
    steps["siglip_patch"] = base + (pix * b if b != 4 else 0) + emb
    steps["siglip_mlp"] = base + emb + n * tv * (3 * c + 2 * iv) * b  # layer in, residual, LN2, fc1, GELU
    steps["siglip_attn"] = base + emb + n * tv * 7 * c * b  # layer in, LN1, q, k, v, attention, out_proj
    steps["siglip_resize"] = base + n * c * max(tv * b + f32(tv) + 4 * tv, tv * b + 4 * tv + 4 * sd + (sd * b if b != 4 else 0))
    # DTS stage 1 (e elements per [G, 4, 24, 24, C] tensor): features, their grouped copy, the block input
    e = n * sd * c
    held = base + 3 * e * b
    steps["dts_groupnorm"] = held + f32(e) + 3 * 4 * e  # float32 copy, normalised, ×weight, +bias
    att = n * sd * sd * 4  # [4G, S, S] float32 attention of the reference frame_attention
    if s.ops == "reference":
        fa = max(2 * f32(e) + 2 * att, 2 * att + f32(e) + 4 * e, att + 4 * e + (e * b if b != 4 else 0))
    else:
        fa = e * b + (4 * e if s.ops == "triton" and b != 4 else 0)
        if s.ops == "cuda":  # the kernels' [S, S] score / probability workspace
            from vxlp_ops._cuda import frame_attention_workspace_bytes  # noqa: PLC0415  (imports torch)

            fa += frame_attention_workspace_bytes(n, sd, b)
    # SpatialAttention.forward keeps h, q, k, v and the attention output until it returns
    steps["dts_spatial"] = held + 4 * e * b + max(fa, 3 * e * b)
    # TemporalAttention: h, qkv permuted copy (3), contiguous q, k, v (3) and the op's output / reference temporaries
    ta = 20 * e if s.ops == "reference" else e * b
    steps["dts_temporal"] = held + 7 * e * b + ta
    welems = 27 * c * c  # the merge conv's weight
    if s.ops == "reference":
        xp = 4 * e * (geo.frames_per_group + 1) / geo.frames_per_group * ((geo.grid + 2) / geo.grid) ** 2
        # channels-first float32 copy, replicate-padded input, float32 weight, float32 output (time stride 2)
        conv = 4 * e + xp + f32(welems) + 2 * e
        if cpu:  # oneDNN's reordered weight and input (calibrated: one copy of each, measured exactly)
            conv += 4 * welems + xp
    else:
        conv = welems * b + e * b / 2  # the kernel's [Cout, 27·Cin] weight copy and its output
    steps["dts_merge"] = held + conv
    # projector (Linear · GELU · Linear) on the DTS output, beside the features and their grouped copy
    g_tok = (n // geo.frames_per_group) * sd
    steps["projector"] = base + 2 * e * b + g_tok * c * b + 2 * g_tok * geo.hidden * b
    return steps


def _tokens_bytes(geo: Geometry, b: int, groups: int) -> int:
    return groups * geo.tokens_per_group * geo.hidden * b


def _kept(geo: Geometry, s: Settings, groups: int) -> tuple[int, int]:
    """(visual tokens kept, time-text rows kept) by the selector (vxlp budget: the video block fits the budget)."""
    n_vis = groups * geo.tokens_per_group
    rows = groups * s.time_tokens
    impl = geo.selector_impl
    mode = s.mode or geo.selector_mode
    budget = s.budget or geo.selector_budget
    ratio = s.keep_ratio if s.keep_ratio is not None else geo.selector_keep_ratio
    if impl == "none" or mode == "off":
        return n_vis, rows
    if impl == "vxlp":
        if mode == "budget":
            if n_vis + rows <= budget:
                return n_vis, rows
            # whole groups at worst: the budget holds visual tokens and the time text of the groups they touch
            per = geo.tokens_per_group + s.time_tokens
            touched = min(groups, max(1, math.ceil(budget / per)))
            t_rows = touched * s.time_tokens
            return max(1, budget - t_rows), t_rows
        k = int(math.floor(n_vis * ratio + 0.5))
        return k, rows
    k = min(n_vis, budget) if mode == "budget" else int(n_vis * ratio)
    k -= k % 16
    return max(1, min(n_vis, k if k > 0 else 16)), rows


def _selector_terms(geo: Geometry, s: Settings, b: int, groups: int) -> dict[str, float]:
    """Peak live bytes of each step of ``ask_many``'s splice + selection (beyond weights and tokens).

    Held through the splice (``splice_video`` keeps its loop locals): the three prompt tensors (int64 ``[1, L]``),
    the compacted ids and types (int64), three bool masks of L, the block's visual mask (R + N_v), the time-row
    index, count and group (int64 R each), the embedded time rows (R·d·b); the selector adds the rows' positions
    (int64 R), the visual positions (int64 N_v) and the padded per-group time rows (R·d·b + R). Then the larger
    of: scoring one chunk (``nn.MultiheadAttention`` of N_c visual tokens over R_c time rows: the in-projections of
    a transposed input copy it, so ``max(N_c + 3R_c, 2N_c + 2R_c)·d·b``, plus the MLP probe ``vis + visual_mlp(vis)``
    held across it (``N_c·d·b``); the sum ``probe + attn`` (``4N_c·d·b`` with the input) and its float32 copy), the selection (float32 raw scores and min-max scores, the budget selection's int64 sort order, group,
    rank and cost temporaries: 56 bytes per visual token), or the end of the splice (the kept rows, the compacted
    prompt twice, the Selection's N_v float32 scores). The released selectors (``released_v2`` / ``v1``) get their
    own scoring and RoPE terms, read from the code but not measured.
    """
    d, p = geo.hidden, geo.tokens_per_group
    n_vis = groups * p
    rows = groups * s.time_tokens
    length = s.prompt_tokens + rows + n_vis
    k_vis, k_rows = _kept(geo, s, groups)
    lp = s.prompt_tokens + k_vis + k_rows
    db = d * b
    terms = {
        # ask_many's three prompt tensors; splice_video's compacted ids and types (int64) and three bool masks
        "held_prompt_tensors": (24 + 19) * length,
        # the embedded time rows (splice_video) and their padded per-group copy (the selector)
        "held_time_rows": 2 * rows * db,
        # the block's visual mask, time-row index / count / group / position (int64), visual positions, row mask
        "held_positions": (rows + n_vis) + 32 * rows + 8 * n_vis + rows,
    }
    step = max(1, s.chunk_tokens // p)
    impl, mode = geo.selector_impl, s.mode or geo.selector_mode
    if impl == "none" or (impl == "vxlp" and mode == "off"):
        terms["scoring"] = terms["selection"] = 0
    else:
        fused = groups <= step
        g_c = groups if fused else step
        nc, rc = g_c * p, g_c * s.time_tokens
        if impl == "vxlp":
            # in-projections; SDPA (q, k, v are freed after it); the probe ``vis + visual_mlp(vis)`` held across it
            mha = (max(nc + 3 * rc, 2 * nc + 2 * rc) + nc) * db
            probe = max(mha, 4 * nc * db, nc * db + 4 * nc * d)  # vis, the MLP probe, attn, their sum; float32 copy
        elif impl == "released_v2":  # ReleasedTimeAttention: k_proj(visual), P·Q, its transposed copy, out_proj
            probe = max(4 * nc * db + rc * db, nc * db + 4 * nc * d)
        else:  # released_v1 scores the tokens themselves: their float32 copy
            probe = nc * db + 4 * nc * d
        if s.offload:
            probe += nc * db  # the chunk moved from host memory
        budget_sel = 48 * n_vis if impl == "vxlp" and mode == "budget" else 12 * n_vis  # cost temporaries, or a sort
        if fused:
            if s.ops == "reference":  # query_scores: visual.to(float32), raw, min-max temporaries; then the sorts
                qtg = max((4 * nc * d if b != 4 else 0) + 4 * n_vis, 16 * n_vis, 4 * n_vis + 12 * n_vis)
            else:  # raw, scores, the sort's values and order
                qtg = 20 * n_vis
            terms["scoring"] = max(probe, nc * db + qtg + k_vis * db)
            # the probe and the gathered rows stay alive through the selection
            terms["selection"] = nc * db + k_vis * db + 4 * n_vis + budget_sel + 8 * k_vis
        else:
            terms["scoring"] = probe + 4 * n_vis  # + the raw scores of earlier chunks
            terms["selection"] = 8 * n_vis + max(12 * n_vis, budget_sel + 8 * k_vis)  # raw, scores; min-max / sorts / budget
        if impl.startswith("released"):  # RoPE on the kept rows and every time row, in float32 (rope_interleaved)
            terms["selection"] = max(terms["selection"], 12 * (k_vis + rows) * d)
    # the end of the splice: the Selection (N_v float32 scores, kept rows twice), the compacted prompt twice
    terms["splice_end"] = 4 * n_vis + 2 * (k_vis + k_rows) * db + 2 * lp * db
    return terms


def _selector_peak(terms: dict) -> float:
    held = sum(v for k, v in terms.items() if k.startswith("held_"))
    return held + max(terms["scoring"], terms["selection"], terms["splice_end"])


def _prefill_terms(geo: Geometry, s: Settings, b: int, groups: int) -> dict[str, float]:
    """Bytes of the prefill: the KV cache of the compacted prompt (+ new tokens), the prompt tensors and the
    compacted ``inputs_embeds`` kept by ``ask_many`` (and ``generate``'s copy of it), RoPE cos / sin, and the
    largest decoder-layer live set, the MLP's: layer input, residual, RMSNorm output, SiLU(gate), up and their
    product, ``L'·(3d + 3I)·b``. Logits are computed for the last position only (``logits_to_keep=1``)."""
    d, i = geo.hidden, geo.llm_mlp
    k_vis, k_rows = _kept(geo, s, groups)
    lp = s.prompt_tokens + k_vis + k_rows
    n_vis = groups * geo.tokens_per_group
    length = s.prompt_tokens + groups * s.time_tokens + n_vis
    kv_per_token = geo.llm_layers * 2 * geo.kv_heads * geo.head_dim * b
    return {
        "llm_tokens": lp,
        "kv_cache": kv_per_token * (lp + s.new_tokens),
        # inputs_embeds (and GenerationMixin's copy of it), RoPE cos / sin, mask and positions, the prompt tensors
        "embeds": 2 * lp * d * b + 2 * lp * geo.head_dim * b + 16 * lp + 24 * length,
        "activations": lp * (3 * d + 3 * i) * b,
        "logits": 4 * geo.vocab * 3,
    }


# ---------------------------------------------------------------------------------------------- the plan


COMPONENTS = ("weights", "compact_tokens", "chunk_activations", "selector", "kv_cache", "prefill_activations")


@dataclasses.dataclass
class MemoryPlan:
    """Result of :func:`plan` (bytes throughout).

    ``phases[name]`` for ``encode``, ``select`` (splice + selector) and ``prefill`` (and generation):
    ``peak`` (device bytes allocated at the phase's peak), ``entry`` (bytes live before the phase's call: weights,
    and for select / prefill the encoded tokens), ``components`` (adding up to ``peak``) and ``detail`` (the
    sub-terms, see the module docstring). ``peak_bytes`` / ``peak_phase`` / ``components``: the largest phase.
    ``llm_tokens``: the prompt the LLM sees after the selector. ``host_bytes``: pinned host memory for the
    tokens (offload) and one chunk of float32 pixels (host memory on a GPU).
    """

    frames: int
    groups: int
    chunk_frames: int
    budget: int
    dtype: str
    device: str
    ops: str
    offload: bool
    weights: int
    tokens_bytes_per_frame: float
    phases: dict
    peak_bytes: int
    peak_phase: str
    components: dict
    llm_tokens: int
    host_bytes: int
    notes: list

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan(config, frames: int, **settings) -> MemoryPlan:
    """Peak device memory of :class:`VideoChat` encoding ``frames`` frames and answering one question.

    Args:
        config: a :class:`vxlp_model.VideoXLProConfig`.
        frames: N, frames encoded (padded up to a multiple of ``frames_per_group``).
        settings: fields of :class:`Settings` — ``dtype`` (``bf16`` | ``fp16`` | ``fp32``), ``budget`` / ``mode`` /
            ``keep_ratio`` (selector call arguments; default the config's), ``chunk_frames`` (default the config's),
            ``prompt_tokens`` (text outside the video block), ``time_tokens`` (time text per group),
            ``new_tokens`` (generated), ``device`` (``cuda`` | ``cpu``), ``ops`` (``cuda`` | ``triton`` |
            ``reference``), ``offload`` (compact tokens in host memory), ``chunk_tokens`` (selector chunk).

    Returns: :class:`MemoryPlan`.

    Raises: PlanError: a bad setting (the message names it).
    """
    s = Settings(frames=frames, **settings)
    s.validate()
    geo = geometry(config)
    b = DTYPE_BYTES[s.dtype]
    t = geo.frames_per_group
    groups = -(-s.frames // t)
    n_chunk = s.chunk_frames or geo.chunk_frames
    if n_chunk % t:
        raise PlanError(f"chunk_frames ({n_chunk}) must be a multiple of frames_per_group ({t})")
    n_chunk = min(n_chunk, groups * t)
    w = weight_bytes(config, b)
    tok = _tokens_bytes(geo, b, groups)
    tok_dev = 0 if s.offload else tok
    chunk = _chunk_terms(geo, s, b, n_chunk)
    chunk_peak = max(chunk.values())
    chunk_out = _tokens_bytes(geo, b, n_chunk // t)
    # encode: the tokens go into one preallocated buffer (VideoChat's _TokenSink), so the last chunk runs beside the
    # whole buffer (offload: the buffer is in host memory; the chunk's own output waits for its copy)
    held = chunk_out if s.offload else tok
    enc = {"weights": w, "compact_tokens": held, "chunk_activations": chunk_peak}
    sel = _selector_terms(geo, s, b, groups)
    pre = _prefill_terms(geo, s, b, groups)
    phases = {
        "encode": {"entry": w, "components": enc, "detail": {**chunk, "tokens_buffer": tok_dev}},
        "select": {"entry": w + tok_dev, "components": {"weights": w, "compact_tokens": tok_dev, "selector": _selector_peak(sel)},
                   "detail": sel},
        "prefill": {"entry": w + tok_dev, "components": {"weights": w, "compact_tokens": tok_dev, "kv_cache": pre["kv_cache"],
                    "prefill_activations": pre["embeds"] + pre["activations"] + pre["logits"]},
                    "detail": {k: v for k, v in pre.items() if k != "llm_tokens"}},
    }
    for ph in phases.values():
        ph["components"] = {k: int(ph["components"].get(k, 0)) for k in COMPONENTS}
        ph["peak"] = sum(ph["components"].values())
        ph["detail"] = {k: int(v) for k, v in ph["detail"].items()}
    peak_phase = max(phases, key=lambda k: phases[k]["peak"])
    notes = []
    if geo.max_positions is not None and pre["llm_tokens"] > geo.max_positions:
        notes.append(
            f"the prompt after the selector holds {pre['llm_tokens']} tokens, more than the LLM's {geo.max_positions} "
            "positions: splice_video refuses it (lower the budget or the keep ratio)"
        )
    if s.time_tokens == DEFAULT_TIME_TOKENS and groups * t > 360_000:
        notes.append("at 1 frame/s the default time text reaches its fixed-width limit (99:59:59.9) at 360,000 frames")
    host = (tok if s.offload else 0) + (4 * n_chunk * 3 * geo.image_size**2 if s.device == "cuda" else 0)
    return MemoryPlan(
        frames=groups * t, groups=groups, chunk_frames=n_chunk, budget=s.budget or geo.selector_budget, dtype=s.dtype,
        device=s.device, ops=s.ops, offload=s.offload, weights=w,
        tokens_bytes_per_frame=_tokens_bytes(geo, b, 1) / t, phases=phases, peak_bytes=phases[peak_phase]["peak"],
        peak_phase=peak_phase, components=dict(phases[peak_phase]["components"]), llm_tokens=int(pre["llm_tokens"]),
        host_bytes=int(host), notes=notes,
    )


def max_frames(config, gpu_mem_bytes: float, overhead_bytes: float = DEFAULT_OVERHEAD_GIB * GIB, host_mem_bytes: float | None = None,
               limit: int = 1 << 26, **settings) -> dict:
    """The most frames (a multiple of ``frames_per_group``) whose planned peak + ``overhead_bytes`` fits in
    ``gpu_mem_bytes`` (and whose host bytes fit ``host_mem_bytes`` when given), and what stops the next group.

    Returns ``{"frames": N (0 if not even one group fits), "limit": the limiting term in words, "term": its key,
    "phase": the phase that overflows, "plan": the MemoryPlan at N (None if 0)}``. Bisection on groups: every term
    grows with N except the selector's scoring chunk, which stops growing at ``chunk_tokens / P`` groups (checked).

    Raises: PlanError: a bad memory size or setting (the message names it).
    """
    for name, v, low in (("gpu_mem_bytes", gpu_mem_bytes, 1), ("overhead_bytes", overhead_bytes, 0), ("limit", limit, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
            raise PlanError(f"{name} must be a number >= {low}, got {v!r}")
    if host_mem_bytes is not None and (not isinstance(host_mem_bytes, (int, float)) or not host_mem_bytes > 0):
        raise PlanError(f"host_mem_bytes must be a positive number, got {host_mem_bytes!r}")
    Settings(frames=1, **settings).validate()
    geo = geometry(config)
    t = geo.frames_per_group

    def over(g: int) -> str | None:
        p = plan(config, g * t, **settings)
        if geo.max_positions is not None and p.llm_tokens > geo.max_positions:
            return "positions"
        if host_mem_bytes is not None and p.host_bytes > host_mem_bytes:
            return "host"
        return "gpu" if p.peak_bytes + overhead_bytes > gpu_mem_bytes else None

    if over(1):
        lim, term, phase = _limit(config, 1, over(1), settings)
        return {"frames": 0, "limit": lim, "term": term, "phase": phase, "plan": None}
    lo, hi = 1, 2
    while hi * t <= limit and not over(hi):
        lo, hi = hi, hi * 2
    if hi * t > limit:
        return {"frames": lo * t, "limit": f"the search limit ({limit:,} frames)", "term": "search", "phase": None,
                "plan": plan(config, lo * t, **settings)}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if over(mid):
            hi = mid
        else:
            lo = mid
    step = max(1, settings.get("chunk_tokens", SELECTOR_CHUNK_TOKENS) // geo.tokens_per_group)
    if lo > step and over(step):  # the one place a term shrinks with N: make sure nothing below the answer overflows
        lo = step - 1
        while lo > 0 and over(lo):
            lo -= 1
    lim, term, phase = _limit(config, lo + 1, over(lo + 1), settings)
    return {"frames": lo * t, "limit": lim, "term": term, "phase": phase, "plan": plan(config, lo * t, **settings)}


_LABELS = {
    "compact_tokens": "the compact tokens ({bpf:,.0f} B per frame{twice})",
    "chunk_activations": "one chunk's vision + DTS activations",
    "kv_cache": "the KV cache",
    "prefill_activations": "the prefill activations",
    "held_prompt_tensors": "the selector's input_ids-sized int64 / bool tensors",
    "held_time_rows": "the selector's time-text rows, embedded for every group and padded per group (2·R·d·b)",
    "held_positions": "the selector's positions and masks",
    "scoring": "the selector's scoring chunk",
    "selection": "the selector's float32 scores and int64 sort / budget buffers",
    "splice_end": "the spliced prompt and kept rows",
}


def _limit(config, groups: int, why: str, settings: dict) -> tuple[str, str, str | None]:
    """(words, term key, phase) for what makes ``groups`` groups overflow: the LLM's positions, host memory, or the
    term that grew most from one group to ``groups`` groups in the overflowing phase."""
    geo = geometry(config)
    t = geo.frames_per_group
    p = plan(config, groups * t, **settings)
    if why == "positions":
        return (f"the LLM's {geo.max_positions:,} positions ({p.llm_tokens:,} prompt tokens after the selector)", "positions", "prefill")
    if why == "host":
        return (f"host memory ({p.host_bytes / GIB:.1f} GiB of pinned tokens)", "host", None)
    phase = p.peak_phase
    base = plan(config, t, **settings)
    if groups == 1:
        comps = p.phases[phase]["components"]
        big = max(comps, key=comps.get)
        return (f"{big} ({comps[big] / GIB:.2f} GiB): the fixed terms alone do not fit", big, phase)
    grown = {k: v - base.phases[phase]["components"].get(k, 0) for k, v in p.phases[phase]["components"].items() if k != "selector"}
    if phase == "select":
        grown.update({k: v - base.phases[phase]["detail"].get(k, 0) for k, v in p.phases[phase]["detail"].items()})
    big = max(grown, key=grown.get)
    twice = ""
    words = _LABELS.get(big, big).format(bpf=p.tokens_bytes_per_frame, twice=twice)
    return (f"{words}, {phase} phase (+{grown[big] / GIB:.2f} GiB over one group)", big, phase)


# ---------------------------------------------------------------------------------------------- measurement


class PeakMemory:
    """Measure the peak bytes allocated by the code in a ``with`` block.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (absolute; ``increase`` is over the
    allocated bytes at entry). CPU: torch's profiler records every CPU-allocator allocation and free with the
    allocator's running total of live bytes; the peak of that total over the block, less its value at entry, is
    the increase over the live set at entry (frees of older blocks are not counted) — exact and reproducible, the
    CPU analogue of ``max_memory_allocated`` (it does not see memory that bypasses torch's allocator).

    Attributes after the block: ``increase`` (bytes), ``peak`` (CUDA: absolute bytes; CPU: None).
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.increase = None
        self.peak = None

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            self.increase = self.peak - self._base
            return False
        self._prof.__exit__(*exc)
        if exc[0] is None:
            self.increase = _profiler_peak(self._prof)
        self._prof = None
        return False


def _profiler_peak(prof) -> int:
    """Peak increase of the CPU allocator's live bytes over the block, from the profiler's allocation events.

    Each event carries the allocator reporter's running total; that total persists across profiler sessions
    (blocks allocated in an earlier session and freed outside one are never subtracted), so the peak is taken
    relative to the total just before the first event of this session."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and str(node.extra_fields.device).startswith("cpu"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    base = events[0][2] - events[0][1]
    return max(0, max(total for _, _, total in events) - base)


# ---------------------------------------------------------------------------------------------- CLI


def parse_memory(text: str, flag: str = "--gpu-mem") -> float:
    """``"80GB"`` / ``"80GiB"`` / ``"80G"`` / ``"80"`` → bytes (GB is read as GiB, as GPU memory is quoted);
    ``MB`` / ``MiB`` / ``TB`` likewise. Raises :class:`PlanError` naming ``flag``."""
    raw = str(text).strip()
    t = raw.lower().replace(" ", "")
    units = {"tib": 2**40, "tb": 2**40, "t": 2**40, "gib": GIB, "gb": GIB, "g": GIB, "mib": 2**20, "mb": 2**20, "m": 2**20}
    num, scale = t, GIB
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            num, scale = t[: -len(u)], units[u]
            break
    try:
        v = float(num)
    except ValueError:
        raise PlanError(f"{flag} must be a size such as 80GB or 141GiB, got {raw!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise PlanError(f"{flag} must be a positive size, got {raw!r}")
    return v * scale


def load_config(spec: str):
    """``"real"`` / ``"tiny"`` presets, or a saved model folder's ``config.json`` (no weights needed)."""
    from .config import VideoXLProConfig

    if spec in ("real", "tiny"):
        return VideoXLProConfig.real() if spec == "real" else VideoXLProConfig.tiny()
    path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise PlanError(f"--config must be 'real', 'tiny' or a model folder with a config.json; {spec!r} has none")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PlanError(f"--config {spec!r}: cannot read {path}: {e}") from None
    if raw.get("model_type") != VideoXLProConfig.model_type:
        raise PlanError(f"--config {spec!r}: model_type is {raw.get('model_type')!r}, not {VideoXLProConfig.model_type!r} "
                        "(convert a released checkpoint with vxlp convert first)")
    try:
        return VideoXLProConfig.from_pretrained(os.path.dirname(path) or ".")
    except Exception as e:  # noqa: BLE001  (a config that transformers refuses)
        raise PlanError(f"--config {spec!r}: {type(e).__name__}: {e}") from None


def time_tokens_of(spec: str) -> int | None:
    """Time-text tokens per group of a model folder's processor (None when it has no tokenizer files)."""
    if spec in ("real", "tiny") or not os.path.isdir(spec):
        return None
    if not os.path.isfile(os.path.join(spec, "processor_config.json")):
        return None
    try:
        from .processing import VideoXLProProcessor

        proc = VideoXLProProcessor.from_pretrained(spec)
        return len(proc.time_ids(0.0)) if proc.time_format else 0
    except Exception:  # noqa: BLE001  (no usable tokenizer: the default count stands)
        return None


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``vxlp plan`` on an ``argparse`` subparsers object; its ``func(args)`` returns the exit status
    (0, or 2 after a message naming the bad argument)."""
    p = subparsers.add_parser("plan", help="peak GPU memory by component for N frames, and the most frames that fit",
                              description=_DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=run_plan)
    return p


_DESCRIPTION = ("Peak GPU memory of encoding N frames and answering one question (VideoChat), by component, and the "
                "most frames that fit, with the compact tokens on the GPU and in host memory.")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="real", help="'real', 'tiny', or a saved model folder (its config.json; no weights needed)")
    p.add_argument("--gpu-mem", required=True, help="GPU memory, e.g. 80GB or 141GiB (GB is read as GiB)")
    p.add_argument("--frames", type=int, default=None, help="frames to plan for (default: the most that fit on the GPU)")
    p.add_argument("--budget", type=int, default=None, help="selector budget, a multiple of 16 (default: the config's)")
    p.add_argument("--mode", choices=("off", "ratio", "budget"), default=None, help="selector mode (default: the config's)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--chunk-frames", type=int, default=None, help="frames through vision + DTS at a time (default: the config's)")
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, help="prompt tokens outside the video block")
    p.add_argument("--time-tokens", type=int, default=None,
                   help=f"time-text tokens per group (default: the folder's processor, else {DEFAULT_TIME_TOKENS})")
    p.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS, help="tokens generated per answer")
    p.add_argument("--ops", choices=OPS, default="cuda", help="vxlp_ops backend of the DTS and the selector")
    p.add_argument("--overhead-gb", type=float, default=DEFAULT_OVERHEAD_GIB, help="CUDA context + allocator slack, GiB")
    p.add_argument("--host-mem", default=None, help="host memory for offloaded tokens (default: not limited)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _settings_from_args(args) -> dict:
    if args.time_tokens is not None:
        tt = args.time_tokens
    else:
        tt = time_tokens_of(args.config)
        tt = DEFAULT_TIME_TOKENS if tt is None else tt
    return dict(dtype=args.dtype, budget=args.budget, mode=args.mode, chunk_frames=args.chunk_frames,
                prompt_tokens=args.prompt_tokens, time_tokens=tt, new_tokens=args.new_tokens, ops=args.ops)


_FLAGS = {"frames": "--frames", "budget": "--budget", "chunk_frames": "--chunk-frames", "prompt_tokens": "--prompt-tokens",
          "time_tokens": "--time-tokens", "new_tokens": "--new-tokens", "dtype": "--dtype", "mode": "--mode", "ops": "--ops"}


def _flag_name(msg: str) -> str:
    """Name the command-line flag in a :class:`Settings` error message."""
    for field, flag in sorted(_FLAGS.items(), key=lambda kv: -len(kv[0])):
        if msg.startswith(field + " ") or msg.startswith(field + " ("):
            return flag + msg[len(field):]
    return msg


def run_plan(args) -> int:
    """``vxlp plan``: print the plan (a table, or JSON with ``--json``); 0, or 2 with a message naming the argument."""
    try:
        gpu = parse_memory(args.gpu_mem, "--gpu-mem")
        host = parse_memory(args.host_mem, "--host-mem") if args.host_mem is not None else None
        if args.overhead_gb is None or not math.isfinite(args.overhead_gb) or args.overhead_gb < 0:
            raise PlanError(f"--overhead-gb must be >= 0, got {args.overhead_gb!r}")
        if args.frames is not None and args.frames < 1:
            raise PlanError(f"--frames must be >= 1, got {args.frames}")
        config = load_config(args.config)
        st = _settings_from_args(args)
        overhead = args.overhead_gb * GIB
        Settings(frames=args.frames or 1, **st).validate()
        on_gpu = max_frames(config, gpu, overhead, **st)
        offl = max_frames(config, gpu, overhead, host, offload=True, **st)
        n = args.frames if args.frames is not None else max(on_gpu["frames"], config.frames_per_group)
        p = plan(config, n, **st)
        p_off = plan(config, n, offload=True, **st)
    except ValueError as e:  # PlanError and the config's own validation
        print(f"vxlp plan: error: {_flag_name(str(e))}", file=sys.stderr)
        return 2
    doc = {
        "config": args.config,
        "gpu_mem_bytes": gpu,
        "host_mem_bytes": host,
        "overhead_bytes": overhead,
        "settings": {**st, "frames": p.frames},
        "plan": p.as_dict(),
        "fits": p.peak_bytes + overhead <= gpu,
        "plan_offload": p_off.as_dict(),
        "fits_offload": p_off.peak_bytes + overhead <= gpu and (host is None or p_off.host_bytes <= host),
        "max_frames": {"tokens_on_gpu": _mf(on_gpu), "host_offload": _mf(offl)},
        "offload_supported": True,
    }
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(_table(doc, p, p_off))
    return 0


def _mf(r: dict) -> dict:
    out = {"frames": r["frames"], "limit": r["limit"], "term": r["term"], "phase": r["phase"]}
    if r["plan"] is not None:
        out["peak_bytes"] = r["plan"].peak_bytes
        out["host_bytes"] = r["plan"].host_bytes
    return out


def _table(doc: dict, p: MemoryPlan, p_off: MemoryPlan) -> str:
    st = doc["settings"]
    gib = lambda x: f"{x / GIB:9.2f}"  # noqa: E731
    lines = [
        f"vxlp plan: config {doc['config']}, {p.frames:,} frames ({p.groups:,} groups), {p.dtype}, ops {p.ops}, "
        f"chunk {p.chunk_frames} frames, budget {p.budget}: {p.llm_tokens:,} LLM tokens after the selector",
        f"GPU {doc['gpu_mem_bytes'] / GIB:.1f} GiB, of which {doc['overhead_bytes'] / GIB:.1f} GiB allowed for the CUDA "
        "context and allocator slack",
        "",
        f"{'GiB, tokens on the GPU':<26}" + "".join(f"{k:>10}" for k in p.phases) + f"{'offload':>10}",
    ]
    for comp in COMPONENTS:
        row = [p.phases[k]["components"][comp] for k in p.phases]
        off = p_off.components[comp]
        if any(row) or off:
            lines.append(f"  {comp:<24}" + "".join(f"{gib(v):>10}" for v in row) + f"{gib(off):>10}")
    totals = "".join(f"{gib(p.phases[k]['peak']):>10}" for k in p.phases)
    lines.append(f"  {'total (peak)':<24}{totals}{gib(p_off.peak_bytes):>10}")
    enc_d = {k: v for k, v in p.phases["encode"]["detail"].items() if k != "tokens_buffer"}
    step = max(enc_d, key=enc_d.get)
    sel_d = p.phases["select"]["detail"]
    big = max(sel_d, key=sel_d.get)
    lines.append(f"  one chunk's activations: {enc_d[step] / GIB:.2f} GiB (largest step: {step}); largest selector term: "
                 f"{big} {sel_d[big] / GIB:.2f} GiB")
    lines.append("")
    lines.append(f"peak {p.peak_bytes / GIB:.2f} GiB in {p.peak_phase}: {'fits' if doc['fits'] else 'DOES NOT FIT'} "
                 f"(offload: {p_off.peak_bytes / GIB:.2f} GiB in {p_off.peak_phase}, "
                 f"{p_off.host_bytes / GIB:.1f} GiB host; {'fits' if doc['fits_offload'] else 'does not fit'})")
    for key, label in (("tokens_on_gpu", "tokens on the GPU"), ("host_offload", "with host offload (VideoChat offload_threshold_gb)")):
        m = doc["max_frames"][key]
        lines.append(f"most frames that fit, {label}: {m['frames']:,}  (limit: {m['limit']})")
    for n in p.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m vxlp_model.plan ...`` (the arguments of ``vxlp plan``)."""
    parser = argparse.ArgumentParser(prog="vxlp plan", description=_DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return run_plan(args)


if __name__ == "__main__":
    sys.exit(main())
