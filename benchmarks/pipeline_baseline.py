"""The released code's visual path, as the baseline of ``test_bench_pipeline.py`` (RELEASED.md §3).

The released Video-XL-Pro encodes a video in one pass: SigLIP over every frame, **all** per-frame features held
(``[N, 729, C]``, bilinearly resized to 24×24 in float32 and cast back: ``[N, 576, C]``), then the DTS run
eagerly in fp16 on chunks of at most 24 groups (its ``view(N/4, C, 4, 24, 24)`` grouping), the projector and the 2×2
average pool. This module reproduces that data flow with the model's own weights converted to fp16 and the DTS's
ops replaced by the eager :mod:`vxlp_ops.reference` functions (PyTorch matmuls, softmax and ``conv3d``: what the
released modules compute). The grouping follows ``config.token_layout`` so that the baseline's tokens can be
checked against vxlp's (the released layout is only a different view; it costs the same).

One deviation, stated where it is used: SigLIP runs in batches of ``vision_batch`` frames (default 256) rather than
all N frames at once, which would need ≈ 16 MB of activations per frame (65 GB at 4,096 frames) and fail on an
80 GB GPU. It changes neither the work nor the features held; it can only make the baseline faster.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def reference_dts_module():
    """``vxlp_model/dts.py`` loaded as a private module whose ``vxlp_ops`` are the eager reference functions."""
    name = "vxlp_pipeline_baseline_dts"
    if name in sys.modules:
        return sys.modules[name]
    from vxlp_ops import reference as ref

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "vxlp_model", "dts.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    mod.vxlp_ops = types.SimpleNamespace(
        frame_attention=ref.frame_attention,
        temporal_attention=ref.temporal_attention,
        temporal_merge_conv3d=ref.temporal_merge_conv3d,
    )
    return mod


class ReleasedStyleEncoder:
    """fp16 copies of ``model``'s vision tower, DTS (reference ops) and projector, run as the released code does.

    Args:
        model: a :class:`vxlp_model.VideoXLProForConditionalGeneration` (any dtype, any device).
        dtype: the baseline's dtype (fp16, as released).
        vision_batch: frames per SigLIP call (see the module docstring).
        dts_groups: groups per DTS call (24, as released).
    """

    def __init__(self, model, dtype: torch.dtype = torch.float16, vision_batch: int = 256, dts_groups: int = 24):
        inner = model.model
        self.config = model.config
        self.dtype = dtype
        self.vision_batch = int(vision_batch)
        self.dts_groups = int(dts_groups)
        dev = inner.sae.temporal_encoding.device
        self.vision = copy.deepcopy(inner.vision_tower).to(device=dev, dtype=dtype).eval()
        dts_mod = reference_dts_module()
        self.dts = dts_mod.DTSEncoder(self.config)
        self.dts.load_state_dict(inner.sae.state_dict())
        self.dts = self.dts.to(device=dev, dtype=dtype).eval()
        self.projector = copy.deepcopy(inner.mm_projector).to(device=dev, dtype=dtype).eval()
        self._frames_to_groups = dts_mod.frames_to_groups
        self.device = dev

    @torch.no_grad()
    def encode(self, pixels, num_frames: int) -> torch.Tensor:
        """Visual tokens ``[N/4, P, d]`` (dtype of the baseline) of ``num_frames`` frames.

        ``pixels(i, j)`` returns the float pixels ``[j - i, 3, S, S]`` of frames i … j − 1 on the device. The
        features of every frame are held before the DTS starts (RELEASED.md §3.2–3.4).
        """
        cfg = self.config
        feats = []
        for i in range(0, num_frames, self.vision_batch):
            px = pixels(i, min(num_frames, i + self.vision_batch)).to(self.dtype)
            feats.append(self.vision(px, cfg.dts_grid))  # SigLIP, resized 27×27 → 24×24 in float32, cast back
        feats = torch.cat(feats)  # [N, 576, C]: all held, as released
        x = self._frames_to_groups(feats, cfg.frames_per_group, cfg.token_layout)  # [G, 4, 24, 24, C]
        del feats
        out = []
        for g in range(0, x.shape[0], self.dts_groups):
            z = self.dts(x[g : g + self.dts_groups])  # eager fp16 DTS
            h = self.projector(z)
            n, _, d = h.shape
            h = h.transpose(1, 2).reshape(n, d, cfg.dts_grid, cfg.dts_grid)
            h = torch.nn.functional.avg_pool2d(h, cfg.pool_size)
            out.append(h.reshape(n, d, cfg.tokens_per_group).transpose(1, 2))
        return torch.cat(out)


def vxlp_encode(model, pixels, num_frames: int, chunk_frames: int | None = None) -> torch.Tensor:
    """vxlp's visual path on the same pixels: :meth:`VideoXLProModel.vision_features` + ``compress_groups``
    ``chunk_frames`` frames at a time (what :class:`vxlp_model.pipeline.VideoChat` runs per chunk, without the host
    preprocessing), in the model's dtype with the library's kernels."""
    inner = model.model
    size = inner._chunk_size(chunk_frames)
    out = []
    with torch.no_grad():
        for i in range(0, num_frames, size):
            out.append(inner.compress_groups(inner.vision_features(pixels(i, min(num_frames, i + size)))))
    return torch.cat(out)
