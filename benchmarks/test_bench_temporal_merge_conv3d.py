"""temporal_merge_conv3d (OPS.md op 3): the DTS merge, a replicate-padded 3×3×3 conv with time stride 2.

Real: x ``[64, 4, 24, 24, 1152]`` (stage 1, T 4→2) and ``[64, 2, 24, 24, 1152]`` (stage 2, T 2→1), weight
``[1152, 1152, 3, 3, 3]``; as an implicit GEMM M = G·T_out·H·W, N = Cout = 1152, K = 27·Cin = 31,104 (SPEC §2).
Compute-bound: % of the measured matmul ceiling. Baselines: ``F.conv3d`` (cuDNN on GPU) on an input that is
already replicate-padded and channels-first (``torch_conv3d``), or padded and in ``channels_last_3d``
(``torch_conv3d_cl``); the padding and layout change are outside the timed region, which favours them.

The ``cuda`` rows note the forward path the kernel took (``cute_sm90`` / ``cute_sm80`` / ``mma``,
csrc/cuda/temporal_merge_conv3d.cu); ``test_temporal_merge_conv3d_forward_path`` adds one forward row per path,
forced with ``vxlp_ops.dispatch.use_conv_forward_path`` (case name ``... [path]``; skipped where the path cannot run).
"""

import pytest
import torch
import torch.nn.functional as F

import _bench as B
import vxlp_ops

STAGES = {"stage1 T4->2": 4, "stage2 T2->1": 2}
STRIDE_T = 2


def _dims():
    if B.SIZE == "real":
        return 64, 24, 1152  # G, H = W, C
    return 2, 6, 64


def _prepare(channels_last: bool):
    def prepare(x: dict) -> dict:
        xc = x["x"].detach().permute(0, 4, 1, 2, 3)
        xp = F.pad(xc.contiguous(), (1, 1, 1, 1, 1, 0), mode="replicate")
        w = x["weight"]
        if channels_last:
            xp = xp.contiguous(memory_format=torch.channels_last_3d)
            w = w.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_(w.requires_grad)
        out = {"x_pad": xp.requires_grad_(x["x"].requires_grad), "weight": w, "bias": x["bias"]}
        if "grad_out" in x:
            go = x["grad_out"].permute(0, 4, 1, 2, 3)
            out["grad_out"] = go if channels_last else go.contiguous()
        return out

    return prepare


def _conv(xp, w, b):
    return F.conv3d(xp, w, b, stride=(STRIDE_T, 1, 1))


def _collect(out, grads):
    d = {"out": out.permute(0, 2, 3, 4, 1)}  # back to channels-last, as the op returns it
    for k in ("grad_weight", "grad_bias"):  # grad of the padded input is not the op's dx: not compared
        if k in grads:
            d[k] = grads[k]
    return d


def _path_note(shape_x, c: int, path: str = "auto") -> str:
    """The forward path the cuda backend takes for x of ``shape_x`` (bf16 / the benchmark dtype) when ``path`` is
    asked for, or ""."""
    if not B.CUDA:
        return ""
    from vxlp_ops import _cuda

    if not _cuda.has_kernel("temporal_merge_conv3d_forward_path"):
        return ""
    try:
        x = torch.empty(shape_x, device="cuda", dtype=B.DTYPE)
        w = torch.empty((c, c, 3, 3, 3), device="cuda", dtype=B.DTYPE)
        return "forward path: " + torch.ops.vxlp_ops.cuda_temporal_merge_conv3d_forward_path(x, w, None, STRIDE_T, path)
    except (RuntimeError, AttributeError) as e:
        return f"forward path unknown: {str(e).splitlines()[0]}"


def make_case(stage: str, direction: str, path: str | None = None) -> B.Case:
    g, hw, c = _dims()
    t = STAGES[stage]
    t_out = (t + 1 - 3) // STRIDE_T + 1
    bwd = direction == "fwd+bwd"

    def make(gen):
        x = {
            "x": B.randn(gen, g, t, hw, hw, c, requires_grad=bwd),
            "weight": B.randn(gen, c, c, 3, 3, 3, scale=(27 * c) ** -0.5, requires_grad=bwd),
            "bias": B.randn(gen, c, scale=0.1, requires_grad=bwd),
        }
        if bwd:
            x["grad_out"] = B.randn(gen, g, t_out, hw, hw, c)
        return x

    e = B.esize()
    m, n, k = g * t_out * hw * hw, c, 27 * c
    # FLOP: implicit GEMM 2·M·N·K, M = G·T_out·H·W, N = Cout, K = 27·Cin; fwd+bwd adds dX (2·M·N·K) and dW
    # (2·M·N·K): 6·M·N·K (bias and its gradient, O(M·N), left out).
    flop = 2 * m * n * k * (3 if bwd else 1)
    # bytes: fwd reads x (G·T·H·W·Cin), weight (27·Cin·Cout), bias, writes out (M·Cout); fwd+bwd also reads
    # dO and writes dx, dW, dbias.
    x_el, w_el, o_el = g * t * hw * hw * c, 27 * c * c, m * c
    nbytes = ((2 * x_el + 2 * w_el + 2 * o_el + 2 * c) if bwd else (x_el + w_el + o_el + c)) * e
    cl = B.Baseline(fn=_conv, prepare=_prepare(True), args=lambda x: (x["x_pad"], x["weight"], x["bias"]), collect=_collect)
    cf = B.Baseline(fn=_conv, prepare=_prepare(False), args=lambda x: (x["x_pad"], x["weight"], x["bias"]), collect=_collect)
    return B.Case(
        op="temporal_merge_conv3d",
        name=stage if path is None else f"{stage} [{path}]",
        direction=direction,
        make=make,
        args=lambda x: (x["x"], x["weight"], x["bias"], STRIDE_T),
        eager=B.ref.temporal_merge_conv3d,
        public=vxlp_ops.temporal_merge_conv3d,
        shapes={"x": [g, t, hw, hw, c], "weight": [c, c, 3, 3, 3], "bias": [c], "out": [g, t_out, hw, hw, c]},
        flop=flop,
        bytes=nbytes,
        bound="compute",
        grad_inputs=("x", "weight", "bias") if bwd else (),
        baselines={"torch_conv3d": cf, "torch_conv3d_cl": cl},
        compile_on_cpu=(not bwd and t == 4),
    )


CASES = [("stage1 T4->2", "fwd"), ("stage2 T2->1", "fwd"), ("stage1 T4->2", "fwd+bwd")]


@pytest.mark.parametrize("provider", B.provider_params("torch_conv3d", "torch_conv3d_cl"))
@pytest.mark.parametrize("stage,direction", CASES, ids=[f"{s.split()[0]}-{d}" for s, d in CASES])
def test_temporal_merge_conv3d(benchmark, ceilings, stage, direction, provider):
    case = make_case(stage, direction)
    if provider == "cuda":
        case.note = _path_note(case.shapes["x"], case.shapes["weight"][0])
    B.run_case(benchmark, case, provider, ceilings)


FWD_PATHS = ["cute_sm90", "cute_sm80", "mma"]


@pytest.mark.parametrize("path", FWD_PATHS)
@pytest.mark.parametrize("stage", list(STAGES), ids=[s.split()[0] for s in STAGES])
def test_temporal_merge_conv3d_forward_path(benchmark, ceilings, stage, path):
    """The cuda forward with each path forced (vxlp_ops.dispatch.use_conv_forward_path); skipped where the path
    cannot run."""
    if not B.CUDA:
        pytest.skip("needs a CUDA device")
    case = make_case(stage, "fwd", path)
    case.note = _path_note(case.shapes["x"], case.shapes["weight"][0], path)
    if not case.note.startswith(f"forward path: {path}"):
        pytest.skip(f"{path} cannot run here: {case.note}")
    with vxlp_ops.dispatch.use_conv_forward_path(path):
        B.run_case(benchmark, case, "cuda", ceilings)
