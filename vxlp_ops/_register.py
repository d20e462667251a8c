"""Registration of one vxlp_ops op with torch: dispatching kernels (CPU, CUDA), fake kernels, autograd."""

from __future__ import annotations

from typing import Callable

import torch

from . import _ext  # noqa: F401  (defines the schemas)
from . import dispatch


def register_op(
    name: str,
    check: Callable,
    fake: Callable,
    *,
    backward_fake: Callable | None = None,
    setup_context: Callable | None = None,
    backward: Callable | None = None,
    backward_forward_args: Callable | None = None,
    backward_check: Callable | None = None,
    autograd_kernel: Callable | None = None,
) -> None:
    """Register the CPU/CUDA kernels (dispatching over backends), the fake kernels and the autograd formula.

    ``check(*args)`` validates the forward arguments (raises TypeError/ValueError naming the argument) and runs
    before every backend and in the fake kernel. ``backward_fake`` is the fake kernel of ``{name}_backward``;
    an op with a backward also gives ``backward_forward_args(*backward_args) -> forward_args`` (schema order
    both), which the dispatcher uses to choose the backward's backend on the forward arguments.
    ``backward_check(*backward_args)``, if given, validates the backward's own extra arguments (real and fake).

    ``autograd_kernel(keyset, *args)`` replaces the formula of ``backward`` / ``setup_context``: a kernel for the
    Autograd key (``with_keyset``), for an op whose gradient runs through a paired op (``frame_attention``
    through ``frame_attention_fwd``, which also returns what the backward needs).
    """
    if backward_fake is not None and backward_forward_args is None:
        raise TypeError(f"register_op({name!r}): an op with a backward must give backward_forward_args")
    qual = f"vxlp_ops::{name}"
    fill = _default_filler(name)
    fill_backward = _default_filler(f"{name}_backward") if backward_fake is not None else None

    def kernel(*args, **kwargs):
        args = fill(args, kwargs)
        check(*args)
        return _contiguous(dispatch.call_forward(name, args))

    def fake_kernel(*args, **kwargs):
        args = fill(args, kwargs)
        check(*args)
        return fake(*args)

    torch.library.impl(qual, ("CPU", "CUDA"), kernel)
    torch.library.register_fake(qual)(fake_kernel)
    if backward_fake is not None:

        def backward_kernel(*args, **kwargs):
            args = fill_backward(args, kwargs)
            if backward_check is not None:
                backward_check(*args)
            return _contiguous(dispatch.call_backward(name, args))

        def backward_fake_kernel(*args, **kwargs):
            args = fill_backward(args, kwargs)
            if backward_check is not None:
                backward_check(*args)
            return backward_fake(*args)

        dispatch.set_backward_forward_args(name, backward_forward_args)
        torch.library.impl(f"{qual}_backward", ("CPU", "CUDA"), backward_kernel)
        torch.library.register_fake(f"{qual}_backward")(backward_fake_kernel)
    if autograd_kernel is not None:
        if backward is not None:
            raise TypeError(f"register_op({name!r}): give backward/setup_context or autograd_kernel, not both")
        _AUTOGRAD_LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    if backward is not None:
        torch.library.register_autograd(qual, backward, setup_context=setup_context)


_AUTOGRAD_LIB = torch.library.Library("vxlp_ops", "IMPL")  # holds the custom Autograd kernels (autograd_kernel)


def _default_filler(name: str):
    """Returns ``fill(args, kwargs) -> tuple`` giving every schema argument positionally.

    Python kernels receive trailing arguments that equal their schema default omitted; backends always get the
    full positional list.
    """
    schema = getattr(torch.ops.vxlp_ops, name).default._schema
    params = [(a.name, a.default_value if a.has_default_value() else None) for a in schema.arguments]

    def fill(args: tuple, kwargs: dict) -> tuple:
        out = list(args)
        for pname, default in params[len(args) :]:
            out.append(kwargs.get(pname, default))
        return tuple(out)

    return fill


def _contiguous(result):
    """Backends may return strided views; the fake kernels promise contiguous outputs, so make them so."""
    if isinstance(result, torch.Tensor):
        return result.contiguous()
    return tuple(r.contiguous() for r in result)
