"""Loading of the compiled extension ``vxlp_ops._C``; importing vxlp_ops never fails because of it.

If the extension imports, its ``TORCH_LIBRARY(vxlp_ops, ...)`` block has defined the op schemas. If it does
not (not built, built against another torch, ``VXLP_DISABLE_EXTENSION=1``), the same schemas are defined
from :data:`vxlp_ops._schemas.SCHEMAS` and :data:`EXTENSION_ERROR` records why, for ``vxlp_ops.info``.
"""

from __future__ import annotations

import os

import torch

from ._schemas import SCHEMAS

EXTENSION_ERROR: str | None = None
BUILD_INFO: dict = {}
_C = None
_LIB = None


def _load() -> None:
    global EXTENSION_ERROR, BUILD_INFO, _C, _LIB
    if os.environ.get("VXLP_DISABLE_EXTENSION", "0").strip().lower() in ("1", "true", "yes", "on"):
        EXTENSION_ERROR = "disabled by VXLP_DISABLE_EXTENSION=1"
    else:
        try:
            from . import _C as ext  # noqa: PLC0415

            _C = ext
            BUILD_INFO = dict(ext.build_info())
        except Exception as e:  # ImportError, or an undefined-symbol OSError from a torch mismatch
            here = os.path.dirname(os.path.abspath(__file__))
            if not any(f.startswith("_C.") and f.endswith((".so", ".pyd")) for f in os.listdir(here)):
                EXTENSION_ERROR = (
                    f"vxlp_ops._C is not built in {here} (install with `pip install --no-build-isolation .`, "
                    "or `python setup.py build_ext --inplace` for a source checkout)"
                )
            else:
                EXTENSION_ERROR = f"vxlp_ops._C failed to import: {type(e).__name__}: {e}"
    if _C is None:
        # Define the schemas ourselves, unless they already exist in this process.
        try:
            torch.ops.vxlp_ops.frame_attention.default  # noqa: B018
        except (AttributeError, RuntimeError):
            _LIB = torch.library.Library("vxlp_ops", "DEF")
            for schema in SCHEMAS.values():
                _LIB.define(schema)
    # An extension built before an op was added lacks its schema: define the missing ones (the op then works
    # on every backend but the compiled one, which that build does not have either).
    missing = [name for name in SCHEMAS if not _defined(name)]
    if missing:
        lib = torch.library.Library("vxlp_ops", "FRAGMENT")
        for name in missing:
            lib.define(SCHEMAS[name])
        _FRAGMENTS.append(lib)


_FRAGMENTS: list = []  # keeps the fragment libraries (and their definitions) alive


def _defined(name: str) -> bool:
    try:
        getattr(torch.ops.vxlp_ops, name).default  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


_load()
