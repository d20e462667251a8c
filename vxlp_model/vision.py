"""Vision side: the SigLIP tower (no post-layernorm, no head) and the token-grid resize (SPEC §1; RELEASED.md §3)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.siglip.modeling_siglip import SiglipEncoder, SiglipVisionEmbeddings


def resize_token_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinear resize of a square token grid in float32 (27×27 → 24×24 for so400m-384; RELEASED.md §3.2).

    tokens ``[N, S, C]`` with ``S = s²`` → ``[N, grid², C]`` in the dtype of tokens (float64 stays float64).
    ``align_corners=False``. Raises ``ValueError`` if S is not a square.
    """
    n, s, c = tokens.shape
    side = int(round(s**0.5))
    if side * side != s:
        raise ValueError(f"tokens must form a square grid, got S = {s}")
    if side == grid:
        return tokens
    ct = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    x = tokens.to(ct).transpose(1, 2).reshape(n, c, side, side)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.reshape(n, c, grid * grid).transpose(1, 2).to(tokens.dtype)


class VisionTower(nn.Module):
    """SigLIP vision encoder without post-layernorm and pooling head (the released tower, RELEASED.md §2).

    ``embeddings`` (patch conv + learned positions) and ``encoder.layers`` (``num_hidden_layers`` SigLIP layers,
    transformers' own modules). The features are the last layer's output, resized to ``dts_grid²`` tokens.

    ``forward(pixel_values float [N, 3, S, S]) → [N, dts_grid², C]`` (S = image_size, C = hidden size 1152).
    """

    def __init__(self, config):
        super().__init__()
        vc = config.vision_config
        if getattr(vc, "_attn_implementation", None) is None:
            # transformers' SigLIP layers read it; the tower is not a PreTrainedModel, so it follows the model's choice
            vc._attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"
        self.embeddings = SiglipVisionEmbeddings(vc)
        self.encoder = SiglipEncoder(vc)
        self.image_size = vc.image_size

    def forward(self, pixel_values: torch.Tensor, grid: int) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values must have shape [N, 3, {self.image_size}, {self.image_size}], got {tuple(pixel_values.shape)}"
            )
        emb = self.embeddings.patch_embedding(pixel_values.to(self.embeddings.patch_embedding.weight.dtype))
        h = emb.flatten(2).transpose(1, 2) + self.embeddings.position_embedding.weight
        for layer in self.encoder.layers:
            h = layer(h, None)
        return resize_token_grid(h, grid)
