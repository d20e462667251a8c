import torch

from ._vjp import compute_dtype


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
