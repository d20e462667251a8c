"""frame_attention (OPS.md op 1): the DTS spatial attention, one head of D = 1152 over each frame's S = 576 tokens.

Real: q, k, v ``[G·4 = 256, 576, 1152]`` (SPEC §2). Compute-bound: % of the measured bf16 matmul ceiling.
Baselines: ``F.scaled_dot_product_attention`` on ``[B, 1, S, D]`` (whatever kernel it picks for D = 1152);
``xformers``: xformers' memory-efficient attention (``xformers.ops.memory_efficient_attention`` with its CUTLASS
kernels, which take D = 1152; the kernels of vxlp's optional ``xformers`` backend) on ``[B, S, 1, D]`` views —
skipped, with the reason, where xformers is not installed or its ``not_supported_reasons`` refuse the inputs.
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


def _xformers_fn(q, k, v):
    import xformers.ops as xops

    op = xops.MemoryEfficientAttentionCutlassOp
    return xops.memory_efficient_attention(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), op=op).squeeze(2)


def xformers_reasons(inputs: dict) -> list[str]:
    """Why the xformers row cannot run these inputs: not installed / not importable, or the reasons of the
    vxlp ``xformers`` backend (CUDA tensors, then xformers' own ``not_supported_reasons`` of its forward and
    backward kernels)."""
    from vxlp_ops import _xformers

    if not _xformers.installed():
        return ["xformers is not installed (optional: pip install xformers)"]
    return _xformers.reasons(inputs["q"], inputs["k"], inputs["v"], None)


def make_case(direction: str) -> B.Case:
    b, s, d = _dims()
    bwd = direction == "fwd+bwd"

    def make(gen):
        t = {n: B.randn(gen, b, s, d, requires_grad=bwd) for n in ("q", "k", "v")}
        if bwd:
            t["grad_out"] = B.randn(gen, b, s, d)
        return t

    def xformers_prepare(inputs: dict) -> dict:  # outside the timed region: skip with xformers' reasons
        why = xformers_reasons(inputs)
        if why:
            B._skip("xformers", case, "; ".join(why))
        return inputs

    e = B.esize()
    # FLOP: S = q kᵀ (2·B·S²·D) and out = P v (2·B·S²·D): 4·B·S²·D; softmax's O(B·S²) left out.
    # fwd+bwd adds the four backward products dV = Pᵀ dO, dP = dO vᵀ, dQ = dS k, dK = dSᵀ q (8·B·S²·D):
    # 12·B·S²·D in all (a recomputation of S, as flash-style kernels do, is not counted). The fwd+bwd row runs
    # the autograd path of vxlp_ops.frame_attention: frame_attention_fwd (out and LSE) and
    # frame_attention_fwd_backward from them; the cuda backend's launch plan issues 14·B·S²·D (2 + 5 units: S is
    # computed once more in the backward, nothing else; tests/test_frame_attention_plan.py).
    flop = 4 * b * s * s * d * (3 if bwd else 1)
    # bytes: fwd reads q, k, v and writes out: 4·B·S·D·e; fwd+bwd also reads dO, writes dq, dk, dv: 8·B·S·D·e.
    nbytes = (8 if bwd else 4) * b * s * d * e
    case = B.Case(
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
        baselines={"sdpa": B.Baseline(fn=_sdpa), "xformers": B.Baseline(fn=_xformers_fn, prepare=xformers_prepare)},
        compile_on_cpu=not bwd,
    )
    return case


@pytest.mark.parametrize("provider", B.provider_params("sdpa", "xformers"))
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
def test_frame_attention(benchmark, ceilings, direction, provider):
    B.run_case(benchmark, make_case(direction), provider, ceilings)
