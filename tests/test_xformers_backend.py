"""The optional xformers backend of frame_attention (vxlp_ops._xformers) and the dispatcher's per-op order, on CPU,
with a fake ``xformers`` package standing in for the real one (whose kernels are CUDA-only).

The fake implements the few entry points the backend uses (``memory_efficient_attention_forward``, ``…_forward_
requires_grad``, ``…_backward``, ``MemoryEfficientAttentionCutlassOp`` with ``not_supported_reasons``,
``fmha.Inputs``) with exact torch math, and refuses head widths above 64 so that both outcomes can be seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

import vxlp_ops
import vxlp_ops.info
from vxlp_ops import _xformers, dispatch
from vxlp_ops._schemas import PUBLIC_OPS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(vxlp_ops.__file__)))

FAKE_OPS = '''
import torch

CALLS = []


class _Op:
    NAME = "?"

    @classmethod
    def not_supported_reasons(cls, d):
        reasons = []
        if d.query.ndim != 4:
            reasons.append(f"fake: expected BMHK inputs, got {d.query.ndim} dims")
        if d.query.shape[-1] > 64:
            reasons.append(f"fake: head width {d.query.shape[-1]} > 64")
        return reasons


class FwOp(_Op):
    NAME = "fakeF"


class BwOp(_Op):
    NAME = "fakeB"


MemoryEfficientAttentionCutlassOp = (FwOp, BwOp)


def _attn(q, k, v, scale):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bmhk,bnhk->bhmn", q.float(), k.float()) * scale
    lse = torch.logsumexp(s, -1)
    out = torch.einsum("bhmn,bnhk->bmhk", torch.softmax(s, -1), v.float()).to(q.dtype)
    return out, lse


def memory_efficient_attention_forward(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                       output_dtype=None):
    CALLS.append(("forward", op.NAME))
    return _attn(query, key, value, scale)[0]


def memory_efficient_attention_forward_requires_grad(query, key, value, attn_bias=None, p=0.0, scale=None, *,
                                                     op=None, output_dtype=None):
    CALLS.append(("forward_requires_grad", op.NAME))
    return _attn(query, key, value, scale)


def memory_efficient_attention_backward(grad, output, lse, query, key, value, attn_bias=None, p=0.0, scale=None, *,
                                        op=None):
    CALLS.append(("backward", op.NAME))
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_(True) for t in (query, key, value))
        out = _attn(q, k, v, scale)[0]
        return torch.autograd.grad(out, (q, k, v), grad)
'''

FAKE_FMHA = '''
class Inputs:
    def __init__(self, query, key, value, attn_bias=None, p=0.0, scale=None, output_dtype=None, is_partial=False):
        self.query, self.key, self.value, self.scale = query, key, value, scale
'''


def _fake_modules():
    pkg = types.ModuleType("xformers")
    pkg.__path__ = []
    ops = types.ModuleType("xformers.ops")
    exec(FAKE_OPS, ops.__dict__)  # noqa: S102
    fmha = types.ModuleType("xformers.ops.fmha")
    exec(FAKE_FMHA, fmha.__dict__)  # noqa: S102
    ops.fmha = fmha
    pkg.ops = ops
    return {"xformers": pkg, "xformers.ops": ops, "xformers.ops.fmha": fmha}


@pytest.fixture
def isolated_dispatch(monkeypatch):
    """Dispatcher state restored after the test (the backend registers itself into it)."""
    monkeypatch.setattr(dispatch, "_IMPLS", {op: dict(v) for op, v in dispatch._IMPLS.items()})
    monkeypatch.setattr(dispatch, "_UNAVAILABLE", dict(dispatch._UNAVAILABLE))
    monkeypatch.setattr(dispatch, "_OPTIONAL_OPS", dict(dispatch._OPTIONAL_OPS))
    monkeypatch.setattr(dispatch, "_ORDER", dict(dispatch._ORDER))
    yield


@pytest.fixture
def fake_xformers(monkeypatch, isolated_dispatch):
    mods = _fake_modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    dispatch._IMPLS["frame_attention"].pop("xformers", None)
    dispatch._UNAVAILABLE.pop("xformers", None)
    _xformers.load()
    yield mods["xformers.ops"]


def _qkv(d, b=2, s=9):
    g = torch.Generator().manual_seed(d)
    return tuple(torch.randn(b, s, d, generator=g) for _ in range(3))


# ------------------------------------------------------------------------------------------------ absent


@pytest.mark.skipif(_xformers.installed(), reason="xformers is installed here")
def test_absent_xformers_is_reported_and_never_chosen():
    why = dispatch.backend_reasons("frame_attention", "xformers")
    assert why and "not installed" in why[0]
    rows = [r for r in vxlp_ops.info.backend_table() if r[1] == "xformers"]
    assert [(op, be) for op, be, _ in rows] == [("frame_attention", "xformers")]  # only the op it serves
    assert "not installed" in rows[0][2]
    assert "xformers" not in dispatch.priority("frame_attention")
    q, k, v = _qkv(16)
    with vxlp_ops.use_backend("xformers"):
        with pytest.raises(vxlp_ops.NoBackendError, match="not installed"):
            vxlp_ops.frame_attention(q, k, v)


# ------------------------------------------------------------------------------------------------ fake


def test_considered_only_when_supported(fake_xformers, monkeypatch):
    small, wide = _qkv(32), _qkv(128)
    # CPU tensors: refused for the device, and xformers' own reasons are listed too
    why = dispatch.backend_reasons("frame_attention", "xformers", (*wide, None))
    assert any("needs CUDA tensors" in r for r in why)
    assert any("fakeF: fake: head width 128 > 64" in r for r in why)
    assert any("fakeB: fake: head width 128 > 64" in r for r in why)
    # stand in for a CUDA device from here on: only xformers' reasons remain
    monkeypatch.setattr(_xformers, "_device_reasons", lambda q: [])
    assert dispatch.backend_reasons("frame_attention", "xformers", (*small, None)) == []
    assert dispatch.backend_reasons("frame_attention", "xformers", (*wide, None))
    # never chosen by default, even where it could run
    assert dispatch.select("frame_attention", (*small, None))[0] == "reference"
    # an order that puts it first (what dispatch.tune sets when xformers measured fastest): chosen where
    # supported, skipped (to the next backend) where xformers refuses
    with dispatch.use_priority("frame_attention", ("xformers", "cuda", "triton")):
        assert dispatch.priority("frame_attention") == ("xformers", "cuda", "triton", "reference")
        assert dispatch.select("frame_attention", (*small, None))[0] == "xformers"
        assert dispatch.select("frame_attention", (*wide, None))[0] == "reference"
        fake_xformers.CALLS.clear()
        q, k, v = (t.clone().requires_grad_(True) for t in small)
        out = vxlp_ops.frame_attention(q, k, v, 0.3)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        assert fake_xformers.CALLS == [("forward", "fakeF"), ("forward_requires_grad", "fakeF"),
                                       ("backward", "fakeB")]
        fake_xformers.CALLS.clear()
        vxlp_ops.frame_attention(*wide)
        assert fake_xformers.CALLS == []  # refused: the reference ran
    assert dispatch.priority("frame_attention") == dispatch.PRIORITY  # restored
    with vxlp_ops.use_backend("reference"):
        qr, kr, vr = (t.clone().requires_grad_(True) for t in small)
        ref = vxlp_ops.frame_attention(qr, kr, vr, 0.3)
        ref_grads = torch.autograd.grad(ref, (qr, kr, vr), torch.ones_like(ref))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # forced where it refuses: one error with xformers' reasons
    with vxlp_ops.use_backend("xformers"):
        with pytest.raises(vxlp_ops.NoBackendError, match="head width 128 > 64"):
            vxlp_ops.frame_attention(*wide)


def test_info_reports_xformers_reasons_in_process(fake_xformers):
    report = vxlp_ops.info.report()
    row = [ln for ln in report.splitlines() if ln.split()[:2] == ["frame_attention", "xformers"]]
    assert len(row) == 1
    # installed (fake): available, with its probe on the DTS shape: [1, 576, 1152] bf16 here on CPU
    assert "available" in row[0] and "DTS frame attention [1, 576, 1152] bfloat16" in row[0]
    assert "fakeF: fake: head width 1152 > 64" in row[0] and "needs CUDA tensors" in row[0]
    assert not [ln for ln in report.splitlines() if ln.split()[:2] == ["sgm_mask", "xformers"]]


def test_info_module_reports_xformers_reasons(tmp_path):
    """``python -m vxlp_ops.info`` with the fake package importable (a fresh process, as a user runs it)."""
    pkg = tmp_path / "xformers"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text(FAKE_OPS + "\nfrom . import fmha\n")
    (pkg / "ops" / "fmha.py").write_text(FAKE_FMHA)
    env = {k: v for k, v in os.environ.items() if k not in ("VXLP_BACKEND",)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-m", "vxlp_ops.info"], env=env, capture_output=True, text=True,
                         timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    row = [ln for ln in res.stdout.splitlines() if ln.split()[:2] == ["frame_attention", "xformers"]]
    assert len(row) == 1, res.stdout
    assert "fakeF: fake: head width 1152 > 64" in row[0] and "fakeB: fake: head width 1152 > 64" in row[0]


# ------------------------------------------------------------------------------------------- configuration


def test_priority_configuration(isolated_dispatch):
    dispatch.declare_optional("xformers", ("frame_attention",))
    assert dispatch.backends_for("frame_attention") == ("cuda", "triton", "reference", "xformers")
    assert dispatch.backends_for("sgm_mask") == dispatch.PRIORITY
    for op in PUBLIC_OPS:
        assert dispatch.priority(op) == dispatch.PRIORITY
    with pytest.raises(ValueError):
        dispatch.set_priority("sgm_mask", ("xformers",))  # not a backend of that op
    with pytest.raises(ValueError):
        dispatch.set_priority("frame_attention", ("cuda", "cuda"))
    dispatch.set_priority("frame_attention", ("triton",))
    assert dispatch.priority("frame_attention") == ("triton", "reference")
    dispatch.set_priority("frame_attention", None)
    assert dispatch.priority("frame_attention") == dispatch.PRIORITY
    assert dispatch._parse_backend("xformers") == "xformers"
    q, k, v = _qkv(16)
    with pytest.raises(ValueError, match="CUDA"):
        dispatch.tune("frame_attention", (q, k, v, None))  # measures GPU kernels only
    assert dispatch.priority("frame_attention") == dispatch.PRIORITY
