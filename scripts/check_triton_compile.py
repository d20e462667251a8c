"""Compile the Triton kernels of vxlp_ops for real GPU targets on a machine without a GPU, and report on them.

For each op × dtype × shape case, the op's host code (``vxlp_ops.triton.<op>.forward`` / ``backward``) runs on
small CPU tensors with every kernel launch intercepted (the launch configuration it would use on a GPU: block
sizes, constexprs, ``num_warps``); each intercepted kernel is then compiled with ``triton.compile`` for
``cuda:<arch>`` (no driver needed: Triton's own ptxas runs). Reported per kernel: the operand types of every
``mma`` / ``wgmma`` instruction in the PTX (bf16 inputs must reach the tensor cores as ``.bf16``, not ``.tf32``),
registers and spill bytes (``ptxas -v``), and shared memory.

Usage: python scripts/check_triton_compile.py [--arch 80] [--ops frame_attention,...] [--dtypes bf16,fp16,fp32]
       [--json FILE]
Must run without TRITON_INTERPRET=1 (the kernels must be decorated as compilable, not interpreted).
Used by tests/test_triton_compile.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("check_triton_compile: unset TRITON_INTERPRET (the kernels must be compilable)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import vxlp_ops  # noqa: E402,F401
from vxlp_ops.triton import _common as C  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
        torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


@dataclasses.dataclass
class Launch:
    name: str
    fn: JITFunction
    args: tuple
    kwargs: dict


@dataclasses.dataclass
class KernelReport:
    case: str
    kernel: str
    mma: list[str]  # distinct mma / wgmma operand-type suffixes found in the PTX, e.g. "f32.bf16.bf16.f32"
    regs: int
    spill_bytes: int
    shared: int
    num_warps: int

    def line(self) -> str:
        mma = ", ".join(self.mma) if self.mma else "no mma"
        return (f"{self.case:<40} {self.kernel:<16} warps {self.num_warps:<2} regs {self.regs:<4} "
                f"spill {self.spill_bytes:<6} smem {self.shared:<7} {mma}")


class _Recorder:
    def __init__(self, name, fn, sink):
        self.name, self.fn, self.sink = name, fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(Launch(self.name, self.fn, args, kwargs))

        return launch


def _launched_kernels(module) -> dict[str, JITFunction]:
    """The JIT functions of ``module`` that its host code launches (``name[grid](...)``)."""
    import inspect

    src = inspect.getsource(module)
    return {n: f for n, f in vars(module).items() if isinstance(f, JITFunction) and re.search(rf"\b{n}\[", src)}


def record(module, call) -> list[Launch]:
    """Run ``call()`` (host code of ``module``) with its kernel launches and the GPU queries intercepted."""
    sink: list[Launch] = []
    kernels = _launched_kernels(module)
    from vxlp_ops.triton import _shared as SH

    shared = _launched_kernels(SH)
    saved = {"on_gpu": C.on_gpu, "sm_count": C.sm_count}
    try:
        C.on_gpu = lambda t: True
        C.sm_count = lambda t: 132
        for n, f in kernels.items():
            setattr(module, n, _Recorder(n, f, sink))
        for n, f in shared.items():
            setattr(SH, n, _Recorder(n, f, sink))
        with torch.no_grad():
            call()
    finally:
        C.on_gpu, C.sm_count = saved["on_gpu"], saved["sm_count"]
        for n, f in kernels.items():
            setattr(module, n, f)
        for n, f in shared.items():
            setattr(SH, n, f)
    return sink


def _sig_of(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _SIG[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


def _divisible_by_16(param, value) -> bool:
    """The launch-time specialisation ``triton.jit`` applies (``BaseBackend.get_*_specialization``): a pointer
    whose address, or an int whose value, is a multiple of 16 is compiled as such (``tt.divisibility = 16``), which
    decides vector widths and whether loads can become ``cp.async`` copies (software pipelining). Without it the
    compiled code is not the code a GPU launch runs. (The specialisation of ints equal to 1 is not replicated.)"""
    if getattr(param, "do_not_specialize", False) or getattr(param, "do_not_specialize_on_alignment", False):
        return False
    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


def compile_launch(launch: Launch, arch: int):
    fn = launch.fn
    names = [p.name for p in fn.params]
    values = dict(zip(names, launch.args))
    options = {}
    for k, v in launch.kwargs.items():
        if k in ("num_warps", "num_stages"):
            options[k] = v
        else:
            values[k] = v
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = values[p.name]
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = v
        else:
            signature[p.name] = _sig_of(v)
            if _divisible_by_16(p, v):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options), options.get("num_warps", 4)


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    from triton.backends.nvidia import compiler as nvc

    ptxas = nvc.get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        res = subprocess.run([ptxas, "-v", f"--gpu-name={sm}", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    out = res.stdout + res.stderr
    regs = max([int(x) for x in re.findall(r"Used (\d+) registers", out)] or [-1])
    spills = sum(int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out))
    return regs, spills


def mma_types(ptx: str) -> list[str]:
    found = set()
    for m in re.finditer(r"\b(w?gmma\.mma_async[\w.]*|mma\.sync\.aligned[\w.]*)", ptx):
        ins = m.group(1)
        found.add(ins)
    out = set()
    for ins in found:
        # keep the element-type part: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 → f32.bf16.bf16.f32
        parts = ins.split(".")
        types = [p for p in parts if re.fullmatch(r"(f|bf|tf|s|u|e4m3|e5m2)\d*", p) and p not in ("row", "col")]
        out.add(("wgmma:" if ins.startswith("wgmma") else "mma:") + ".".join(types))
    return sorted(out)


def _cases(op: str, dtype: torch.dtype):
    """(case name, module, host call) for the shapes that select each configuration of ``op``."""
    import vxlp_ops.triton.frame_attention as FA
    import vxlp_ops.triton.temporal_attention as TA
    import vxlp_ops.triton.temporal_merge_conv3d as CV

    def t(*s):
        return torch.randn(*s).to(dtype)

    dn = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    if op == "frame_attention":
        for d in (64, 1152):
            q, k, v, go = t(2, 96, d), t(2, 96, d), t(2, 96, d), t(2, 96, d)
            o, lse = t(2, 96, d), torch.zeros(2, 96)
            yield f"frame_attention fwd D={d} {dn}", FA, lambda q=q, k=k, v=v: FA.forward(q, k, v)
            yield f"frame_attention fwd+lse D={d} {dn}", FA, lambda q=q, k=k, v=v: FA.forward_lse(q, k, v)
            yield (f"frame_attention bwd D={d} {dn}", FA,
                   lambda q=q, k=k, v=v, go=go, o=o, lse=lse: FA.backward_lse(go, q, k, v, o, lse))
    elif op == "temporal_attention":
        q = t(8, 4, 1152)
        rk = t(9, 1152)
        yield f"temporal_attention fwd T=4 {dn}", TA, lambda: TA.forward(q, q, q, rk, rk, True)
        yield f"temporal_attention bwd T=4 {dn}", TA, lambda: TA.backward(q, q, q, q, rk, rk, True)
    elif op == "temporal_merge_conv3d":
        x = t(1, 4, 3, 3, 64)
        w = t(64, 64, 3, 3, 3)
        go = t(1, 2, 3, 3, 64)
        yield f"temporal_merge_conv3d fwd {dn}", CV, lambda: CV.forward(x, w, None, 2)
        yield f"temporal_merge_conv3d bwd {dn}", CV, lambda: CV.backward(go, x, w, 2)
    elif op == "sgm":
        import vxlp_ops.triton.sgm as SG

        x, tq, sq = t(2, 4, 36, 1152), t(2, 1152), t(3, 1152)
        gs = torch.randn(2, 4, 36)
        sc = torch.rand(2, 4, 36)
        yield f"sgm_scores fwd {dn}", SG, lambda: SG.scores_forward(x, tq, sq)
        yield f"sgm_scores bwd {dn}", SG, lambda: SG.scores_backward(gs, x, tq, sq)
        yield f"sgm_mask {dn}", SG, lambda: SG.mask_forward(sc.to(dtype), 0.5, 0.75, None)
    elif op == "query_topk_gather":
        import vxlp_ops.triton.query_topk_gather as QT

        vis, qry = t(2, 64, 1152), t(2, 5, 1152)
        idx = torch.arange(8).expand(2, 8).contiguous()
        yield f"query_topk_gather fwd {dn}", QT, lambda: QT.forward(vis, qry, 8, True)
        yield f"query_topk_gather bwd {dn}", QT, lambda: QT.backward(t(2, 8, 1152), torch.randn(2, 64), vis, qry, idx, True)
    elif op == "dts_block":
        import vxlp_ops.triton.dts_block as DB

        # real width and group count (C = 1152, 32 groups of 36 channels), a small token grid
        c = 1152
        x = t(1, 4, 3, 3, c)
        nw, nb, pb = t(c), t(c), t(c)
        qw, qb, pw, rk = t(3 * c, c), t(3 * c), t(c, c), t(9, c)
        yield f"dts_block spatial {dn}", DB, lambda: DB.spatial_forward(x, nw, nb, qw, qb, pw, pb, 32, 1e-6)
        yield f"dts_block temporal {dn}", DB, lambda: DB.temporal_forward(x, nw, nb, qw, qb, rk, rk, pw, pb, 32,
                                                                          1e-6, True)
    else:
        raise ValueError(f"no compile cases for {op}")


def check(ops, dtypes, arch: int) -> list[KernelReport]:
    reports = []
    for op in ops:
        for dtype in dtypes:
            for case, module, call in _cases(op, dtype):
                for launch in record(module, call):
                    compiled, warps = compile_launch(launch, arch)
                    ptx = compiled.asm["ptx"]
                    regs, spills = _ptxas_usage(ptx, arch)
                    reports.append(KernelReport(case, launch.name, mma_types(ptx), regs, spills,
                                                int(compiled.metadata.shared), warps))
    return reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=80)
    ap.add_argument("--ops", default="frame_attention,temporal_attention,temporal_merge_conv3d")
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--json", help="also write the reports to this file (a list of objects)")
    a = ap.parse_args(argv)
    reports = check(a.ops.split(","), [DTYPES[d] for d in a.dtypes.split(",")], a.arch)
    for r in reports:
        print(r.line(), flush=True)
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in reports], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
