import torch

from ._vjp import compute_dtype


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` per row of the batch. q, k, v ``[B, S, D]`` → ``[B, S, D]`` (dtype of q)."""
    ct = compute_dtype(q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v.to(ct)).to(q.dtype)
