import torch

from ._common import compute_dtype


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` per row of the batch. q, k, v ``[B, S, D]`` → ``[B, S, D]`` (dtype of q).

    The output of :func:`frame_attention_fwd` (one formula, so the plain and the paired forward agree bit for bit).
    """
    return frame_attention_fwd(q, k, v, scale)[0]


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


def frame_attention_fwd(q, k, v, scale=None):
    """:func:`frame_attention` that also returns the log-sum-exp of each query row.

    q, k, v ``[B, S, D]`` → ``(out [B, S, D] in the dtype of q, lse [B, S])``; ``lse[b, i] = log Σ_j exp(scale ·
    q_i·k_j)`` (natural log) in float32 (float64 for float64 inputs), the statistic that
    :func:`frame_attention_fwd_backward` needs to rebuild the probabilities without a second softmax.
    """
    ct = compute_dtype(q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.matmul(p, v.to(ct)).to(q.dtype), lse


def frame_attention_fwd_backward(grad_out, q, k, v, out, lse, scale=None):
    """Gradient of :func:`frame_attention_fwd` from its saved ``out`` and ``lse`` (no softmax recomputed):
    ``P = exp(q kᵀ·scale − lse)``, ``Δ = rowsum(dO ⊙ out)``, ``dv = Pᵀ dO``, ``dS = P ⊙ (dO vᵀ − Δ)``,
    ``dq = scale·dS k``, ``dk = scale·dSᵀ q``. Returns ``(dq, dk, dv)`` in the input dtypes.
    """
    ct = compute_dtype(q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    qf, kf, vf, go = q.to(ct), k.to(ct), v.to(ct), grad_out.to(ct)
    p = torch.exp(torch.matmul(qf, kf.transpose(-1, -2)) * scale - lse.to(ct).unsqueeze(-1))
    delta = (go * out.to(ct)).sum(-1, keepdim=True)
    dv = torch.matmul(p.transpose(-1, -2), go)
    ds = p * (torch.matmul(go, vf.transpose(-1, -2)) - delta)
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
