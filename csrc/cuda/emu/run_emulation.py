"""Run the CUDA kernels of csrc/cuda/ on the CPU (emulated) and check them against vxlp_ops.reference.

For machines without a GPU: catches index-arithmetic, layout, synchronisation-placement and uninitialised-read
bugs (shared memory is poisoned with NaN; outputs come from at::empty, filled with NaN by
torch.utils.deterministic.fill_uninitialized_memory). It cannot catch timing races or hardware-specific
behaviour; the GPU tests (tests/test_cuda_gpu.py) remain the real check.

Usage: python csrc/cuda/emu/run_emulation.py [--ops frame_attention,...] [--build-dir DIR]
(``frame_attention_work``: only the executed-work check of frame_attention against its launch plan.)

How: every csrc/cuda/*.cu / *.cuh is rewritten (kernel<<<cfg>>>(args) → vxlp_emu::Launcher(cfg).run(kernel,
args); __shared__ arrays → a per-block arena; TORCH_LIBRARY_IMPL(..., CUDA, ...) → CPU; .is_cuda() → .is_cpu()),
compiled with -DVXLP_EMULATE against cuda_emu.h, and loaded next to vxlp_ops; torch.ops.vxlp_ops.cuda_* then
run on CPU tensors. Kernels run one block at a time with one host thread per CUDA thread: keep shapes small.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.dirname(HERE)
CSRC = os.path.dirname(CUDA_DIR)
REPO = os.path.dirname(CSRC)

LAUNCH = re.compile(r"(\b[\w:]+(?:<(?:[^<>]|<[^<>]*>)*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\[\];")
STATIC_SHARED = re.compile(r"__shared__\s+(?:__align__\(\d+\)\s+)?([\w:<>]+)\s+(\w+)((?:\[[^\]]+\])+);")


def rewrite(src: str) -> str:
    src = LAUNCH.sub(lambda m: f"vxlp_emu::Launcher({m.group(2)}).run({m.group(1)}, ", src)
    src = EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(vxlp_emu::dyn_smem());", src)
    src = STATIC_SHARED.sub(
        lambda m: (
            f"auto& {m.group(2)} = *reinterpret_cast<{m.group(1)}(*){m.group(3)}>("
            f"vxlp_emu::static_smem<__COUNTER__>(sizeof({m.group(1)}{m.group(3)})));"
        ),
        src,
    )
    src = re.sub(r"TORCH_LIBRARY_IMPL\(vxlp_ops,\s*CUDA,", "TORCH_LIBRARY_IMPL(vxlp_ops, CPU,", src)
    src = src.replace(".is_cuda()", ".is_cpu()")
    code = re.sub(r"//[^\n]*", "", src)
    assert "<<<" not in code and "__shared__" not in code, "rewrite left CUDA-only syntax"
    return src


def _write_if_changed(path: str, text: str) -> None:
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


def _cutlass_include(cuda_home: str) -> list[str]:
    """The CUTLASS/CuTe headers (nvidia-cutlass) and the CCCL headers they need (cuda/std/...), when installed:
    with them the CuTe forward of temporal_merge_conv3d (cute_sm80) is emulated too; without, it compiles to
    "unsupported" (temporal_merge_conv3d_cute.cuh)."""
    import importlib.util

    spec = importlib.util.find_spec("cutlass_library")
    inc = os.path.join(os.path.dirname(spec.origin), "source", "include") if spec and spec.origin else ""
    cccl = os.path.join(cuda_home, "include", "cccl")
    if not inc or not os.path.isdir(inc) or not os.path.isdir(cccl):
        return []
    return [inc, cccl]


def build(build_dir: str):
    from torch.utils.cpp_extension import load

    src_dir = os.path.join(build_dir, "src")
    os.makedirs(src_dir, exist_ok=True)
    sources = []
    for path in sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")) + glob.glob(os.path.join(CUDA_DIR, "*.cuh"))):
        with open(path) as f:
            text = rewrite(f.read())
        _write_if_changed(os.path.join(src_dir, os.path.basename(path)), text)
        if path.endswith(".cu"):
            tu = os.path.join(src_dir, "emu_" + os.path.basename(path)[:-3] + ".cpp")
            _write_if_changed(tu, '#include "cuda_emu.h"\n#include "%s"\n' % os.path.basename(path))
            sources.append(tu)
    sources += sorted(glob.glob(os.path.join(CUDA_DIR, "*.cpp")))
    sources.append(os.path.join(HERE, "emu_counters.cpp"))  # vxlp_emu::mma_count (cuda_emu.h)
    shim = os.path.join(build_dir, "shim")
    os.makedirs(os.path.join(shim, "c10", "cuda", "impl"), exist_ok=True)
    with open(os.path.join(shim, "c10", "cuda", "impl", "cuda_cmake_macros.h"), "w") as f:
        f.write("#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    t0 = time.time()
    load(
        name="vxlp_cuda_emu",
        sources=sources,
        extra_include_paths=[src_dir, HERE, shim, CSRC, os.path.join(cuda_home, "include")] + _cutlass_include(cuda_home),
        extra_cflags=["-std=c++20", "-O2", "-DVXLP_EMULATE", "-DVXLP_WITH_CUDA", "-fno-strict-aliasing", "-w"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    print(f"built the emulation in {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------ checks
F64 = torch.float64
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FAILS: list[str] = []


def rel(out, ref) -> float:
    out, ref = out.detach().to(F64), ref.detach().to(F64)
    if torch.isnan(out).any():
        return float("nan")
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


def check(name, out, ref, dtype, tol=None):
    tol = TOL[dtype] if tol is None else tol
    err = rel(out, ref)
    ok = err < tol  # NaN fails
    print(f"  {'ok  ' if ok else 'FAIL'} {name:60s} rel={err:.2e} (tol {tol:.0e})")
    if not ok:
        FAILS.append(name)


def rnd(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype)


def d64(*ts):
    return [t.to(F64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in ts]


def check_frame_attention(ref):
    """The four frame_attention kernels' ops: the plain forward and backward (inputs only), the paired forward
    (out, lse) and the backward from (out, lse), against the float64 reference; then the matrix-product work the
    kernels execute (emulated mma / FMA tile products) against the launch plan (vxlp_ops._C.frame_attention_plan)."""
    ops = torch.ops.vxlp_ops
    # odd S (not a multiple of the 64 tiles), D not a multiple of 64 (72, 5), D >= 256 (320), the DTS width
    cases = [(1, 1, 8), (2, 7, 72), (1, 70, 5), (1, 129, 16), (1, 65, 320), (1, 33, 1152)]
    worst: dict = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        lo = dt != torch.float32
        for b, s, d in cases:
            if d == 1152 and dt != torch.bfloat16:
                continue
            q, k, v, go = (rnd(b, s, d, dtype=dt) for _ in range(4))
            scale = None if d != 72 else 0.3
            tag = f"frame_attention {str(dt)[6:]} B{b} S{s} D{d}"
            want, want_lse = ref.frame_attention_fwd(*d64(q, k, v), scale)
            out, lse = ops.cuda_frame_attention_fwd(q, k, v, scale)
            plain = ops.cuda_frame_attention(q, k, v, scale)
            results = [("fwd out", out, want, None), ("fwd (plain op)", plain, want, None)]
            same = bool(torch.equal(plain, out))
            print(f"  {'ok  ' if same else 'FAIL'} {tag} plain forward = paired forward, bit for bit")
            if not same:
                FAILS.append(tag + " plain != paired")
            lse_err = (lse.double() - want_lse).abs().max().item()
            ok = lse.dtype == torch.float32 and lse.shape == (b, s) and lse_err < 1e-4
            print(f"  {'ok  ' if ok else 'FAIL'} {tag + ' lse':60s} max abs={lse_err:.2e} (tol 1e-04)")
            if not ok:
                FAILS.append(tag + " lse")
            rg = ref.frame_attention_fwd_backward(*d64(go, q, k, v), out.double(), lse.double(), scale)
            grads = ops.cuda_frame_attention_fwd_backward(go, q, k, v, out, lse, scale)
            grads_in = ops.cuda_frame_attention_backward(go, q, k, v, scale)
            rg_in = ref.frame_attention_backward(*d64(go, q, k, v), scale)
            for nm, a, r, a2, r2 in zip(("dq", "dk", "dv"), grads, rg, grads_in, rg_in):
                results.append((nm + " (from out, lse)", a, r, 2e-2 if lo else 1e-4))
                results.append((nm + " (inputs only)", a2, r2, 2e-2 if lo else 1e-4))
            for nm, a, r, tol in results:
                err = rel(a, r)
                key = (str(dt)[6:], nm.split()[0])
                worst[key] = max(worst.get(key, 0.0), err)
                check(f"{tag} {nm}", a, r, dt, tol=tol)
    print("  worst relative L2 errors: " + ", ".join(f"{k[0]} {k[1]} {v:.1e}" for k, v in sorted(worst.items())))
    check_frame_attention_work()


def check_frame_attention_work():
    """The m16n8k16 products the emulated kernels execute equal the issued work of the launch plan, forward and
    backward: the plan the tests pin (tests/test_ops.py) is the work the kernels do."""
    from vxlp_ops import _ext

    if _ext._C is None or not hasattr(_ext._C, "frame_attention_plan"):
        print(f"  FAIL frame_attention work: vxlp_ops._C.frame_attention_plan unavailable ({_ext.EXTENSION_ERROR})")
        FAILS.append("frame_attention work: no plan")
        return
    ops, emu = torch.ops.vxlp_ops, torch.ops.vxlp_emu
    mma = 16 * 8 * 16
    for dt, (b, s, d) in ((torch.bfloat16, (2, 70, 136)), (torch.float32, (1, 64, 128))):
        q, k, v, go = (rnd(b, s, d, dtype=dt) for _ in range(4))
        esz = torch.empty((), dtype=dt).element_size()
        for what, run in (("forward", lambda: ops.cuda_frame_attention_fwd(q, k, v, None)),
                          ("backward", lambda: ops.cuda_frame_attention_fwd_backward(go, q, k, v, out, lse, None))):
            plan = _ext._C.frame_attention_plan(b, s, d, esz, what == "backward")
            emu.reset_mma_count()
            res = run()
            if what == "forward":
                out, lse = res
            got = emu.mma_count() * mma
            want = sum(step["issued_macs"] for step in plan["launches"])
            units = sum(step["macs"] for step in plan["launches"]) / (b * s * s * d)
            ok = got == want
            print(f"  {'ok  ' if ok else 'FAIL'} frame_attention {str(dt)[6:]} {what} B{b} S{s} D{d}: executed "
                  f"{got} multiply-adds = plan {want} ({units:g} units of B·S²·D unpadded)")
            if not ok:
                FAILS.append(f"frame_attention work {what} {dt}")


def check_temporal_attention(ref):
    ops = torch.ops.vxlp_ops
    cases = [(3, 4, 72, 3), (2, 1, 8, 0), (2, 3, 16, 5), (1, 13, 40, 2), (1, 40, 24, 64), (41, 4, 300, 64), (9, 3, 130, 1), (2, 64, 20, 70)]
    for dt in (torch.float32, torch.bfloat16):
        for n, t, d, r in cases:
            for trans in (False, True):
                q, k, v, go = (rnd(n, t, d, dtype=dt) for _ in range(4))
                rk, rv = rnd(2 * r + 1, d, dtype=dt), rnd(2 * r + 1, d, dtype=dt)
                tag = f"temporal_attention {str(dt)[6:]} N{n} T{t} D{d} R{r} trans={trans}"
                out = ops.cuda_temporal_attention(q, k, v, rk, rv, trans)
                check(tag + " fwd", out, ref.temporal_attention(*d64(q, k, v, rk, rv), trans), dt)
                grads = ops.cuda_temporal_attention_backward(go, q, k, v, rk, rv, trans)
                rg = ref.temporal_attention_backward(*d64(go, q, k, v, rk, rv), trans)
                for nm, a, rr in zip(("dq", "dk", "dv", "drel_k", "drel_v"), grads, rg):
                    check(f"{tag} {nm}", a, rr, dt)


def check_conv(ref):
    ops = torch.ops.vxlp_ops
    cases = [(1, 4, 5, 5, 8, 8, 2), (2, 3, 3, 4, 16, 24, 2), (1, 2, 1, 1, 8, 8, 1), (1, 5, 6, 3, 3, 5, 2), (1, 4, 4, 6, 40, 136, 3)]
    for dt in (torch.float32, torch.bfloat16):
        for g, t, h, w, cin, cout, st in cases:
            x = rnd(g, t, h, w, cin, dtype=dt)
            wt = rnd(cout, cin, 3, 3, 3, dtype=dt, scale=0.2)
            b = rnd(cout, dtype=dt)
            tag = f"conv3d {str(dt)[6:]} G{g} T{t} H{h} W{w} Cin{cin} Cout{cout} st{st}"
            out = ops.cuda_temporal_merge_conv3d(x, wt, b, st)
            check(tag + " fwd", out, ref.temporal_merge_conv3d(*d64(x, wt, b), st), dt)
            go = rnd(*out.shape, dtype=dt)
            grads = ops.cuda_temporal_merge_conv3d_backward(go, x, wt, st)
            rg = ref.temporal_merge_conv3d_backward(*d64(go, x, wt), st)
            for nm, a, r in zip(("dx", "dw", "db"), grads, rg):
                check(f"{tag} {nm}", a, r, dt)
            # the weight laid out by the caller (vxlp_ops._layout_cache) gives the same bits
            from vxlp_ops._layout_cache import CONV_LAYOUTS

            same = torch.equal(ops.cuda_temporal_merge_conv3d(x, wt, b, st, CONV_LAYOUTS["rows"](wt)), out) and all(
                torch.equal(a, r)
                for a, r in zip(ops.cuda_temporal_merge_conv3d_backward(go, x, wt, st, CONV_LAYOUTS["cols"](wt)), grads)
            )
            print(f"  {'ok  ' if same else 'FAIL'} {tag} pre-laid weight: same results")
            if not same:
                FAILS.append(tag + " pre-laid weight")
    try:
        ops.cuda_temporal_merge_conv3d(x, wt, b, st, CONV_LAYOUTS["cols"](wt))  # Cin ≠ Cout: wrong layout
        FAILS.append("conv3d wrong weight_rows accepted")
        print("  FAIL conv3d: a wrongly laid-out weight_rows was accepted")
    except RuntimeError as e:
        print(f"  ok   conv3d: a wrongly laid-out weight_rows is refused ({str(e).splitlines()[0][:70]})")


def check_conv_cute(ref):
    """The cute_sm80 forward of temporal_merge_conv3d (CuTe kernel code with an emulated mma atom, see
    temporal_merge_conv3d_cute.cu), forced with the ops' forward_path argument, against the float64 reference: tails in M, N
    (Cout) and K (27·Cin not a multiple of 64), H = W = 1 (every tap clamped), stride 1 and 3; and the path
    selection (forward_path op, refusals naming the reason)."""
    ops = torch.ops.vxlp_ops
    x0, w0 = rnd(1, 3, 2, 2, 8, dtype=torch.bfloat16), rnd(8, 8, 3, 3, 3, dtype=torch.bfloat16)
    if "no CUTLASS" in ops.cuda_temporal_merge_conv3d_forward_path(x0, w0, None, 2) or "no CUTLASS" in _path_of(
        "cute_sm80", x0, w0
    ):
        print("  SKIP cute_sm80: the emulation was built without the CUTLASS/CuTe headers")
        return
    # what cannot run here of cute_sm90: its shared-memory layouts (the gather's target addresses, the layouts the
    # wgmma descriptors / TMA box are built from) are the canonical 128-byte swizzle; the loaders cover each chunk
    import ctypes

    lib = next(p for p in torch.ops.loaded_libraries if "vxlp_cuda_emu" in os.path.basename(p))
    bad = ctypes.CDLL(lib).vxlp_emu_conv_cute_layout_mismatches()
    print(f"  {'ok  ' if bad == 0 else 'FAIL'} cute_sm90 / cute_sm80 smem layouts (128-byte swizzle) and loader coverage: {bad} mismatches")
    if bad:
        FAILS.append("conv3d cute smem layouts")
    cases = [
        (1, 4, 5, 5, 8, 8, 2),
        (2, 3, 3, 4, 16, 24, 2),
        (1, 2, 1, 1, 8, 8, 1),
        (1, 4, 4, 6, 40, 136, 3),
        (1, 3, 9, 15, 16, 16, 1),
        (1, 4, 6, 6, 72, 72, 2),
    ]
    for dt in (torch.bfloat16, torch.float16):
        for g, t, h, w, cin, cout, st in cases if dt == torch.bfloat16 else cases[2:5]:  # fp16: only the atom differs
            x = rnd(g, t, h, w, cin, dtype=dt)
            wt = rnd(cout, cin, 3, 3, 3, dtype=dt, scale=0.2)
            for b in (rnd(cout, dtype=dt), None):
                tag = f"conv3d cute_sm80 {str(dt)[6:]} G{g} T{t} H{h} W{w} Cin{cin} Cout{cout} st{st} bias={b is not None}"
                path = ops.cuda_temporal_merge_conv3d_forward_path(x, wt, b, st, "cute_sm80")
                out = ops.cuda_temporal_merge_conv3d(x, wt, b, st, None, "cute_sm80")
                again = ops.cuda_temporal_merge_conv3d(x, wt, b, st, None, "cute_sm80")
                if path != "cute_sm80 (forced by forward_path)":
                    FAILS.append(tag + " path")
                    print(f"  FAIL {tag}: path {path!r}")
                check(tag + " fwd", out, ref.temporal_merge_conv3d(*d64(x, wt, b), st), dt)
                if not torch.equal(out, again):
                    FAILS.append(tag + " deterministic")
                    print(f"  FAIL {tag}: two runs differ")
    # selection: fp32 never takes a CuTe path; Cin % 8 != 0 cannot; sm90 is not emulated; bad values are refused
    x3, w3 = rnd(1, 3, 2, 2, 3, dtype=torch.bfloat16), rnd(8, 3, 3, 3, 3, dtype=torch.bfloat16)
    xf, wf = rnd(1, 3, 2, 2, 8), rnd(8, 8, 3, 3, 3)
    expect = [
        ("cute_sm80", x3, w3, "Cin % 8"),
        ("cute_sm80", xf, wf, "float16 / bfloat16"),
        ("cute_sm90", x0, w0, "emulation"),
        ("fastest", x0, w0, "must be one of"),
    ]
    for want, x, w, needle in expect:
        try:
            ops.cuda_temporal_merge_conv3d(x, w, None, 2, None, want)
            ok, msg = False, "accepted"
        except RuntimeError as e:
            msg = str(e).splitlines()[0]
            ok = needle in msg
        print(f"  {'ok  ' if ok else 'FAIL'} forward_path={want} refused (...{msg[-70:]})")
        if not ok:
            FAILS.append(f"conv3d path {want} refusal")
    auto_small = ops.cuda_temporal_merge_conv3d_forward_path(x0, w0, None, 2, "auto")  # 1 tile < 4 emulated SMs
    auto_f32 = ops.cuda_temporal_merge_conv3d_forward_path(xf, wf, None, 2, "auto")
    for got, want in ((auto_small, "mma (fewer"), (auto_f32, "mma (cute_sm90: needs float16 / bfloat16")):
        ok = got.startswith(want)
        print(f"  {'ok  ' if ok else 'FAIL'} auto path: {got}")
        if not ok:
            FAILS.append("conv3d auto path")
    xb = rnd(4, 4, 12, 12, 8, dtype=torch.bfloat16)  # 4·2·144 = 1152 rows: 9 tiles >= 4 emulated SMs
    got = ops.cuda_temporal_merge_conv3d_forward_path(xb, w0, None, 2)  # the default: auto
    ok = got.startswith("cute_sm80 (cute_sm90: wgmma / TMA cannot run")
    print(f"  {'ok  ' if ok else 'FAIL'} auto path, enough tiles: {got}")
    if not ok:
        FAILS.append("conv3d auto path (large)")


def _path_of(want, x, w):
    try:
        return torch.ops.vxlp_ops.cuda_temporal_merge_conv3d_forward_path(x, w, None, 2, want)
    except RuntimeError as e:
        return str(e)


def check_sgm(ref):
    ops = torch.ops.vxlp_ops
    from vxlp_ops.reference.sgm import mask_counts

    for dt in (torch.float32, torch.bfloat16):
        for g, t, s, c, qt, qs in [(2, 4, 9, 24, 2, 3), (1, 1, 5, 7, 1, 1), (1, 3, 40, 16, 4, 2)]:
            x = rnd(g, t, s, c, dtype=dt)
            tq, sq = rnd(qt, c, dtype=dt), rnd(qs, c, dtype=dt)
            tag = f"sgm_scores {str(dt)[6:]} G{g} T{t} S{s} C{c}"
            out = ops.cuda_sgm_scores(x, tq, sq)
            assert out.dtype == torch.float32
            check(tag + " fwd", out, ref.sgm_scores(*d64(x, tq, sq)), torch.float32 if dt == torch.float32 else dt)
            gs = torch.randn(g, t, s)
            grads = ops.cuda_sgm_scores_backward(gs, x, tq, sq)
            rg = ref.sgm_scores_backward(gs.double(), *d64(x, tq, sq))
            for nm, a, r in zip(("dx", "dtemp", "dspatial"), grads, rg):
                check(f"{tag} {nm}", a, r, dt, tol=1e-3 if dt == torch.float32 else 2e-2)
    for g, t, s, ratio, pool in [(2, 3, 50, 0.5, 0.75), (1, 1, 7, 0.0, 0.5), (1, 2, 300, 0.7, 0.9), (1, 2, 9, 0.5, 0.5)]:
        scores = torch.rand(g, t, s)
        scores[0, 0, :4] = 0.5  # ties
        n_pool, n_mask = mask_counts(s, ratio, pool)
        gen = torch.Generator().manual_seed(7)
        want = ref.sgm_mask(scores, ratio, pool, generator=gen)
        gen = torch.Generator().manual_seed(7)
        noise = torch.rand((g, t, n_pool), generator=gen)
        got = ops.cuda_sgm_mask(scores, noise, n_mask)
        same = bool(torch.equal(got, want))
        print(f"  {'ok  ' if same else 'FAIL'} sgm_mask G{g} T{t} S{s} ratio {ratio} pool {pool}")
        if not same:
            FAILS.append(f"sgm_mask {g} {t} {s}")


def check_qtg(ref):
    ops = torch.ops.vxlp_ops
    for dt in (torch.float32, torch.bfloat16):
        for b, n, l, d, k in [(2, 37, 3, 24, 5), (1, 300, 1, 8, 300), (3, 9, 2, 13, 1)]:
            for inject in (True, False):
                vis, qry = rnd(b, n, d, dtype=dt), rnd(b, l, d, dtype=dt)
                tag = f"query_topk_gather {str(dt)[6:]} B{b} N{n} L{l} D{d} k{k} inject={inject}"
                sel, idx, sc = ops.cuda_query_topk_gather(vis, qry, k, inject)
                _, _, rsc = ref.query_topk_gather(*d64(vis, qry), k, inject)
                check(tag + " scores", sc, rsc, torch.float32 if dt == torch.float32 else dt)
                from vxlp_ops.reference.query_topk_gather import topk_indices

                same = bool(torch.equal(idx, topk_indices(sc.double(), k)))
                print(f"  {'ok  ' if same else 'FAIL'} {tag} indices = top-k of own scores")
                if not same:
                    FAILS.append(tag + " indices")
                want = torch.gather(vis.double(), 1, idx.unsqueeze(-1).expand(-1, -1, d))
                if inject:
                    want = want + torch.gather(rsc, 1, idx).unsqueeze(-1)
                check(tag + " selected", sel, want, dt)
                gsel, gsc = rnd(b, k, d, dtype=dt), torch.randn(b, n)
                dv, dq = ops.cuda_query_topk_gather_backward(gsel, gsc, vis, qry, idx, inject)
                rdv, rdq = ref.query_topk_gather_backward(gsel.double(), gsc.double(), *d64(vis, qry), idx, inject)
                check(tag + " dvisual", dv, rdv, dt, tol=1e-3 if dt == torch.float32 else 2e-2)
                check(tag + " dquery", dq, rdq, dt, tol=1e-3 if dt == torch.float32 else 2e-2)


def check_meta(ref):
    """The Meta kernels of registration_cuda.cpp give the shapes and dtypes of the real kernels."""
    ops = torch.ops.vxlp_ops
    bf = torch.bfloat16
    q = rnd(2, 9, 16, dtype=bf)
    rk = rnd(5, 16, dtype=bf)
    x5, w5 = rnd(1, 4, 3, 3, 8, dtype=bf), rnd(8, 8, 3, 3, 3, dtype=bf)
    x4, tq = rnd(2, 3, 6, 8, dtype=bf), rnd(2, 8, dtype=bf)
    vis, qry = rnd(2, 11, 8, dtype=bf), rnd(2, 3, 8, dtype=bf)
    idx = ops.cuda_query_topk_gather(vis, qry, 4, True)[1]
    calls = [
        ("cuda_frame_attention", (q, q, q, None)),
        ("cuda_frame_attention_backward", (q, q, q, q, 0.5)),
        ("cuda_frame_attention_fwd", (q, q, q, None)),
        ("cuda_frame_attention_fwd_backward", (q, q, q, q, q, torch.zeros(2, 9), 0.5)),
        ("cuda_temporal_attention", (q, q, q, rk, rk, False)),
        ("cuda_temporal_attention_backward", (q, q, q, q, rk, rk, True)),
        ("cuda_temporal_merge_conv3d", (x5, w5, None, 2)),
        ("cuda_temporal_merge_conv3d", (x5, w5, None, 2, w5.permute(0, 2, 3, 4, 1).reshape(8, -1).contiguous())),
        ("cuda_temporal_merge_conv3d_backward", (rnd(1, 2, 3, 3, 8, dtype=bf), x5, w5, 2)),
        ("cuda_sgm_scores", (x4, tq, tq)),
        ("cuda_sgm_scores_backward", (torch.randn(2, 3, 6), x4, tq, tq)),
        ("cuda_sgm_mask", (torch.rand(2, 3, 6), torch.rand(2, 3, 4), 2)),
        ("cuda_query_topk_gather", (vis, qry, 4, True)),
        ("cuda_query_topk_gather_backward", (rnd(2, 4, 8, dtype=bf), torch.randn(2, 11), vis, qry, idx, True)),
    ]
    for name, args in calls:
        op = getattr(ops, name)
        real = op(*args)
        meta = op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        real_t = real if isinstance(real, tuple) else (real,)
        meta_t = meta if isinstance(meta, tuple) else (meta,)
        ok = len(real_t) == len(meta_t) and all(
            r.shape == m.shape and r.dtype == m.dtype and m.device.type == "meta" for r, m in zip(real_t, meta_t)
        )
        print(f"  {'ok  ' if ok else 'FAIL'} Meta kernel of {name}")
        if not ok:
            FAILS.append("meta " + name)


def check_glue(ref):
    """vxlp_ops._cuda's forward / backward wrappers (normally reached on CUDA tensors) on emulated kernels:
    same structure, dtypes and shapes as the reference backend's results, values within tolerance."""
    from vxlp_ops import _cuda
    from vxlp_ops import dispatch

    bf = torch.bfloat16
    q, k, v, go = (rnd(2, 9, 16, dtype=bf) for _ in range(4))
    x5 = rnd(1, 4, 3, 3, 8, dtype=bf)
    w5 = rnd(8, 8, 3, 3, 3, dtype=bf, scale=0.2)
    x4 = rnd(2, 3, 6, 8, dtype=bf)
    vis, qry = rnd(2, 11, 8, dtype=bf), rnd(2, 3, 8, dtype=bf)
    rk, rv = rnd(5, 16, dtype=bf), rnd(5, 16, dtype=bf)
    cases = {
        "frame_attention": ((q, k, v, None), (go, q, k, v, None)),
        "frame_attention_fwd": ((q, k, v, None), (go, q, k, v, *torch.ops.vxlp_ops.cuda_frame_attention_fwd(q, k, v, None), None)),
        "temporal_attention": ((q, k, v, rk, rv, True), (go, q, k, v, rk, rv, True)),
        "temporal_merge_conv3d": ((x5, w5, None, 2), (rnd(1, 2, 3, 3, 8, dtype=bf), x5, w5, 2)),
        "sgm_scores": ((x4, rnd(2, 8, dtype=bf), rnd(3, 8, dtype=bf)), None),
        "query_topk_gather": ((vis, qry, 4, True), None),
    }
    sg_args = cases["sgm_scores"][0]
    cases["sgm_scores"] = (sg_args, (torch.randn(2, 3, 6), *sg_args))
    qtg_idx = torch.ops.vxlp_ops.cuda_query_topk_gather(vis, qry, 4, True)[1]
    cases["query_topk_gather"] = (cases["query_topk_gather"][0], (rnd(2, 4, 8, dtype=bf), torch.randn(2, 11), vis, qry, qtg_idx, True))
    for op, (fargs, bargs) in cases.items():
        fwd, bwd, _ = _cuda._TABLE[op]
        impl = dispatch._IMPLS[op]["reference"]
        for what, mine, theirs in (("forward", fwd(*fargs), impl.forward(*fargs)), ("backward", bwd(*bargs), impl.backward(*bargs))):
            mine_t = mine if isinstance(mine, tuple) else (mine,)
            theirs_t = theirs if isinstance(theirs, tuple) else (theirs,)
            ok = type(mine) is type(theirs) and len(mine_t) == len(theirs_t)
            for a, b in zip(mine_t, theirs_t):
                ok = ok and a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                if a.is_floating_point():
                    ok = ok and rel(a, b) < 2e-2
                else:
                    ok = ok and bool(torch.equal(a, b))
            print(f"  {'ok  ' if ok else 'FAIL'} _cuda.py {op} {what}: structure, dtypes, values vs reference backend")
            if not ok:
                FAILS.append(f"glue {op} {what}")
    scores = torch.rand(2, 3, 20)
    gen = torch.Generator().manual_seed(3)
    mine = _cuda._mask_forward(scores, 0.5, 0.75, gen)
    gen = torch.Generator().manual_seed(3)
    theirs = dispatch._IMPLS["sgm_mask"]["reference"].forward(scores, 0.5, 0.75, gen)
    ok = mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    print(f"  {'ok  ' if ok else 'FAIL'} _cuda.py sgm_mask forward: identical to the reference backend")
    if not ok:
        FAILS.append("glue sgm_mask")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="frame_attention,temporal_attention,conv,conv_cute,sgm,qtg,glue,meta")
    ap.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "vxlp_cuda_emu"))
    a = ap.parse_args()
    try:  # the vxlp_ops this Python imports (installed, or on PYTHONPATH): its compiled extension has the plans
        import vxlp_ops  # noqa: F401  (defines the vxlp_ops library the kernels register into)
    except ImportError:  # a source checkout that is not installed
        sys.path.insert(0, REPO)
        import vxlp_ops  # noqa: F401
    from vxlp_ops import reference as ref

    build(a.build_dir)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # at::empty outputs start as NaN
    torch.manual_seed(0)
    table = {
        "frame_attention": check_frame_attention,
        "frame_attention_work": lambda ref: check_frame_attention_work(),
        "temporal_attention": check_temporal_attention,
        "conv": check_conv,
        "conv_cute": check_conv_cute,
        "sgm": check_sgm,
        "qtg": check_qtg,
        "glue": check_glue,
        "meta": check_meta,
    }
    for name in a.ops.split(","):
        t0 = time.time()
        print(f"[{name}]")
        table[name](ref)
        print(f"  ({time.time() - t0:.0f} s)")
    print("FAILED: " + ", ".join(FAILS) if FAILS else "all emulated checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
