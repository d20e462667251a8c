"""Backend dispatch for vxlp_ops: CUDA → Triton → reference, with reasons (in the style of xformers).

Each op has up to three backends. A backend is *registered* for an op by the module that implements it
(``vxlp_ops.reference``-based registration in each op module, ``vxlp_ops.triton``, ``vxlp_ops._cuda``) with a
``reasons(*args)`` function returning the list of reasons it cannot run those arguments (empty = can run).

Selection, at every call of an op:
- a forced backend (``VXLP_BACKEND=reference|triton|cuda|xformers`` read once at import, or :func:`set_backend`
  / :func:`use_backend`) is used if it can run the arguments, else :class:`NoBackendError` lists its reasons;
- otherwise the first backend of the op's order (:func:`priority`) that can run them. The order is ``cuda,
  triton, reference`` unless configured per op: :func:`set_priority` / :func:`use_priority` by hand, or
  :func:`tune`, which measures the backends on given (CUDA) arguments and puts the fastest first. The reference
  backend runs anything valid and stays in every order, so an automatic choice never fails on valid input.

Optional backends (``xformers``: :mod:`vxlp_ops._xformers`) serve some ops when their package is installed; they
are never in the default order — only a configured order (measured with :func:`tune`, or set by hand) or a forced
backend selects them.

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

PRIORITY = ("cuda", "triton", "reference")  # the built-in backends, in the default automatic order
OPTIONAL_BACKENDS = ("xformers",)  # third-party backends, usable where installed, never chosen by default


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
    probe: Callable[[], list[str]] | None = None  # extra status lines for vxlp_ops.info (no arguments)


_IMPLS: dict[str, dict[str, Impl]] = {}
_UNAVAILABLE: dict[str, str] = {}  # backend -> why it is absent on this machine (set by its loader)
_OPTIONAL_OPS: dict[str, tuple[str, ...]] = {}  # optional backend -> the ops it can serve (set by its loader)
_ORDER: dict[str, tuple[str, ...]] = {}  # op -> configured automatic order (set_priority / tune)
_FOLLOWS: dict[str, str] = {}  # op -> the op whose configured order it uses (follow_priority)


def _parse_backend(value: str | None) -> str | None:
    if value is None or value.strip() == "" or value.strip().lower() == "auto":
        return None
    v = value.strip().lower()
    if v not in PRIORITY + OPTIONAL_BACKENDS:
        raise ValueError(
            f"VXLP_BACKEND must be one of {', '.join(PRIORITY + OPTIONAL_BACKENDS)} or auto, got {value!r}"
        )
    return v


_FORCED: str | None = _parse_backend(os.environ.get("VXLP_BACKEND"))


def register(
    op: str, backend: str, forward: Callable, backward: Callable | None = None, reasons=None, probe=None
) -> None:
    """Register ``backend``'s implementation of ``op`` (see :class:`Impl`)."""
    if backend not in PRIORITY + OPTIONAL_BACKENDS:
        raise ValueError(f"backend must be one of {PRIORITY + OPTIONAL_BACKENDS}, got {backend!r}")
    _IMPLS.setdefault(op, {})[backend] = Impl(forward, backward, reasons or (lambda *a: []), probe)


def declare_optional(backend: str, ops) -> None:
    """An optional backend's loader declares the ops it can serve (listed by ``vxlp_ops.info`` even when absent)."""
    if backend not in OPTIONAL_BACKENDS:
        raise ValueError(f"optional backend must be one of {OPTIONAL_BACKENDS}, got {backend!r}")
    _OPTIONAL_OPS[backend] = tuple(ops)


def backends_for(op: str) -> tuple[str, ...]:
    """Every backend that may serve ``op``: the built-in ones, then the optional ones declaring it."""
    return PRIORITY + tuple(b for b in OPTIONAL_BACKENDS if op in _OPTIONAL_OPS.get(b, ()))


def priority(op: str) -> tuple[str, ...]:
    """The order in which automatic dispatch tries ``op``'s backends (:func:`set_priority`, :func:`tune`).

    An op that follows another (:func:`follow_priority`) uses that op's order unless it has its own."""
    return _ORDER.get(op, _ORDER.get(_FOLLOWS.get(op, op), PRIORITY))


def follow_priority(op: str, of: str) -> None:
    """Make ``op`` use the automatic order configured for ``of`` (a paired form of one public op, such as
    ``frame_attention_fwd`` of ``frame_attention``, then picks the backend that op would pick)."""
    _FOLLOWS[op] = of


def has_impl(op: str, backend: str) -> bool:
    """Whether ``backend`` registered an implementation of ``op`` (whatever the arguments)."""
    return backend in _IMPLS.get(op, {})


def set_priority(op: str, order=None) -> None:
    """Set the automatic order of ``op``'s backends (``None``: back to ``cuda, triton, reference``).

    ``order`` lists backends of :func:`backends_for` ``(op)``; ``reference`` is appended if missing, so the
    automatic choice still runs every valid input.
    """
    if order is None:
        _ORDER.pop(op, None)
        return
    order = tuple(order)
    known = backends_for(op)
    bad = [b for b in order if b not in known]
    if bad or len(set(order)) != len(order):
        raise ValueError(f"set_priority({op!r}): order must list distinct backends of {known}, got {order}")
    if "reference" not in order:
        order += ("reference",)
    _ORDER[op] = order


@contextlib.contextmanager
def use_priority(op: str, order):
    """Context manager form of :func:`set_priority`."""
    old = _ORDER.get(op)
    set_priority(op, order)
    try:
        yield
    finally:
        set_priority(op, old)


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


CONV_FORWARD_PATHS = ("auto", "cute_sm90", "cute_sm80", "mma")
_CONV_FORWARD_PATH = "auto"


def set_conv_forward_path(path: str) -> None:
    """Pick the CUDA kernel of the ``temporal_merge_conv3d`` forward (the ``cuda`` backend, fp16 / bf16):
    ``"auto"`` (default: ``cute_sm90`` — wgmma + TMA, sm_90a —, else ``cute_sm80`` — CuTe SM80 MMA —, when the
    device, shape and tile count suit it, else ``"mma"``, the hand-written mma.sync implicit GEMM with split-K), or
    one of them forced. Forcing a path that cannot run on a call's arguments makes that call raise
    ``RuntimeError`` naming the reason. Read at every call; raises ``ValueError`` for an unknown name."""
    global _CONV_FORWARD_PATH
    if path not in CONV_FORWARD_PATHS:
        raise ValueError(f"path must be one of {', '.join(CONV_FORWARD_PATHS)}, got {path!r}")
    _CONV_FORWARD_PATH = path


def conv_forward_path() -> str:
    """The ``temporal_merge_conv3d`` CUDA forward path set by :func:`set_conv_forward_path` (default ``"auto"``)."""
    return _CONV_FORWARD_PATH


@contextlib.contextmanager
def use_conv_forward_path(path: str):
    """Context manager form of :func:`set_conv_forward_path`."""
    old = _CONV_FORWARD_PATH
    set_conv_forward_path(path)
    try:
        yield
    finally:
        set_conv_forward_path(old)


def select(op: str, args: tuple) -> tuple[str, Impl]:
    """Pick the backend for ``op`` on ``args``; raises :class:`NoBackendError` listing every refusal."""
    candidates = (_FORCED,) if _FORCED is not None else priority(op)
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
    candidates = (_FORCED,) if _FORCED is not None else priority(op)
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


def tune(op: str, args: tuple, *, backends=None, backward: bool = True, warmup: int = 3, repeats: int = 10,
         apply: bool = True) -> dict[str, float]:
    """Measure ``op``'s backends on ``args`` and (``apply``) make the fastest ones its first choices.

    Every backend of ``backends`` (default :func:`backends_for` ``(op)``) that can run ``args`` is timed with CUDA
    events: the public op forced to that backend, plus its backward (gradients of every output w.r.t. every
    floating-point tensor argument that requires grad) when ``backward``; ``repeats`` timed runs after ``warmup``.
    Returns ``{backend: median seconds per call}``, fastest first; with ``apply`` the op's order becomes those
    backends fastest first, then the rest in the default order (:func:`set_priority`).

    Forces each backend in turn with :func:`use_backend` (process-wide state): call it from one thread, outside
    ``torch.compile``d code, e.g. once at start-up with the shapes the model will run.

    Raises:
        ValueError: ``args`` has no CUDA tensor (the measurement is of GPU kernels).
    """
    import torch  # noqa: PLC0415  (dispatch itself is torch-free)

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or tensors[0].device.type != "cuda":
        raise ValueError(f"tune({op!r}): needs CUDA tensor arguments (it times GPU kernels)")
    fn = getattr(torch.ops.vxlp_ops, op)
    grads_wrt = [a for a in tensors if a.is_floating_point() and a.requires_grad] if backward else []
    times = {}
    for name in backends or backends_for(op):
        if backend_reasons(op, name, args):
            continue

        def run():
            with use_backend(name):
                out = fn(*args)
                if grads_wrt:
                    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o.requires_grad]
                    torch.autograd.grad(outs, grads_wrt, [torch.ones_like(o) for o in outs], allow_unused=True)

        for _ in range(warmup):
            run()
        samples = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        times[name] = sorted(samples)[len(samples) // 2]
    times = dict(sorted(times.items(), key=lambda kv: kv[1]))
    if apply and times:
        set_priority(op, tuple(times) + tuple(b for b in PRIORITY if b not in times))
    return times
