"""pytest wiring of the benchmark suite: ceilings fixture, test order, results files, terminal summary.

Run: ``pytest benchmarks --benchmark-only`` (all rows), plain ``pytest benchmarks`` (the same, in CI).
Results go to ``benchmarks/results/<gpu-slug>.{json,md,png}`` (``VXLP_BENCH_OUT`` picks another folder); on
a machine without CUDA they are written only with ``--benchmark-only`` or ``VXLP_BENCH_OUT`` set, so a CI run
leaves the checkout clean. ``VXLP_BENCH_WRITE=0|1`` overrides either way. See ``_bench.py`` for the other knobs.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # (--import-mode=importlib does not add it)
    sys.path.insert(0, HERE)

import _bench as B  # noqa: E402


def pytest_configure(config):
    out = os.environ.get("VXLP_BENCH_OUT", "").strip()
    try:
        bench_only = bool(config.getoption("benchmark_only"))
    except (ValueError, AttributeError):  # pytest-benchmark not installed
        bench_only = False
    write = bool(out) or bench_only or B.CUDA
    flag = os.environ.get("VXLP_BENCH_WRITE", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        write = False
    elif flag in ("1", "true", "yes", "on"):
        write = True
    B.STORE.out_dir = (out or os.path.join(HERE, "results")) if write else None


@pytest.fixture(scope="session")
def ceilings():
    """Matmul and copy ceilings measured once in this session (see :func:`_bench.measure_ceilings`).

    On CPU the suite runs on ``VXLP_BENCH_CPU_THREADS`` threads (default 1: the small CPU cases are too small
    to scale, and OpenMP threads on a shared CI machine turn 3 ms into 300 ms); restored at the end.
    """
    threads = torch.get_num_threads()
    if not B.CUDA:
        torch.set_num_threads(int(os.environ.get("VXLP_BENCH_CPU_THREADS", "1")))
    if B.STORE.ceilings is None:
        B.STORE.env = B.environment()
        B.STORE.ceilings = B.measure_ceilings()
    yield B.STORE.ceilings
    torch.set_num_threads(threads)


def _order(item) -> tuple:
    """Cheap rows first, then torch.compile rows: per-op forward compiles, the whole-DTS compile, per-op
    fwd+bwd compiles, and last the DTS ``compile_ops`` (under a time budget the later ones may be skipped)."""
    cs = getattr(item, "callspec", None)
    provider = cs.params.get("provider", "") if cs else ""
    if provider not in ("compile", "compile_ops"):
        return (0,)
    if provider == "compile_ops":
        return (4,)
    if "test_bench_dts" in item.nodeid:
        return (2,)
    return (3,) if "fwd+bwd" in item.nodeid else (1,)


def pytest_collection_modifyitems(config, items):
    mine = [i for i, it in enumerate(items) if str(getattr(it, "path", getattr(it, "fspath", ""))).startswith(HERE)]
    ordered = sorted((items[i] for i in mine), key=_order)  # stable: file order kept within a class
    for slot, it in zip(mine, ordered):
        items[slot] = it


def pytest_runtest_logreport(report):
    """A failed benchmark (a wrong result, a crash) is listed in the results, without a row."""
    if report.failed and str(report.fspath).startswith(HERE):
        crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
        msg = crash.message if crash is not None else str(report.longrepr)[-500:]
        B.STORE.failed.append({"test": report.nodeid, "when": report.when, "error": msg[:1000]})
        if B.STORE.out_dir and B.STORE.rows:
            B.STORE.flush()


def pytest_sessionfinish(session, exitstatus):
    paths = B.STORE.flush(png=True)
    if paths:
        B.STORE.written = paths


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not B.STORE.rows:
        return
    tr = terminalreporter
    tr.section("vxlp_ops benchmarks")
    c = B.STORE.ceilings or {}
    env = B.STORE.env or {}
    tr.write_line(
        f"{env.get('gpu')}  size={B.SIZE} dtype={B.DTYPE_NAME}  commit={str(env.get('commit'))[:12]}  "
        f"ceilings: matmul {c.get('matmul', {}).get('tflops', 0):.1f} TFLOP/s, copy {c.get('copy', {}).get('gbps', 0):.0f} GB/s"
    )
    tr.write_line(f"{'op':<22}{'case':<14}{'dir':<8}{'provider':<12}{'ms':>10}{'%ceil':>8}{'x eager':>9}")
    for r in B.with_speedups(B.STORE.rows):
        pct = f"{r['pct_of_ceiling']:.1f}" if r.get("pct_of_ceiling") is not None else "-"
        sp = f"{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-"
        tr.write_line(
            f"{r['op']:<22}{r['case'][:13]:<14}{r['direction']:<8}{r['provider']:<12}{r['median_ms']:>10.3f}{pct:>8}{sp:>9}"
        )
    written = getattr(B.STORE, "written", None)
    if written:
        tr.write_line("results: " + ", ".join(written.values()))
