"""The Triton kernels compiled for a real GPU target (sm_80) on any machine: no GPU or driver needed, only Triton's
own ptxas (scripts/check_triton_compile.py intercepts the launches of the host code and compiles each kernel
with the configuration it would get on a GPU).

Checked: every kernel of every op compiles (the interpreter accepts code that the compiler refuses, e.g. a plain
float global read inside a kernel); from the PTX: bf16 inputs reach the tensor cores as bf16 (``mma … .f32.bf16.bf16.f32``), never as
tf32 after an upcast; the frame-attention forward with D = 1152 keeps its register accumulator without
spilling; the fused DTS blocks' kernels do not spill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

triton = pytest.importorskip("triton")


@pytest.fixture(scope="module")
def bf16_reports(tmp_path_factory):
    try:
        from triton.backends.nvidia import compiler as nvc

        nvc.get_ptxas(80)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Triton's NVIDIA backend / ptxas unavailable: {type(e).__name__}: {e}")
    out = tmp_path_factory.mktemp("tc") / "reports.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "check_triton_compile.py"), "--arch", "80", "--dtypes", "bf16",
         "--ops", "frame_attention,temporal_attention,temporal_merge_conv3d,sgm,query_topk_gather,dts_block", "--json",
         str(out)],
        env=env, capture_output=True, text=True, timeout=1200, cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_kernel_compiles(bf16_reports):
    ops = {r["case"].split()[0] for r in bf16_reports}
    assert ops == {"frame_attention", "temporal_attention", "temporal_merge_conv3d", "sgm_scores", "sgm_mask",
                   "query_topk_gather", "dts_block"}
    assert all(r["regs"] > 0 for r in bf16_reports)


@pytest.mark.slow
def test_bf16_operands_reach_the_tensor_cores_as_bf16(bf16_reports):
    matmul = [r for r in bf16_reports if r["case"].split()[0] in ("frame_attention", "temporal_attention",
                                                                   "temporal_merge_conv3d", "dts_block")
              and r["kernel"] not in ("_colsum", "_gn_stats", "_fa_bwd_prep")]
    assert len(matmul) >= 12, [r["kernel"] for r in bf16_reports]
    for r in matmul:
        assert r["mma"], f"{r['case']} {r['kernel']}: no mma instruction"
        assert all(m.endswith("f32.bf16.bf16.f32") for m in r["mma"]), (r["case"], r["kernel"], r["mma"])


@pytest.mark.slow
def test_frame_attention_forward_accumulator_stays_in_registers(bf16_reports):
    fwd = [r for r in bf16_reports if r["kernel"] == "_fa_fwd"]
    assert {r["case"] for r in fwd} == {f"frame_attention {w} D={d} bf16" for w in ("fwd", "fwd+lse") for d in (64, 1152)}
    for r in fwd:
        assert r["spill_bytes"] == 0 and 0 < r["regs"] <= 255, r


@pytest.mark.slow
def test_dts_block_kernels_do_not_spill(bf16_reports):
    """The fused DTS blocks' kernels at C = 1152: the GroupNorm-statistics kernel and both GEMMs (the normalising
    q/k/v projection and the proj_out + residual one) of each block fit in registers."""
    rep = [r for r in bf16_reports if r["case"].startswith("dts_block")]
    assert sorted(r["kernel"] for r in rep) == ["_dts_gemm"] * 4 + ["_gn_stats"] * 2
    for r in rep:
        assert r["spill_bytes"] == 0 and 0 < r["regs"] <= 255, r
