"""The fused DTS inference blocks (``vxlp_ops.dts_spatial_block`` / ``dts_temporal_block``) and their use by
``vxlp_model.dts.DTSEncoder``.

The Triton kernels run through the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1`` before import, the
triton backend forced) against the independent float64 oracles of ``tests/_float64_oracles.py`` (written from
SPEC §2, not from the code under test): random inputs with a nonzero mean, random nonzero weights (also
``proj_out``, which the module zero-initialises), odd sizes (C = 64 / 96 with 32 groups of 2 / 3 channels,
H·W = 3×3, 5×5, 3×5; T = 8 merged 8 → 4 → 2 → 1). Buffers the kernels allocate start as NaN (poisoned), so an
element left unwritten fails. Error measure: relative L2 of the block's update ``out − x`` (the residual would
hide it), bounded by twice the error of the eager blocks run in the same dtype plus a small floor — four times
for bfloat16: the interpreter's bf16 downcast truncates instead of rounding to nearest (biased), and the fused
path rounds to bf16 at more places than the eager one, whose attention runs in float32 (measured: fused / eager
≈ 3.0 for bf16; ≤ 1.0 for float16, where the interpreter rounds correctly — so the kernels are not the cause).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton / vxlp_ops are imported (kernels decorated then)

import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import _float64_oracles as O  # noqa: E402
import vxlp_ops  # noqa: E402
from vxlp_model import dts as dts_mod  # noqa: E402
from vxlp_model.dts import DTSEncoder  # noqa: E402
from vxlp_ops import dispatch  # noqa: E402
from vxlp_ops import reference as ref  # noqa: E402

needs_interp = pytest.mark.skipif(
    "triton" in dispatch._UNAVAILABLE or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton and TRITON_INTERPRET=1 set before vxlp_ops is imported",
)

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
FLOOR = {F32: 1e-5, F16: 1e-4, BF16: 1e-3}  # error floor added to FACTOR × the eager error
FACTOR = {F32: 2.0, F16: 2.0, BF16: 4.0}


class _PoisonTorch:
    """``torch`` for vxlp_ops.triton.dts_block: its ``torch.empty`` / ``empty_like`` buffers start as NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    @staticmethod
    def empty_like(*args, **kwargs):
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    if "triton" not in dispatch._UNAVAILABLE:
        import vxlp_ops.triton.dts_block as DB

        monkeypatch.setattr(DB, "torch", _PoisonTorch())
    yield


def _params(c: int, r: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rn(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(dtype)

    return dict(
        norm_weight=rn(c, scale=0.3, shift=1.0), norm_bias=rn(c, scale=0.3),
        qkv_weight=rn(3 * c, c, scale=c**-0.5), qkv_bias=rn(3 * c, scale=0.3),
        rel_k=rn(2 * r + 1, c), rel_v=rn(2 * r + 1, c),
        proj_weight=rn(c, c, scale=c**-0.5), proj_bias=rn(c, scale=0.3),
    )


def _x(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 1.5 + 0.7).to(dtype)  # nonzero mean: the GroupNorm must centre


def _spatial_args(x, p, ng):
    return (x, p["norm_weight"], p["norm_bias"], p["qkv_weight"], p["qkv_bias"], p["proj_weight"], p["proj_bias"],
            ng, 1e-6)


def _temporal_args(x, p, ng, transposed):
    return (x, p["norm_weight"], p["norm_bias"], p["qkv_weight"], p["qkv_bias"], p["rel_k"], p["rel_v"],
            p["proj_weight"], p["proj_bias"], ng, 1e-6, transposed)


def _update_err(out, x, want):
    """Relative L2 error of the block's update ``out − x`` against the oracle's ``want − x`` (float64)."""
    x = x.double()
    return O.rel_l2(out.double() - x, want - x)


SHAPES = [  # G, T, H, W, C, groups
    (2, 4, 3, 3, 64, 32),
    (1, 8, 5, 5, 96, 32),
    (2, 3, 3, 5, 64, 8),
]


# ------------------------------------------------------------------------------------- the ops, Triton backend
@needs_interp
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_spatial_block_triton_vs_float64(shape, dtype):
    g, t, h, w, c, ng = shape
    x, p = _x((g, t, h, w, c), dtype, 1), _params(c, 2, dtype, 2)
    args = _spatial_args(x, p, ng)
    assert dispatch.select("dts_spatial_block", args)[0] != "triton"  # never the interpreter unless forced
    with torch.no_grad(), vxlp_ops.use_backend("triton"):
        assert dispatch.select("dts_spatial_block", args)[0] == "triton"
        out = vxlp_ops.dts_spatial_block(*args)
    want = O.dts_spatial_block(*args)
    eager = ref.dts_spatial_block(*args)  # the eager block in the same dtype
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    err, err_eager = _update_err(out, x, want), _update_err(eager, x, want)
    assert err <= FACTOR[dtype] * err_eager + FLOOR[dtype], (err, err_eager)


@needs_interp
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_temporal_block_triton_vs_float64(shape, dtype, transposed):
    g, t, h, w, c, ng = shape
    x, p = _x((g, t, h, w, c), dtype, 3), _params(c, 2, dtype, 4)
    args = _temporal_args(x, p, ng, transposed)
    with torch.no_grad(), vxlp_ops.use_backend("triton"):
        assert dispatch.select("dts_temporal_block", args)[0] == "triton"
        out = vxlp_ops.dts_temporal_block(*args)
    want = O.dts_temporal_block(*args)
    eager = ref.dts_temporal_block(*args)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    err, err_eager = _update_err(out, x, want), _update_err(eager, x, want)
    assert err <= FACTOR[dtype] * err_eager + FLOOR[dtype], (err, err_eager)


@needs_interp
@pytest.mark.parametrize("per_position", [False, True])
def test_group_norm_stats_large_mean(per_position):
    """The one-pass statistics keep their precision when the mean dwarfs the spread (no E[x²] − E[x]²)."""
    from vxlp_ops.triton import dts_block as DB

    x = _x((2, 4, 5, 3, 64), F32, 5) * 0.01 + 300.0
    with vxlp_ops.use_backend("triton"):
        mean, rstd = DB.group_norm_stats(x, 32, 1e-6, per_position)
    xs = x.double().reshape(2, 4, 15, 32, 2)
    dims = (1, 4) if per_position else (1, 2, 4)
    var, mu = torch.var_mean(xs, dim=dims, correction=0)
    mu, var = (z.reshape(-1, 32) for z in (mu, var))
    assert torch.allclose(mean.double(), mu, rtol=1e-6, atol=0)
    assert torch.allclose(rstd.double(), torch.rsqrt(var + 1e-6), rtol=1e-3, atol=0)


@needs_interp
def test_blocks_triton_strided_arguments():
    """Non-contiguous x and parameters (transposed / strided views) give the result of their contiguous copies."""
    c = 64
    x, p = _x((1, 3, 5, 3, c), F32, 16), _params(c, 2, F32, 17)
    xs = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    ps = {k: (v.t().contiguous().t() if v.dim() == 2 else torch.stack([v, v], 1)[:, 0]) for k, v in p.items()}
    assert not xs.is_contiguous() and not any(v.is_contiguous() for v in ps.values())
    with torch.no_grad(), vxlp_ops.use_backend("triton"):
        for op, args, sargs in (
            ("dts_spatial_block", _spatial_args(x, p, 32), _spatial_args(xs, ps, 32)),
            ("dts_temporal_block", _temporal_args(x, p, 32, True), _temporal_args(xs, ps, 32, True)),
        ):
            assert torch.equal(getattr(vxlp_ops, op)(*sargs), getattr(vxlp_ops, op)(*args)), op


# ------------------------------------------------------------------------------------- the ops, reference backend
@pytest.mark.parametrize("transposed", [False, True])
def test_reference_blocks_vs_float64(transposed):
    g, t, h, w, c, ng = 2, 3, 3, 5, 64, 32
    x, p = _x((g, t, h, w, c), F64, 6), _params(c, 2, F64, 7)
    with torch.no_grad():
        out_s = vxlp_ops.dts_spatial_block(*_spatial_args(x, p, ng))
        out_t = vxlp_ops.dts_temporal_block(*_temporal_args(x, p, ng, transposed))
    assert _update_err(out_s, x, O.dts_spatial_block(*_spatial_args(x, p, ng))) < 1e-12
    assert _update_err(out_t, x, O.dts_temporal_block(*_temporal_args(x, p, ng, transposed))) < 1e-12


def test_op_contract_errors_and_fake():
    c = 64
    x, p = _x((1, 2, 3, 3, c), F32, 8), _params(c, 2, F32, 9)
    args = _spatial_args(x, p, 32)
    with pytest.raises(ValueError, match="num_groups"):
        vxlp_ops.dts_spatial_block(*args[:7], 7, 1e-6)
    with pytest.raises(ValueError, match="qkv_weight"):
        vxlp_ops.dts_spatial_block(x, p["norm_weight"], p["norm_bias"], p["qkv_weight"][:c], *args[4:])
    with pytest.raises(TypeError, match="proj_bias"):
        vxlp_ops.dts_spatial_block(*args[:6], p["proj_bias"].double(), 32, 1e-6)
    with pytest.raises(ValueError, match="rel_k"):
        vxlp_ops.dts_temporal_block(*_temporal_args(x, dict(p, rel_k=p["rel_k"][:4]), 32, True))
    with pytest.raises(ValueError, match="x must"):
        vxlp_ops.dts_spatial_block(x[0], *args[1:])
    with pytest.raises(RuntimeError, match="inference-only"):
        vxlp_ops.dts_spatial_block(x.clone().requires_grad_(), *args[1:])
    with torch.no_grad():  # fine without grad, also for leaves that require it
        vxlp_ops.dts_spatial_block(x.clone().requires_grad_(), *args[1:])
    for op, a in (("dts_spatial_block", args), ("dts_temporal_block", _temporal_args(x, p, 32, True))):
        torch.library.opcheck(getattr(torch.ops.vxlp_ops, op).default, a, test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph():
    c = 64
    x, p = _x((1, 2, 3, 3, c), F32, 10), _params(c, 2, F32, 11)
    fn = torch.compile(lambda x: vxlp_ops.dts_temporal_block(*_temporal_args(x, p, 32, True)), fullgraph=True,
                       backend="eager")
    with torch.no_grad():
        assert torch.equal(fn(x), vxlp_ops.dts_temporal_block(*_temporal_args(x, p, 32, True)))


# ------------------------------------------------------------------------------------- the model's switch
def _cfg(c=64, t=8, transposed=True):
    return types.SimpleNamespace(dts_channels=c, frames_per_group=t, dts_norm_groups=32, dts_norm_eps=1e-6,
                                 dts_max_relative_position=3, transposed_rel_k=transposed)


def _encoder(cfg, dtype, seed=12):
    enc = DTSEncoder(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in enc.named_parameters():  # every weight nonzero (also the zero-initialised ones)
            if name.endswith("norm.weight"):
                prm.copy_(1.0 + 0.3 * torch.randn(prm.shape, generator=g))
            elif prm.dim() > 1 and "embeddings_table" not in name and name != "temporal_encoding":
                prm.copy_(torch.randn(prm.shape, generator=g) * prm[0].numel() ** -0.5)
            else:
                prm.copy_(0.3 * torch.randn(prm.shape, generator=g))
    return enc.to(dtype).eval()


@needs_interp
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_encoder_fused_forward_vs_float64(dtype):
    """The whole fused DTS (T = 8: three stages 8 → 4 → 2 → 1, H·W = 3×3, C = 64) vs the float64 oracle."""
    cfg = _cfg()
    enc = _encoder(cfg, dtype)
    x = _x((2, 8, 3, 3, 64), dtype, 13)
    with torch.no_grad():
        with vxlp_ops.use_backend("triton"):
            out = enc.forward_fused(x)
        eager = enc(x)  # CPU: the eager blocks
    want = O.dts_encoder(x, {k: v.double() for k, v in enc.state_dict().items()}, 32, 1e-6, True)
    assert out.shape == (2, 9, 64) and out.dtype == dtype and torch.isfinite(out).all()
    err, err_eager = O.rel_l2(out, want), O.rel_l2(eager, want)
    assert err <= FACTOR[dtype] * err_eager + FLOOR[dtype], (err, err_eager)


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.fixture
def spies(monkeypatch):
    s = {name: _Spy(getattr(vxlp_ops, name)) for name in ("dts_spatial_block", "dts_temporal_block")}
    for name, spy in s.items():
        monkeypatch.setattr(dts_mod.vxlp_ops, name, spy)
    return s


def _calls(spies):
    return spies["dts_spatial_block"].calls, spies["dts_temporal_block"].calls


def test_encoder_uses_eager_blocks_on_cpu_in_training_and_with_grad(spies):
    enc = _encoder(_cfg(t=4), F32)
    x = _x((1, 4, 3, 3, 64), F32, 14)
    with torch.no_grad():
        assert not enc.uses_fused(x)  # CPU
        enc(x)
    enc.FUSED_DEVICE_TYPES = ("cpu",)  # CPU as a stand-in for CUDA: the rest of the rule
    enc.train()
    with torch.no_grad():
        assert not enc.uses_fused(x)
        enc(x)
    enc.eval()
    assert not enc.uses_fused(x)  # grad mode on and the parameters require grad
    enc(x).sum().backward()  # the eager path trains
    assert enc.encoder[0].q.weight.grad is not None
    enc.fused_inference = False
    with torch.no_grad():
        assert not enc.uses_fused(x)
    assert _calls(spies) == (0, 0)
    with pytest.raises(RuntimeError, match="inference-only"):
        enc.forward_fused(x)


@needs_interp
def test_encoder_uses_fused_blocks_in_eval_without_grad(spies):
    """With the device rule met (CPU standing in for CUDA, the triton backend forced so the kernels run) the eval
    forward without grad goes through the fused ops, once per block, and equals the eager forward."""
    enc = _encoder(_cfg(t=4), F32)
    x = _x((1, 4, 3, 3, 64), F32, 15)
    with torch.no_grad():
        eager = enc(x)
    assert _calls(spies) == (0, 0)
    enc.FUSED_DEVICE_TYPES = ("cpu",)
    with torch.no_grad(), vxlp_ops.use_backend("triton"):
        assert enc.uses_fused(x)
        fused = enc(x)
    assert _calls(spies) == (2, 2)  # two stages (4 → 2 → 1)
    enc.requires_grad_(False)
    with vxlp_ops.use_backend("triton"):  # grad mode on, but nothing requires grad
        assert enc.uses_fused(x)
        again = enc(x)
    assert _calls(spies) == (4, 4)
    assert torch.allclose(fused, eager, rtol=1e-4, atol=1e-4) and torch.equal(fused, again)


def test_uses_fused_on_cuda_device_rule():
    enc = _encoder(_cfg(t=4), F32)
    assert enc.FUSED_DEVICE_TYPES == ("cuda",)
    meta = torch.empty(1, 4, 3, 3, 64, device="meta")
    with torch.no_grad():
        assert not enc.uses_fused(meta)
