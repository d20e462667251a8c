"""Render a vxlp_ops benchmark results file: a markdown table (stdout) and a speedup bar chart (PNG).

Usage::

    python benchmarks/report.py benchmarks/results/nvidia-h200.json            # table + nvidia-h200.png beside it
    python benchmarks/report.py results.json --png /tmp/chart.png             # chart elsewhere
    python benchmarks/report.py results.json --no-png                         # table only
    python benchmarks/report.py results.json --brief                          # skipped providers counted only
    python benchmarks/report.py nvidia-h200.json nvidia-h200-compile.json     # merge runs (later rows win)

The JSON is written by the suite (``pytest benchmarks --benchmark-only``; see ``results/README.md``). This
module needs only the standard library, plus matplotlib (Agg backend) for the chart; the suite's conftest
loads it to write ``<gpu-slug>.md`` and ``.png`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def with_speedups(rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` with ``speedup_vs_eager`` = eager median / this median for the same op/case/direction."""
    eager = {(r["op"], r["case"], r["direction"]): r["median_ms"] for r in rows if r["provider"] == "eager"}
    out = []
    for r in rows:
        r = dict(r)
        e = eager.get((r["op"], r["case"], r["direction"]))
        r["speedup_vs_eager"] = (e / r["median_ms"]) if e and r["median_ms"] > 0 else None
        out.append(r)
    return out


def merge(docs: list[dict]) -> dict:
    """One document from several runs on one machine (e.g. a second run of only the compile rows, written with
    ``VXLP_BENCH_TAG``): environment and ceilings of the first, rows of all (a later run's row replaces an
    earlier one of the same op/case/direction/provider), speedups recomputed across them."""
    if len(docs) == 1:
        return docs[0]
    rows: dict[tuple, dict] = {}
    skipped, failed = [], []
    for d in docs:
        for r in d.get("rows", []):
            rows[(r["op"], r["case"], r["direction"], r["provider"])] = r
    done = set(rows)
    for d in docs:
        skipped += [s for s in d.get("skipped", []) if (s["op"], s["case"], s["direction"], s["provider"]) not in done]
        failed += d.get("failed", [])
    out = dict(docs[0])
    out["rows"] = with_speedups(list(rows.values()))
    out["skipped"], out["failed"] = skipped, failed
    out["merged_from"] = [d.get("environment", {}).get("started") for d in docs]
    return out


def _fmt(v, spec: str, empty: str = "–") -> str:
    return empty if v is None else format(v, spec)


def _pct(r: dict) -> str:
    p = r.get("pct_of_ceiling")
    if p is None:
        return "–"
    return f"{p:.1f} ({'mm' if r.get('bound') == 'compute' else 'copy'})"


def header(doc: dict) -> list[str]:
    env, c = doc.get("environment", {}), doc.get("ceilings", {})
    mm, cp = c.get("matmul", {}), c.get("copy", {})
    lines = [
        f"**{env.get('gpu', '?')}** · torch {env.get('torch')} · CUDA {env.get('cuda')} · triton {env.get('triton')}"
        f" · vxlp_ops {env.get('vxlp_ops')} · commit `{str(env.get('commit', 'unknown'))[:12]}`"
        f" · sizes `{env.get('size')}` · {env.get('dtype')} · {env.get('timing', '')}",
        "",
        f"Ceilings measured in the same run: {mm.get('what', 'matmul')} **{_fmt(mm.get('tflops'), '.1f')} TFLOP/s**;"
        f" {cp.get('what', 'copy')} **{_fmt(cp.get('gbps'), '.0f')} GB/s**."
        " `% ceiling` is of the matmul rate (mm) for compute-bound cases, of the copy rate for memory-bound ones.",
    ]
    return lines


PROVIDER_ORDER = ("eager", "compile", "triton", "cuda", "auto", "compile_ops")


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Cases in order of first appearance; within a case eager, compile, triton, cuda, auto, then baselines."""
    first: dict[tuple, int] = {}
    for r in rows:
        first.setdefault((r["op"], r["case"], r["direction"]), len(first))

    def key(r):
        p = r["provider"]
        rank = PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else len(PROVIDER_ORDER)
        return (first[(r["op"], r["case"], r["direction"])], rank, p)

    return sorted(rows, key=key)


def _rate(v) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| op | case | dir | provider | median ms | TFLOP/s | GB/s | % ceiling | × eager |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted_rows(rows):
        sp = r.get("speedup_vs_eager")
        lines.append(
            f"| {r['op']} | {r['case']} | {r['direction']} | {r['provider']} | {r['median_ms']:.3f} |"
            f" {_rate(r.get('tflops'))} | {_rate(r.get('gbps'))} | {_pct(r)} |"
            f" {_fmt(sp, '.2f')} |"
        )
    return lines


def skipped(doc: dict, width: int = 220) -> list[str]:
    groups: dict[tuple[str, str], list[str]] = {}
    for s in doc.get("skipped", []):
        key = (s["provider"], s["reason"])
        label = f"{s['op']}/{s['direction']}"
        groups.setdefault(key, [])
        if label not in groups[key]:
            groups[key].append(label)
    if not groups:
        return []
    lines = ["", "Skipped:"]
    for (provider, reason), where in groups.items():
        reason = reason if len(reason) <= width else reason[: width - 1] + "…"
        lines.append(f"- `{provider}` ({', '.join(where)}): {reason}")
    return lines


def failed(doc: dict) -> list[str]:
    fs = doc.get("failed", [])
    if not fs:
        return []
    return ["", "Failed (no row written):"] + [f"- `{f['test']}` ({f.get('when')}): {' '.join(f['error'].split())}" for f in fs]


def markdown(doc: dict, brief: bool = False) -> str:
    """The whole markdown report: header, the table of rows, failed tests, the skipped providers (with
    ``brief``, only their number)."""
    tail = skipped(doc)
    if brief and tail:
        tail = ["", f"{len(doc.get('skipped', []))} provider/case pairs skipped (reasons in the .md / .json)."]
    return "\n".join(header(doc) + [""] + table(doc.get("rows", [])) + failed(doc) + tail)


def bar_chart(doc: dict, path: str) -> str:
    """Bars of speedup vs eager (log scale), one group per op/case/direction, one bar per provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc.get("rows", []) if r.get("speedup_vs_eager") and r["provider"] != "eager"]
    groups: list[tuple] = []
    for r in doc.get("rows", []):
        key = (r["op"], r["case"], r["direction"])
        if key not in groups:
            groups.append(key)
    providers = sorted(
        {r["provider"] for r in rows},
        key=lambda p: (PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER else len(PROVIDER_ORDER), p),
    )
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(groups) + 2), 5.0))
    width = 0.8 / max(1, len(providers))
    for j, p in enumerate(providers):
        xs, ys = [], []
        for i, g in enumerate(groups):
            for r in rows:
                if (r["op"], r["case"], r["direction"]) == g and r["provider"] == p:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(r["speedup_vs_eager"])
        if xs:  # bars grow from 1× (up: faster than eager, down: slower)
            ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width, label=p)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom" if y >= 1 else "top", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.grid(axis="y", which="both", linewidth=0.3, alpha=0.5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{o}\n{c}\n{d}" for o, c, d in groups], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speedup vs eager (× , log)")
    env = doc.get("environment", {})
    ax.set_title(f"vxlp_ops on {env.get('gpu', '?')} ({env.get('dtype')}, {env.get('size')} sizes)", fontsize=10)
    if providers:
        ax.legend(fontsize=8, ncol=min(len(providers), 6))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "results", nargs="+", help="results JSON(s) written by the suite (benchmarks/results/<gpu-slug>.json); "
        "several are merged (rows of later files win)"
    )
    ap.add_argument("--png", help="where to draw the chart (default: beside the JSON, <gpu-slug>.png)")
    ap.add_argument("--no-png", action="store_true", help="print the table only")
    ap.add_argument("--brief", action="store_true", help="count the skipped providers instead of listing them")
    a = ap.parse_args(argv)
    docs = []
    for path in a.results:
        with open(path) as f:
            docs.append(json.load(f))
    doc = merge(docs)
    print(markdown(doc, brief=a.brief))
    if not a.no_png:
        png = a.png or os.path.splitext(a.results[0])[0] + ".png"
        try:
            bar_chart(doc, png)
            print(f"\nchart: {png}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"\nno chart ({type(e).__name__}: {e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
