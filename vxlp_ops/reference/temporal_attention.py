import torch

from ._common import compute_dtype


def relative_index(t: int, num_buckets: int, device) -> torch.Tensor:
    """``r(i, j) = clamp(j − i, −R, R) + R`` as an int64 ``[T, T]`` table, ``num_buckets = 2R + 1``."""
    r = (num_buckets - 1) // 2
    pos = torch.arange(t, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-r, r) + r


def temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k: bool = False) -> torch.Tensor:
    """Temporal attention with relative positions (OPS.md op 2). q, k, v ``[N, T, D]``; rel ``[2R+1, D]``."""
    ct = compute_dtype(q)
    t, d = q.shape[1], q.shape[2]
    s = d**-0.25
    qs, ks = q.to(ct) * s, k.to(ct) * s
    idx = relative_index(t, rel_k.shape[0], q.device)
    ek = rel_k.to(ct)[idx]  # [T, T, D]: ek[i, j] = rel_k[r(i, j)]
    ev = rel_v.to(ct)[idx]
    w = torch.matmul(qs, ks.transpose(-1, -2))
    if transposed_rel_k:
        w = w + torch.einsum("njd,jid->nij", qs, ek)  # (s·q_j)·rel_k[r(j, i)]
    else:
        w = w + torch.einsum("nid,ijd->nij", qs, ek)  # (s·q_i)·rel_k[r(i, j)]
    p = torch.softmax(w, dim=-1)
    out = torch.matmul(p, v.to(ct)) + torch.einsum("nij,ijd->nid", p, ev)
    return out.to(q.dtype)


def temporal_attention_backward(grad_out, q, k, v, rel_k, rel_v, transposed_rel_k: bool = False):
    """Explicit gradient of :func:`temporal_attention`: ``(dq, dk, dv, drel_k, drel_v)`` (no autograd needed).

    With ``E_k[i, j] = rel_k[r(i, j)]``, ``E_v`` likewise, ``p = softmax(w)``:
    ``dv = pᵀ dO``; ``dE_v[i, j] = Σ_n p[n,i,j] dO[n,i]``; ``dp[i, j] = dO_i·(v_j + E_v[i, j])``;
    ``dw = p ⊙ (dp − Σ_j p dp)``; ``dq = s·(dw (s k) + Σ_j dw[i,j] E_k[i,j])`` (transposed: the rel term moves
    to ``q_j`` with ``E_k[j, i]``); ``dk = s·dwᵀ (s q)``; table gradients scatter-add ``dE`` by ``r(i, j)``.
    """
    ct = compute_dtype(q)
    t, d = q.shape[1], q.shape[2]
    s = d**-0.25
    qs, ks, vf, go = q.to(ct) * s, k.to(ct) * s, v.to(ct), grad_out.to(ct)
    idx = relative_index(t, rel_k.shape[0], q.device)
    ek, ev = rel_k.to(ct)[idx], rel_v.to(ct)[idx]
    w = torch.matmul(qs, ks.transpose(-1, -2))
    if transposed_rel_k:
        w = w + torch.einsum("njd,jid->nij", qs, ek)
    else:
        w = w + torch.einsum("nid,ijd->nij", qs, ek)
    p = torch.softmax(w, dim=-1)
    dv = torch.matmul(p.transpose(-1, -2), go)
    dev = torch.einsum("nij,nid->ijd", p, go)
    dp = torch.matmul(go, vf.transpose(-1, -2)) + torch.einsum("nid,ijd->nij", go, ev)
    dw = p * (dp - (dp * p).sum(-1, keepdim=True))
    dqs = torch.matmul(dw, ks)
    dks = torch.matmul(dw.transpose(-1, -2), qs)
    if transposed_rel_k:
        dqs = dqs + torch.einsum("nij,jid->njd", dw, ek)
        dek = torch.einsum("nij,njd->jid", dw, qs)
    else:
        dqs = dqs + torch.einsum("nij,ijd->nid", dw, ek)
        dek = torch.einsum("nij,nid->ijd", dw, qs)
    flat = idx.reshape(-1)
    drk = torch.zeros(rel_k.shape, dtype=ct, device=q.device).index_add_(0, flat, dek.reshape(t * t, d))
    drv = torch.zeros(rel_v.shape, dtype=ct, device=q.device).index_add_(0, flat, dev.reshape(t * t, d))
    return (
        (dqs * s).to(q.dtype),
        (dks * s).to(k.dtype),
        dv.to(v.dtype),
        drk.to(rel_k.dtype),
        drv.to(rel_v.dtype),
    )
