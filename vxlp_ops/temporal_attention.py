"""``temporal_attention``: attention along time with relative-position tables (OPS.md op 2).

Source: the DTS TemporalAttn block (SPEC §2), Shaw et al.-style relative positions with ``R = 64``; the
released checkpoint's transposed ``rel_k`` term is ``transposed_rel_k=True``.
"""

from __future__ import annotations

import torch

from . import _validate as V
from . import dispatch
from . import reference as ref
from ._register import register_op

NAME = "temporal_attention"
MAX_T = 64


def check(q, k, v, rel_k, rel_v, transposed_rel_k=False) -> None:
    V.tensor("q", q, 3, "[N, T, D]")
    V.tensor("k", k, 3, "[N, T, D]")
    V.tensor("v", v, 3, "[N, T, D]")
    V.tensor("rel_k", rel_k, 2, "[2R+1, D]")
    V.tensor("rel_v", rel_v, 2, "[2R+1, D]")
    V.positive("q", q, "[N, T, D]")
    for name, t in (("k", k), ("v", v), ("rel_k", rel_k), ("rel_v", rel_v)):
        V.same(name, t, "q", q)
    n, t, d = q.shape
    if t > MAX_T:
        raise ValueError(f"q must have T <= {MAX_T} frames in [N, T, D], got T = {t}")
    V.shape("k", k, (n, t, d), "[N, T, D]")
    V.shape("v", v, (n, t, d), "[N, T, D]")
    V.shape("rel_k", rel_k, (None, d), "[2R+1, D]")
    if rel_k.shape[0] % 2 != 1:
        raise ValueError(f"rel_k must have an odd number 2R+1 of rows, got {rel_k.shape[0]}")
    V.shape("rel_v", rel_v, (rel_k.shape[0], d), "[2R+1, D]")
    if not isinstance(transposed_rel_k, bool):
        raise TypeError(f"transposed_rel_k must be a bool, got {type(transposed_rel_k).__name__}")


def _fake(q, k, v, rel_k, rel_v, transposed_rel_k=False):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _backward_fake(grad_out, q, k, v, rel_k, rel_v, transposed_rel_k=False):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v, rel_k, rel_v))


def _backward_forward_args(grad_out, q, k, v, rel_k, rel_v, transposed_rel_k=False):
    return (q, k, v, rel_k, rel_v, transposed_rel_k)


def _setup_context(ctx, inputs, output):
    q, k, v, rel_k, rel_v, transposed = inputs
    ctx.save_for_backward(q, k, v, rel_k, rel_v)
    ctx.transposed = transposed


def _backward(ctx, grad_out):
    grads = torch.ops.vxlp_ops.temporal_attention_backward(grad_out.contiguous(), *ctx.saved_tensors, ctx.transposed)
    return (*grads, None)


register_op(
    NAME,
    check,
    _fake,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
    backward_forward_args=_backward_forward_args,
)
dispatch.register(NAME, "reference", ref.temporal_attention, ref.temporal_attention_backward)


def temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k: bool = False) -> torch.Tensor:
    """Attention over T frames at each spatial position, with relative-position key and value terms.

    With ``s = D ** -0.25`` and ``r(i, j) = clamp(j − i, −R, R) + R``:
    ``w[i, j] = (s·q_i)·(s·k_j) + (s·q_i)·rel_k[r(i, j)]`` (``transposed_rel_k=True``: the second term is
    ``(s·q_j)·rel_k[r(j, i)]``, the released checkpoint's form), ``p = softmax_j(w)``,
    ``out_i = Σ_j p[i, j]·(v_j + rel_v[r(i, j)])``.

    Args:
        q, k, v: ``[N, T, D]`` (N = clips·H·W positions, T ≤ 64 frames), one dtype and device.
        rel_k, rel_v: ``[2R+1, D]`` relative-position tables (R = 64 in the DTS), dtype of q.
        transposed_rel_k: use the released checkpoint's transposed key term.

    Returns:
        ``[N, T, D]`` in the dtype of q (softmax in float32).

    Raises:
        TypeError / ValueError naming the argument for bad dtypes, shapes, devices, T > 64 or an even table.

    Differentiable in q, k, v, rel_k and rel_v. Source: SPEC §2 TemporalAttn; OPS.md op 2.
    """
    check(q, k, v, rel_k, rel_v, transposed_rel_k)
    return torch.ops.vxlp_ops.temporal_attention(q, k, v, rel_k, rel_v, transposed_rel_k)
