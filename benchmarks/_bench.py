"""Shared machinery of the vxlp_ops benchmark suite: sizes, timing, ceilings, providers, correctness, rows.

How a row is produced (one per op × case × direction × provider, see ``results/README.md``):

1. the case draws random inputs (never zeros) from a seeded generator, as many independent sets as it takes
   to exceed 3× the GPU's L2 (at most 256), so that repeated runs do not measure the cache (METHOD.md);
2. a non-eager provider is first run once on set 0 and checked against the eager reference on the same inputs
   (relative L2 < 2e-2 in 16-bit, < 1e-4 in float32; NaN/Inf fail): a wrong provider fails the test and
   writes no row;
3. :func:`measure` warms up, then times ``reps`` runs rotating over the sets with CUDA events (perf_counter on
   CPU) and keeps the median;
4. FLOP and minimal bytes (each input read once, each output written once) are counted by formulas in each
   test file; the row carries TFLOP/s, GB/s and the % of the ceiling measured in the same session (bf16
   matmul for compute-bound cases, device-to-device copy for memory-bound ones), and at writing time the
   speedup over the ``eager`` row of the same case.

Environment: ``VXLP_BENCH_SIZE=real|small`` (default real on CUDA, small on CPU), ``VXLP_BENCH_DTYPE=bf16|fp16|fp32``
(default bf16 on CUDA, fp32 on CPU), ``VXLP_BENCH_OUT`` (results folder), ``VXLP_BENCH_BUDGET_S`` /
``VXLP_BENCH_DEADLINE`` (time budget in seconds from session start / epoch deadline: providers that would not
fit are skipped, compile ones first), ``VXLP_BENCH_COMPILE=all|few|none`` (which ``compile`` cases run;
default all on CUDA, few on CPU), ``VXLP_BENCH_DTS_COMPILE_MODE`` (default ``max-autotune`` on CUDA).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import zlib
from typing import Any, Callable

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

try:  # the installed package, or the checkout this folder lives in
    import vxlp_ops  # noqa: F401
except ImportError:  # pragma: no cover - only when neither installed nor on the path
    sys.path.append(REPO)
    import vxlp_ops  # noqa: F401

from vxlp_ops import dispatch  # noqa: E402
from vxlp_ops import reference as ref  # noqa: E402

# --------------------------------------------------------------------------------------------- settings

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if CUDA else torch.device("cpu")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    v = os.environ.get(name, "").strip().lower() or default
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
    return v


SIZE = _env_choice("VXLP_BENCH_SIZE", ("real", "small"), "real" if CUDA else "small")
DTYPE_NAME = _env_choice("VXLP_BENCH_DTYPE", tuple(_DTYPES), "bf16" if CUDA else "fp32")
DTYPE = _DTYPES[DTYPE_NAME]
COMPILE_POLICY = _env_choice("VXLP_BENCH_COMPILE", ("all", "few", "none"), "all" if CUDA else "few")
DTS_COMPILE_MODE = os.environ.get("VXLP_BENCH_DTS_COMPILE_MODE", "max-autotune" if CUDA else "default")
# relative L2 error allowed against eager on the same inputs
TOL = 1e-4 if DTYPE == torch.float32 else 2e-2

START = time.time()
if os.environ.get("VXLP_BENCH_DEADLINE"):
    DEADLINE = float(os.environ["VXLP_BENCH_DEADLINE"])
elif os.environ.get("VXLP_BENCH_BUDGET_S"):
    DEADLINE = START + float(os.environ["VXLP_BENCH_BUDGET_S"])
else:
    DEADLINE = math.inf
# rough cost of one provider, used only against the deadline (seconds)
COST_S = {"compile": 60.0 if CUDA else 5.0, "dts_compile": 240.0 if CUDA else 15.0, "other": 10.0 if CUDA else 1.0}

# timing: warm-up runs, then reps chosen so the timed runs take about target_s (within [min, max])
if CUDA:
    WARMUP, MIN_REPS, MAX_REPS, TARGET_S = 5, 10, 200, 0.3
else:
    WARMUP, MIN_REPS, MAX_REPS, TARGET_S = 1, 5, 30, 0.05
PEDANTIC_ROUNDS = 3  # pytest-benchmark's own (wall-clock, synchronized) rounds, for its table only

L2_BYTES = 0
if CUDA:
    try:
        L2_BYTES = int(torch.cuda.get_device_properties(0).L2_cache_size)
    except Exception:  # noqa: BLE001
        L2_BYTES = 50 * 2**20
else:
    L2_BYTES = 32 * 2**20  # a typical last-level cache; small CPU cases rotate through a few sets
MAX_SETS = 256


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def gpu_name() -> str:
    if CUDA:
        return torch.cuda.get_device_name(0)
    return f"cpu: {platform.processor() or platform.machine()}"


def gpu_slug() -> str:
    if not CUDA:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", gpu_name().lower()).strip("-") or "gpu"


# --------------------------------------------------------------------------------------------- timing


def measure(step: Callable[[int], Any], n_sets: int = 1, warmup: int | None = None) -> dict:
    """Time ``step(i)`` (i = input set, rotated over ``n_sets``); returns median/min/max ms and reps.

    CUDA: one pair of events around every run, read after one final synchronize (device time, launch gaps
    between the two events included). CPU: ``time.perf_counter`` around every run.
    """
    warmup = WARMUP if warmup is None else warmup
    i = 0
    for _ in range(max(warmup, 1)):
        step(i % n_sets)
        i += 1
    sync()
    t0 = time.perf_counter()
    step(i % n_sets)
    i += 1
    sync()
    est = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(MAX_REPS, max(MIN_REPS, math.ceil(TARGET_S / est))))
    times = []
    if CUDA:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for r in range(reps):
            starts[r].record()
            step(i % n_sets)
            ends[r].record()
            i += 1
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(reps):
            t = time.perf_counter()
            step(i % n_sets)
            times.append((time.perf_counter() - t) * 1e3)
            i += 1
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "reps": reps,
    }


# --------------------------------------------------------------------------------------------- ceilings


def measure_ceilings() -> dict:
    """Matrix-product and copy ceilings of this device, measured now on random data.

    CUDA: bf16 8192³ matmul (2·8192³ FLOP), 2 GiB device-to-device copy (bytes read + written); median of 20
    timed runs after at least 3 warm-ups and 1 s of warm-up, CUDA events. CPU: fp32 1024³ matmul and a 256 MiB copy, median of 10.
    """
    g = torch.Generator(device=DEVICE).manual_seed(1234)
    if CUDA:
        n, mdtype, copy_bytes, reps, warm = 8192, torch.bfloat16, 2 * 2**30, 20, 3
    else:
        n, mdtype, copy_bytes, reps, warm = 1024, torch.float32, 256 * 2**20, 10, 2
    a = torch.randn(n, n, generator=g, device=DEVICE, dtype=mdtype)
    b = torch.randn(n, n, generator=g, device=DEVICE, dtype=mdtype)
    c = torch.empty(n, n, device=DEVICE, dtype=mdtype)

    def timed(fn):
        t_end = time.perf_counter() + (1.0 if CUDA else 0.0)  # GPU: >= 1 s of warm-up, so clocks ramp up
        k = 0
        while k < warm or time.perf_counter() < t_end:
            fn()
            k += 1
            if CUDA and k % 10 == 0:
                torch.cuda.synchronize()
        sync()
        ts = []
        for _ in range(reps):
            if CUDA:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                ts.append(s.elapsed_time(e))
            else:
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    mm_ms = timed(lambda: torch.matmul(a, b, out=c))
    del a, b, c
    elems = copy_bytes // 2
    src = torch.randn(elems, generator=g, device=DEVICE, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    cp_ms = timed(lambda: dst.copy_(src))
    del src, dst
    if CUDA:
        torch.cuda.empty_cache()
    return {
        "matmul": {
            "what": f"{'bf16' if mdtype == torch.bfloat16 else 'fp32'} matmul {n}x{n}x{n}, random data",
            "median_ms": mm_ms,
            "tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
        },
        "copy": {
            "what": f"device-to-device copy of {copy_bytes / 2**30:.2f} GiB (read + write counted)",
            "median_ms": cp_ms,
            "gbps": 2 * copy_bytes / (cp_ms * 1e-3) / 1e9,
        },
    }


# --------------------------------------------------------------------------------------------- environment


def _git_commit() -> str:
    if os.environ.get("VXLP_BENCH_COMMIT"):
        return os.environ["VXLP_BENCH_COMMIT"]
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def environment() -> dict:
    """GPU name, versions, commit and backend table, recorded with every results file."""
    from vxlp_ops import _ext

    env = {
        "gpu": gpu_name(),
        "slug": gpu_slug(),
        "size": SIZE,
        "dtype": DTYPE_NAME,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if CUDA else None,
        "triton": None,
        "vxlp_ops": getattr(vxlp_ops, "__version__", "?"),
        "extension": dict(_ext.BUILD_INFO) if _ext.EXTENSION_ERROR is None else f"unavailable: {_ext.EXTENSION_ERROR}",
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "timing": "CUDA events, median" if CUDA else "time.perf_counter, median",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(START)),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        env["triton"] = f"unavailable ({type(e).__name__})"
    if CUDA:
        p = torch.cuda.get_device_properties(0)
        env["sm_count"] = p.multi_processor_count
        env["capability"] = f"{p.major}.{p.minor}"
        env["memory_gib"] = round(p.total_memory / 2**30, 1)
        env["l2_mib"] = round(L2_BYTES / 2**20, 1)
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            drv = pynvml.nvmlSystemGetDriverVersion()
            env["driver"] = drv.decode() if isinstance(drv, bytes) else drv
            env["max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            env["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000
        except Exception as e:  # noqa: BLE001
            env["driver"] = f"unknown ({type(e).__name__})"
    try:
        from vxlp_ops.info import backend_table

        env["backends"] = {f"{op}/{b}": s for op, b, s in backend_table()}
    except Exception as e:  # noqa: BLE001
        env["backends"] = f"unavailable ({type(e).__name__}: {e})"
    return env


# --------------------------------------------------------------------------------------------- results store


class Store:
    """Rows and skips of this session; written (atomically, after every row) when ``out_dir`` is set."""

    def __init__(self):
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self.env: dict | None = None
        self.ceilings: dict | None = None
        self.out_dir: str | None = None

    def document(self) -> dict:
        return {
            "schema": "vxlp-bench/1",
            "environment": self.env or {},
            "ceilings": self.ceilings or {},
            "rows": with_speedups(self.rows),
            "skipped": self.skipped,
            "failed": self.failed,
        }

    def paths(self) -> dict:
        tag = os.environ.get("VXLP_BENCH_TAG", "").strip()
        slug = gpu_slug() + (f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', tag)}" if tag else "")
        return {ext: os.path.join(self.out_dir, f"{slug}.{ext}") for ext in ("json", "md", "png")}

    def flush(self, png: bool = False) -> dict | None:
        if not self.out_dir or not self.rows:
            return None
        os.makedirs(self.out_dir, exist_ok=True)
        paths = self.paths()
        doc = self.document()
        _atomic_write(paths["json"], json.dumps(doc, indent=1, default=str) + "\n")
        report = load_report()
        _atomic_write(paths["md"], report.markdown(doc) + "\n")
        if png:
            try:
                report.bar_chart(doc, paths["png"])
            except Exception as e:  # noqa: BLE001  (matplotlib missing or broken: the table is what matters)
                print(f"[vxlp-bench] no chart: {type(e).__name__}: {e}", file=sys.stderr)
                paths.pop("png")
        else:
            paths.pop("png")
        return paths


STORE = Store()


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_REPORT = None


def load_report():
    """``benchmarks/report.py`` as a module (loaded by path: the name ``report`` is too common to import)."""
    global _REPORT
    if _REPORT is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("vxlp_bench_report", os.path.join(HERE, "report.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _REPORT = mod
    return _REPORT


def with_speedups(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with ``speedup_vs_eager`` = eager median / this median for the same case."""
    return load_report().with_speedups(rows)


# --------------------------------------------------------------------------------------------- correctness


def rel_l2(out: torch.Tensor, expect: torch.Tensor) -> float:
    """‖out − expect‖ / ‖expect‖ in float64 (inf if out has NaN/Inf or a different shape)."""
    if out.shape != expect.shape:
        return math.inf
    a, b = out.detach().double(), expect.detach().double()
    if not torch.isfinite(a).all():
        return math.inf
    den = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(a - b).item()
    return num / den if den > 0 else num


def check_close(name: str, out: torch.Tensor, expect: torch.Tensor, tol: float = None) -> float:
    tol = TOL if tol is None else tol
    err = rel_l2(out, expect)
    assert err < tol, f"{name}: relative L2 error {err:.3e} against eager exceeds {tol:.0e} (wrong result)"
    return err


def compare_dicts(got: dict, expect: dict) -> float:
    """Default comparison: every tensor both results name, by relative L2. Returns the worst error."""
    common = [k for k in expect if k in got]
    assert common, f"nothing to compare: got {sorted(got)}, eager {sorted(expect)}"
    return max(check_close(k, got[k], expect[k]) for k in common)


# --------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Baseline:
    """A library baseline: ``fn(*prepare(inputs))``; ``collect(result, prepared)`` → dict for comparison."""

    fn: Callable
    prepare: Callable[[dict], dict] | None = None  # inputs dict → inputs dict (outside the timed region)
    args: Callable[[dict], tuple] | None = None  # inputs dict → positional args (default: the case's)
    collect: Callable | None = None  # (out, grads dict) → dict of tensors to compare with eager


@dataclasses.dataclass
class Case:
    """One benchmark case of one op (shapes fixed by :data:`SIZE`)."""

    op: str  # public op name (vxlp_ops.<op>, dispatch key) or "dts"
    name: str  # case label
    direction: str  # "fwd" or "fwd+bwd"
    make: Callable[[torch.Generator], dict]  # random inputs (and "grad_out" for fwd+bwd)
    args: Callable[[dict], tuple]  # inputs dict → positional args of the op
    eager: Callable  # reference implementation
    public: Callable | None  # the public op (run under use_backend)
    shapes: dict
    flop: float
    bytes: float
    bound: str  # "compute" | "memory"
    grad_inputs: tuple[str, ...] = ()  # names of the inputs differentiated in fwd+bwd
    baselines: dict[str, Baseline] = dataclasses.field(default_factory=dict)
    compare: Callable[[dict, dict, dict], float] | None = None  # (got, expect, inputs) → error (asserts)
    collect: Callable | None = None  # (out) → dict of tensors (default {"out": out})
    compile_mode: str | None = None  # torch.compile mode for the compile provider
    compile_on_cpu: bool = False  # with VXLP_BENCH_COMPILE=few, the CPU cases that still compile
    compile_cost: str = "compile"  # key of COST_S
    note: str = ""


def randn(gen, *shape, dtype=None, scale=1.0, requires_grad=False):
    t = torch.randn(*shape, generator=gen, device=DEVICE, dtype=torch.float32)
    if scale != 1.0:
        t.mul_(scale)
    t = t.to(DTYPE if dtype is None else dtype)
    return t.requires_grad_(requires_grad)


def nbytes(*tensors_or_specs) -> int:
    """Bytes of tensors, or of ``(numel, dtype)`` pairs."""
    total = 0
    for t in tensors_or_specs:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        else:
            n, dt = t
            total += int(n) * torch.empty((), dtype=dt).element_size()
    return total


def esize(dtype=None) -> int:
    return torch.empty((), dtype=DTYPE if dtype is None else dtype).element_size()


# --------------------------------------------------------------------------------------------- providers


def _skip(provider: str, case: Case, reason: str):
    STORE.skipped.append(
        {"op": case.op, "case": case.name, "direction": case.direction, "provider": provider, "reason": reason}
    )
    if STORE.out_dir and STORE.rows:
        STORE.flush()
    pytest.skip(f"{provider}: {reason}")


def _remaining() -> float:
    return DEADLINE - time.time()


def _backend_reasons(case: Case, provider: str, inputs: dict) -> list[str]:
    if provider == "triton":
        if not CUDA or inputs_device(inputs).type != "cuda":
            return ["the triton provider times compiled GPU kernels; on CPU tensors it would be the Triton interpreter"]
        if os.environ.get("TRITON_INTERPRET") == "1":
            return ["TRITON_INTERPRET=1: kernels would run in the Triton interpreter, not compiled"]
    if provider == "cuda" and not CUDA:
        reasons = dispatch.backend_reasons(case.op, "cuda") if case.op != "dts" else []
        return reasons or ["no CUDA device"]
    ops = DTS_OPS if case.op == "dts" else (case.op,)
    reasons = []
    for op in ops:
        args = None if case.op == "dts" else case.args(inputs)
        with vxlp_ops.use_backend(provider):
            rs = dispatch.backend_reasons(op, provider, args)
        reasons += [f"{op}: {r}" if case.op == "dts" else r for r in rs]
        if case.direction != "fwd" and not rs:
            impl = getattr(dispatch, "_IMPLS", {}).get(op, {}).get(provider)
            if impl is not None and getattr(impl, "backward", None) is None:
                reasons.append(f"{op}: the {provider} backend has no backward")
    return reasons


DTS_OPS = ("frame_attention", "temporal_attention", "temporal_merge_conv3d")


def inputs_device(inputs: dict) -> torch.device:
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return DEVICE


def _n_sets(set_bytes: int) -> int:
    if set_bytes <= 0:
        return 1
    return int(min(MAX_SETS, max(1, math.ceil(3 * L2_BYTES / set_bytes))))


def _set_bytes(inputs: dict) -> int:
    return sum(v.numel() * v.element_size() for v in inputs.values() if isinstance(v, torch.Tensor))


def _clone_result(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone_result(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone_result(v) for k, v in x.items()}
    return x


def run_case(benchmark, case: Case, provider: str, ceilings: dict) -> dict:
    """Check ``provider`` against eager on ``case``, time it, record and return the row (skips with a reason).

    Whatever happens, the inputs and outputs are released before returning (a failed test's traceback keeps
    its frames, and with them gigabytes of GPU tensors, alive).
    """
    held: list = []
    try:
        return _run_case(benchmark, case, provider, ceilings, held)
    finally:
        for c in held:
            c.clear()
        held.clear()
        if CUDA:
            gc.collect()
            torch.cuda.empty_cache()


def _run_case(benchmark, case: Case, provider: str, ceilings: dict, held: list) -> dict:
    if _remaining() < COST_S["other"]:
        _skip(provider, case, "time budget (VXLP_BENCH_BUDGET_S / VXLP_BENCH_DEADLINE) exhausted")
    if provider in ("compile", "compile_ops"):
        if COMPILE_POLICY == "none":
            _skip(provider, case, "VXLP_BENCH_COMPILE=none")
        if COMPILE_POLICY == "few" and not case.compile_on_cpu:
            _skip(
                provider,
                case,
                "torch.compile runs only a few cases on CPU to keep CI short (VXLP_BENCH_COMPILE=all runs every one)",
            )
        if _remaining() < COST_S[case.compile_cost]:
            _skip(provider, case, f"time budget: under {COST_S[case.compile_cost]:.0f} s left for a compile")
    baseline = case.baselines.get(provider)
    if provider not in ("eager", "compile", "triton", "cuda", "auto", "compile_ops") and baseline is None:
        raise ValueError(f"unknown provider {provider!r} for {case.op}")

    gen = torch.Generator(device=DEVICE).manual_seed(zlib.crc32(f"{case.op}/{case.name}".encode()))
    first = case.make(gen)
    n = _n_sets(_set_bytes(first))
    sets = [first] + [case.make(gen) for _ in range(n - 1)]
    held += [sets, *sets]

    # the callable and the context it runs in
    ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    prepare, args_of, collect_b = None, case.args, None
    if provider == "eager":
        fn = case.eager
    elif provider == "compile":
        torch._dynamo.reset()
        fn = torch.compile(case.eager, dynamic=False, mode=case.compile_mode)
    elif provider in ("triton", "cuda"):
        reasons = _backend_reasons(case, provider, first)
        if reasons:
            _skip(provider, case, "; ".join(reasons))
        fn = case.public
        ctx = lambda p=provider: vxlp_ops.use_backend(p)  # noqa: E731  (backward runs inside it too)
    elif provider in ("auto", "compile_ops"):
        fn = case.public
        if provider == "compile_ops":
            torch._dynamo.reset()
            fn = torch.compile(case.public, dynamic=False, mode=case.compile_mode)
    else:
        fn, prepare, collect_b = baseline.fn, baseline.prepare, baseline.collect
        args_of = baseline.args or case.args
    if prepare is not None:
        sets = [prepare(s) for s in sets]
        held += [sets, *sets]
    mode = case.compile_mode or ""
    if provider in ("compile", "compile_ops") and CUDA and "max-autotune" in mode and "no-cudagraphs" not in mode:
        compiled = fn

        def fn(*a):  # CUDA graphs: each call starts a new generation (outputs of the last may be reused)
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*a)

    bwd = case.direction != "fwd"
    collect = case.collect or (lambda out: {"out": out})

    # the inputs differentiated in fwd+bwd: the case's, or (a baseline with its own prepared inputs) every
    # prepared tensor that requires grad
    grad_names = list(case.grad_inputs)
    if bwd and prepare is not None:
        grad_names = [k for k, v in sets[0].items() if isinstance(v, torch.Tensor) and v.requires_grad]

    def step_on(inputs: dict):
        with ctx():
            if not bwd:
                with torch.no_grad():
                    return fn(*args_of(inputs))
            out = fn(*args_of(inputs))
            grads = torch.autograd.grad(out, [inputs[k] for k in grad_names], inputs["grad_out"])
            return out, grads

    def as_dict(result, names, collect_fn):
        if bwd:
            out, grads = result
            gd = {f"grad_{k}": g for k, g in zip(names, grads)}
        else:
            out, gd = result, {}
        if collect_fn is not None:
            return collect_fn(out, gd)
        d = collect(out)
        d.update(gd)
        return d

    # correctness against eager on set 0 (also the first, compiling, run of the provider)
    err = None
    if provider != "eager":
        try:
            got = as_dict(_clone_result(step_on(sets[0])), grad_names, collect_b)
            held.append(got)
        except dispatch.NoBackendError as e:
            _skip(provider, case, str(e).replace("\n", " "))
        sync()
        eager_in = first

        def eager_step():
            if not bwd:
                with torch.no_grad():
                    return case.eager(*case.args(eager_in))
            out = case.eager(*case.args(eager_in))
            return out, torch.autograd.grad(out, [eager_in[k] for k in case.grad_inputs], eager_in["grad_out"])

        expect = as_dict(eager_step(), list(case.grad_inputs), None)
        held.append(expect)
        err = (case.compare or (lambda g, e, i: compare_dicts(g, e)))(got, expect, eager_in)
        del got, expect

    stats = measure(lambda i: step_on(sets[i]), n)
    if benchmark is not None:

        def once():
            step_on(sets[0])
            sync()

        benchmark.pedantic(once, rounds=PEDANTIC_ROUNDS, iterations=1, warmup_rounds=0)

    sec = stats["median_ms"] * 1e-3
    tflops = case.flop / sec / 1e12 if case.flop else None
    gbps = case.bytes / sec / 1e9 if case.bytes else None
    if case.bound == "compute":
        pct = 100 * tflops / ceilings["matmul"]["tflops"] if tflops is not None else None
    else:
        pct = 100 * gbps / ceilings["copy"]["gbps"] if gbps is not None else None
    row = {
        "op": case.op,
        "case": case.name,
        "direction": case.direction,
        "provider": provider,
        "dtype": DTYPE_NAME,
        "shapes": case.shapes,
        "median_ms": stats["median_ms"],
        "min_ms": stats["min_ms"],
        "max_ms": stats["max_ms"],
        "reps": stats["reps"],
        "input_sets": n,
        "flop": case.flop,
        "bytes": case.bytes,
        "tflops": tflops,
        "gbps": gbps,
        "bound": case.bound,
        "pct_of_ceiling": pct,
        "rel_err_vs_eager": err,
    }
    if provider in ("compile", "compile_ops"):
        row["compile_mode"] = case.compile_mode or "default"
    if case.note:
        row["note"] = case.note
    STORE.rows.append(row)
    if benchmark is not None:
        benchmark.extra_info.update(
            {k: row[k] for k in ("median_ms", "tflops", "gbps", "pct_of_ceiling", "bound", "rel_err_vs_eager")}
        )
    if STORE.out_dir:
        STORE.flush()
    return row


def provider_params(*baselines: str) -> list[str]:
    return ["eager", "compile", "triton", "cuda", *baselines]


__all__ = [
    "CUDA",
    "DEVICE",
    "DTYPE",
    "SIZE",
    "Case",
    "Baseline",
    "run_case",
    "randn",
    "nbytes",
    "esize",
    "provider_params",
    "check_close",
    "rel_l2",
    "ref",
]
