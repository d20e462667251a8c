"""A deterministic, position-indexed, fault-tolerant sample stream for training (decoding in DataLoader workers).

The data stream is a sequence of *positions* 0, 1, 2, … ; position p is record ``perm_e[p mod n]`` of epoch
``e = p // n`` (``perm_e`` a permutation drawn from the run seed and e). Step s of a run with global batch
``GB = world · accum · B`` consumes positions ``[s·GB, (s+1)·GB)``, split into ``world · accum`` micro-batches of
B positions; micro-batch j goes to rank ``j // accum``. Everything random in a sample is drawn from the sample's
own generator (:func:`vxlp_model.train.data.sample_rng`), so a sample depends only on the seed and its position:
not on the rank, the worker or whether the run was resumed. The data position of a checkpoint is just its step.

A sample that cannot be built (missing or corrupt file, decode error, timeout, a malformed conversation) becomes
a :class:`BadSample`: the loop skips it, logs it and counts it. Two timeouts keep a stuck file from hanging a run:
``sample_timeout`` (seconds, a ``SIGALRM`` in the process that builds the sample: it interrupts blocking system calls
and Python code) and, with workers, ``loader_timeout``: if no sample arrives for that long (a worker stuck in C
code that ignores signals), the expected sample is recorded as bad and the loader restarts after it. A worker that
dies (a decoder crashing on a corrupt file) restarts the loader at the awaited sample with one worker building one
sample ahead; if the worker dies again while that sample is awaited, it is recorded as bad (``WorkerCrash``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from .data import Record, RecordTable


class SampleTimeout(TimeoutError):
    """Building one sample took longer than ``sample_timeout`` seconds."""


@dataclass
class BadSample:
    """A skipped sample: its stream ``position``, record ``index``, ``id``, ``media`` path and the ``reason``."""

    position: int
    index: int
    id: str
    media: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Item:
    """One element of the stream: a built ``sample`` (dict) or ``bad`` (:class:`BadSample`)."""

    position: int
    index: int
    sample: dict | None = None
    bad: BadSample | None = None


class EpochOrder:
    """Maps a stream position to a record index: epoch ``e = position // n`` is a permutation of ``range(n)`` drawn
    with ``torch.randperm`` from a generator seeded with ``(seed, e)`` (identity when ``shuffle`` is False)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 1:
            raise ValueError(f"the data holds no record (n = {n})")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self._epoch, self._perm = None, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.n)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._perm = torch.randperm(self.n, generator=g)
            self._epoch = epoch
        return int(self._perm[offset])


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`SampleTimeout` in this thread after ``seconds`` (main thread only, where ``SIGALRM`` exists;
    elsewhere no limit is applied)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _alarm(signum, frame):
        raise SampleTimeout(f"timeout: the sample took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class SampleDataset(torch.utils.data.Dataset):
    """Map-style dataset over stream positions: ``dataset[position] -> Item``.

    Args:
        table: the records; order: :class:`EpochOrder`.
        build: ``build(record, position) -> dict`` (a sample) — any exception makes the item bad.
        sample_timeout: seconds allowed per sample (None: no limit).
    """

    def __init__(self, table: RecordTable, order: EpochOrder, build: Callable[[Record, int], dict], sample_timeout: float | None):
        self.table, self.order, self.build, self.sample_timeout = table, order, build, sample_timeout

    def __len__(self) -> int:  # positions are unbounded; the sampler decides which are read
        return 2**62

    def __getitem__(self, position: int) -> Item:
        index = self.order.index(position)
        record = self.table[index]
        try:
            with time_limit(self.sample_timeout):
                sample = self.build(record, position)
            return Item(position, index, sample=sample)
        except Exception as e:  # noqa: BLE001 - every failure of one sample is a bad sample, counted and logged
            reason = f"{type(e).__name__}: {e}"
            return Item(position, index, bad=BadSample(position, index, record.id, record.media, reason[:500]))


def rank_positions(start_step: int, end_step: int, rank: int, world: int, accum: int, micro_batch: int) -> Iterator[int]:
    """Stream positions read by ``rank``, in order: per step its ``accum`` micro-batches j = rank·accum + a."""
    gb = world * accum * micro_batch
    for s in range(start_step, end_step):
        for a in range(accum):
            base = s * gb + (rank * accum + a) * micro_batch
            yield from range(base, base + micro_batch)


class _Positions(torch.utils.data.Sampler):
    def __init__(self, positions: list[int]):
        self.positions = positions

    def __iter__(self):
        return iter(self.positions)

    def __len__(self):
        return len(self.positions)


def _identity(x):
    return x


def _worker_init(worker_id: int) -> None:
    import random

    import numpy as np

    info = torch.utils.data.get_worker_info()
    seed = info.seed % (2**32)
    random.seed(seed)
    np.random.seed(seed)


class RobustLoader:
    """Iterates :class:`Item` s of ``dataset`` for ``positions`` in order, decoding in ``num_workers`` DataLoader
    workers (0: in this process). Never raises for a bad sample and never hangs: see the module docstring.

    Args:
        dataset: :class:`SampleDataset`; positions: the stream positions to read, in order.
        num_workers, prefetch_factor: DataLoader settings.
        loader_timeout: seconds to wait for the next sample from the workers before declaring it bad and
            restarting the workers after it (only with ``num_workers > 0``; None: wait forever).
        seed: seeds the DataLoader's own generator (the global torch RNG is never touched).
    """

    def __init__(self, dataset: SampleDataset, positions: list[int], *, num_workers: int = 2, prefetch_factor: int = 2,
                 loader_timeout: float | None = None, seed: int = 0):
        self.dataset, self.positions = dataset, list(positions)
        self.num_workers, self.prefetch_factor = int(num_workers), int(prefetch_factor)
        self.loader_timeout, self.seed = loader_timeout, int(seed)
        self.restarts = 0

    def _loader(self, positions: list[int], careful: bool = False):
        """``careful``: one worker, one sample ahead, so a worker that dies was building the sample awaited."""
        kwargs = {}
        workers = min(self.num_workers, 1) if careful else self.num_workers
        if workers > 0:
            kwargs = dict(prefetch_factor=1 if careful else self.prefetch_factor, timeout=float(self.loader_timeout or 0),
                          worker_init_fn=_worker_init)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=_Positions(positions), num_workers=workers,
            collate_fn=_identity, generator=torch.Generator().manual_seed(self.seed), **kwargs,
        )

    def _bad(self, p: int, reason: str) -> Item:
        index = self.dataset.order.index(p)
        rec = self.dataset.table[index]
        return Item(p, index, bad=BadSample(p, index, rec.id, rec.media, reason))

    def __iter__(self) -> Iterator[Item]:
        i = 0
        careful_until = -1  # after a worker died: one sample ahead up to here, to find the sample that kills it
        crashed_at = None
        while i < len(self.positions):
            it = iter(self._loader(self.positions[i:], careful=i <= careful_until))
            try:
                while True:
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                    except RuntimeError as e:
                        p = self.positions[i]
                        if "exited unexpectedly" in str(e) and self.num_workers > 0:
                            # a worker died (e.g. a decoder crash on a corrupt file): retry one sample ahead; a
                            # second death while this sample is awaited names it
                            self.restarts += 1
                            if crashed_at == i:
                                yield self._bad(p, f"WorkerCrash: the DataLoader worker died building this sample ({e})")
                                i += 1
                                crashed_at = None
                            else:
                                crashed_at = i
                                careful_until = i + self.num_workers * self.prefetch_factor
                            break
                        if "timed out" not in str(e):
                            raise
                        reason = f"LoaderTimeout: no sample from the DataLoader workers within {self.loader_timeout:g} s"
                        yield self._bad(p, reason)
                        i += 1
                        self.restarts += 1
                        break
                    yield item
                    i += 1
                    if i > careful_until >= 0 and i - 1 == careful_until:
                        break  # back to the full number of workers
            finally:
                del it
