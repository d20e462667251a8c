"""Dynamic Token Synthesizer (DTS), the ReCoT decoder and Semantic-Guided Masking (SPEC §2–3; paper §3.2).

Tokens are channels-last throughout: ``x: [G, T, H, W, C]`` (G groups of T = 4 frames, an H×W = 24×24 grid,
C = 1152 channels). Every heavy step is a :mod:`vxlp_ops` op, so the CUDA / Triton kernels are used when
present. Module and parameter names follow the released checkpoint (prefix ``model.sae.``), so its weights
load with :meth:`DTSEncoder.load_released_state_dict`.

Fused inference (:meth:`DTSEncoder.uses_fused`): on CUDA, in eval mode and when no gradient is needed, the
encoder runs each SpatialAttention / TemporalAttention block as one fused op (:func:`vxlp_ops.dts_spatial_block`,
:func:`vxlp_ops.dts_temporal_block`: GroupNorm statistics in one pass, normalisation inside the projection GEMM,
q/k/v written in the attention's layout, bias + residual in the output GEMM; docs/dts_fused.md). It computes
the same function as the eager blocks (within the dtype's rounding); everywhere else (CPU, training, autograd,
``fused_inference = False``) the eager blocks run. The choice is made at every call from the module's state
and the input; nothing is read from the environment or cached.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import vxlp_ops
from vxlp_ops.reference import group_norm_channels_last as group_norm_reference

RELEASED_PREFIX = "model.sae."


def group_norm_channels_last(x: torch.Tensor, norm: nn.GroupNorm, reduce_dims: tuple[int, ...]) -> torch.Tensor:
    """GroupNorm on channels-last ``x [..., C]`` with statistics over ``reduce_dims`` and the channels of a group.

    The affine parameters of ``norm`` are applied per channel. Statistics in float32 (the formula of
    :func:`vxlp_ops.reference.group_norm_channels_last`, shared with the fused blocks' reference).
    """
    return group_norm_reference(x, norm.weight, norm.bias, norm.num_groups, norm.eps, reduce_dims)


def _linear_1x1(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """Apply a 1×1(×1) convolution stored in Conv layout ``[Cout, Cin, 1, ...]`` to channels-last ``x``."""
    w = conv.weight.reshape(conv.weight.shape[0], conv.weight.shape[1])
    return F.linear(x, w, conv.bias)


class SpatialAttention(nn.Module):
    """Released ``AttnBlock3D``: per-frame single-head attention with a GroupNorm over (C/32, T, H, W).

    ``x [G, T, H, W, C] → x + proj_out(softmax(q kᵀ/√C) v)`` with q, k, v, proj_out 1×1×1 convs (SPEC §2).
    """

    def __init__(self, channels: int, norm_groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=eps, affine=True)
        self.q = nn.Conv3d(channels, channels, 1)
        self.k = nn.Conv3d(channels, channels, 1)
        self.v = nn.Conv3d(channels, channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, t, hh, ww, c = x.shape
        h = group_norm_channels_last(x, self.norm, (1, 2, 3))
        q, k, v = (_linear_1x1(h, m).reshape(g * t, hh * ww, c) for m in (self.q, self.k, self.v))
        a = vxlp_ops.frame_attention(q, k, v).reshape(g, t, hh, ww, c)
        return x + _linear_1x1(a, self.proj_out)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same block as one inference-only fused op (:func:`vxlp_ops.dts_spatial_block`; no backward)."""
        dt = x.dtype
        c = x.shape[-1]
        qkv_w = torch.cat([m.weight.reshape(c, c) for m in (self.q, self.k, self.v)]).to(dt)
        qkv_b = torch.cat([self.q.bias, self.k.bias, self.v.bias]).to(dt)
        return vxlp_ops.dts_spatial_block(
            x, self.norm.weight.to(dt), self.norm.bias.to(dt), qkv_w, qkv_b,
            self.proj_out.weight.reshape(c, c).to(dt), self.proj_out.bias.to(dt), self.norm.num_groups, self.norm.eps,
        )


class RelativePosition(nn.Module):
    """Relative-position table ``embeddings_table [2R+1, C]`` (released name)."""

    def __init__(self, channels: int, max_relative_position: int):
        super().__init__()
        self.max_relative_position = max_relative_position
        self.embeddings_table = nn.Parameter(torch.empty(2 * max_relative_position + 1, channels))
        nn.init.xavier_uniform_(self.embeddings_table)


class TemporalAttention(nn.Module):
    """Released temporal attention: at each spatial position, attention over T frames with relative positions.

    GroupNorm over (C/32, T) of each position; ``qkv = Conv1d(C → 3C)``; q and k scaled by ``C^(-1/4)`` inside
    :func:`vxlp_ops.temporal_attention`; ``x + proj_out(out)``. qkv and proj_out are zero-initialised so the
    block starts as the identity (SPEC §2). ``proj_out`` is a Conv1d with a bias, as in the released checkpoint
    (``encoder.{1,4}.proj_out.bias``).
    """

    def __init__(self, channels: int, norm_groups: int, eps: float, max_relative_position: int, transposed_rel_k: bool):
        super().__init__()
        self.transposed_rel_k = transposed_rel_k
        self.norm = nn.GroupNorm(norm_groups, channels, eps=eps, affine=True)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.relative_position_k = RelativePosition(channels, max_relative_position)
        self.relative_position_v = RelativePosition(channels, max_relative_position)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        for m in (self.qkv, self.proj_out):  # identity at init; `zero_init` is honoured by _init_weights too
            m.zero_init = True
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, t, hh, ww, c = x.shape
        h = group_norm_channels_last(x, self.norm, (1,))  # stats over T (and the group's channels) per position
        qkv = _linear_1x1(h, self.qkv)  # [G, T, H, W, 3C]
        qkv = qkv.permute(0, 2, 3, 1, 4).reshape(g * hh * ww, t, 3 * c)
        q, k, v = qkv.split(c, dim=-1)
        a = vxlp_ops.temporal_attention(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            self.relative_position_k.embeddings_table.to(q.dtype),
            self.relative_position_v.embeddings_table.to(q.dtype),
            self.transposed_rel_k,
        )
        a = a.reshape(g, hh, ww, t, c).permute(0, 3, 1, 2, 4)
        return x + _linear_1x1(a, self.proj_out)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The same block as one inference-only fused op (:func:`vxlp_ops.dts_temporal_block`; no backward)."""
        dt = x.dtype
        c = x.shape[-1]
        return vxlp_ops.dts_temporal_block(
            x, self.norm.weight.to(dt), self.norm.bias.to(dt), self.qkv.weight.reshape(3 * c, c).to(dt),
            self.qkv.bias.to(dt), self.relative_position_k.embeddings_table.to(dt),
            self.relative_position_v.embeddings_table.to(dt), self.proj_out.weight.reshape(c, c).to(dt),
            self.proj_out.bias.to(dt), self.norm.num_groups, self.norm.eps, self.transposed_rel_k,
        )


class TemporalMerge(nn.Module):
    """Released merge: ``conv`` = Conv3d(C, C, 3, stride (2, 1, 1)) with replicate padding T (1, 0), H/W (1, 1)."""

    def __init__(self, channels: int, stride_t: int = 2):
        super().__init__()
        self.stride_t = stride_t
        self.conv = nn.Conv3d(channels, channels, 3, stride=(stride_t, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vxlp_ops.temporal_merge_conv3d(x, self.conv.weight.to(x.dtype), self.conv.bias.to(x.dtype), self.stride_t)

    forward_fused = forward  # already one op (implicit GEMM with the replicate padding in its loads)


def _stage(c: int, cfg) -> list[nn.Module]:
    return [
        SpatialAttention(c, cfg.dts_norm_groups, cfg.dts_norm_eps),
        TemporalAttention(c, cfg.dts_norm_groups, cfg.dts_norm_eps, cfg.dts_max_relative_position, cfg.transposed_rel_k),
        TemporalMerge(c),
    ]


def frames_to_groups(feats: torch.Tensor, frames_per_group: int, token_layout: str) -> torch.Tensor:
    """Group per-frame tokens for the DTS.

    Args:
        feats: ``[4G, S, C]`` per-frame tokens (frame-major; S = H·W = grid²).
        frames_per_group: T (4).
        token_layout: ``"frame_major"`` → ``x[g, t] = feats[4g + t]``; ``"released"`` → the released code's
            ``feat.view(G, C, 4, H, W)`` on ``[4G, C, H, W]`` (time axis = channel mod 4, SPEC §2 quirk).

    Returns:
        ``[G, T, H, W, C]`` channels-last. Raises ``ValueError`` if the frame count is not a multiple of T.
    """
    n, s, c = feats.shape
    t = frames_per_group
    if n % t:
        raise ValueError(f"feats must hold a multiple of {t} frames, got {n}")
    side = int(round(s**0.5))
    if side * side != s:
        raise ValueError(f"feats must have a square token grid, got S = {s}")
    g = n // t
    if token_layout == "frame_major":
        x = feats.reshape(g, t, side, side, c)
    elif token_layout == "released":
        cf = feats.transpose(1, 2).reshape(g, t * c * s)  # [4G, C, S] contiguous, viewed per group
        x = cf.reshape(g, c, t, side, side).permute(0, 2, 3, 4, 1)
    else:
        raise ValueError(f"token_layout must be 'frame_major' or 'released', got {token_layout!r}")
    return x.contiguous()


def groups_to_frames(x: torch.Tensor, token_layout: str) -> torch.Tensor:
    """Inverse of :func:`frames_to_groups`: ``[G, T, H, W, C] → [T·G, H·W, C]``."""
    g, t, hh, ww, c = x.shape
    if token_layout == "frame_major":
        return x.reshape(g * t, hh * ww, c)
    cf = x.permute(0, 4, 1, 2, 3).reshape(g * t, c, hh * ww)
    return cf.transpose(1, 2).contiguous()


class DTSEncoder(nn.Module):
    """Dynamic Token Synthesizer: ``[G, 4, H, W, C] → [G, H·W, C]`` (4 frames → 1 frame's worth of tokens).

    ``x + temporal_encoding[t]`` → (SpatialAttention → TemporalAttention → TemporalMerge) × 2 (T 4 → 2 → 1).
    Parameter names are the released checkpoint's (``temporal_encoding``, ``encoder.{0..5}.*``). Source: SPEC §2;
    paper §3.2 "Dynamic Token Synthesizer".

    ``fused_inference`` (default True): allow the fused blocks where :meth:`uses_fused` says they apply.
    """

    FUSED_DEVICE_TYPES = ("cuda",)  # where the fused blocks have fast (Triton / CUDA) kernels

    def __init__(self, config):
        super().__init__()
        c = config.dts_channels
        t = config.frames_per_group
        self.frames_per_group = t
        self.fused_inference = True
        self.temporal_encoding = nn.Parameter(torch.zeros(t, c))
        stages = max(1, (t - 1).bit_length())  # 4 frames: 2 stages of stride 2
        self.encoder = nn.ModuleList([m for _ in range(stages) for m in _stage(c, config)])

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` runs the fused blocks on ``x``: ``fused_inference`` is on, the module is in
        eval mode, x is on a device of ``FUSED_DEVICE_TYPES`` (CUDA) and no gradient is needed (grad mode off,
        or neither x nor any parameter requires grad). Decided at every call."""
        if not self.fused_inference or self.training or x.device.type not in self.FUSED_DEVICE_TYPES:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[G, T, H, W, C]`` (any float dtype) → ``[G, H·W, C]`` in the dtype of x.

        Raises ``ValueError`` for a wrong shape of x. Runs the fused blocks where :meth:`uses_fused`, else the
        eager ones (same result within the dtype's rounding)."""
        return self._forward(x, self.uses_fused(x))

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the fused blocks on any device (their ops dispatch to the backend that can run
        x: Triton / CUDA kernels on a GPU, the eager reference elsewhere). Inference only: raises
        ``RuntimeError`` if a gradient would be needed."""
        return self._forward(x, True)

    def _forward(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.frames_per_group or x.shape[-1] != self.temporal_encoding.shape[1]:
            raise ValueError(
                f"x must have shape [G, {self.frames_per_group}, H, W, {self.temporal_encoding.shape[1]}], got {tuple(x.shape)}"
            )
        x = x + self.temporal_encoding.to(x.dtype)[None, :, None, None, :]
        for m in self.encoder:
            x = m.forward_fused(x) if fused else m(x)
        g, t, hh, ww, c = x.shape
        return x.reshape(g, t * hh * ww, c)

    def load_released_state_dict(self, state_dict: dict, strict: bool = True):
        """Load DTS weights named as in the released checkpoint (keys ``model.sae.*``; other keys are ignored).

        Raises ``KeyError`` listing missing / unexpected DTS keys when ``strict`` and ``ValueError`` on a shape
        mismatch (from ``load_state_dict``).
        """
        own = {k[len(RELEASED_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(RELEASED_PREFIX)}
        if not own:
            raise KeyError(f"no keys with prefix {RELEASED_PREFIX!r} in the state dict")
        result = self.load_state_dict(own, strict=False)
        if strict and (result.missing_keys or result.unexpected_keys):
            raise KeyError(
                f"released DTS state dict mismatch: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
            )
        return result


class ReCoTDecoder(nn.Module):
    """ReCoT decoder (our design; paper §3.2 says only "imbalanced", about half the encoder).

    ``z [G, H·W, C] → [G, T, H, W, C]``: per-frame linear temporal upsampling (``upsample``: C → T·C) plus a
    learned ``temporal_encoding``, then ``num_layers`` (SpatialAttention, TemporalAttention) pairs and an output
    ``norm`` + ``head``. With 4 layers it holds ≈ 37·C² parameters, ≈ 53 % of the encoder's ≈ 70·C².
    """

    def __init__(self, config):
        super().__init__()
        c = config.dts_channels
        t = config.frames_per_group
        self.frames_per_group = t
        self.upsample = nn.Linear(c, t * c)
        self.temporal_encoding = nn.Parameter(torch.zeros(t, c))
        blocks = []
        for _ in range(config.recot_decoder_layers):
            blocks.append(SpatialAttention(c, config.dts_norm_groups, config.dts_norm_eps))
            blocks.append(
                TemporalAttention(
                    c, config.dts_norm_groups, config.dts_norm_eps, config.dts_max_relative_position, config.transposed_rel_k
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, c)

    def forward(self, z: torch.Tensor, grid: int) -> torch.Tensor:
        g, s, c = z.shape
        t = self.frames_per_group
        x = self.upsample(z).reshape(g, grid, grid, t, c).permute(0, 3, 1, 2, 4)
        x = x + self.temporal_encoding.to(x.dtype)[None, :, None, None, :]
        for m in self.blocks:
            x = m(x)
        return self.head(self.norm(x))


class SemanticGuidedMasking(nn.Module):
    """SGM: Temp Query / Spatio Query saliency and masking of low-score tokens (paper §3.2; SPEC §3).

    ``temp_query [Qt, C]``, ``spatial_query [Qs, C]``; scores by :func:`vxlp_ops.sgm_scores`; in training a
    fraction ``mask_ratio`` of each frame's tokens is drawn from its ``pool`` lowest-score tokens
    (:func:`vxlp_ops.sgm_mask`) and replaced by the learnable ``mask_token``. ``mask_ratio`` and ``pool`` are
    training settings, passed per call.
    """

    def __init__(self, config):
        super().__init__()
        c = config.dts_channels
        self.temp_query = nn.Parameter(torch.randn(config.sgm_num_temp_queries, c) * c**-0.5)
        self.spatial_query = nn.Parameter(torch.randn(config.sgm_num_spatial_queries, c) * c**-0.5)
        self.mask_token = nn.Parameter(torch.zeros(c))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[G, T, S, C]`` → float32 scores ``[G, T, S]`` in [0, 1]."""
        return vxlp_ops.sgm_scores(x, self.temp_query.to(x.dtype), self.spatial_query.to(x.dtype))

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.5, pool: float = 0.75, generator: torch.Generator | None = None):
        """x ``[G, T, S, C]`` → ``(masked x, mask bool [G, T, S], scores float32 [G, T, S])``.

        Raises ``ValueError`` unless ``0 <= mask_ratio <= pool <= 1`` (from :func:`vxlp_ops.sgm_mask`).
        """
        scores = self.scores(x)
        mask = vxlp_ops.sgm_mask(scores.detach(), mask_ratio, pool, generator)
        masked = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        return masked, mask, scores
