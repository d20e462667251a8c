"""``VideoXLProForCausalLM``: SigLIP → DTS → projector → 2×2 pool → Query-aware Selector → Qwen2 (SPEC §1–5)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel, Qwen2ForCausalLM
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from .config import VideoXLProConfig
from .dts import (
    DTSEncoder,
    ReCoTDecoder,
    RelativePosition,
    SemanticGuidedMasking,
    frames_to_groups,
)
from .prompt import IGNORE_INDEX, QUERY, TIME, VIDEO
from .selector import QueryAwareSelector
from .vision import VisionTower, preprocess_frames
from vxlp_ops.reference.sgm import min_max


class VideoXLProPreTrainedModel(PreTrainedModel):
    config_class = VideoXLProConfig
    config: VideoXLProConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer", "SpatialAttention", "TemporalAttention"]
    _supports_sdpa = True

    def _init_weights(self, module):
        """Our modules: LeCun-normal Linear/Conv, zero biases, identity norms, zero-initialised temporal attention
        (SPEC §2), zero temporal encodings and mask token. SigLIP and Qwen2 initialise themselves."""
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv3d)):
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
        if isinstance(module, (DTSEncoder, ReCoTDecoder)):
            init.zeros_(module.temporal_encoding)
        elif isinstance(module, SemanticGuidedMasking):
            c = module.temp_query.shape[1]
            init.normal_(module.temp_query, std=c**-0.5)
            init.normal_(module.spatial_query, std=c**-0.5)
            init.zeros_(module.mask_token)


class VideoXLProForCausalLM(VideoXLProPreTrainedModel, GenerationMixin):
    """The full Video-XL-Pro model (HF ``PreTrainedModel``: ``save_pretrained`` / ``from_pretrained`` / ``generate``).

    Submodules: ``vision_tower`` (SigLIP), ``sae`` (DTS encoder, the released checkpoint's name), ``recot_decoder``
    and ``sgm`` (ReCoT pre-training only), ``mm_projector`` (Linear·GELU·Linear), ``selector`` (Query-aware
    Selector), ``language_model`` (``Qwen2ForCausalLM``).

    Inputs come from :class:`vxlp_model.prompt.VideoXLProProcessor`: ``input_ids`` with ``P`` video placeholders per
    group of ``frames_per_group`` frames, ``token_type_ids`` marking question / time / video tokens, and one frame
    tensor per sample (uint8 ``[N, H, W, 3]``). Frames stream through vision + DTS in chunks of ``chunk_frames``.
    """

    _tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

    def __init__(self, config: VideoXLProConfig):
        super().__init__(config)
        c, d = config.dts_channels, config.hidden_size
        self.vision_tower = VisionTower(config)
        self.sae = DTSEncoder(config)
        self.recot_decoder = ReCoTDecoder(config)
        self.sgm = SemanticGuidedMasking(config)
        self.mm_projector = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
        self.selector = QueryAwareSelector(config)
        if config.selector_distill_weight > 0:
            # the selector's distillation target reads the LLM's attention maps, which only eager attention returns
            config.text_config._attn_implementation = "eager"
        self.language_model = Qwen2ForCausalLM(config.text_config)
        self.post_init()

    # ------------------------------------------------------------------ HF plumbing
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    # ------------------------------------------------------------------ visual path
    def _pad_to_groups(self, frames: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame so the frame count is a multiple of ``frames_per_group`` (deterministic)."""
        t = self.config.frames_per_group
        rest = (-frames.shape[0]) % t
        if rest:
            frames = torch.cat([frames, frames[-1:].expand(rest, *frames.shape[1:])])
        return frames

    def vision_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (uint8 ``[n, H, W, 3]``) → SigLIP penultimate-layer tokens resized to ``[n, dts_grid², C]``."""
        dev = self.sae.temporal_encoding.device
        px = preprocess_frames(frames.to(dev), self.config.vision_config.image_size, self.config.image_mean, self.config.image_std)
        return self.vision_tower(px)

    def compress_groups(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-frame tokens ``[4G, S, C]`` → LLM-ready visual tokens ``[G, P, d]`` (DTS, projector, 2×2 pool)."""
        cfg = self.config
        x = frames_to_groups(feats, cfg.frames_per_group, cfg.token_layout)
        z = self.sae(x.to(self.sae.temporal_encoding.dtype))  # [G, S, C]
        h = self.mm_projector(z)  # [G, S, d]
        g, s, d = h.shape
        grid = cfg.dts_grid
        h = h.transpose(1, 2).reshape(g, d, grid, grid)
        h = F.avg_pool2d(h, cfg.pool_size)
        return h.reshape(g, d, cfg.tokens_per_group).transpose(1, 2)

    def encode_video(self, frames: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
        """Encode a whole video, streaming ``chunk_frames`` frames at a time through vision + DTS.

        Args:
            frames: uint8 ``[N, H, W, 3]``, or an iterable of such chunks (e.g. ``iter_video(..., chunk_size=...)``
                yielding ``(frames, timestamps)`` pairs, or bare frame tensors) so the decoded video never needs
                to be held whole. The tail is padded to a multiple of ``frames_per_group`` by repeating the last
                frame.

        Returns:
            ``[G, P, d]`` visual tokens, ``G = ceil(N / frames_per_group)``, ``P = tokens_per_group`` (144).
            Only these compact tokens grow with video length.

        Raises:
            ValueError: no frames, or a frame tensor of the wrong shape / dtype.
        """
        out = [self.compress_groups(self.vision_features(chunk)) for chunk in self._chunks(frames)]
        if not out:
            raise ValueError("frames must contain at least one frame")
        return torch.cat(out)

    def encode_videos(self, videos: list) -> list[torch.Tensor]:
        """Encode several videos, batching the frame tensors through vision + DTS together.

        Each entry is uint8 ``[N_i, H, W, 3]`` (all of one H, W to be batched), an iterable of chunks (encoded
        alone, streaming), or precomputed visual tokens float ``[G_i, P, d]`` (returned as is). Returns one
        ``[G_i, P, d]`` tensor per entry.
        """
        out: list = [None] * len(videos)
        batch, owners = [], []
        for i, v in enumerate(videos):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out[i] = v
            elif isinstance(v, torch.Tensor):
                if v.dim() != 4 or v.shape[-1] != 3 or v.dtype != torch.uint8 or v.shape[0] == 0:
                    raise ValueError(f"video_frames[{i}] must be uint8 [N >= 1, H, W, 3], got {v.dtype} {tuple(v.shape)}")
                if batch and v.shape[1:] != batch[0].shape[1:]:
                    out[i] = self.encode_video(v)
                    continue
                batch.append(self._pad_to_groups(v))
                owners.append(i)
            else:
                out[i] = self.encode_video(v)
        if batch:
            tokens = self.encode_video(torch.cat(batch))
            groups = [f.shape[0] // self.config.frames_per_group for f in batch]
            for i, part in zip(owners, tokens.split(groups)):
                out[i] = part
        return out

    def _chunks(self, frames) -> Iterator[torch.Tensor]:
        size = self.config.chunk_frames
        if isinstance(frames, torch.Tensor):
            if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
                raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
            for i in range(0, frames.shape[0], size):
                yield self._pad_to_groups(frames[i : i + size])
            return
        buf, n = [], 0
        for item in frames:
            chunk = item[0] if isinstance(item, tuple) else item
            if chunk.dim() == 3:
                chunk = chunk[None]
            buf.append(chunk)
            n += chunk.shape[0]
            while n >= size:
                allf = torch.cat(buf)
                yield allf[:size]
                buf, n = [allf[size:]], allf.shape[0] - size
        if n:
            yield self._pad_to_groups(torch.cat(buf))

    # ------------------------------------------------------------------ ReCoT pre-training (SPEC §3)
    def recot_loss(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """ReCoT reconstruction objective on frozen SigLIP tokens of one clip or a batch of clips.

        Args:
            frames: uint8 ``[N, H, W, 3]`` with N a multiple of ``frames_per_group`` (each 4 frames = one group).
            generator: generator (on the model's device) for the SGM mask.

        Returns:
            dict with ``loss`` (= ``recon_loss + sgm_score_loss_weight · score_loss``), ``recon_loss`` (MSE of the
            decoder's 4×S tokens against the SigLIP tokens, all tokens), ``score_loss`` (MSE between SGM scores and
            the min-max-normalised per-token reconstruction error: our design, which gives the learnable SGM
            queries a training signal — high score = hard to reconstruct = kept visible), ``mask_fraction``.

        Source: paper §3.2 (ReCoT, SGM); SPEC §3.
        """
        cfg = self.config
        if frames.shape[0] % cfg.frames_per_group:
            raise ValueError(f"frames must hold a multiple of {cfg.frames_per_group} frames, got {frames.shape[0]}")
        with torch.no_grad():
            feats = self.vision_features(frames)
        x = frames_to_groups(feats, cfg.frames_per_group, cfg.token_layout).to(self.sae.temporal_encoding.dtype)
        g, t, hh, ww, c = x.shape
        tokens = x.reshape(g, t, hh * ww, c)
        masked, mask, scores = self.sgm(tokens, generator)
        z = self.sae(masked.reshape(g, t, hh, ww, c))
        rec = self.recot_decoder(z, cfg.dts_grid)
        err = (rec.float() - x.float()).pow(2).mean(-1).reshape(g, t, hh * ww)
        recon = err.mean()
        target = min_max(err.detach(), dim=(1, 2))
        score_loss = F.mse_loss(scores.float(), target)
        loss = recon + cfg.sgm_score_loss_weight * score_loss
        return {"loss": loss, "recon_loss": recon.detach(), "score_loss": score_loss.detach(), "mask_fraction": mask.float().mean()}

    # ------------------------------------------------------------------ multimodal inputs
    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        video_frames: list,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        padding_side: str = "right",
        generator: torch.Generator | None = None,
        return_selection: bool = False,
    ):
        """Splice visual tokens into the text embeddings, apply the Query-aware Selector, re-pad the batch.

        Args:
            input_ids, token_type_ids: int64 ``[B, L]`` from the processor (padding where ``attention_mask`` is 0).
            video_frames: B entries, each uint8 ``[N_b, H, W, 3]`` (or an iterable of chunks, see
                :meth:`encode_video`) or precomputed visual tokens float ``[G_b, P, d]``.
            attention_mask: ``[B, L]`` (1 = real token); default all ones.
            labels: ``[B, L]`` or None.
            padding_side: side to pad the compacted sequences on (``left`` for generation).

            return_selection: also return, per sample, ``(positions [K], scores [K])`` of the kept visual tokens in
                the padded sequence (scores None when the selector is off).

        Returns:
            ``(inputs_embeds [B, L', d], attention_mask [B, L'], labels [B, L'] or None)`` (+ the selection list).

        Raises:
            ValueError: a sample whose number of video placeholders is not ``G·P`` for its frames, or a batch size
            mismatch.
        """
        cfg = self.config
        b = input_ids.shape[0]
        if len(video_frames) != b:
            raise ValueError(f"video_frames must have one entry per sample ({b}), got {len(video_frames)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embed = self.get_input_embeddings()
        visual = self.encode_videos(video_frames)
        rows, row_labels, selection = [], [], []
        for i in range(b):
            real = attention_mask[i].bool()
            ids, types = input_ids[i][real], token_type_ids[i][real]
            lab = labels[i][real] if labels is not None else None
            vis = visual[i]
            g, p, d = vis.shape
            vid_pos = (types == VIDEO).nonzero().squeeze(-1)
            if vid_pos.numel() != g * p or not bool((ids[vid_pos] == cfg.video_token_id).all()):
                raise ValueError(
                    f"sample {i}: input_ids hold {vid_pos.numel()} video placeholders but its video gives {g} groups × {p} tokens"
                )
            text = embed(ids.masked_fill(types == VIDEO, 0))
            time_pos = (types == TIME).nonzero().squeeze(-1)
            time_embeds = text[time_pos].reshape(g, time_pos.numel() // g, d) if time_pos.numel() % g == 0 else text[:0].reshape(g, 0, d)
            query = text[(types == QUERY)]
            keep, selected, scores = self.selector(vis.to(text.dtype), time_embeds, query, generator)
            emb = text.clone()
            emb[vid_pos] = vis.reshape(g * p, d).to(text.dtype)
            emb[vid_pos[keep]] = selected.to(text.dtype)
            keep_tok = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
            keep_tok[vid_pos[~keep]] = False
            rows.append(emb[keep_tok])
            row_labels.append(lab[keep_tok] if lab is not None else None)
            kept_pos = (types[keep_tok] == VIDEO).nonzero().squeeze(-1)
            selection.append((kept_pos, scores[keep] if scores is not None else None))
        length = max(r.shape[0] for r in rows)
        d = rows[0].shape[1]
        embeds = rows[0].new_zeros((b, length, d))
        mask = torch.zeros((b, length), dtype=torch.long, device=input_ids.device)
        out_labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long, device=input_ids.device) if labels is not None else None
        for i, r in enumerate(rows):
            n = r.shape[0]
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            embeds[i, sl] = r
            mask[i, sl] = 1
            if out_labels is not None:
                out_labels[i, sl] = row_labels[i]
            if padding_side == "left":
                selection[i] = (selection[i][0] + (length - n), selection[i][1])
        if return_selection:
            return embeds, mask, out_labels, selection
        return embeds, mask, out_labels

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        video_frames: list | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward. With ``video_frames`` (and ``token_type_ids``), visual tokens are spliced in first.

        Shapes: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` int64 ``[B, L]``; ``video_frames``
        a list of B uint8 ``[N_b, H, W, 3]`` tensors. ``loss`` is the mean next-token cross-entropy over answer tokens
        (labels ≠ -100). Without video it is a plain Qwen2 forward.
        """
        selection = None
        if video_frames is not None:
            if input_ids is None or token_type_ids is None:
                raise ValueError("video_frames needs input_ids and token_type_ids (from VideoXLProProcessor)")
            inputs_embeds, attention_mask, labels, selection = self.prepare_inputs_embeds(
                input_ids, token_type_ids, video_frames, attention_mask, labels, return_selection=True
            )
            input_ids = None
        distill = (
            self.training
            and self.config.selector_distill_weight > 0
            and labels is not None
            and selection is not None
            and selection[0][1] is not None
        )
        if distill:
            kwargs["output_attentions"] = True
        out = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            past_key_values=past_key_values,
            position_ids=position_ids,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if distill:
            kl = self._selector_distill_loss(out.attentions, labels, selection)
            out.loss = out.loss + self.config.selector_distill_weight * kl
            out.attentions = None
        return out

    def _selector_distill_loss(self, attentions, labels: torch.Tensor, selection: list) -> torch.Tensor:
        """KL(LLM relevance ‖ selector) over each sample's kept visual tokens (our design, SPEC §4 is silent).

        Relevance = the attention that the positions predicting answer tokens pay to each kept visual token,
        averaged over layers and heads, renormalised over the kept tokens, and detached. The selector's
        distribution is ``softmax(τ · score)`` (τ = ``selector_distill_temperature``). This teaches the selector to
        rank tokens as the LLM uses them, so a small inference budget keeps what the answer needs.
        """
        attn = torch.stack([a.float() for a in attentions]).mean(dim=(0, 2))  # [B, L, L]
        tau = self.config.selector_distill_temperature
        losses = []
        for b, (pos, scores) in enumerate(selection):
            rows = (labels[b, 1:] != IGNORE_INDEX).nonzero().squeeze(-1)  # position q predicts token q + 1
            if rows.numel() == 0 or pos.numel() < 2:
                continue
            rel = attn[b, rows][:, pos].mean(0).detach()
            target = rel / rel.sum().clamp_min(1e-12)
            logp = torch.log_softmax(tau * scores.float(), dim=0)
            losses.append((target * (torch.log(target.clamp_min(1e-12)) - logp)).sum())
        if not losses:
            return attn.new_zeros(())
        return torch.stack(losses).mean()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        video_frames: list | None = None,
        **generate_kwargs,
    ):
        """Generate answer tokens (greedy by default: deterministic). Returns only the new token ids ``[B, T_new]``.

        With ``video_frames`` the prompt is built as in :meth:`forward` (left-padded); other keyword arguments go to
        ``Qwen2ForCausalLM.generate`` (``max_new_tokens``, ``eos_token_id``, ...).
        """
        generate_kwargs.setdefault("do_sample", False)
        if video_frames is None:
            return self.language_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        embeds, mask, _ = self.prepare_inputs_embeds(
            input_ids, token_type_ids, video_frames, attention_mask, None, padding_side="left"
        )
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)

    # ------------------------------------------------------------------ reporting
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (tied weights counted once)."""
        names = ["vision_tower", "sae", "recot_decoder", "sgm", "mm_projector", "selector", "language_model"]
        counts = {}
        for n in names:
            seen = {}
            for p in getattr(self, n).parameters():
                seen[id(p)] = p.numel()
            counts[n] = sum(seen.values())
        counts["total"] = sum(counts.values())
        return counts
