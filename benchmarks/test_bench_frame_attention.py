"""frame_attention (OPS.md op 1): the DTS spatial attention, one head of D = 1152 over each frame's S = 576 tokens.

Real: q, k, v ``[G·4 = 256, 576, 1152]`` (SPEC §2). Compute-bound: % of the measured bf16 matmul ceiling.
Baseline: ``F.scaled_dot_product_attention`` on ``[B, 1, S, D]`` (whatever kernel it picks for D = 1152).
"""

import pytest
import torch.nn.functional as F

import _bench as B
import vxlp_ops


def _dims():
    if B.SIZE == "real":
        return 64 * 4, 576, 1152  # B = G·T frames, S = 24·24 tokens, D
    return 2 * 4, 36, 64


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


def make_case(direction: str) -> B.Case:
    b, s, d = _dims()
    bwd = direction == "fwd+bwd"

    def make(gen):
        t = {n: B.randn(gen, b, s, d, requires_grad=bwd) for n in ("q", "k", "v")}
        if bwd:
            t["grad_out"] = B.randn(gen, b, s, d)
        return t

    e = B.esize()
    # FLOP: S = q kᵀ (2·B·S²·D) and out = P v (2·B·S²·D): 4·B·S²·D; softmax's O(B·S²) left out.
    # fwd+bwd adds the four backward products dV = Pᵀ dO, dP = dO vᵀ, dQ = dS k, dK = dSᵀ q (8·B·S²·D):
    # 12·B·S²·D in all (a recomputation of S, as flash-style kernels do, is not counted).
    flop = 4 * b * s * s * d * (3 if bwd else 1)
    # bytes: fwd reads q, k, v and writes out: 4·B·S·D·e; fwd+bwd also reads dO, writes dq, dk, dv: 8·B·S·D·e.
    nbytes = (8 if bwd else 4) * b * s * d * e
    return B.Case(
        op="frame_attention",
        name=f"B{b}xS{s}xD{d}",
        direction=direction,
        make=make,
        args=lambda t: (t["q"], t["k"], t["v"]),
        eager=B.ref.frame_attention,
        public=vxlp_ops.frame_attention,
        shapes={"q": [b, s, d], "k": [b, s, d], "v": [b, s, d]},
        flop=flop,
        bytes=nbytes,
        bound="compute",
        grad_inputs=("q", "k", "v") if bwd else (),
        baselines={"sdpa": B.Baseline(fn=_sdpa)},
        compile_on_cpu=not bwd,
    )


@pytest.mark.parametrize("provider", B.provider_params("sdpa"))
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
def test_frame_attention(benchmark, ceilings, direction, provider):
    B.run_case(benchmark, make_case(direction), provider, ceilings)
