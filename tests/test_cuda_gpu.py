"""GPU tests of the CUDA kernels of vxlp_ops (csrc/cuda/, the ``cuda`` backend of vxlp_ops/_cuda.py).

Every op runs through the public API with the cuda backend forced (``vxlp_ops.use_backend("cuda")``, and the test
asserts that dispatch picks ``cuda``), forward and backward, twice on different random inputs, against the float64
reference (``vxlp_ops.reference`` on ``.double()`` inputs on the CPU; on the GPU in float64 for the DTS-sized
convolution, whose CPU float64 reference would take minutes). Relative L2 error < 1e-4 for float32 and < 1e-2 for
float16 / bfloat16 (low-precision inputs are compared with the reference run on the same, upcast values).
Outputs freshly allocated by the kernels are filled with NaN first (``torch.utils.deterministic
.fill_uninitialized_memory``), so an element a kernel forgets to write fails the comparison.
Also: odd shapes, the real DTS shapes (C = 1152, S = 576, T = 4, G = 2), both rel_k orientations, sgm_mask
identical to the reference for the same CUDA generator seed, query_topk_gather indices identical to the
reference, bitwise determinism, and compute-sanitizer (memcheck; racecheck / synccheck marked slow) when the
binary is on PATH (racecheck / synccheck too with VXLP_SANITIZER_TOOLS=racecheck,synccheck).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import vxlp_ops
from vxlp_ops import dispatch
from vxlp_ops import reference as ref
from vxlp_ops.reference.sgm import mask_counts

pytestmark = pytest.mark.gpu

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
DTYPES = [F32, BF16, F16]
TOL = {F32: 1e-4, BF16: 1e-2, F16: 1e-2}
DEV = "cuda"


def dn(dt) -> str:
    return str(dt).replace("torch.", "")


@pytest.fixture(autouse=True)
def _cuda_and_poison():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)  # makes torch.empty fill new tensors with NaN
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def need(op: str) -> None:
    reasons = dispatch.backend_reasons(op, "cuda")
    if reasons:
        pytest.skip(f"cuda backend not available for {op}: {'; '.join(reasons)}")


def assert_cuda_selected(op: str, args: tuple) -> None:
    with vxlp_ops.use_backend("cuda"):
        name, _ = dispatch.select(op, args)
        assert name == "cuda"
    with vxlp_ops.use_backend(None):  # the automatic choice prefers it too
        assert dispatch.select(op, args)[0] == "cuda", dispatch.backend_reasons(op, "cuda", args)


def rel(out: torch.Tensor, want: torch.Tensor) -> float:
    out, want = out.detach().to(F64).cpu(), want.detach().to(F64).cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    den = want.norm().item()
    num = (out - want).norm().item()
    return num / den if den > 0 else num


def check(name: str, out: torch.Tensor, want: torch.Tensor, dtype, tol=None) -> None:
    tol = TOL[dtype] if tol is None else tol
    err = rel(out, want)
    assert err < tol, f"{name}: relative L2 error {err:.3e} >= {tol:.0e}"


def rnd(*shape, dtype=F32, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=DEV) * scale).to(dtype)


def d64(*ts, device="cpu"):
    return tuple(t.detach().to(device=device, dtype=F64) if isinstance(t, torch.Tensor) and t.is_floating_point()
                 else (t.to(device) if isinstance(t, torch.Tensor) else t) for t in ts)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------------------------- frame_attention
FA_SHAPES = [(2, 1, 8), (3, 7, 72), (2, 129, 72), (1, 577, 8), (2, 129, 1152), (1, 7, 1152), (1, 70, 5)]
FA_DTS = (8, 576, 1152)  # G = 2 clips × T = 4 frames, one head, 24×24 tokens, width 1152


def _run_frame_attention(shape, dtype, scale=None):
    q, k, v = (leaf(rnd(*shape, dtype=dtype)) for _ in range(3))
    go = rnd(*shape, dtype=dtype)
    assert_cuda_selected("frame_attention", (q, k, v, scale))
    with vxlp_ops.use_backend("cuda"):
        out = vxlp_ops.frame_attention(q, k, v, scale)
        grads = torch.autograd.grad(out, (q, k, v), go)
    assert out.dtype == dtype and out.shape == q.shape
    tag = f"frame_attention {dn(dtype)} {shape}"
    check(tag + " out", out, ref.frame_attention(*d64(q, k, v), scale), dtype)
    for nm, g, w in zip(("dq", "dk", "dv"), grads, ref.frame_attention_backward(*d64(go, q, k, v), scale)):
        assert g.dtype == dtype
        check(f"{tag} {nm}", g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", FA_SHAPES + [FA_DTS], ids=str)
def test_frame_attention(shape, dtype):
    need("frame_attention")
    for _ in range(2):
        _run_frame_attention(shape, dtype)


def test_frame_attention_explicit_scale():
    need("frame_attention")
    _run_frame_attention((2, 33, 72), F32, scale=0.37)
    _run_frame_attention((2, 33, 72), BF16, scale=0.37)


# the paired forward (out, lse) and the backward from them; (40, 2048, 8): the [S, S] workspaces of 40 rows exceed
# the 1 GiB bound in float32, so the batch runs in two chunks (csrc/cuda/frame_attention_plan.h)
FA_PAIRED_SHAPES = [(2, 1, 8), (3, 7, 72), (2, 129, 320), (1, 577, 8), (2, 129, 1152), FA_DTS, (40, 2048, 8)]


def _run_frame_attention_fwd(shape, dtype, scale=None):
    q, k, v, go = (rnd(*shape, dtype=dtype) for _ in range(4))
    assert_cuda_selected("frame_attention_fwd", (q, k, v, scale))
    ops = torch.ops.vxlp_ops
    with vxlp_ops.use_backend("cuda"):
        out, lse = vxlp_ops.frame_attention_fwd(q, k, v, scale)
        grads = ops.frame_attention_fwd_backward(go, q, k, v, out, lse, scale)
        plain = vxlp_ops.frame_attention(q, k, v, scale)
    tag = f"frame_attention_fwd {dn(dtype)} {shape}"
    want, want_lse = ref.frame_attention_fwd(*d64(q, k, v), scale)
    assert out.dtype == dtype and lse.dtype == F32 and lse.shape == shape[:2]
    check(tag + " out", out, want, dtype)
    assert torch.equal(plain, out), tag + ": frame_attention and frame_attention_fwd differ"
    err = (lse.cpu().double() - want_lse).abs().max().item()
    assert err < 1e-4, f"{tag} lse: max abs error {err:.3g}"
    # the gradient of the attention at these inputs (the saved out / lse feed the kernels, the reference is exact)
    for nm, g, w in zip(("dq", "dk", "dv"), grads, ref.frame_attention_backward(*d64(go, q, k, v), scale)):
        assert g.dtype == dtype
        check(f"{tag} {nm}", g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", FA_PAIRED_SHAPES, ids=str)
def test_frame_attention_fwd_and_backward_from_saved(shape, dtype):
    need("frame_attention_fwd")
    _run_frame_attention_fwd(shape, dtype, scale=0.37 if shape == (3, 7, 72) else None)


def test_frame_attention_fwd_deterministic():
    need("frame_attention_fwd")
    q, k, v, go = (rnd(2, 129, 72, dtype=BF16) for _ in range(4))
    runs = []
    with vxlp_ops.use_backend("cuda"):
        for _ in range(2):
            out, lse = vxlp_ops.frame_attention_fwd(q, k, v)
            runs.append((out, lse, *torch.ops.vxlp_ops.frame_attention_fwd_backward(go, q, k, v, out, lse, None)))
    for a, b in zip(*runs):
        assert torch.equal(a, b), "frame_attention_fwd: two runs on the same input differ"


# ---------------------------------------------------------------------------------------------- temporal_attention
TA_SHAPES = [(5, 1, 8, 2), (7, 3, 72, 64), (9, 4, 72, 3), (3, 4, 1152, 64), (4, 13, 40, 2), (2, 64, 24, 64)]
TA_DTS = (2 * 24 * 24, 4, 1152, 64)  # N = G·H·W positions, T = 4, D = 1152, R = 64


def _run_temporal_attention(shape, dtype, transposed):
    n, t, d, r = shape
    q, k, v = (leaf(rnd(n, t, d, dtype=dtype)) for _ in range(3))
    rk, rv = leaf(rnd(2 * r + 1, d, dtype=dtype)), leaf(rnd(2 * r + 1, d, dtype=dtype))
    go = rnd(n, t, d, dtype=dtype)
    args = (q, k, v, rk, rv, transposed)
    assert_cuda_selected("temporal_attention", args)
    with vxlp_ops.use_backend("cuda"):
        out = vxlp_ops.temporal_attention(*args)
        grads = torch.autograd.grad(out, (q, k, v, rk, rv), go)
    assert out.dtype == dtype
    tag = f"temporal_attention {dn(dtype)} {shape} transposed={transposed}"
    check(tag + " out", out, ref.temporal_attention(*d64(q, k, v, rk, rv), transposed), dtype)
    wants = ref.temporal_attention_backward(*d64(go, q, k, v, rk, rv), transposed)
    for nm, g, w in zip(("dq", "dk", "dv", "drel_k", "drel_v"), grads, wants):
        assert g.dtype == dtype
        check(f"{tag} {nm}", g, w, dtype)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", TA_SHAPES + [TA_DTS], ids=str)
def test_temporal_attention(shape, dtype, transposed):
    need("temporal_attention")
    for _ in range(2):
        _run_temporal_attention(shape, dtype, transposed)


# ---------------------------------------------------------------------------------------------- temporal_merge_conv3d
CONV_SHAPES = [  # G, T, H, W, Cin, Cout, stride_t
    (1, 3, 5, 5, 8, 8, 2),
    (3, 4, 1, 1, 72, 8, 2),
    (2, 4, 24, 24, 72, 72, 2),
    (1, 2, 5, 24, 8, 72, 1),
    (1, 5, 3, 7, 3, 5, 2),
    (2, 3, 5, 1, 72, 136, 3),
]
CONV_DTS = [(2, 4, 24, 24, 1152, 1152, 2), (2, 2, 24, 24, 1152, 1152, 2)]  # the two DTS merges: 4 → 2 → 1


def _run_conv(shape, dtype, bias=True):
    g, t, h, w, cin, cout, st = shape
    x = leaf(rnd(g, t, h, w, cin, dtype=dtype))
    wt = leaf(rnd(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5))
    b = leaf(rnd(cout, dtype=dtype)) if bias else None
    args = (x, wt, b, st)
    assert_cuda_selected("temporal_merge_conv3d", args)
    with vxlp_ops.use_backend("cuda"):
        out = vxlp_ops.temporal_merge_conv3d(*args)
        go = rnd(*out.shape, dtype=dtype)
        grads = torch.autograd.grad(out, [a for a in (x, wt, b) if a is not None], go)
    assert out.dtype == dtype and out.shape == (g, (t + 1 - 3) // st + 1, h, w, cout)
    big = g * t * h * w * cin * cout > 10**8
    dev = DEV if big else "cpu"  # the float64 CPU conv of the DTS shapes would take minutes
    tag = f"temporal_merge_conv3d {dn(dtype)} {shape} bias={bias}"
    check(tag + " out", out, ref.temporal_merge_conv3d(*d64(x, wt, b, device=dev), st), dtype)
    wants = ref.temporal_merge_conv3d_backward(*d64(go, x, wt, device=dev), st)
    for nm, gr, wn in zip(("dx", "dweight", "dbias"), grads, wants):
        assert gr.dtype == dtype
        check(f"{tag} {nm}", gr, wn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", CONV_SHAPES + CONV_DTS, ids=str)
def test_temporal_merge_conv3d(shape, dtype):
    need("temporal_merge_conv3d")
    for _ in range(2):
        _run_conv(shape, dtype)


def test_temporal_merge_conv3d_no_bias():
    need("temporal_merge_conv3d")
    _run_conv((1, 4, 5, 6, 8, 16, 2), BF16, bias=False)
    _run_conv((1, 4, 5, 6, 8, 16, 2), F32, bias=False)


# The forward paths (csrc/cuda/temporal_merge_conv3d.cu; vxlp_ops.dispatch.use_conv_forward_path: cute_sm90 |
# cute_sm80 | mma), each
# forced against the float64 reference: odd shapes with tails in M, Cout and K = 27·Cin (not a multiple of 64),
# H = W = 1 (every tap clamped: replicate padding), stride 1 / 3, and the real DTS shapes. Outputs start as NaN
# (fixture). cute_sm90 must be available on an sm_90 device when the build targets 9.0a (TORCH_CUDA_ARCH_LIST).
# The CuTe paths need Cin % 8 == 0: the CONV_SHAPES that have it, and two more with tails in Cout and K.
CONV_PATH_SHAPES = [s for s in CONV_SHAPES if s[4] % 8 == 0] + [(2, 4, 24, 24, 72, 200, 2), (1, 5, 7, 9, 1160, 264, 2)]
CONV_PATHS = ["cute_sm90", "cute_sm80", "mma"]


def _conv_path(path: str, x, wt) -> None:
    """Skips where the device cannot run the forward ``path``; checks that the op takes it when forced."""
    cap = torch.cuda.get_device_capability()
    if path == "cute_sm90" and cap != (9, 0):
        pytest.skip(f"cute_sm90 needs an sm_90 device, got sm_{cap[0]}{cap[1]}")
    try:
        got = torch.ops.vxlp_ops.cuda_temporal_merge_conv3d_forward_path(x, wt, None, 2, path)
    except RuntimeError as e:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        if "no CUTLASS" in str(e) or (path == "cute_sm90" and "9.0a" not in arch_list):
            pytest.skip(f"{path} not in this build: {str(e).splitlines()[0]}")
        raise
    assert got.startswith(path), got


@pytest.mark.parametrize("dtype", [BF16, F16], ids=dn)
@pytest.mark.parametrize("shape", CONV_PATH_SHAPES + CONV_DTS, ids=str)
@pytest.mark.parametrize("path", CONV_PATHS)
def test_temporal_merge_conv3d_forward_paths(path, shape, dtype):
    need("temporal_merge_conv3d")
    g, t, h, w, cin, cout, st = shape
    big = g * t * h * w * cin * cout > 10**8
    dev = DEV if big else "cpu"
    for bias in (True, False):
        x = rnd(g, t, h, w, cin, dtype=dtype)
        wt = rnd(cout, cin, 3, 3, 3, dtype=dtype, scale=(27 * cin) ** -0.5)
        b = rnd(cout, dtype=dtype) if bias else None
        _conv_path(path, x, wt)
        with vxlp_ops.use_backend("cuda"), vxlp_ops.dispatch.use_conv_forward_path(path):
            out = vxlp_ops.temporal_merge_conv3d(x, wt, b, st)
            again = vxlp_ops.temporal_merge_conv3d(x, wt, b, st)
        tag = f"temporal_merge_conv3d forward {path} {dn(dtype)} {shape} bias={bias}"
        assert out.dtype == dtype and out.shape == (g, (t + 1 - 3) // st + 1, h, w, cout)
        check(tag, out, ref.temporal_merge_conv3d(*d64(x, wt, b, device=dev), st), dtype)
        assert torch.equal(out, again), f"{tag}: two runs differ"


def test_temporal_merge_conv3d_forward_path_auto():
    """auto takes cute_sm90 on an H100 / H200 build with 9.0a, cute_sm80 on other sm_80+ devices, for the DTS
    shapes; fp32 and Cin % 8 != 0 take mma; a bad forward_path is refused naming the argument."""
    need("temporal_merge_conv3d")
    q = torch.ops.vxlp_ops.cuda_temporal_merge_conv3d_forward_path
    x, wt = rnd(2, 4, 24, 24, 1152, dtype=BF16), rnd(1152, 1152, 3, 3, 3, dtype=BF16)
    got = q(x, wt, None, 2)
    if "no CUTLASS" not in got:
        want = "cute_sm90" if torch.cuda.get_device_capability() == (9, 0) and "9.0a" in os.environ.get(
            "TORCH_CUDA_ARCH_LIST", "8.0;9.0a") else "cute_sm80"
        assert got.startswith(want), got
    assert q(x.float(), wt.float(), None, 2).startswith("mma"), q(x.float(), wt.float(), None, 2)
    assert q(rnd(2, 4, 24, 24, 12, dtype=BF16), rnd(1152, 12, 3, 3, 3, dtype=BF16), None, 2).startswith("mma")
    with pytest.raises(RuntimeError, match="forward_path"):
        q(x, wt, None, 2, "fastest")


# ---------------------------------------------------------------------------------------------- sgm_scores
SGM_SHAPES = [(1, 1, 5, 8, 1, 1), (3, 3, 7, 72, 2, 3), (2, 4, 129, 72, 4, 4), (1, 3, 577, 13, 2, 2)]
SGM_DTS = (2, 4, 576, 1152, 4, 4)


def _run_sgm(shape, dtype):
    g, t, s, c, qt, qs = shape
    x, tq, sq = leaf(rnd(g, t, s, c, dtype=dtype)), leaf(rnd(qt, c, dtype=dtype)), leaf(rnd(qs, c, dtype=dtype))
    assert_cuda_selected("sgm_scores", (x, tq, sq))
    with vxlp_ops.use_backend("cuda"):
        scores = vxlp_ops.sgm_scores(x, tq, sq)
        gs = torch.randn(g, t, s, device=DEV)
        grads = torch.autograd.grad(scores, (x, tq, sq), gs)
    assert scores.dtype == F32 and scores.shape == (g, t, s)
    tag = f"sgm_scores {dn(dtype)} {shape}"
    check(tag + " scores", scores, ref.sgm_scores(*d64(x, tq, sq)), F32 if dtype == F32 else dtype)
    for nm, gr, wn in zip(("dx", "dtemp", "dspatial"), grads, ref.sgm_scores_backward(*d64(gs, x, tq, sq))):
        assert gr.dtype == dtype
        check(f"{tag} {nm}", gr, wn, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", SGM_SHAPES + [SGM_DTS], ids=str)
def test_sgm_scores(shape, dtype):
    need("sgm_scores")
    for _ in range(2):
        _run_sgm(shape, dtype)


# ---------------------------------------------------------------------------------------------- sgm_mask
@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize(
    "shape,ratio,pool",
    [((2, 4, 576), 0.5, 0.75), ((1, 1, 7), 0.0, 0.5), ((3, 3, 129), 0.75, 0.75), ((1, 2, 1000), 0.3, 1.0)],
    ids=str,
)
def test_sgm_mask_matches_reference(shape, ratio, pool, dtype):
    need("sgm_mask")
    for seed in (1234, 99):
        scores = torch.rand(shape, device=DEV).to(dtype)
        scores[..., : min(9, shape[-1])] = 0.5  # ties: the stable rule decides
        assert_cuda_selected("sgm_mask", (scores, ratio, pool, None))
        gen = torch.Generator(device=DEV).manual_seed(seed)
        with vxlp_ops.use_backend("cuda"):
            got = vxlp_ops.sgm_mask(scores, ratio, pool, generator=gen)
        gen = torch.Generator(device=DEV).manual_seed(seed)
        with vxlp_ops.use_backend("reference"):
            want = vxlp_ops.sgm_mask(scores, ratio, pool, generator=gen)
        assert got.dtype == torch.bool and got.shape == scores.shape
        assert torch.equal(got, want)
        _, n_mask = mask_counts(shape[-1], ratio, pool)
        assert (got.sum(-1) == n_mask).all()


# ---------------------------------------------------------------------------------------------- query_topk_gather
QTG_SHAPES = [(1, 1, 1, 8, 1), (2, 37, 3, 72, 5), (3, 577, 2, 13, 100), (2, 129, 4, 1152, 129)]
QTG_DTS = (2, 2304, 32, 1152, 576)  # 4 frames × 576 tokens per row, 32 query tokens, keep 576


def _qtg_inputs(b, n, l_, d, k, dtype):
    """Random inputs whose k-th and (k+1)-th scores are well apart (no ties near the top-k boundary)."""
    for _ in range(100):
        vis, qry = rnd(b, n, d, dtype=dtype), rnd(b, l_, d, dtype=dtype)
        sc = ref.query_topk_gather(*d64(vis, qry), k)[2]
        if k == n:
            return vis, qry
        top = sc.sort(dim=-1, descending=True).values
        if (top[:, k - 1] - top[:, k]).min().item() > 1e-4:
            return vis, qry
    raise AssertionError("could not draw tie-free inputs")


@pytest.mark.parametrize("inject", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=dn)
@pytest.mark.parametrize("shape", QTG_SHAPES + [QTG_DTS], ids=str)
def test_query_topk_gather(shape, dtype, inject):
    need("query_topk_gather")
    b, n, l_, d, k = shape
    for _ in range(2):
        vis, qry = (leaf(t) for t in _qtg_inputs(b, n, l_, d, k, dtype))
        assert_cuda_selected("query_topk_gather", (vis, qry, k, inject))
        with vxlp_ops.use_backend("cuda"):
            sel, idx, sc = vxlp_ops.query_topk_gather(vis, qry, k, inject)
            gsel, gsc = rnd(b, k, d, dtype=dtype), torch.randn(b, n, device=DEV)
            dv, dq = torch.autograd.grad((sel, sc), (vis, qry), (gsel, gsc))
        rsel, ridx, rsc = ref.query_topk_gather(*d64(vis, qry), k, inject)
        tag = f"query_topk_gather {dn(dtype)} {shape} inject={inject}"
        assert idx.dtype == torch.int64 and sc.dtype == F32 and sel.dtype == dtype
        assert torch.equal(idx.cpu(), ridx), tag + ": indices differ from the reference"
        check(tag + " scores", sc, rsc, F32 if dtype == F32 else dtype)
        check(tag + " selected", sel, rsel, dtype)
        wdv, wdq = ref.query_topk_gather_backward(*d64(gsel, gsc, vis, qry, idx), inject)
        check(tag + " dvisual", dv, wdv, dtype)
        check(tag + " dquery", dq, wdq, dtype)


# ---------------------------------------------------------------------------------------------- determinism
def _det_cases():
    b = BF16
    return {
        "frame_attention": lambda: ((rnd(2, 129, 72, dtype=b), rnd(2, 129, 72, dtype=b), rnd(2, 129, 72, dtype=b), None),
                                    (2, 129, 72)),
        "temporal_attention": lambda: ((rnd(40, 4, 72, dtype=b), rnd(40, 4, 72, dtype=b), rnd(40, 4, 72, dtype=b),
                                        rnd(9, 72, dtype=b), rnd(9, 72, dtype=b), True), (40, 4, 72)),
        "temporal_merge_conv3d": lambda: ((rnd(2, 4, 6, 6, 72, dtype=b), rnd(72, 72, 3, 3, 3, dtype=b, scale=0.05),
                                           rnd(72, dtype=b), 2), (2, 2, 6, 6, 72)),
        "sgm_scores": lambda: ((rnd(2, 4, 50, 72, dtype=b), rnd(2, 72, dtype=b), rnd(3, 72, dtype=b)), (2, 4, 50)),
        "query_topk_gather": lambda: ((rnd(2, 300, 72, dtype=b), rnd(2, 5, 72, dtype=b), 40, True), None),
    }


@pytest.mark.parametrize("op", list(_det_cases()))
def test_deterministic(op):
    need(op)
    args, gshape = _det_cases()[op]()
    fwd = getattr(vxlp_ops, op)
    runs = []
    for _ in range(2):
        leaves = tuple(leaf(a) if isinstance(a, torch.Tensor) else a for a in args)
        with vxlp_ops.use_backend("cuda"):
            outs = fwd(*leaves)
            outs = outs if isinstance(outs, tuple) else (outs,)
            diff = [o for o in outs if o.is_floating_point()]
            torch.manual_seed(5)
            gos = [torch.randn_like(o) for o in diff]
            grads = torch.autograd.grad(diff, [a for a in leaves if isinstance(a, torch.Tensor)], gos)
        runs.append(tuple(outs) + tuple(grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b), f"{op}: two runs on the same input differ"


def test_sgm_mask_deterministic():
    need("sgm_mask")
    scores = torch.rand(2, 4, 576, device=DEV)
    masks = []
    for _ in range(2):
        gen = torch.Generator(device=DEV).manual_seed(3)
        with vxlp_ops.use_backend("cuda"):
            masks.append(vxlp_ops.sgm_mask(scores, 0.5, 0.75, generator=gen))
    assert torch.equal(*masks)


# ---------------------------------------------------------------------------------------------- compute-sanitizer
SANITIZER_SCRIPT = textwrap.dedent(
    """
    import os

    import torch
    import vxlp_ops
    from vxlp_ops import dispatch

    torch.manual_seed(0)
    dev = "cuda"

    def leaf(*shape, dtype, scale=1.0):
        return (torch.randn(*shape, device=dev) * scale).to(dtype).requires_grad_(True)

    def back(outs, inputs):
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if o.is_floating_point()]
        torch.autograd.grad(outs, inputs, [torch.randn_like(o) for o in outs])

    with vxlp_ops.use_backend("cuda"):
        for dt in (torch.float32, torch.bfloat16):
            for s, d in ((70, 72), (9, 264), (3, 5)):
                q, k, v = (leaf(2, s, d, dtype=dt) for _ in range(3))
                back(vxlp_ops.frame_attention(q, k, v), (q, k, v))
            for t, d, r in ((4, 72, 64), (13, 24, 2), (1, 8, 0)):
                q, k, v = (leaf(5, t, d, dtype=dt) for _ in range(3))
                rk, rv = leaf(2 * r + 1, d, dtype=dt), leaf(2 * r + 1, d, dtype=dt)
                back(vxlp_ops.temporal_attention(q, k, v, rk, rv, True), (q, k, v, rk, rv))
            for shape in ((1, 4, 5, 3, 8, 16, 2), (1, 3, 2, 4, 3, 5, 1), (1, 4, 3, 3, 136, 8, 2)):
                g, t, h, w, cin, cout, st = shape
                x = leaf(g, t, h, w, cin, dtype=dt)
                wt = leaf(cout, cin, 3, 3, 3, dtype=dt, scale=0.1)
                b = leaf(cout, dtype=dt)
                back(vxlp_ops.temporal_merge_conv3d(x, wt, b, st), (x, wt, b))
            x, tq, sq = leaf(2, 3, 40, 24, dtype=dt), leaf(2, 24, dtype=dt), leaf(3, 24, dtype=dt)
            back(vxlp_ops.sgm_scores(x, tq, sq), (x, tq, sq))
            gen = torch.Generator(device=dev).manual_seed(0)
            vxlp_ops.sgm_mask(torch.rand(2, 3, 300, device=dev).to(dt), 0.5, 0.75, generator=gen)
            vis, qry = leaf(2, 37, 24, dtype=dt), leaf(2, 3, 24, dtype=dt)
            back(vxlp_ops.query_topk_gather(vis, qry, 5, True), (vis, qry))
        # the CuTe forward paths of temporal_merge_conv3d, each forced where it can run (tails in M, Cout, K)
        for path in ("cute_sm90", "cute_sm80"):
            for g, t, h, w, cin, cout, st in ((1, 4, 5, 3, 8, 16, 2), (2, 4, 6, 6, 72, 200, 2)):
                x = leaf(g, t, h, w, cin, dtype=torch.bfloat16)
                wt = leaf(cout, cin, 3, 3, 3, dtype=torch.bfloat16, scale=0.1)
                try:
                    torch.ops.vxlp_ops.cuda_temporal_merge_conv3d_forward_path(x, wt, None, st, path)
                except RuntimeError:
                    continue  # not on this device / build
                with vxlp_ops.dispatch.use_conv_forward_path(path):
                    vxlp_ops.temporal_merge_conv3d(x, wt, leaf(cout, dtype=torch.bfloat16), st)
    torch.cuda.synchronize()
    print("SANITIZER_SCRIPT_DONE")
    """
)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))


@pytest.mark.parametrize(
    "tool",
    ["memcheck", pytest.param("racecheck", marks=pytest.mark.slow), pytest.param("synccheck", marks=pytest.mark.slow)],
)
def test_compute_sanitizer(tool, tmp_path):
    """memcheck always; racecheck / synccheck (several minutes) only when listed in VXLP_SANITIZER_TOOLS."""
    need("frame_attention")
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        pytest.skip("compute-sanitizer is not on PATH")
    if tool != "memcheck" and tool not in os.environ.get("VXLP_SANITIZER_TOOLS", "").split(","):
        pytest.skip(f"{tool} runs only with VXLP_SANITIZER_TOOLS={tool} (slow)")
    script = tmp_path / "run_ops.py"
    script.write_text(SANITIZER_SCRIPT)
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", VXLP_BACKEND="cuda")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [exe, "--tool", tool, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=str(tmp_path),
    )
    log = proc.stdout + proc.stderr
    assert "SANITIZER_SCRIPT_DONE" in log, log[-4000:]
    assert "ERROR SUMMARY: 0 errors" in log, log[-4000:]


# ---------------------------------------------------------------------------------------------- fused DTS blocks
# dts_spatial_block / dts_temporal_block have no compiled kernel: on a GPU the automatic dispatch picks their
# Triton backend (GroupNorm statistics + normalising GEMM + the attention op + bias/residual GEMM). Checked at the
# real DTS shapes (C = 1152, 24×24 tokens, T = 4 and 8 frames per group) against the independent float64 oracles
# of tests/_float64_oracles.py (on the CPU), as the error of the block's update ``out − x``, bounded by twice the
# error of the eager blocks run in the same dtype on the GPU plus a small floor.
DTS_BLOCK_SHAPES = [(1, 4, 24, 24, 1152), (1, 8, 24, 24, 1152), (2, 2, 5, 7, 96)]
DTS_FLOOR = {F32: 1e-5, BF16: 2e-3, F16: 2e-4}


def _dts_block_args(shape, dtype, temporal, transposed=True, r=64):
    g, t, h, w, c = shape
    x = rnd(g, t, h, w, c, dtype=dtype, scale=1.5) + 0.5
    common = (rnd(c, dtype=dtype, scale=0.3) + 1.0, rnd(c, dtype=dtype, scale=0.3),
              rnd(3 * c, c, dtype=dtype, scale=c**-0.5), rnd(3 * c, dtype=dtype, scale=0.3))
    proj = (rnd(c, c, dtype=dtype, scale=c**-0.5), rnd(c, dtype=dtype, scale=0.3))
    if temporal:
        rel = (rnd(2 * r + 1, c, dtype=dtype), rnd(2 * r + 1, c, dtype=dtype))
        return (x, *common, *rel, *proj, 32, 1e-6, transposed)
    return (x, *common, *proj, 32, 1e-6)


def _update_rel(out, x, want):
    x = x.detach().to(F64).cpu()
    return rel(out.to(F64).cpu() - x, want.cpu() - x)


@pytest.mark.parametrize("dtype", [BF16, F32], ids=dn)
@pytest.mark.parametrize("shape", DTS_BLOCK_SHAPES, ids=str)
@pytest.mark.parametrize("block", ["spatial", "temporal"])
def test_dts_fused_blocks_vs_float64(block, shape, dtype):
    import _float64_oracles as O

    op = f"dts_{block}_block"
    args = _dts_block_args(shape, dtype, block == "temporal")
    assert dispatch.select(op, args)[0] == "triton", dispatch.backend_reasons(op, "triton", args)
    with torch.no_grad():
        out = getattr(vxlp_ops, op)(*args)
        eager = getattr(ref, op)(*args)
        again = getattr(vxlp_ops, op)(*args)
    assert out.dtype == dtype and out.shape == args[0].shape
    assert torch.equal(out, again), "the fused block is not deterministic"
    want = getattr(O, op)(*d64(*args))
    err, err_eager = _update_rel(out, args[0], want), _update_rel(eager, args[0], want)
    assert err <= 2 * err_eager + DTS_FLOOR[dtype], f"{op} {dn(dtype)} {shape}: {err:.3e} vs eager {err_eager:.3e}"


@pytest.mark.parametrize("frames", [4, 8])
def test_dts_encoder_uses_fused_blocks_on_cuda(frames, monkeypatch):
    """DTSEncoder at the real width (C = 1152, 24×24, 32 groups, R = 64), bf16, eval, no grad: the fused blocks
    run (spied), once per block, and the result matches the eager path; in training mode they do not run."""
    import types as _types

    from vxlp_model import dts as dts_mod

    cfg = _types.SimpleNamespace(dts_channels=1152, frames_per_group=frames, dts_norm_groups=32, dts_norm_eps=1e-6,
                                 dts_max_relative_position=64, transposed_rel_k=True)
    torch.manual_seed(0)
    enc = dts_mod.DTSEncoder(cfg)
    with torch.no_grad():
        for p in enc.parameters():
            if not p.any():  # zero-initialised (temporal qkv / proj_out, temporal_encoding): random, small
                p.normal_(0.0, 0.02)
    calls = {"dts_spatial_block": 0, "dts_temporal_block": 0}
    for name in calls:
        fn = getattr(vxlp_ops, name)

        def spy(*a, _fn=fn, _name=name):
            calls[_name] += 1
            return _fn(*a)

        monkeypatch.setattr(dts_mod.vxlp_ops, name, spy)
    x = rnd(1, frames, 24, 24, 1152, dtype=BF16)
    enc64 = dts_mod.DTSEncoder(cfg).to(DEV, F64).eval()
    enc64.load_state_dict(enc.state_dict())
    enc = enc.to(DEV, BF16).eval()
    with torch.no_grad():
        assert enc.uses_fused(x)
        out = enc(x)
        stages = len(enc.encoder) // 3
        assert calls == {"dts_spatial_block": stages, "dts_temporal_block": stages}
        enc.fused_inference = False
        eager = enc(x)
        enc64.fused_inference = False
        want = enc64(x.to(F64))
    assert calls == {"dts_spatial_block": stages, "dts_temporal_block": stages}
    enc.fused_inference = True
    enc.train()
    with torch.no_grad():
        enc(x)
    assert calls == {"dts_spatial_block": stages, "dts_temporal_block": stages}
    err, err_eager = rel(out, want), rel(eager, want)
    assert err <= 2 * err_eager + DTS_FLOOR[BF16], (err, err_eager)
