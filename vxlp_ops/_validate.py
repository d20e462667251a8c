"""Argument checks shared by every backend and by the fake (meta) kernels.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, size or value) with a
message that names the argument and states what was expected (OPS.md: "never a crash or a silent wrong
answer"). They run on fake tensors too, so ``torch.compile`` reports the same errors at trace time.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def tensor(name: str, t, ndim: int, dims: str, dtypes=FLOAT_DTYPES) -> None:
    """Check that ``t`` is a tensor of ``ndim`` dims (named ``dims``, e.g. ``"[B, S, D]"``) and an allowed dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {dims} ({ndim} dims), got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")


def same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, *, dtype: bool = True) -> None:
    """Check that ``t`` is on the device of ``ref`` (and has its dtype when ``dtype``)."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must be on one device")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")


def shape(name: str, t: torch.Tensor, expected: tuple, dims: str) -> None:
    """Check ``t.shape == expected`` (entries of ``None`` match anything)."""
    got = tuple(t.shape)
    if len(got) != len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must have shape {dims} = ({want}), got {got}")


def positive(name: str, t: torch.Tensor, dim_names: str) -> None:
    """Check that no dimension of ``t`` is zero (empty inputs have no defined result here)."""
    if t.numel() == 0:
        raise ValueError(f"{name} must be non-empty in every dim {dim_names}, got shape {tuple(t.shape)}")


def finite_number(name: str, x, *, low=None, high=None) -> float:
    """Check that ``x`` is a finite real number in ``[low, high]``; returns it as float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if low is not None and x < low:
        raise ValueError(f"{name} must be >= {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name} must be <= {high}, got {x}")
    return x


def integer(name: str, x, *, low=None, high=None) -> int:
    """Check that ``x`` is an int in ``[low, high]``."""
    if isinstance(x, bool) or not isinstance(x, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if low is not None and x < low:
        raise ValueError(f"{name} must be >= {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name} must be <= {high}, got {x}")
    return x
