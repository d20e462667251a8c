"""The whole DTS forward (SPEC §2): ``DTSEncoder`` ``[G, 4, 24, 24, 1152] → [G, 576, 1152]``, G = 64 groups.

Providers: ``eager`` (the encoder with every op replaced by its :mod:`vxlp_ops.reference` function),
``compile`` (``torch.compile`` of that, ``mode="max-autotune"`` on CUDA, default on CPU;
``VXLP_BENCH_DTS_COMPILE_MODE`` overrides), ``auto`` (the library's own dispatch, cuda > triton > reference),
``triton`` / ``cuda`` (every op forced to that backend), ``compile_ops`` (``torch.compile`` of the encoder
calling the library ops, which stay opaque custom ops: compiled glue around our kernels), ``fused`` (the
encoder's fused inference blocks, :meth:`DTSEncoder.forward_fused`: what ``auto`` runs on CUDA in eval without
grad; GPU only), ``unfused`` (the encoder's eager blocks calling the library ops, ``fused_inference = False``:
the same kernels for attention and conv without the fused GroupNorm / projections).
Compute-bound: % of the matmul ceiling. Weights: the module's own init, with the zero-initialised ones
(temporal qkv / proj_out, temporal_encoding) drawn at random, so that no block is the identity.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

import _bench as B


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # torch.compile looks modules up by name
    spec.loader.exec_module(mod)
    return mod


_MODS: dict = {}


def dts_modules():
    """(library dts module, a private copy of it whose ``vxlp_ops`` is the reference functions)."""
    if not _MODS:
        try:
            from vxlp_model import dts as lib
        except Exception:  # noqa: BLE001  (vxlp_model's other imports need transformers, av, ...)
            lib = _load("vxlp_bench_dts_lib", os.path.join(B.REPO, "vxlp_model", "dts.py"))
        refmod = _load("vxlp_bench_dts_reference", lib.__file__)
        refmod.vxlp_ops = types.SimpleNamespace(
            frame_attention=B.ref.frame_attention,
            temporal_attention=B.ref.temporal_attention,
            temporal_merge_conv3d=B.ref.temporal_merge_conv3d,
        )
        _MODS.update(lib=lib, ref=refmod)
    return _MODS["lib"], _MODS["ref"]


def dts_config():
    """The DTS part of ``VideoXLProConfig.real()`` / ``.tiny()`` (transposed rel_k, the released form)."""
    real = B.SIZE == "real"
    try:
        from vxlp_model.config import VideoXLProConfig

        cfg = (VideoXLProConfig.real if real else VideoXLProConfig.tiny)(transposed_rel_k=True)
        return cfg, "VideoXLProConfig." + ("real()" if real else "tiny()")
    except Exception as e:  # noqa: BLE001
        cfg = types.SimpleNamespace(
            dts_channels=1152 if real else 64,
            frames_per_group=4,
            dts_grid=24 if real else 6,
            dts_norm_groups=32 if real else 8,
            dts_norm_eps=1e-6,
            dts_max_relative_position=64 if real else 4,
            transposed_rel_k=True,
        )
        return cfg, f"SPEC §2 values (VideoXLProConfig unavailable: {type(e).__name__})"


def dts_flop(g: int, t: int, s: int, c: int) -> int:
    """FLOP of the DTS forward (2 per multiply-add; norms, softmax, residuals left out).

    Per stage with t frames: SpatialAttn q, k, v, proj_out 1×1 projections 4·2·(G·t·S)·C² and attention
    4·(G·t)·S²·C; TemporalAttn qkv 2·(G·t·S)·C·3C, proj_out 2·(G·t·S)·C², attention 8·(G·S)·t²·C;
    TemporalMerge conv 2·M·N·K with M = G·t_out·S, N = C, K = 27·C. Stages until t = 1 (4 → 2 → 1).
    At the real shapes: ≈ 206.6 GFLOP per group, 124 of them in the convs (SPEC §2).
    """
    total = 0
    while t > 1:
        total += 4 * 2 * (g * t * s) * c * c + 4 * (g * t) * s * s * c
        total += 2 * (g * t * s) * c * 3 * c + 2 * (g * t * s) * c * c + 8 * (g * s) * t * t * c
        t_out = (t + 1 - 3) // 2 + 1
        total += 2 * (g * t_out * s) * c * 27 * c
        t = t_out
    return total


_MODELS: dict = {}


def models():
    if not _MODELS:
        lib, refmod = dts_modules()
        cfg, source = dts_config()
        torch.manual_seed(0)
        lib_model = lib.DTSEncoder(cfg)
        with torch.no_grad():
            for p in lib_model.parameters():
                if not p.any():  # zero-initialised (identity blocks): random, small
                    p.normal_(0.0, 0.02)
        ref_model = refmod.DTSEncoder(cfg)
        ref_model.load_state_dict(lib_model.state_dict())
        for m in (lib_model, ref_model):
            m.to(device=B.DEVICE, dtype=B.DTYPE).eval().requires_grad_(False)
        _MODELS.update(lib=lib_model, ref=ref_model, cfg=cfg, source=source)
    return _MODELS


def make_case() -> B.Case:
    ms = models()
    cfg = ms["cfg"]
    g = 64 if B.SIZE == "real" else 2
    t, hw, c = cfg.frames_per_group, cfg.dts_grid, cfg.dts_channels
    s = hw * hw
    n_params = sum(p.numel() for p in ms["lib"].parameters())

    def make(gen):
        return {"x": B.randn(gen, g, t, hw, hw, c)}

    lib_model, ref_model = ms["lib"], ms["ref"]

    def fused(x):
        if not B.CUDA:
            pytest.skip("fused: the fused DTS blocks are timed on a GPU (on CPU they run their eager reference)")
        return lib_model.forward_fused(x)

    def unfused(x):
        lib_model.fused_inference = False
        try:
            return lib_model(x)
        finally:
            lib_model.fused_inference = True

    e = B.esize()
    # bytes (minimal): x read, every parameter read once, out [G, S, C] written.
    nbytes = (g * t * s * c + n_params + g * s * c) * e
    return B.Case(
        op="dts",
        name=f"G{g}xT{t}x{hw}x{hw}xC{c}",
        direction="fwd",
        make=make,
        args=lambda x: (x["x"],),
        eager=lambda x: ref_model(x),
        public=lambda x: lib_model(x),
        shapes={"x": [g, t, hw, hw, c], "out": [g, s, c], "params": n_params},
        flop=dts_flop(g, t, s, c),
        bytes=nbytes,
        bound="compute",
        compile_mode=None if B.DTS_COMPILE_MODE == "default" else B.DTS_COMPILE_MODE,
        compile_on_cpu=False,  # ~25 s of inductor on 2 CPU cores: VXLP_BENCH_COMPILE=all runs it
        compile_cost="dts_compile",
        note=f"DTSEncoder, config {ms['source']}; compile mode {B.DTS_COMPILE_MODE}",
        baselines={"fused": B.Baseline(fn=fused), "unfused": B.Baseline(fn=unfused)},
    )


@pytest.mark.parametrize("provider", ["eager", "compile", "auto", "fused", "unfused", "triton", "cuda", "compile_ops"])
def test_dts(benchmark, ceilings, provider):
    B.run_case(benchmark, make_case(), provider, ceilings)
