"""The work per call of the CUDA frame_attention, on the CPU: its launch plan (csrc/cuda/frame_attention_plan.h,
exposed by every build of the extension as ``vxlp_ops._C.frame_attention_plan``).

A unit is B·S²·D multiply-adds (one [S, D]·[D, S] or [S, S]·[S, D] product per batch row). FlashAttention-2
needs 2 units forward (Q Kᵀ and P V, once each) and 5 backward from the saved output and LSE (Q Kᵀ, dO Vᵀ, Pᵀ
dO, dSᵀ Q, dS K). The plan must give exactly that for any shape (no product split over chunks of D or S and
recomputed), issue no more padded work than its tiles force, and be what the host code launches (every kernel
launch of frame_attention.cu takes its grid and sizes from a plan step). That the kernels execute exactly the
plan's issued work is checked by the emulator (``csrc/cuda/emu/run_emulation.py --ops frame_attention_work``,
run by the slow test at the end).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import vxlp_ops
from vxlp_ops import _ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CU = os.path.join(REPO, "csrc", "cuda", "frame_attention.cu")
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))

pytestmark = pytest.mark.skipif(
    _ext._C is None or not hasattr(_ext._C, "frame_attention_plan"),
    reason=f"needs the compiled extension vxlp_ops._C ({_ext.EXTENSION_ERROR})",
)

SHAPES = [(1, 1, 8), (3, 7, 72), (2, 129, 320), (8, 576, 1152), (4, 729, 1152), (1, 577, 5), (300, 576, 1152)]


def plan(b, s, d, esz=2, backward=False, **kw):
    return _ext._C.frame_attention_plan(b, s, d, esz, backward, **kw)


def units(p, b, s, d, key="macs"):
    return sum(step[key] for step in p["launches"]) / (b * s * s * d)


@pytest.mark.parametrize("esz", [2, 4])
@pytest.mark.parametrize("b,s,d", SHAPES)
def test_forward_is_two_units_and_backward_five(b, s, d, esz):
    fwd, bwd = plan(b, s, d, esz, False), plan(b, s, d, esz, True)
    # FLOPs = 2 · multiply-adds: forward 2·(2·B·S²·D), backward 5·(2·B·S²·D)
    assert 2 * sum(x["macs"] for x in fwd["launches"]) == 2 * (2 * b * s * s * d)
    assert 2 * sum(x["macs"] for x in bwd["launches"]) == 5 * (2 * b * s * s * d)
    for p in (fwd, bwd):
        # every matrix product reduces over its whole dimension in one launch (no split of D or S to recompute)
        for x in p["launches"]:
            if x["products"]:
                assert x["k"] in (s, d) and {x["m"], x["n"]} <= {s, d}, x
        # each batch row is covered exactly once per step
        steps = {x["step"] for x in p["launches"]}
        for st in steps:
            rows = sorted((x["b0"], x["batch"]) for x in p["launches"] if x["step"] == st)
            assert sum(n for _, n in rows) == b and rows[0][0] == 0, st
            assert all(r0 + n == r1 for (r0, n), (r1, _) in zip(rows, rows[1:])), st
    assert {x["step"] for x in fwd["launches"]} == {"scores", "softmax", "pv"}
    assert {x["step"] for x in bwd["launches"]} == {"delta", "bwd_scores", "dv", "dk", "dq"}


@pytest.mark.parametrize("b,s,d", SHAPES)
def test_issued_work_is_the_products_up_to_tile_padding(b, s, d):
    for backward in (False, True):
        p = plan(b, s, d, 2, backward)
        for x in p["launches"]:
            if not x["products"]:
                assert x["issued_macs"] == 0
                continue
            tm, tn, tk = x["tile"]
            pad = lambda n, t: -(-n // t) * t  # noqa: E731
            assert x["issued_macs"] == x["products"] * pad(x["m"], tm) * pad(x["n"], tn) * pad(x["k"], tk) * x["batch"]
            assert x["grid"] == (-(-x["n"] // tn), -(-x["m"] // tm), x["batch"])


def test_dts_shapes_issue_no_padding():
    """S = 576, D = 1152 (SigLIP frames of the DTS): the tiles divide the shapes, issued work = 2 and 5 units."""
    b, s, d = 256, 576, 1152
    assert units(plan(b, s, d), b, s, d, "issued_macs") == 2
    assert units(plan(b, s, d, backward=True), b, s, d, "issued_macs") == 5


def test_workspace_is_bounded_and_chunks_the_batch():
    b, s, d = 300, 576, 1152
    p = plan(b, s, d, 2, True, workspace=64 << 20)
    per_row = s * p["pitch"] * 2 * 2  # P and dS in bf16
    assert p["pitch"] == 576 and p["batch_chunk"] == (64 << 20) // per_row
    assert p["workspace_bytes"] == p["batch_chunk"] * per_row <= 64 << 20
    assert units(p, b, s, d) == 5  # chunking changes no work
    tiny = plan(3, 577, 8, 4, False, workspace=1)  # at least one batch row per chunk
    assert tiny["batch_chunk"] == 1 and tiny["pitch"] == 584 and len(tiny["launches"]) == 3 * 3


@pytest.mark.parametrize("b,s,d", SHAPES + [(600, 576, 1152), (40, 2048, 8)])
def test_python_workspace_size_matches_the_plan(b, s, d):
    """vxlp_ops._cuda.frame_attention_workspace_bytes (the memory planner's number) = the plan's workspace."""
    from vxlp_ops._cuda import frame_attention_workspace_bytes

    for esz in (2, 4):
        for backward in (False, True):
            assert frame_attention_workspace_bytes(b, s, esz, backward) == plan(b, s, d, esz, backward)["workspace_bytes"]


def test_too_large_s_is_refused_naming_the_workspace():
    with pytest.raises(ValueError, match=r"S = 16385 > 16384 .*\[S, S\] score workspace"):
        plan(1, 16385, 64)


def test_host_code_launches_the_plan():
    """Every kernel launch of frame_attention.cu takes its grid from a plan step (grid_of(l)) inside the loops over
    plan.launches, and each step of the plan has its launch: the plan the tests pin is the one that runs."""
    src = re.sub(r"//[^\n]*", "", open(CU).read())
    launches = re.findall(r"(\w+)<[^<>]*>\s*<<<([^>]*)>>>", src)
    assert launches and all(cfg.split(",")[0].strip() == "grid_of(l)" for _, cfg in launches), launches
    assert src.count("for (const fa_plan::Launch& l : plan.launches)") == 2
    assert {k for k, _ in launches} == {"fa_scores_kernel", "fa_softmax_kernel", "fa_gemm_kernel", "fa_delta_kernel"}
    for step in ("kScores", "kSoftmax", "kPV", "kDelta", "kBwdScores", "kGemmDV", "kGemmDK", "kGemmDQ"):
        assert f"case Step::{step}:" in src, step


@pytest.mark.slow
def test_emulated_kernels_execute_the_plan():
    """Builds the CPU emulation of the CUDA kernels (minutes; in run_emulation.py's default build folder, so that
    CI's later full emulation run reuses the build) and counts the m16n8k16 products they execute."""
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "csrc", "cuda", "emu", "run_emulation.py"), "--ops", "frame_attention_work"],
        capture_output=True, text=True, timeout=3000, cwd=REPO,
        # the subprocess imports the vxlp_ops this process imports (the installed package in CI, the tree in dev)
        env={**os.environ, "PYTHONPATH": PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("= plan") == 4
