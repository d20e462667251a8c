"""The conv weight layout cache (vxlp_ops._layout_cache): the logic that decides when a weight is re-laid out,
on CPU tensors, and through the Triton backend (interpreter) and the op, eager, with autograd and compiled.

The CUDA backend uses the same cache (``conv_weight(weight, "rows" / "cols")`` passed to the kernels as
``weight_rows`` / ``weight_cols``); csrc/cuda/emu/run_emulation.py checks that the kernels give the same bits
with the caller's layout.
"""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

import vxlp_ops
from vxlp_ops import _layout_cache as LC
from vxlp_ops import dispatch


@pytest.fixture
def counted(monkeypatch):
    """Count the runs of every conv layout function; start from an empty cache."""
    calls = []
    for kind, fn in list(LC.CONV_LAYOUTS.items()):
        monkeypatch.setitem(LC.CONV_LAYOUTS, kind, lambda w, fn=fn, kind=kind: calls.append(kind) or fn(w))
    LC.CONV_WEIGHTS.clear()
    yield calls
    LC.CONV_WEIGHTS.clear()


def test_relaid_once_per_weight_state(counted):
    w = torch.randn(6, 4, 3, 3, 3)
    a = LC.conv_weight(w, "rows")
    assert torch.equal(a, w.permute(0, 2, 3, 4, 1).reshape(6, 108))
    assert LC.conv_weight(w, "rows") is a and counted == ["rows"]
    b = LC.conv_weight(w, "cols")  # another layout of the same weight: its own entry
    assert torch.equal(b, w.permute(1, 2, 3, 4, 0).reshape(4, 162)) and counted == ["rows", "cols"]
    w.add_(1.0)  # in-place update (a training step): the version counter moves, the next call re-lays
    a2 = LC.conv_weight(w, "rows")
    assert counted == ["rows", "cols", "rows"] and torch.equal(a2, w.permute(0, 2, 3, 4, 1).reshape(6, 108))
    assert LC.conv_weight(w, "rows") is a2
    w[0].zero_()  # in-place through a view shares the counter
    assert torch.equal(LC.conv_weight(w, "rows"), w.permute(0, 2, 3, 4, 1).reshape(6, 108))
    assert counted.count("rows") == 3
    w2 = w.clone()  # equal values, another tensor: its own entry
    LC.conv_weight(w2, "rows")
    assert counted.count("rows") == 4
    LC.conv_weight(w.to(torch.bfloat16), "rows")  # another dtype is another tensor
    assert counted.count("rows") == 5


def test_data_swap_and_clear(counted):
    w = torch.randn(2, 3, 3, 3, 3)
    LC.conv_weight(w, "rows")
    w.data = torch.randn(2, 3, 3, 3, 3)  # new storage: data_ptr differs
    assert torch.equal(LC.conv_weight(w, "rows"), w.permute(0, 2, 3, 4, 1).reshape(2, 81))
    assert counted == ["rows", "rows"]
    w.data.mul_(2.0)  # invisible to w._version: documented, clear() is the remedy
    LC.CONV_WEIGHTS.clear()
    assert torch.equal(LC.conv_weight(w, "rows"), w.permute(0, 2, 3, 4, 1).reshape(2, 81))
    assert counted == ["rows", "rows", "rows"]


def test_holds_neither_the_weight_nor_a_graph(counted):
    w = torch.randn(4, 4, 3, 3, 3, requires_grad=True)
    v = w * 2  # a non-leaf weight with a graph behind it
    out = LC.conv_weight(v, "cols")
    assert not out.requires_grad and out.grad_fn is None
    assert len(LC.CONV_WEIGHTS) == 1
    ref_v, ref_w = weakref.ref(v), weakref.ref(w)
    del v, w
    gc.collect()
    assert ref_v() is None and ref_w() is None  # the cache kept neither alive
    assert len(LC.CONV_WEIGHTS) == 0  # and dropped the entry with the weight


def test_bypassed_for_inference_tensors_and_bounded(counted):
    with torch.inference_mode():
        w = torch.randn(2, 2, 3, 3, 3)
        LC.conv_weight(w, "rows")
        LC.conv_weight(w, "rows")
    assert counted == ["rows", "rows"] and len(LC.CONV_WEIGHTS) == 0  # no version counter: never cached
    cache = LC.LayoutCache(maxsize=2)
    ws = [torch.randn(2, 2, 3, 3, 3) for _ in range(3)]
    for x in ws:
        cache.get(x, "rows", LC.CONV_LAYOUTS["rows"])
    assert len(cache) == 2
    n = len(counted)
    cache.get(ws[0], "rows", LC.CONV_LAYOUTS["rows"])  # evicted (least recently used): laid out again
    cache.get(ws[2], "rows", LC.CONV_LAYOUTS["rows"])  # still there
    assert len(counted) == n + 1
    with pytest.raises(ValueError):
        LC.LayoutCache(maxsize=0)


triton_interp = pytest.mark.skipif(
    "triton" in dispatch._UNAVAILABLE or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1 set before vxlp_ops is imported",
)


@triton_interp
def test_triton_conv_lays_the_weight_out_once_per_step(counted):
    """Forward and backward of the op on the triton backend, eager and compiled, as in training: one layout per
    kind while the weight is unchanged, a new one after the optimizer's in-place step, and the right results."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 8, 3, 3, 3) * 0.2)
    x = torch.randn(1, 4, 3, 3, 8, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    compiled = torch.compile(lambda x, w: vxlp_ops.temporal_merge_conv3d(x, w, None, 2), fullgraph=True)

    def step(fn):
        with vxlp_ops.use_backend("triton"):
            y = fn(x, w)
            gw = torch.autograd.grad(y.square().sum(), w)[0]
        with vxlp_ops.use_backend("reference"):
            wr = w.detach().clone().requires_grad_(True)
            yr = vxlp_ops.temporal_merge_conv3d(x.detach(), wr, None, 2)
            gr = torch.autograd.grad(yr.square().sum(), wr)[0]
        torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gw, gr, rtol=1e-4, atol=1e-3)
        return gw

    eager = lambda x, w: vxlp_ops.temporal_merge_conv3d(x, w, None, 2)  # noqa: E731
    for fn in (eager, eager, compiled, compiled):
        step(fn)
    assert sorted(counted) == ["taps_in_out", "taps_out_in"]
    w.grad = step(compiled)
    opt.step()  # in-place update of the parameter
    step(compiled)
    step(eager)
    assert sorted(counted) == ["taps_in_out", "taps_in_out", "taps_out_in", "taps_out_in"]
