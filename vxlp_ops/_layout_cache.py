"""A small cache of re-laid weights: a kernel that needs a weight in another layout (the 27·C² conv weight as
[Cout, 27·Cin] rows, say) lays it out once per weight *state* instead of on every call.

An entry belongs to one weight tensor object and one layout ``kind``; it is reused while the weight is the same
object with the same ``(data_ptr, _version, dtype, device, shape, stride)``. ``_version`` is torch's in-place
counter, bumped by every in-place op on the tensor or a view of it (``weight.add_``, ``copy_``, optimizer
steps under ``no_grad``), so a training step invalidates the entry and the next call lays the new values out.
Not seen: writes that bypass the version counter (through ``weight.data``, ``.numpy()`` or a DLPack view); after
such a write call :meth:`LayoutCache.clear` (``vxlp_ops.temporal_merge_conv3d.clear_weight_cache()``).

Safety:
- autograd: layouts are computed from ``weight.detach()`` under ``torch.no_grad()``, so an entry holds no graph;
  the weight itself is held only weakly, and its entries are dropped when it is freed;
- ``torch.compile``: the cache is used inside the ops' real kernels (opaque custom ops), never while tracing;
  tensors without a version counter (inference-mode tensors), tensor subclasses (fake / functional tensors)
  and calls during CUDA-graph capture bypass it (the layout is computed, not stored);
- bounded: at most ``maxsize`` entries (least recently used evicted), one per (weight, kind); thread-safe.
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Callable

import torch


class LayoutCache:
    """LRU cache of ``fn(weight)`` per (weight object, kind), valid while the weight's state is unchanged."""

    def __init__(self, maxsize: int = 8):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._entries: collections.OrderedDict = collections.OrderedDict()  # (id(weight), kind) -> _Entry
        self._lock = threading.Lock()

    def get(self, weight: torch.Tensor, kind: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(weight)`` (computed on a detached weight, without grad), from the cache when still valid."""
        state = _state(weight)
        if state is None:
            return _layout(weight, fn)
        key = (id(weight), kind)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref() is weight and entry.state == state:
                self._entries.move_to_end(key)
                return entry.value
        value = _layout(weight, fn)
        with self._lock:
            ref = weakref.ref(weight, self._forget(key))
            self._entries[key] = _Entry(ref, state, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every entry (after writing a weight in a way its version counter does not see)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _forget(self, key):
        me = weakref.ref(self)

        def callback(ref):
            cache = me()
            if cache is None:
                return
            with cache._lock:
                entry = cache._entries.get(key)
                if entry is not None and entry.ref is ref:
                    del cache._entries[key]

        return callback


class _Entry:
    __slots__ = ("ref", "state", "value")

    def __init__(self, ref, state, value):
        self.ref, self.state, self.value = ref, state, value


def _state(weight: torch.Tensor):
    """What an entry is valid for, or None when ``weight`` must not be cached."""
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.device.type == "meta":
        return None  # fake / functional / other subclasses (tracing), meta tensors
    try:
        version = weight._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None
    if weight.is_cuda and torch.cuda.is_current_stream_capturing():
        return None  # a layout allocated during capture would live in the graph's private pool
    return (weight.data_ptr(), version, weight.dtype, weight.device, tuple(weight.shape), tuple(weight.stride()))


def _layout(weight: torch.Tensor, fn) -> torch.Tensor:
    with torch.no_grad():
        return fn(weight.detach())


# ------------------------------------------------------------------------------ temporal_merge_conv3d weights
def _rows(w: torch.Tensor) -> torch.Tensor:  # [Cout, 27·Cin], k = (kt, kh, kw, ci): the CUDA forward's B
    return w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1).contiguous()


def _cols(w: torch.Tensor) -> torch.Tensor:  # [Cin, 27·Cout], (kt, kh, kw, co): the CUDA input gradient's B
    return w.permute(1, 2, 3, 4, 0).reshape(w.shape[1], -1).contiguous()


def _taps_in_out(w: torch.Tensor) -> torch.Tensor:  # [27, Cin, Cout]: the Triton forward's
    return w.permute(2, 3, 4, 1, 0).reshape(27, w.shape[1], w.shape[0]).contiguous()


def _taps_out_in(w: torch.Tensor) -> torch.Tensor:  # [27, Cout, Cin]: the Triton input gradient's
    return w.permute(2, 3, 4, 0, 1).reshape(27, w.shape[0], w.shape[1]).contiguous()


CONV_LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "rows": _rows,
    "cols": _cols,
    "taps_in_out": _taps_in_out,
    "taps_out_in": _taps_out_in,
}
# Two DTS merge convs × (forward, backward) layouts, with room to spare; 1152² · 27 bf16 = 72 MB per entry.
CONV_WEIGHTS = LayoutCache(maxsize=8)


def conv_weight(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """``weight [Cout, Cin, 3, 3, 3]`` in layout ``kind`` (a key of :data:`CONV_LAYOUTS`), laid out once per
    weight state (:class:`LayoutCache`)."""
    return CONV_WEIGHTS.get(weight, kind, CONV_LAYOUTS[kind])
