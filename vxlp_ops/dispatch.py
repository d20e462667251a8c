"""Backend dispatch for vxlp_ops: CUDA → Triton → reference, with reasons (in the style of xformers).

Each op has up to three backends. A backend is *registered* for an op by the module that implements it
(``vxlp_ops.reference``-based registration in each op module, ``vxlp_ops.triton``, ``vxlp_ops._cuda``) with a
``reasons(*args)`` function returning the list of reasons it cannot run those arguments (empty = can run).

Selection, at every call of an op:
- a forced backend (``VXLP_BACKEND=reference|triton|cuda`` read once at import, or :func:`set_backend` /
  :func:`use_backend`) is used if it can run the arguments, else :class:`NoBackendError` lists its reasons;
- otherwise the first of ``cuda, triton, reference`` that can run them. The reference backend runs anything
  valid, so an automatic choice never fails on valid input.

The dispatcher is generic: it knows no op by name. What an op needs beyond its backends (how its backward's
arguments map back to the forward arguments that backends are chosen on) is declared by the op's own
registration (:func:`vxlp_ops._register.register_op` → :func:`set_backward_forward_args`).

``python -m vxlp_ops.info`` prints the table of ops × backends with the reason each one is unavailable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable

PRIORITY = ("cuda", "triton", "reference")


class NoBackendError(RuntimeError):
    """No backend can run the given arguments; the message lists each backend's reasons."""


@dataclasses.dataclass
class Impl:
    """One backend's implementation of one op.

    ``forward(*args)`` and ``backward(*args)`` take the positional arguments of the op's schema (and of its
    ``*_backward`` schema); ``reasons(*args) -> list[str]`` says why these arguments are not supported.
    """

    forward: Callable
    backward: Callable | None = None
    reasons: Callable[..., list[str]] = lambda *args: []


_IMPLS: dict[str, dict[str, Impl]] = {}
_UNAVAILABLE: dict[str, str] = {}  # backend -> why it is absent on this machine (set by its loader)


def _parse_backend(value: str | None) -> str | None:
    if value is None or value.strip() == "" or value.strip().lower() == "auto":
        return None
    v = value.strip().lower()
    if v not in PRIORITY:
        raise ValueError(f"VXLP_BACKEND must be one of {', '.join(PRIORITY)} or auto, got {value!r}")
    return v


_FORCED: str | None = _parse_backend(os.environ.get("VXLP_BACKEND"))


def register(op: str, backend: str, forward: Callable, backward: Callable | None = None, reasons=None) -> None:
    """Register ``backend``'s implementation of ``op`` (see :class:`Impl`)."""
    if backend not in PRIORITY:
        raise ValueError(f"backend must be one of {PRIORITY}, got {backend!r}")
    _IMPLS.setdefault(op, {})[backend] = Impl(forward, backward, reasons or (lambda *a: []))


def mark_unavailable(backend: str, why: str) -> None:
    """Record why ``backend`` is absent on this machine (shown by ``vxlp_ops.info`` and in errors)."""
    _UNAVAILABLE[backend] = why


def backend_reasons(op: str, backend: str, args: tuple | None = None) -> list[str]:
    """Reasons ``backend`` cannot run ``op`` (on ``args`` if given); empty if it can."""
    impl = _IMPLS.get(op, {}).get(backend)
    if impl is None:
        why = _UNAVAILABLE.get(backend)
        return [why if why else f"no {backend} implementation of {op}"]
    if args is None:
        return []
    return list(impl.reasons(*args))


def set_backend(backend: str | None) -> None:
    """Force a backend for every op (``None`` or ``"auto"`` restores automatic choice)."""
    global _FORCED
    _FORCED = _parse_backend(backend)


def forced_backend() -> str | None:
    """The forced backend, or None for automatic choice."""
    return _FORCED


@contextlib.contextmanager
def use_backend(backend: str | None):
    """Context manager form of :func:`set_backend`."""
    global _FORCED
    old = _FORCED
    set_backend(backend)
    try:
        yield
    finally:
        _FORCED = old


def select(op: str, args: tuple) -> tuple[str, Impl]:
    """Pick the backend for ``op`` on ``args``; raises :class:`NoBackendError` listing every refusal."""
    candidates = (_FORCED,) if _FORCED is not None else PRIORITY
    refusals = []
    for name in candidates:
        reasons = backend_reasons(op, name, args)
        if not reasons:
            return name, _IMPLS[op][name]
        refusals.append(f"  {name}: " + "; ".join(reasons))
    head = f"vxlp_ops.{op}: no backend can run these arguments"
    if _FORCED is not None:
        head += f" (backend forced to {_FORCED!r} by VXLP_BACKEND or set_backend)"
    raise NoBackendError(head + "\n" + "\n".join(refusals))


def call_forward(op: str, args: tuple):
    """Run ``op``'s forward on the selected backend."""
    return select(op, args)[1].forward(*args)


def call_backward(op: str, args: tuple):
    """Run ``op``'s backward (``args`` in the ``{op}_backward`` schema order) on the selected backend.

    Backends are chosen on the forward arguments, which the op's own registration recovers from the backward
    arguments (:func:`set_backward_forward_args`); the dispatcher knows nothing about any particular op.
    """
    to_forward = _BACKWARD_FORWARD_ARGS.get(op)
    if to_forward is None:
        raise RuntimeError(
            f"vxlp_ops.{op}: the op's registration declared no backward_forward_args (vxlp_ops._register.register_op)"
        )
    fwd_args = tuple(to_forward(*args))
    candidates = (_FORCED,) if _FORCED is not None else PRIORITY
    for name in candidates:
        impl = _IMPLS.get(op, {}).get(name)
        if impl is not None and impl.backward is not None and not backend_reasons(op, name, fwd_args):
            return impl.backward(*args)
    return select(op, fwd_args)[1].backward(*args)


_BACKWARD_FORWARD_ARGS: dict[str, Callable[..., tuple]] = {}


def set_backward_forward_args(op: str, fn: Callable[..., tuple]) -> None:
    """Declare how ``op``'s backward arguments map to its forward arguments (the ones backends are chosen on).

    ``fn(*backward_args) -> forward_args``, both in schema order (``{op}_backward`` and ``op``). Each op module
    declares its own through :func:`vxlp_ops._register.register_op`.
    """
    _BACKWARD_FORWARD_ARGS[op] = fn
