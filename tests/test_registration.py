"""Registration of the vxlp_ops ops with torch, the optional compiled extension, and ``vxlp_ops.info``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import vxlp_ops
import vxlp_ops.info
from vxlp_ops import _ext, dispatch
from vxlp_ops._schemas import FUSED_OPS, PAIRED_OPS, PUBLIC_OPS, SCHEMAS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))


def _run(args, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("VXLP_BACKEND", "VXLP_DISABLE_EXTENSION")}
    full_env.update(env)
    # the subprocess imports the same vxlp_ops as this process (the installed package in CI, the tree in dev)
    here = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))
    full_env["PYTHONPATH"] = here + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=180, cwd=here)


# ---------------------------------------------------------------------------------------------- schemas


def test_public_ops_are_the_six_of_the_contract():
    assert PUBLIC_OPS == (
        "frame_attention",
        "temporal_attention",
        "temporal_merge_conv3d",
        "sgm_scores",
        "sgm_mask",
        "query_topk_gather",
    )
    assert set(PUBLIC_OPS) <= set(SCHEMAS)
    for name in PUBLIC_OPS:
        assert callable(getattr(vxlp_ops, name)) and name in vxlp_ops.__all__
    # every other schema is an inference-only fused DTS block, a paired form of a public op (same inputs, more
    # outputs) or the backward op of one of those
    assert FUSED_OPS == ("dts_spatial_block", "dts_temporal_block")
    for name in FUSED_OPS:
        assert name in SCHEMAS and callable(getattr(vxlp_ops, name)) and name in vxlp_ops.__all__
    assert set(PAIRED_OPS.values()) <= set(PUBLIC_OPS)
    forms = set(PUBLIC_OPS) | set(PAIRED_OPS)
    for name in set(SCHEMAS) - forms - set(FUSED_OPS):
        assert name.endswith("_backward") and name[: -len("_backward")] in forms, name
    for name, public in PAIRED_OPS.items():
        assert SCHEMAS[name].split("->")[0].replace(name, public, 1) == SCHEMAS[public].split("->")[0], name
        assert callable(getattr(vxlp_ops, name)) and name in vxlp_ops.__all__


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_registered_and_equal(name):
    assert SCHEMAS[name].startswith(name + "(")
    op = getattr(torch.ops.vxlp_ops, name)
    assert str(op.default._schema) == "vxlp_ops::" + SCHEMAS[name]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_cpu_and_fake_kernels_registered(name):
    qual = f"vxlp_ops::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU"), f"{qual} has no CPU kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"), f"{qual} has no CUDA kernel"
    assert torch._library.simple_registry.singleton.find(qual).fake_impl.kernel is not None, f"{qual} has no fake"


@pytest.mark.parametrize(
    "name",
    ["frame_attention", "frame_attention_fwd", "temporal_attention", "temporal_merge_conv3d", "sgm_scores",
     "query_topk_gather"],
)
def test_autograd_registered(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vxlp_ops::{name}", "Autograd")


# ---------------------------------------------------------------------------------------------- extension


def test_extension_state_is_consistent():
    if _ext.EXTENSION_ERROR is None:
        assert _ext._C is not None
        assert {"cuda", "cuda_arch_list", "torch_version"} <= set(_ext.BUILD_INFO)
        assert isinstance(_ext.BUILD_INFO["cuda"], bool)
        assert isinstance(_ext.BUILD_INFO["cuda_arch_list"], str)
        # built against the torch that runs it (major.minor.patch)
        assert _ext.BUILD_INFO["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
        if not torch.cuda.is_available() and not _ext.BUILD_INFO["cuda"]:
            assert dispatch.backend_reasons("frame_attention", "cuda"), "cuda backend available without CUDA"
    else:
        assert _ext._C is None
        assert isinstance(_ext.EXTENSION_ERROR, str) and _ext.EXTENSION_ERROR.strip()
        assert _ext.BUILD_INFO == {}


def test_info_report_names_every_op_backend_and_reason():
    report = vxlp_ops.info.report()
    ops = PUBLIC_OPS + FUSED_OPS
    for op in ops:
        assert op in report
    for backend in dispatch.PRIORITY:
        assert backend in report
    table = vxlp_ops.info.backend_table()
    assert {(op, be) for op, be, _ in table} == {(op, be) for op in ops for be in dispatch.backends_for(op)}
    assert {(op, be) for op in ops for be in dispatch.PRIORITY} <= {(op, be) for op, be, _ in table}
    lines = report.splitlines()
    for op, backend, status in table:
        assert status.strip(), f"{op}/{backend}: empty status"
        if status != "available":
            assert len(status) > 10, f"{op}/{backend}: reason too short: {status!r}"
        row = [ln for ln in lines if ln.split()[:2] == [op, backend]]
        assert len(row) == 1 and status in row[0], (op, backend, row)
    # the reference backend runs every op on every device
    assert all(status == "available" for _, be, status in table if be == "reference")
    if _ext.EXTENSION_ERROR is not None:
        assert _ext.EXTENSION_ERROR in report
    else:
        assert "compiled extension: loaded" in report


def test_cuda_unavailable_reason_matches_build():
    reasons = dispatch.backend_reasons("frame_attention", "cuda")
    if _ext.EXTENSION_ERROR is not None:
        assert reasons and "extension" in reasons[0]
    elif not _ext.BUILD_INFO.get("cuda"):
        assert reasons and "without CUDA" in reasons[0]


# ---------------------------------------------------------------------------------------------- subprocesses

_RUN_OPS = r"""
import sys, torch, vxlp_ops
from vxlp_ops import _ext
from vxlp_ops._schemas import SCHEMAS
inp = torch.load(sys.argv[1])
out = {
    "extension_error": _ext.EXTENSION_ERROR,
    "ext_module_loaded": "vxlp_ops._C" in sys.modules,
    "schemas": {n: str(getattr(torch.ops.vxlp_ops, n).default._schema) for n in SCHEMAS},
}
q, k, v = inp["fa"]
out["frame_attention"] = vxlp_ops.frame_attention(q, k, v)
qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
out["frame_attention_grads"] = torch.autograd.grad(vxlp_ops.frame_attention(qr, kr, vr).sum(), (qr, kr, vr))
out["temporal_attention"] = vxlp_ops.temporal_attention(*inp["ta"], True)
out["temporal_merge_conv3d"] = vxlp_ops.temporal_merge_conv3d(*inp["conv"], 2)
out["sgm_scores"] = vxlp_ops.sgm_scores(*inp["sgm"])
out["sgm_mask"] = vxlp_ops.sgm_mask(out["sgm_scores"], 0.5, 0.75, torch.Generator().manual_seed(7))
out["query_topk_gather"] = vxlp_ops.query_topk_gather(*inp["qt"], 3, True)
torch.save(out, sys.argv[2])
print("OK")
"""


def _inputs():
    g = torch.Generator().manual_seed(1234)

    def r(*s):
        return torch.randn(*s, generator=g)

    return {
        "fa": (r(2, 5, 8), r(2, 5, 8), r(2, 5, 8)),
        "ta": (r(3, 4, 8), r(3, 4, 8), r(3, 4, 8), r(3, 8), r(3, 8)),
        "conv": (r(1, 4, 3, 3, 5), r(6, 5, 3, 3, 3), r(6)),
        "sgm": (r(2, 3, 5, 6), r(2, 6), r(3, 6)),
        "qt": (r(2, 7, 8), r(2, 3, 8)),
    }


def _compare(a, b, path="out"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=path)
        else:
            assert torch.equal(a, b), path
    else:
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{path}[{i}]")


@pytest.mark.parametrize("disable", ["1", "0"])
def test_ops_without_extension_match(disable, tmp_path):
    inp = _inputs()
    torch.save(inp, tmp_path / "in.pt")
    res = _run(["-c", _RUN_OPS, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], VXLP_DISABLE_EXTENSION=disable)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout
    got = torch.load(tmp_path / "out.pt")
    if disable == "1":
        assert got["extension_error"] is not None and "VXLP_DISABLE_EXTENSION" in got["extension_error"]
        assert not got["ext_module_loaded"], "vxlp_ops._C was imported although disabled"
    else:
        assert got["extension_error"] == _ext.EXTENSION_ERROR
    # the Python-defined schemas equal the C++ ones (and the table)
    for name, schema in got["schemas"].items():
        assert schema == "vxlp_ops::" + SCHEMAS[name], name

    # the parent's results (with the extension, if it loads here)
    q, k, v = inp["fa"]
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    sc = vxlp_ops.sgm_scores(*inp["sgm"])
    mine = {
        "frame_attention": vxlp_ops.frame_attention(q, k, v),
        "frame_attention_grads": torch.autograd.grad(vxlp_ops.frame_attention(qr, kr, vr).sum(), (qr, kr, vr)),
        "temporal_attention": vxlp_ops.temporal_attention(*inp["ta"], True),
        "temporal_merge_conv3d": vxlp_ops.temporal_merge_conv3d(*inp["conv"], 2),
        "sgm_scores": sc,
        "sgm_mask": vxlp_ops.sgm_mask(sc, 0.5, 0.75, torch.Generator().manual_seed(7)),
        "query_topk_gather": vxlp_ops.query_topk_gather(*inp["qt"], 3, True),
    }
    for name, val in mine.items():
        _compare(val, got[name], name)
    assert int(mine["sgm_mask"].sum()) == 2 * 3 * 3  # round(0.5·5) = 3 per frame


def test_info_module_exits_zero_and_lists_ops():
    res = _run(["-m", "vxlp_ops.info"])
    assert res.returncode == 0, res.stderr[-3000:]
    for op in PUBLIC_OPS:
        assert op in res.stdout
    for backend in dispatch.PRIORITY:
        assert backend in res.stdout
    assert "reference" in res.stdout and "available" in res.stdout


def test_info_module_exits_zero_when_the_reader_stops_early():
    """``python -m vxlp_ops.info | head -3`` (scripts/setup.sh did this): a reader that closes the pipe before the
    report is written must not make the command fail (with ``pipefail`` it failed the whole setup)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("VXLP_BACKEND", "VXLP_DISABLE_EXTENSION")}
    env["PYTHONPATH"] = here + os.pathsep + env.get("PYTHONPATH", "")
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write raises BrokenPipeError
    try:
        res = subprocess.run([sys.executable, "-m", "vxlp_ops.info"], env=env, stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=180, cwd=here)
    finally:
        os.close(write)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "BrokenPipeError" not in res.stderr


def test_info_module_without_extension():
    res = _run(["-m", "vxlp_ops.info"], VXLP_DISABLE_EXTENSION="1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "VXLP_DISABLE_EXTENSION" in res.stdout
    for op in PUBLIC_OPS:
        assert op in res.stdout
    # the cuda backend says the extension is the reason
    cuda_rows = [ln for ln in res.stdout.splitlines() if ln.split()[1:2] == ["cuda"]]
    assert len(cuda_rows) == len(PUBLIC_OPS) + len(FUSED_OPS)
    assert all("VXLP_DISABLE_EXTENSION" in ln for ln in cuda_rows), cuda_rows


@pytest.mark.skipif(os.environ.get("VXLP_EXPECT_EXTENSION") != "1", reason="set where the install must build it (CI)")
def test_extension_was_built_by_the_install():
    import vxlp_ops

    assert vxlp_ops._ext.EXTENSION_ERROR is None, vxlp_ops._ext.EXTENSION_ERROR
    assert "site-packages" in vxlp_ops.__file__, f"tests must exercise the installed package, got {vxlp_ops.__file__}"


# ---------------------------------------------------------------------------------------------- conv forward path


def test_conv_forward_path_setting_reaches_the_cuda_op(monkeypatch):
    """dispatch.use_conv_forward_path is validated, restored on exit, and read by the cuda backend at every call
    (it becomes the cuda op's forward_path argument; nothing comes from the environment)."""
    from vxlp_ops import _cuda

    calls = []

    class FakeOps:
        def cuda_temporal_merge_conv3d(self, *args):
            calls.append(args[-1])
            return args[0]

    monkeypatch.setattr(_cuda, "_ops", FakeOps())
    x, w = torch.randn(1, 3, 2, 2, 8), torch.randn(8, 8, 3, 3, 3)
    assert dispatch.conv_forward_path() == "auto"
    _cuda._conv_forward(x, w, None, 2)
    with dispatch.use_conv_forward_path("cute_sm80"):
        _cuda._conv_forward(x, w, None, 2)
        with dispatch.use_conv_forward_path("mma"):
            _cuda._conv_forward(x, w, None, 2)
        _cuda._conv_forward(x, w, None, 2)
    _cuda._conv_forward(x, w, None, 2)
    assert calls == ["auto", "cute_sm80", "mma", "cute_sm80", "auto"]
    with pytest.raises(ValueError, match="path must be one of"):
        dispatch.set_conv_forward_path("fastest")
    with pytest.raises(ValueError, match="path must be one of"):
        with dispatch.use_conv_forward_path("cute"):
            pass
    assert dispatch.conv_forward_path() == "auto"
