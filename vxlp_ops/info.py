"""``python -m vxlp_ops.info``: every op, every backend, and why a backend is unavailable here."""

from __future__ import annotations

import os
import platform
import sys

import torch

from . import _ext, dispatch
from ._schemas import FUSED_OPS, PUBLIC_OPS

OPS = PUBLIC_OPS + FUSED_OPS  # the six ops of the contract, then the fused inference blocks


def backend_table() -> list[tuple[str, str, str]]:
    """Rows ``(op, backend, status)`` for every backend that may serve the op (the built-in ones, then the
    optional ones declaring it): status is ``"available"`` or the reason the backend cannot run the op; an
    available backend with a probe (xformers) adds its lines, e.g. its ``not_supported_reasons`` for the DTS's
    shapes on this machine."""
    rows = []
    for op in OPS:
        for backend in dispatch.backends_for(op):
            reasons = dispatch.backend_reasons(op, backend)
            status = "available" if not reasons else "; ".join(reasons)
            impl = dispatch._IMPLS.get(op, {}).get(backend)
            if not reasons and impl is not None and impl.probe is not None:
                try:
                    status += " (" + "; ".join(impl.probe()) + ")"
                except Exception as e:  # noqa: BLE001
                    status += f" (probe failed: {type(e).__name__}: {e})"
            rows.append((op, backend, status))
    return rows


def report() -> str:
    """The text printed by ``python -m vxlp_ops.info``."""
    import vxlp_ops

    lines = [
        f"vxlp_ops {vxlp_ops.__version__}  torch {torch.__version__}  python {platform.python_version()}",
        f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        "compiled extension: "
        + (f"loaded {_ext.BUILD_INFO}" if _ext.EXTENSION_ERROR is None else f"unavailable: {_ext.EXTENSION_ERROR}"),
        f"forced backend (VXLP_BACKEND): {dispatch.forced_backend() or 'none (automatic: cuda > triton > reference)'}",
    ]
    orders = {op: dispatch.priority(op) for op in OPS if dispatch.priority(op) != dispatch.PRIORITY}
    for op, order in orders.items():
        lines.append(f"configured order of {op}: {' > '.join(order)}")
    lines += [
        "",
    ]
    width = max(len(op) for op in OPS)
    for op, backend, status in backend_table():
        lines.append(f"{op:<{width}}  {backend:<9}  {status}")
    lines.append("")
    lines.append("Optional backends (xformers) are never chosen automatically unless an op's order is configured:")
    lines.append("vxlp_ops.dispatch.tune(op, args) measures and puts the fastest first, or set_priority / use_backend.")
    lines.append("")
    lines.append("'available' means the backend is installed for the op; each call still checks device, dtype and")
    lines.append("shape, and falls through to the next backend with a reason (reference runs every valid input).")
    return "\n".join(lines)


def main() -> int:
    text = report()
    try:
        print(text, flush=True)
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error of this report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot raise again
    return 0


if __name__ == "__main__":
    sys.exit(main())
