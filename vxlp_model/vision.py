"""Vision side: frame preprocessing, SigLIP (penultimate layer), token-grid resize (SPEC §1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import SiglipVisionModel


def preprocess_frames(frames: torch.Tensor, image_size: int, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 RGB frames → SigLIP pixel values.

    Args:
        frames: uint8 ``[N, H, W, 3]`` (as returned by :func:`vxlp_model.video.read_video`) or float
            ``[N, 3, H, W]`` already in [0, 1].
        image_size: output side in pixels (384 for so400m-patch14-384).

    Returns:
        float32 ``[N, 3, image_size, image_size]``: bilinear (antialiased) resize, ``(x − mean) / std``.

    Raises:
        ValueError: a shape other than ``[N, H, W, 3]`` (uint8) or ``[N, 3, H, W]`` (float).
    """
    if frames.dtype == torch.uint8:
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames (uint8) must have shape [N, H, W, 3], got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float() / 255.0
    elif frames.is_floating_point():
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames (float) must have shape [N, 3, H, W], got {tuple(frames.shape)}")
        x = frames.float()
    else:
        raise ValueError(f"frames must be uint8 [N, H, W, 3] or float [N, 3, H, W], got dtype {frames.dtype}")
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return (x - mean) / std


def resize_token_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinear resize of a square token grid in float32 (27×27 → 24×24 for so400m-384).

    tokens ``[N, S, C]`` with ``S = s²`` → ``[N, grid², C]`` in the dtype of tokens. Raises ``ValueError`` if S is
    not a square.
    """
    n, s, c = tokens.shape
    side = int(round(s**0.5))
    if side * side != s:
        raise ValueError(f"tokens must form a square grid, got S = {s}")
    if side == grid:
        return tokens
    x = tokens.float().transpose(1, 2).reshape(n, c, side, side)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.reshape(n, c, grid * grid).transpose(1, 2).to(tokens.dtype)


class VisionTower(nn.Module):
    """SigLIP vision encoder; features from ``vision_feature_layer`` (penultimate) resized to ``dts_grid²``.

    ``forward(pixel_values [N, 3, P, P]) → [N, dts_grid², C]`` (C = 1152 for so400m).
    """

    def __init__(self, config):
        super().__init__()
        self.model = SiglipVisionModel(config.vision_config)
        self.feature_layer = config.vision_feature_layer
        self.grid = config.dts_grid

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]
        return resize_token_grid(feats, self.grid)
