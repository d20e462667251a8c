"""temporal_attention (OPS.md op 2): the DTS temporal attention, T = 4 frames at each of G·576 positions.

Real: q, k, v ``[64·576 = 36,864, 4, 1152]``, rel_k / rel_v ``[129, 1152]``, ``transposed_rel_k=True`` (the
released checkpoint's form, SPEC §2). With T = 4 there are 16 score pairs per position: memory-bound, so the
% column is of the measured copy ceiling. No library baseline computes this op.
"""

import pytest

import _bench as B
import vxlp_ops


def _dims():
    if B.SIZE == "real":
        return 64 * 576, 4, 1152, 64  # N = G·H·W positions, T, D, R (tables of 2R+1 = 129 rows)
    return 2 * 36, 4, 64, 4


def make_case(direction: str) -> B.Case:
    n, t, d, r = _dims()
    rows = 2 * r + 1
    bwd = direction == "fwd+bwd"

    def make(gen):
        x = {k: B.randn(gen, n, t, d, requires_grad=bwd) for k in ("q", "k", "v")}
        x["rel_k"] = B.randn(gen, rows, d, scale=0.1, requires_grad=bwd)
        x["rel_v"] = B.randn(gen, rows, d, scale=0.1, requires_grad=bwd)
        if bwd:
            x["grad_out"] = B.randn(gen, n, t, d)
        return x

    e = B.esize()
    # FLOP per position: q kᵀ (2·T²·D), the rel_k term q·rel_k[r] (2·T²·D), P v (2·T²·D), P·rel_v[r] (2·T²·D):
    # 8·N·T²·D forward; fwd+bwd ≈ 3× that (each product has two backward products): 24·N·T²·D.
    flop = 8 * n * t * t * d * (3 if bwd else 1)
    # bytes: fwd reads q, k, v (3·N·T·D·e) and both tables (2·(2R+1)·D·e), writes out (N·T·D·e);
    # fwd+bwd also reads dO and writes dq, dk, dv and the two table gradients: 8·N·T·D·e + 4·(2R+1)·D·e.
    nbytes = ((8 if bwd else 4) * n * t * d + (4 if bwd else 2) * rows * d) * e
    return B.Case(
        op="temporal_attention",
        name=f"N{n}xT{t}xD{d}",
        direction=direction,
        make=make,
        args=lambda x: (x["q"], x["k"], x["v"], x["rel_k"], x["rel_v"], True),
        eager=B.ref.temporal_attention,
        public=vxlp_ops.temporal_attention,
        shapes={"q": [n, t, d], "k": [n, t, d], "v": [n, t, d], "rel_k": [rows, d], "rel_v": [rows, d]},
        flop=flop,
        bytes=nbytes,
        bound="memory",
        grad_inputs=("q", "k", "v", "rel_k", "rel_v") if bwd else (),
        note="transposed_rel_k=True",
    )


@pytest.mark.parametrize("provider", B.provider_params())
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
def test_temporal_attention(benchmark, ceilings, direction, provider):
    B.run_case(benchmark, make_case(direction), provider, ceilings)
