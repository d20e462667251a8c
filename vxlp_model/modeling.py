"""Video-XL-Pro as a transformers model (SPEC §1–5; RELEASED.md §3–§5).

Layout, following transformers' own video LLMs (``llava_onevision``, ``qwen2_vl``):

- :class:`VideoXLProModel` — ``vision_tower`` (SigLIP without post-layernorm), ``sae`` (the DTS encoder; the
  released checkpoint's name), ``recot_decoder`` and ``sgm`` (ReCoT pre-training; absent when
  ``recot_decoder_layers = 0``), ``mm_projector`` (Linear·GELU·Linear), ``selector`` (Query-aware Selector;
  absent for ``selector_impl = "none"``), ``language_model`` (``Qwen2Model``). Its forward splices the visual
  tokens into the prompt, runs the selector, compacts the sequence, and runs the LLM.
- :class:`VideoXLProForConditionalGeneration` — ``model`` + ``lm_head``; ``generate()`` is GenerationMixin's own.

Inputs come from :class:`vxlp_model.VideoXLProProcessor`: ``input_ids``, ``attention_mask``, ``token_type_ids``
(:data:`vxlp_model.processing.TEXT` / ``QUERY`` / ``TIME`` / ``VIDEO`` / ``ANSWER``), ``pixel_values_videos``
(all videos' frames concatenated, each video padded to a multiple of ``frames_per_group``) and
``video_num_frames`` (frames per video). Precomputed visual tokens can replace the pixels (``video_embeds``).

Because the selector drops visual tokens, the sequence the LLM sees is shorter than ``input_ids``. The forward
returns the compacted ``attention_mask`` and ``position_ids``; :meth:`VideoXLProForConditionalGeneration.
_update_model_kwargs_for_generation` hands them to the next decoding step, so ``generate()`` works unchanged
(greedy, sampling, beams, ``generation_config``) and returns ``[B, L + new]`` ids like any decoder-only model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

from .config import VideoXLProConfig, validate_selector_args
from .dts import DTSEncoder, ReCoTDecoder, RelativePosition, SemanticGuidedMasking, frames_to_groups
from .processing import ANSWER, IGNORE_INDEX, QUERY, TIME, VIDEO
from .llm_compression import (
    VST_RATIOS,
    assemble_cache,
    choose_groups,
    install_compressed_attention,
    lp_comp_prefill,
    qc_comp_scores,
    rotated_query_key,
    vst_prefill,
)
from .selector import QueryAwareSelector, Selection, block_layout, keep_all
from .vision import VisionTower
from vxlp_ops.reference.sgm import min_max

VIDEO_INPUT_KEYS = ("pixel_values_videos", "video_num_frames", "video_embeds")


@dataclass
class VideoXLProModelOutputWithPast(BaseModelOutputWithPast):
    """:class:`VideoXLProModel` output.

    Beyond ``last_hidden_state`` / ``cache`` / ``hidden_states`` / ``attentions`` (of the compacted sequence):
    ``attention_mask`` and ``position_ids`` ``[B, L']`` of the compacted sequence, ``labels`` ``[B, L']`` moved
    with it (when labels were given), and ``selection``: per sample a dict with ``positions`` (int64 ``[K]``: the
    kept visual tokens' positions in the compacted sequence), ``scores`` (float ``[K]``, their selector scores, or
    None) and ``kept_visual`` (indices among the sample's visual tokens) — None for samples without video. All
    these are None when no video was spliced (decoding steps, text-only calls). ``summary_tokens``: per sample, the
    VST summary tokens made (``llm_compression = "vst"``), else None.
    """

    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    selection: list | None = None
    relevance: list | None = None
    summary_tokens: list | None = None


@dataclass
class VideoXLProCausalLMOutputWithPast(CausalLMOutputWithPast):
    """:class:`VideoXLProForConditionalGeneration` output: ``loss``, ``logits`` ``[B, L', V]`` and the compacted
    ``attention_mask`` / ``position_ids`` / ``labels`` and ``selection`` of :class:`VideoXLProModelOutputWithPast`;
    ``selector_distill_loss`` (a scalar, when ``selector_distill_temperature`` was passed in training)."""

    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    selection: list | None = None
    selector_distill_loss: torch.Tensor | None = None
    summary_tokens: list | None = None


@dataclass
class VideoXLProReCoTOutput(ModelOutput):
    """ReCoT pre-training step (SPEC §3): ``loss`` (optimised), ``recon_loss``, ``score_loss``, ``mask_fraction``."""

    loss: torch.Tensor | None = None
    recon_loss: torch.Tensor | None = None
    score_loss: torch.Tensor | None = None
    mask_fraction: torch.Tensor | None = None


class VideoXLProPreTrainedModel(PreTrainedModel):
    config_class = VideoXLProConfig
    config: VideoXLProConfig
    base_model_prefix = "model"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "SpatialAttention", "TemporalAttention"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        """Our modules: LeCun-normal Linear/Conv, zero biases, identity norms, zero-initialised temporal attention
        (SPEC §2), zero temporal encodings and mask token; SigLIP's embeddings as transformers initialises them.
        The Qwen2 language model initialises itself."""
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if getattr(module, "zero_init", False):
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, RelativePosition):
            init.xavier_uniform_(module.embeddings_table)
        elif isinstance(module, SiglipVisionEmbeddings):
            init.normal_(module.position_embedding.weight, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        if isinstance(module, (DTSEncoder, ReCoTDecoder)):
            init.zeros_(module.temporal_encoding)
        elif isinstance(module, SemanticGuidedMasking):
            c = module.temp_query.shape[1]
            init.normal_(module.temp_query, std=c**-0.5)
            init.normal_(module.spatial_query, std=c**-0.5)
            init.zeros_(module.mask_token)


class VideoXLProModel(VideoXLProPreTrainedModel):
    """The Video-XL-Pro backbone without the LM head (see the module docstring for the submodules)."""

    def __init__(self, config: VideoXLProConfig):
        super().__init__(config)
        c, d = config.dts_channels, config.hidden_size
        self.vision_tower = VisionTower(config)
        self.sae = DTSEncoder(config)
        if config.has_recot:
            self.recot_decoder = ReCoTDecoder(config)
            self.sgm = SemanticGuidedMasking(config)
        self.mm_projector = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
        if config.selector_impl != "none":
            self.selector = QueryAwareSelector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        if config.llm_compression != "none":
            vst = config.llm_compression == "vst"
            install_compressed_attention(self.language_model, summary_projections=vst)
            if vst:
                self.summary_embed_tokens = nn.Embedding(1, d)
        self.post_init()
        self.init_summary_from_originals()

    @torch.no_grad()
    def init_summary_from_originals(self) -> None:
        """VST (Video-XL §3.2): the summary tokens' q/k/v/o projections start as copies of the originals, their
        embedding as the EOS embedding (the mean embedding when the text config names no EOS). No-op otherwise."""
        if self.config.llm_compression != "vst":
            return
        for layer in self.language_model.layers:
            layer.self_attn.init_summary_from_originals()
        table = self.get_input_embeddings().weight
        eos = self.config.text_config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        row = table[eos] if eos is not None and 0 <= eos < table.shape[0] else table.mean(0)
        self.summary_embed_tokens.weight.copy_(row[None].to(self.summary_embed_tokens.weight.dtype))

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------ visual path (SPEC §1–2; RELEASED.md §3)
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels float ``[n, 3, S, S]`` → SigLIP tokens resized to ``[n, dts_grid², C]`` (RELEASED.md §3.2)."""
        return self.vision_tower(pixel_values.to(self.sae.temporal_encoding.device), self.config.dts_grid)

    def compress_groups(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-frame tokens ``[4G, S, C]`` → LLM-ready visual tokens ``[G, P, d]`` (DTS, projector, 2×2 average pool)."""
        cfg = self.config
        x = frames_to_groups(feats, cfg.frames_per_group, cfg.token_layout)
        z = self.sae(x.to(self.sae.temporal_encoding.dtype))  # [G, S, C]
        h = self.mm_projector(z)  # [G, S, d]
        g, _, d = h.shape
        grid = cfg.dts_grid
        h = h.transpose(1, 2).reshape(g, d, grid, grid)
        h = F.avg_pool2d(h, cfg.pool_size)
        return h.reshape(g, d, cfg.tokens_per_group).transpose(1, 2)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_num_frames: torch.Tensor | list[int] | None = None,
        chunk_frames: int | None = None,
    ) -> list[torch.Tensor]:
        """Visual tokens of each video.

        Args:
            pixel_values_videos: float ``[ΣN_v, 3, S, S]``: the videos' frames concatenated (processor output).
            video_num_frames: int ``[V]`` frames per video, each a multiple of ``frames_per_group`` (default: one
                video).
            chunk_frames: frames through vision + DTS at a time (default ``config.chunk_frames``); the result does
                not depend on it.

        Returns:
            One ``[G_v, P, d]`` tensor per video (``G_v = N_v / frames_per_group``, P = 144).

        Raises:
            ValueError: counts that do not add up to the frames given, or that are not multiples of the group size.
        """
        t = self.config.frames_per_group
        if pixel_values_videos.dim() != 4:
            raise ValueError(f"pixel_values_videos must have shape [frames, 3, S, S], got {tuple(pixel_values_videos.shape)}")
        total = pixel_values_videos.shape[0]
        counts = [total] if video_num_frames is None else [int(n) for n in torch.as_tensor(video_num_frames).reshape(-1).tolist()]
        if sum(counts) != total or any(n <= 0 or n % t for n in counts):
            raise ValueError(
                f"video_num_frames {counts} must be positive multiples of frames_per_group ({t}) adding up to the "
                f"{total} frames of pixel_values_videos"
            )
        size = self._chunk_size(chunk_frames)
        tokens = torch.cat(
            [self.compress_groups(self.vision_features(pixel_values_videos[i : i + size])) for i in range(0, total, size)]
        )
        return list(tokens.split([n // t for n in counts]))

    def encode_video(self, pixel_chunks: Iterable[torch.Tensor], chunk_frames: int | None = None) -> torch.Tensor:
        """Encode one video streamed as chunks of pixels, never holding more than ``chunk_frames`` frames' features.

        Args:
            pixel_chunks: an iterable of float ``[n_i, 3, S, S]`` pixel chunks (e.g. the video processor applied to
                each chunk of :func:`vxlp_model.iter_video`), or one such tensor. The tail is padded to a multiple
                of ``frames_per_group`` by repeating the last frame (RELEASED.md §3.3, deterministic).

        Returns: ``[G, P, d]`` visual tokens, ``G = ceil(N / frames_per_group)``.

        Raises: ValueError: no frames, or a chunk of the wrong shape.
        """
        size = self._chunk_size(chunk_frames)
        out = [self.compress_groups(self.vision_features(chunk)) for chunk in self._rechunk(pixel_chunks, size)]
        if not out:
            raise ValueError("pixel_chunks must contain at least one frame")
        return torch.cat(out)

    def _chunk_size(self, chunk_frames: int | None) -> int:
        t = self.config.frames_per_group
        size = self.config.chunk_frames if chunk_frames is None else int(chunk_frames)
        if size < t or size % t:
            raise ValueError(f"chunk_frames ({size}) must be a positive multiple of frames_per_group ({t})")
        return size

    def _rechunk(self, chunks, size: int) -> Iterator[torch.Tensor]:
        if isinstance(chunks, torch.Tensor):
            chunks = [chunks]
        buf, n = [], 0
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, torch.Tensor) or chunk.dim() != 4 or chunk.shape[1] != 3 or not chunk.is_floating_point():
                raise ValueError(f"pixel chunk {i} must be a float tensor [n, 3, S, S]")
            buf.append(chunk)
            n += chunk.shape[0]
            while n >= size:
                allf = torch.cat(buf)
                yield allf[:size]
                buf, n = [allf[size:]], allf.shape[0] - size
        if n:
            yield pad_to_groups(torch.cat(buf), self.config.frames_per_group)

    # ------------------------------------------------------------------ ReCoT pre-training (SPEC §3)
    def recot_loss(
        self,
        pixel_values: torch.Tensor,
        *,
        mask_ratio: float = 0.5,
        pool: float = 0.75,
        score_loss_weight: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """ReCoT reconstruction objective on frozen SigLIP tokens of clips of ``frames_per_group`` frames.

        Args:
            pixel_values: float ``[4G, 3, S, S]`` (each consecutive 4 frames = one clip).
            mask_ratio, pool: SGM masking (SPEC §3: ρ = 0.5 of each frame's tokens drawn from its 75 % lowest-score
                tokens); score_loss_weight: weight of the SGM score loss; generator: for the mask (model device).

        Returns:
            dict with ``loss`` (= ``recon_loss + score_loss_weight · score_loss``), ``recon_loss`` (MSE of the
            decoder's 4×S tokens against the SigLIP tokens), ``score_loss`` (MSE between SGM scores and the
            min-max-normalised per-token reconstruction error: our design, which gives the learnable SGM queries a
            training signal — high score = hard to reconstruct = kept visible), ``mask_fraction``.

        Raises: ValueError: no ReCoT decoder (``recot_decoder_layers = 0``) or a frame count not a multiple of 4.

        Source: paper §3.2 (ReCoT, SGM); SPEC §3.
        """
        cfg = self.config
        if not cfg.has_recot:
            raise ValueError("this model has no ReCoT decoder (recot_decoder_layers = 0): build it with recot_decoder_layers > 0")
        if pixel_values.shape[0] % cfg.frames_per_group:
            raise ValueError(f"pixel_values must hold a multiple of {cfg.frames_per_group} frames, got {pixel_values.shape[0]}")
        with torch.no_grad():
            feats = self.vision_features(pixel_values)
        x = frames_to_groups(feats, cfg.frames_per_group, cfg.token_layout).to(self.sae.temporal_encoding.dtype)
        g, t, hh, ww, c = x.shape
        masked, mask, scores = self.sgm(x.reshape(g, t, hh * ww, c), mask_ratio, pool, generator)
        z = self.sae(masked.reshape(g, t, hh, ww, c))
        rec = self.recot_decoder(z, cfg.dts_grid)
        err = (rec.float() - x.float()).pow(2).mean(-1).reshape(g, t, hh * ww)
        recon = err.mean()
        score_loss = F.mse_loss(scores.float(), min_max(err.detach(), dim=(1, 2)))
        loss = recon + score_loss_weight * score_loss
        return {"loss": loss, "recon_loss": recon.detach(), "score_loss": score_loss.detach(), "mask_fraction": mask.float().mean()}

    # ------------------------------------------------------------------ splice, select, compact (RELEASED.md §4)
    def splice_video(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        videos: list[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        selector_mode: str | None = None,
        selector_budget: int | None = None,
        selector_keep_ratio: float | None = None,
    ) -> dict[str, Any]:
        """Place the visual tokens into the prompt, run the selector per video block, and compact the batch.

        Args:
            input_ids, token_type_ids: int64 ``[B, L]`` from the processor; each video block is a run of ``TIME``
                and ``VIDEO`` tokens (per group: its time text, then P placeholders), consumed by the videos in
                order.
            videos: visual tokens per video, ``[G_v, P, d]``.
            attention_mask: ``[B, L]`` (1 = real token); labels: ``[B, L]`` or None.
            selector_mode, selector_budget, selector_keep_ratio: default to the config's.

        Returns:
            dict with ``inputs_embeds`` ``[B, L', d]``, ``attention_mask`` and ``position_ids`` ``[B, L']``
            (positions 0… over each compacted sample), ``labels`` ``[B, L']`` or None, ``selection`` (see
            :class:`VideoXLProModelOutputWithPast`). Compacted samples are padded on the left (the selector can
            shorten samples by different amounts; generation appends on the right).

        Raises:
            ValueError: placeholder counts that do not match the videos, a broken block, unused videos, or bad
            selector arguments.
        """
        cfg = self.config
        mode = cfg.selector_mode if selector_mode is None else selector_mode
        budget = cfg.selector_budget if selector_budget is None else selector_budget
        ratio = cfg.selector_keep_ratio if selector_keep_ratio is None else selector_keep_ratio
        validate_selector_args(mode, budget, ratio)
        if cfg.selector_impl != "none" and cfg.selector_impl != self.selector.impl:
            raise ValueError(
                f"config.selector_impl is {cfg.selector_impl!r} but this model was built with {self.selector.impl!r}: "
                "the implementation is an architecture setting fixed at construction"
            )
        b, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(token_type_ids.shape)}")
        embed = self.get_input_embeddings()
        p = cfg.tokens_per_group
        video_iter = iter(videos)
        rows, row_labels, selection, row_groups = [], [], [], []
        select_how = cfg.frame_selection if cfg.selector_impl != "none" or cfg.frame_selection != "selector" else "none"
        for i in range(b):
            real = attention_mask[i].bool()
            ids, types = input_ids[i][real], token_type_ids[i][real]
            lab = labels[i][real] if labels is not None else None
            blocks = _video_blocks(types)
            if not blocks:
                rows.append(embed(ids))
                row_labels.append(lab)
                selection.append(None)
                row_groups.append(torch.full((ids.shape[0],), -1, dtype=torch.long, device=ids.device))
                continue
            outside = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
            for s, e in blocks:
                outside[s:e] = False
            # only the text and the time rows are embedded: the placeholders' rows would be overwritten anyway,
            # and for a long video they would take as much memory as the visual tokens
            query_rows = (types == QUERY) if cfg.selector_impl == "vxlp" else (outside & (types != ANSWER))
            text = embed(ids[query_rows])
            pieces, lab_pieces, kept_pos, kept_scores, kept_vis, grp_pieces = [], [], [], [], [], []
            probes = []  # training, vxlp selector: per block (every token's probe, the mean query, kept indices)
            cursor, out_len, vis_offset, group_offset = 0, 0, 0, 0
            for s, e in blocks:
                try:
                    vis = next(video_iter)
                except StopIteration:
                    raise ValueError(f"sample {i} has more video blocks than there are videos") from None
                is_visual = types[s:e] == VIDEO
                g = vis.shape[0]
                if int(is_visual.sum()) != g * p or vis.shape[1] != p or not bool((ids[s:e][is_visual] == cfg.video_token_id).all()):
                    raise ValueError(
                        f"sample {i}: a video block holds {int(is_visual.sum())} placeholders (id {cfg.video_token_id}) but "
                        f"its video gives {g} groups × {vis.shape[1]} tokens (expected {p} per group)"
                    )
                time_idx = (~is_visual).nonzero().squeeze(-1)
                vis_before = torch.cumsum(is_visual.long(), 0)[time_idx]  # visual rows before each time row
                time_group = vis_before // p
                time_rows = embed(ids[s:e][time_idx])
                vis = vis.to(dtype=time_rows.dtype)
                if select_how == "none":
                    sel = keep_all(vis.to(time_rows.device), time_rows, time_group)
                elif select_how == "qc_comp":
                    prefix = embed(ids[:s][outside[:s]])
                    q_rows = (torch.arange(e, ids.shape[0], device=ids.device))[outside[e:] & (types[e:] != ANSWER)]
                    sel = self._qc_comp_select(prefix, vis.to(time_rows.device), time_rows, time_group, embed(ids[q_rows]), mode, budget, ratio)
                else:
                    sel = self.selector(vis, time_rows, time_group, text, mode, budget, ratio)
                # the kept rows in block order
                order = torch.argsort(torch.cat([sel.time_pos, sel.visual_pos]))
                block_rows = torch.cat([sel.time_rows, sel.visual_rows])[order]
                is_kept_visual = torch.cat(
                    [torch.zeros_like(sel.time_pos, dtype=torch.bool), torch.ones_like(sel.visual_pos, dtype=torch.bool)]
                )[order]
                pieces += [embed(ids[cursor:s]), block_rows]
                block_groups = torch.cat([time_group[sel.kept_time.to(time_group.device)], sel.kept_visual.to(time_group.device) // p])
                grp_pieces += [
                    torch.full((s - cursor,), -1, dtype=torch.long, device=ids.device),
                    block_groups[order.to(block_groups.device)].to(ids.device) + group_offset,
                ]
                group_offset += g
                if lab is not None:
                    block_pos = torch.cat([sel.time_pos, sel.visual_pos])[order]
                    lab_pieces += [lab[cursor:s], lab[s:e][block_pos]]
                out_len += s - cursor
                kept_pos.append(out_len + is_kept_visual.nonzero().squeeze(-1))
                kept_vis.append(vis_offset + sel.kept_visual)
                if sel.scores is not None:
                    kept_scores.append(sel.scores[sel.kept_visual])
                if sel.probe is not None:  # references only; the negatives' loss indexes and multiplies when asked
                    probes.append((sel.probe, sel.query, sel.kept_visual, sel.probe_inputs))
                out_len += block_rows.shape[0]
                vis_offset += g * p
                cursor = e
            pieces.append(embed(ids[cursor:]))
            rows.append(torch.cat(pieces))
            grp_pieces.append(torch.full((ids.shape[0] - cursor,), -1, dtype=torch.long, device=ids.device))
            row_groups.append(torch.cat(grp_pieces))
            if lab is not None:
                lab_pieces.append(lab[cursor:])
                row_labels.append(torch.cat(lab_pieces))
            else:
                row_labels.append(None)
            selection.append(
                {
                    "positions": torch.cat(kept_pos),
                    "scores": torch.cat(kept_scores) if kept_scores else None,
                    "kept_visual": torch.cat(kept_vis),
                    # one video block scored by the vxlp selector in training: what in-batch negatives need
                    "probe": probes[0] if probes and len(blocks) == 1 else None,
                    "query_ids": ids[query_rows],
                    "tokens_per_group": p,
                }
            )
        if next(video_iter, None) is not None:
            raise ValueError("more videos were given than the prompts have video blocks")
        new_len = max(r.shape[0] for r in rows)
        max_pos = getattr(cfg.text_config, "max_position_embeddings", None)
        # VST positions are compact (text and summary tokens only): vst_prefill checks its own bound
        if max_pos is not None and new_len > max_pos and cfg.llm_compression != "vst":
            raise ValueError(
                f"the prompt holds {new_len} tokens after the selector, more than the LLM's {max_pos} positions: lower "
                "selector_budget or selector_keep_ratio (in budget mode the vxlp selector bounds the video block at any length)"
            )
        d = rows[0].shape[1]
        embeds = rows[0].new_zeros((b, new_len, d))
        mask = torch.zeros((b, new_len), dtype=attention_mask.dtype, device=input_ids.device)
        # padding gets position 1, as transformers does: a 0 there would read as the start of a packed sequence
        positions = torch.ones((b, new_len), dtype=torch.long, device=input_ids.device)
        out_labels = torch.full((b, new_len), IGNORE_INDEX, dtype=torch.long, device=input_ids.device) if labels is not None else None
        groups = torch.full((b, new_len), -1, dtype=torch.long, device=input_ids.device)
        for i, r in enumerate(rows):
            n = r.shape[0]
            off = new_len - n  # left padding: generation appends on the right
            embeds[i, off : off + n] = r
            groups[i, off : off + n] = row_groups[i]
            mask[i, off : off + n] = 1
            positions[i, off : off + n] = torch.arange(n, device=input_ids.device)
            if out_labels is not None:
                out_labels[i, off : off + n] = row_labels[i]
            if selection[i] is not None and off:
                selection[i]["positions"] = selection[i]["positions"] + off
        return {
            "inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, "labels": out_labels, "selection": selection,
            "row_group": groups,
        }

    def _compressed_forward(self, spliced: dict, use_cache: bool | None, vst_ratio: int | None) -> "VideoXLProModelOutputWithPast":
        """The LLM with VST or LP-Comp over each sample of a spliced batch (see :meth:`forward`)."""
        cfg = self.config
        ratio = cfg.vst_ratio if vst_ratio is None else vst_ratio
        if cfg.llm_compression == "vst" and ratio not in VST_RATIOS:
            raise ValueError(f"vst_ratio must be one of {VST_RATIOS}, got {ratio!r}")
        embeds, mask, positions = spliced["inputs_embeds"], spliced["attention_mask"], spliced["position_ids"]
        hidden = torch.zeros_like(embeds)
        prefills = []
        for i in range(embeds.shape[0]):
            real = mask[i].bool()
            emb, grp = embeds[i][real][None], spliced["row_group"][i][real]
            if cfg.llm_compression == "vst":
                pf = vst_prefill(
                    self.language_model, self.summary_embed_tokens.weight, emb, grp, cfg.vst_window_groups, ratio, cfg.vst_dynamic_ratio
                )
            else:
                pf = lp_comp_prefill(self.language_model, emb, grp, positions[i][real], cfg.lp_comp_final_tokens)
            hidden = hidden.index_put((torch.full_like(grp, i), real.nonzero().squeeze(-1)), pf.hidden[0])
            prefills.append(pf)
        cache, kept_mask, kept_positions = assemble_cache(prefills)
        return VideoXLProModelOutputWithPast(
            last_hidden_state=hidden,
            cache=cache if use_cache or use_cache is None and not self.training else None,
            attention_mask=kept_mask,
            position_ids=kept_positions,
            labels=spliced["labels"],
            selection=spliced["selection"],
            summary_tokens=[p.summary_tokens for p in prefills],
        )

    def _qc_comp_select(self, prefix, vis, time_rows, time_group, question, mode, budget, ratio) -> Selection:
        """QC-Comp (XComp §3.3) for one video block: score the groups by the LLM's attention from the question
        over segments (:func:`vxlp_model.llm_compression.qc_comp_scores`) and keep the best within the selector's
        mode / budget / ratio; the kept groups keep all their rows (time text and visual tokens)."""
        g, p, d = vis.shape
        time_pos, visual_pos = block_layout(time_group, g, p)
        n_time = torch.bincount(time_group, minlength=g)
        time_start = torch.cumsum(n_time, 0) - n_time
        group_rows = [
            torch.cat([time_rows[int(time_start[j]) : int(time_start[j] + n_time[j])], vis[j].to(time_rows.dtype)]) for j in range(g)
        ]
        if mode == "off":
            scores = torch.zeros(g, device=vis.device)
        else:
            scores = qc_comp_scores(self.language_model, prefix, group_rows, [p] * g, question, self.config.qc_segment_groups)
        keep = choose_groups(scores, n_time + p, mode, budget, ratio)
        kept_visual = keep[:, None].expand(g, p).reshape(-1).nonzero().squeeze(-1)
        kept_time = keep[time_group]
        return Selection(
            kept_visual, vis.reshape(g * p, d)[kept_visual].to(time_rows.dtype), kept_time, time_rows[kept_time],
            visual_pos[kept_visual], time_pos[kept_time], None,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        selector_mode: str | None = None,
        selector_budget: int | None = None,
        selector_keep_ratio: float | None = None,
        relevance_rows: bool = False,
        vst_ratio: int | None = None,
        **kwargs,
    ) -> VideoXLProModelOutputWithPast:
        """Splice video into the prompt (when video inputs are given), select, compact, and run the LLM.

        Shapes: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` int64 ``[B, L]``;
        ``pixel_values_videos`` float ``[ΣN_v, 3, S, S]`` with ``video_num_frames`` int ``[V]``, or ``video_embeds``
        float ``[ΣG_v, P, d]`` (precomputed visual tokens) with ``video_num_frames`` = ``frames_per_group · G_v``.
        ``selector_mode`` / ``selector_budget`` / ``selector_keep_ratio`` override the config's defaults for this
        call. ``relevance_rows`` (training): also return, per sample, the LLM's attention from the positions that
        predict a labelled token to the kept visual tokens (see :meth:`VideoXLProForConditionalGeneration.forward`;
        not computed when ``llm_compression != "none"``). ``vst_ratio`` overrides ``config.vst_ratio`` for this call
        (the training curriculum draws it per step).

        With ``llm_compression != "none"`` and video inputs, the LLM runs through
        :mod:`vxlp_model.llm_compression`, one sample at a time: ``last_hidden_state`` is ``[B, L', d]`` over the
        compacted prompt (aligned with ``labels``), while ``cache`` (a
        :class:`vxlp_model.llm_compression.CompressedCache`), ``attention_mask`` and ``position_ids`` describe what
        the LLM keeps (``[B, M]``: for VST, the text and the summary tokens at compact positions; for LP-Comp,
        layer 0's rows) — what generation continues from.

        Raises:
            ValueError: video inputs without ``input_ids`` / ``token_type_ids``, both pixels and embeddings, video
            inputs with a non-empty cache, or any error of :meth:`splice_video` / :meth:`get_video_features`.
        """
        has_video = pixel_values_videos is not None or video_embeds is not None
        out_labels, selection, relevance = labels, None, None
        if has_video:
            if pixel_values_videos is not None and video_embeds is not None:
                raise ValueError("pass either pixel_values_videos or video_embeds, not both")
            if input_ids is None or token_type_ids is None:
                raise ValueError("video inputs need input_ids and token_type_ids (from VideoXLProProcessor)")
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError("video inputs can only be spliced into a prompt that starts from an empty cache")
            if pixel_values_videos is not None:
                videos = self.get_video_features(pixel_values_videos, video_num_frames)
            else:
                videos = _split_embeds(video_embeds, video_num_frames, self.config)
            spliced = self.splice_video(
                input_ids, token_type_ids, videos, attention_mask, labels, selector_mode, selector_budget, selector_keep_ratio
            )
            inputs_embeds = spliced["inputs_embeds"]
            attention_mask, position_ids = spliced["attention_mask"], spliced["position_ids"]
            out_labels, selection = spliced["labels"], spliced["selection"]
            input_ids = None
            if self.config.llm_compression != "none":
                return self._compressed_forward(spliced, use_cache, vst_ratio)
        hooks = []
        if relevance_rows and selection is not None and out_labels is not None:
            relevance = [torch.zeros(0) if s is None else torch.zeros(s["positions"].numel()) for s in selection]
            hooks = _register_relevance_hooks(self.language_model, out_labels, attention_mask, selection, relevance)
        try:
            outputs = self.language_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **kwargs,
            )
        finally:
            for h in hooks:
                h.remove()
        if relevance is not None:
            n_layers = len(self.language_model.layers)
            relevance = [r / n_layers for r in relevance]
        return VideoXLProModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=attention_mask if has_video else None,
            position_ids=position_ids if has_video else None,
            labels=out_labels if has_video else None,
            selection=selection,
            relevance=relevance,
        )


class VideoXLProForConditionalGeneration(VideoXLProPreTrainedModel, GenerationMixin):
    """Video-XL-Pro with its LM head: ``save_pretrained`` / ``from_pretrained`` / GenerationMixin's ``generate``.

    Example::

        processor = VideoXLProProcessor.from_pretrained(path)
        model = VideoXLProForConditionalGeneration.from_pretrained(path).eval()
        frames, timestamps, _ = read_video("clip.mp4", fps=1.0, max_frames=128)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, videos=frames, video_timestamps=timestamps, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=64)
        print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])

    Legacy checkpoints (the first vxlp layout, ``VideoXLProForCausalLM``) load through :meth:`from_pretrained`
    with the key map of :mod:`vxlp_model.legacy`.
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: VideoXLProConfig):
        super().__init__(config)
        self.model = VideoXLProModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.model.init_summary_from_originals()
        gc = self.generation_config
        if gc is not None:
            text = config.text_config
            for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
                if getattr(gc, key, None) is None and getattr(text, key, None) is not None:
                    setattr(gc, key, getattr(text, key))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``; a folder in the legacy layout is read with :mod:`vxlp_model.legacy`."""
        from .legacy import is_legacy_checkpoint, load_legacy_checkpoint

        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path) and is_legacy_checkpoint(path):
            return load_legacy_checkpoint(cls, path, dtype=kwargs.get("dtype", kwargs.get("torch_dtype")))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        # a checkpoint without VST weights loaded as a VST model: the summary tokens start from the originals
        if any("summary_" in k for k in info.get("missing_keys", ())):
            model.model.init_summary_from_originals()
        return (model, info) if want_info else model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    # convenience access, as in transformers' VLMs
    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_tower(self):
        return self.model.vision_tower

    def get_video_features(self, pixel_values_videos, video_num_frames=None, chunk_frames=None):
        return self.model.get_video_features(pixel_values_videos, video_num_frames, chunk_frames)

    def encode_video(self, pixel_chunks, chunk_frames=None):
        return self.model.encode_video(pixel_chunks, chunk_frames)

    def recot_loss(self, pixel_values, **kwargs):
        """:meth:`VideoXLProModel.recot_loss` (outside FSDP; under FSDP2 call ``forward(recot_pixel_values=...)``)."""
        return self.model.recot_loss(pixel_values, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_num_frames: torch.Tensor | None = None,
        video_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        selector_mode: str | None = None,
        selector_budget: int | None = None,
        selector_keep_ratio: float | None = None,
        selector_distill_temperature: float | None = None,
        selector_distill_negatives: bool = False,
        selector_distill_memory=None,
        recot_pixel_values: torch.Tensor | None = None,
        recot_options: dict | None = None,
        **kwargs,
    ) -> VideoXLProCausalLMOutputWithPast | VideoXLProReCoTOutput:
        """Causal-LM forward (see :meth:`VideoXLProModel.forward` for the inputs).

        ``loss``: mean next-token cross-entropy over labelled tokens (labels ≠ -100) of the compacted sequence.
        ``selector_distill_temperature`` (training only, our design, SPEC §4 is silent): also return
        ``selector_distill_loss`` = KL(LLM relevance ‖ softmax(τ · selector scores)) over each sample's kept visual
        tokens, where the relevance is the attention that the positions predicting labelled tokens pay to each kept
        visual token, averaged over layers and heads, renormalised and detached. It teaches the selector to rank
        tokens as the LLM uses them. The caller weighs it into the loss; nothing here changes any configuration.
        ``selector_distill_negatives`` (with the ``vxlp`` selector; our design): the softmax of each sample also
        holds in-batch negatives — the kept tokens of the *other* samples asked the same question, in their groups
        the LLM hardly used (group relevance below half of that sample's most relevant group), scored with this
        sample's query and min-max range. A short training video has one or two groups to rank; the negatives make
        its query rank its relevant tokens above the batch's whole haystack, as a long video asks at inference.
        ``selector_distill_memory`` (a :class:`vxlp_model.selector.SelectorNegativeMemory`; ``vxlp`` selector, our
        design): the same, with the low-relevance groups of earlier steps (asked the same question) re-scored by
        the current selector; this call then adds its own low-relevance groups to the memory (its one side effect).

        ``recot_pixel_values`` (float ``[4G, 3, S, S]``, ReCoT pre-training, SPEC §3): instead of the LM forward,
        return :class:`VideoXLProReCoTOutput` from :meth:`VideoXLProModel.recot_loss` (``recot_options``: its
        keyword arguments ``mask_ratio``, ``pool``, ``score_loss_weight``, ``generator``). Going through ``forward``
        lets FSDP2 gather the root's parameters as for any other step.
        """
        if recot_pixel_values is not None:
            losses = self.model.recot_loss(recot_pixel_values, **(recot_options or {}))
            return VideoXLProReCoTOutput(**losses)
        if kwargs.pop("past_key_values", None) is not None:
            raise ValueError("pass the cache as `cache` (transformers ≥ 5.24 naming)")
        distill = selector_distill_temperature is not None and labels is not None
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            token_type_ids=token_type_ids,
            pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames,
            video_embeds=video_embeds,
            labels=labels,
            use_cache=use_cache,
            selector_mode=selector_mode,
            selector_budget=selector_budget,
            selector_keep_ratio=selector_keep_ratio,
            relevance_rows=distill,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, slice_indices, :])
        labels_used = outputs.labels if outputs.labels is not None else labels
        loss = None
        if labels_used is not None:
            loss = self.loss_function(logits=logits, labels=labels_used, vocab_size=self.config.text_config.vocab_size)
        distill_loss = None
        if distill and outputs.relevance is not None:
            distill_loss = _distill_kl(outputs.selection, outputs.relevance, float(selector_distill_temperature), logits,
                                       negatives=selector_distill_negatives, memory=selector_distill_memory,
                                       selector=self.model.selector)
        return VideoXLProCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            attention_mask=outputs.attention_mask,
            position_ids=outputs.position_ids,
            labels=outputs.labels,
            selection=outputs.selection,
            selector_distill_loss=distill_loss,
            summary_tokens=outputs.summary_tokens,
        )

    # ------------------------------------------------------------------ generation (GenerationMixin hooks)
    def prepare_inputs_for_generation(
        self, input_ids, next_sequence_length=None, cache=None, attention_mask=None, inputs_embeds=None, is_first_iteration=False, **kwargs
    ):
        """GenerationMixin's preparation; the video inputs enter on the first (prefill) step only."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, cache=cache, attention_mask=attention_mask,
            inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in VIDEO_INPUT_KEYS:
                model_inputs.pop(key, None)
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        """After the prefill, continue from the compacted sequence: its attention mask and positions replace the
        prompt's (the cache holds the compacted sequence, not ``input_ids``)."""
        if getattr(outputs, "attention_mask", None) is not None and model_kwargs.get("use_cache", True):
            model_kwargs["attention_mask"] = outputs.attention_mask
            model_kwargs["position_ids"] = outputs.position_ids
        return super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Beam search / ``num_return_sequences``: repeat each sample's videos with the sample (the video tensors are
        concatenated over videos, not batched over samples)."""
        if expand_size == 1:
            return input_ids, model_kwargs
        videos = {k: model_kwargs.pop(k) for k in VIDEO_INPUT_KEYS if model_kwargs.get(k) is not None}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if videos:
            types = model_kwargs.get("token_type_ids")
            if types is None or "video_num_frames" not in videos:
                raise ValueError("expanding video inputs needs token_type_ids and video_num_frames")
            per_sample = [len(_video_blocks(t)) for t in types[::expand_size]]
            counts = [int(n) for n in videos["video_num_frames"].tolist()]
            t = self.config.frames_per_group
            data_key = "pixel_values_videos" if "pixel_values_videos" in videos else "video_embeds"
            unit = 1 if data_key == "pixel_values_videos" else t
            chunks = list(videos[data_key].split([n // unit for n in counts]))
            new_chunks, new_counts, v = [], [], 0
            for n_videos in per_sample:
                mine = list(range(v, v + n_videos))
                v += n_videos
                for _ in range(expand_size):
                    new_chunks += [chunks[j] for j in mine]
                    new_counts += [counts[j] for j in mine]
            model_kwargs[data_key] = torch.cat(new_chunks)
            model_kwargs["video_num_frames"] = torch.tensor(new_counts, dtype=torch.long, device=videos["video_num_frames"].device)
        return input_ids, model_kwargs

    # ------------------------------------------------------------------ reporting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (tied weights counted once); absent components count 0."""
        names = ["vision_tower", "sae", "recot_decoder", "sgm", "mm_projector", "selector", "language_model"]
        counts = {}
        for n in names:
            mod = getattr(self.model, n, None)
            seen = {id(p): p.numel() for p in mod.parameters()} if mod is not None else {}
            counts[n] = sum(seen.values())
        if not self.config.tie_word_embeddings:
            counts["lm_head"] = self.lm_head.weight.numel()
        counts["total"] = sum(counts.values())
        return counts


# ---------------------------------------------------------------------- helpers
def pad_to_groups(frames: torch.Tensor, frames_per_group: int) -> torch.Tensor:
    """Repeat the last frame so the frame count is a multiple of ``frames_per_group`` (RELEASED.md §3.3: the
    deterministic replacement for the released code's random duplication)."""
    rest = (-frames.shape[0]) % frames_per_group
    if rest:
        frames = torch.cat([frames, frames[-1:].expand(rest, *frames.shape[1:])])
    return frames


def _video_blocks(types: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end)]`` of each maximal run of TIME / VIDEO tokens that contains VIDEO tokens (a video block)."""
    in_block = (types == TIME) | (types == VIDEO)
    if not bool(in_block.any()):
        return []
    idx = in_block.nonzero().squeeze(-1).tolist()
    runs, start, prev = [], idx[0], idx[0]
    for j in idx[1:]:
        if j != prev + 1:
            runs.append((start, prev + 1))
            start = j
        prev = j
    runs.append((start, prev + 1))
    blocks = []
    for s, e in runs:
        vis = (types[s:e] == VIDEO).nonzero().squeeze(-1)
        if vis.numel() == 0:
            raise ValueError(f"token_type_ids mark time text at positions {s}..{e - 1} with no video placeholders after it")
        if int(vis[-1]) != e - s - 1:
            raise ValueError(f"the video block at positions {s}..{e - 1} must end with its last group's placeholders")
        blocks.append((s, e))
    return blocks


def _split_embeds(video_embeds: torch.Tensor, video_num_frames, config) -> list[torch.Tensor]:
    p, t = config.tokens_per_group, config.frames_per_group
    if video_embeds.dim() != 3 or video_embeds.shape[1] != p or video_embeds.shape[2] != config.hidden_size:
        raise ValueError(f"video_embeds must have shape [groups, {p}, {config.hidden_size}], got {tuple(video_embeds.shape)}")
    total = video_embeds.shape[0]
    counts = [total * t] if video_num_frames is None else [int(n) for n in torch.as_tensor(video_num_frames).reshape(-1).tolist()]
    if sum(counts) != total * t or any(n <= 0 or n % t for n in counts):
        raise ValueError(f"video_num_frames {counts} must be multiples of {t} adding up to {total} groups × {t} frames")
    return list(video_embeds.split([n // t for n in counts]))


def _register_relevance_hooks(language_model, labels, attention_mask, selection, relevance) -> list:
    """Forward pre-hooks on every attention module that accumulate, per sample, the attention of the positions
    predicting labelled tokens to the kept visual tokens (averaged over those positions and the heads).

    Computed from the attention module's own inputs and projections (queries and keys with their rotary
    embedding), so it works under any attention implementation (sdpa, flash, eager) and inside FSDP2 (the hook runs
    within the decoder layer's forward, where its parameters are gathered). No gradient flows through it.
    """
    rows = []
    for b, sel in enumerate(selection):
        if sel is None:
            rows.append(None)
            continue
        r = (labels[b, 1:] != IGNORE_INDEX).nonzero().squeeze(-1)
        rows.append(r if r.numel() and sel["positions"].numel() >= 2 else None)

    def hook(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            length = hidden.shape[1]
            q, k = rotated_query_key(module, hidden, kwargs.get("position_embeddings", args[1] if len(args) > 1 else None))
            for b, r in enumerate(rows):
                if r is None:
                    continue
                w = torch.matmul(q[b][:, r].float(), k[b].float().transpose(-1, -2)) * module.scaling  # [h, R, L]
                allowed = torch.arange(length, device=hidden.device)[None, :] <= r[:, None]
                allowed = allowed & attention_mask[b].bool()[None, :]
                w = w.masked_fill(~allowed[None], float("-inf"))
                prob = torch.softmax(w, dim=-1)
                cols = selection[b]["positions"]
                relevance[b] = relevance[b].to(prob.device) + prob[:, :, cols].mean(dim=(0, 1))
        return None

    handles = []
    for layer in language_model.layers:
        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def _low_relevance(sel, rel):
    """``(probes, groups)``: the probes of ``sel``'s kept tokens in groups whose mean relevance is below half the
    most relevant group's, and those groups' indices in the video block (None when the sample has no probe or fewer
    than two kept groups, or no such group). ``sel`` has a usable relevance ``rel``."""
    if sel.get("probe") is None:
        return None
    probe_all, _, kept, _ = sel["probe"]
    probe, groups = probe_all[kept].float(), kept // sel["tokens_per_group"]
    uniq, inv = torch.unique(groups, return_inverse=True)
    if uniq.numel() < 2:
        return None
    rel = rel.to(probe.device)
    mean = torch.zeros(uniq.numel(), device=probe.device).index_add_(0, inv, rel.float())
    mean = mean / torch.bincount(inv, minlength=uniq.numel()).float()
    low_group = mean < 0.5 * mean.max()
    low = low_group[inv]
    return (probe[low], uniq[low_group]) if bool(low.any()) else None


def _distill_kl(
    selection, relevance, tau: float, like: torch.Tensor, negatives: bool = False, memory=None, selector=None
) -> torch.Tensor:
    """The selector's relevance distillation loss (see :meth:`VideoXLProForConditionalGeneration.forward`).

    ``memory`` (a :class:`vxlp_model.selector.SelectorNegativeMemory`, with the ``selector`` that re-scores it): its
    groups asked under a sample's question join that sample's negatives; afterwards this step's low-relevance groups
    are pushed into it (so a step never sees its own groups there).
    """
    losses = []
    usable = [sel is not None and sel["scores"] is not None and rel.numel() >= 2 and float(rel.sum()) > 0
              for sel, rel in zip(selection, relevance)]
    pool = [None] * len(selection)
    if negatives or memory is not None:
        pool = [_low_relevance(sel, rel) if ok else None for sel, rel, ok in zip(selection, relevance, usable)]
    remembered = {}  # question -> probes of the memory's groups, scored once per step with the current selector
    for i, (sel, rel) in enumerate(zip(selection, relevance)):
        if not usable[i]:
            continue
        target = rel / rel.sum().clamp_min(1e-12)
        logits = tau * sel["scores"].float()
        foreign = []
        if negatives and sel.get("probe") is not None:
            foreign = [
                pool[j][0] for j in range(len(selection))
                if j != i and pool[j] is not None and torch.equal(selection[j]["query_ids"], sel["query_ids"])
            ]
        if memory is not None and len(memory) and sel.get("probe") is not None:
            key = tuple(sel["query_ids"].tolist())
            if key not in remembered:
                held = memory.groups(sel["query_ids"])
                remembered[key] = None if held is None else selector.probe_groups(*held).reshape(-1, held[0].shape[-1]).float()
            if remembered[key] is not None:
                foreign.append(remembered[key])
        if foreign:
            probe_all, query, _, _ = sel["probe"]
            raw = probe_all.float() @ query
            lo, hi = raw.min(), raw.max()
            # the other samples' tokens on this sample's min-max scale (may leave [0, 1]: that is the point)
            neg = (torch.cat(foreign) @ query - lo) / (hi - lo).clamp_min(1e-6)
            logits = torch.cat([logits, tau * neg])
        logp = torch.log_softmax(logits, dim=0)[: target.numel()]
        losses.append((target * (torch.log(target.clamp_min(1e-12)) - logp)).sum())
    if memory is not None:
        for sel, low in zip(selection, pool):
            if low is not None:
                visual, rows, mask = sel["probe"][3]
                memory.push(sel["query_ids"], visual[low[1]], rows[low[1]], mask[low[1]])
    if not losses:
        return like.new_zeros((), dtype=torch.float32)
    return torch.stack(losses).mean()


VideoXLProForCausalLM = VideoXLProForConditionalGeneration  # the first layout's class name, kept as an alias
