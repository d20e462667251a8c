import torch

from ._common import compute_dtype


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` per row of the batch. q, k, v ``[B, S, D]`` → ``[B, S, D]`` (dtype of q)."""
    ct = compute_dtype(q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    p = torch.softmax(s, dim=-1)
    return torch.matmul(p, v.to(ct)).to(q.dtype)


def frame_attention_backward(grad_out, q, k, v, scale=None):
    """Explicit gradient of :func:`frame_attention`: ``(dq, dk, dv)`` in the input dtypes (no autograd needed).

    With ``P = softmax(q kᵀ·scale)``: ``dv = Pᵀ dO``, ``dP = dO vᵀ``, ``dS = P ⊙ (dP − rowsum(dP ⊙ P))``,
    ``dq = scale·dS k``, ``dk = scale·dSᵀ q``.
    """
    ct = compute_dtype(q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    qf, kf, vf, go = q.to(ct), k.to(ct), v.to(ct), grad_out.to(ct)
    p = torch.softmax(torch.matmul(qf, kf.transpose(-1, -2)) * scale, dim=-1)
    dv = torch.matmul(p.transpose(-1, -2), go)
    dp = torch.matmul(go, vf.transpose(-1, -2))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
