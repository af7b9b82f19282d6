"""Private copies of the whole inputs a job's tasks receive in shared memory, kept for its later runs.

A whole input in the client's memfd (SpMM's x, matmul's b: ARCHITECTURE.md §7) was mapped anew by
every task, its page tables filled each time (40-50 ms for W3's 256 MiB x), and read by the kernel
through 4 KiB pages: shared memory gets no transparent huge pages where `shmem_enabled` is `never`
(the usual default), while NumPy puts its large arrays on them. SpMM gathers rows of x at random, so
on the mapping nearly every non-zero missed the TLB: W3's partitions ran about 20% slower on it than
on a private copy. So the first task of a job to name a shared whole input reads it once into this
agent's memory (preadv, no mapping: about 50 ms for 256 MiB), and the job's later tasks here use
that copy.

A copy is keyed by the job and where the bytes lie (the memfd's name, the offset, dtype and shape):
the memfd is sealed, so those bytes cannot change, and the job id keeps one client's memfd names out
of other jobs. Copies are kept LRU under a budget (a quarter of the tensor cache's): those of jobs
that ended age out as new jobs come. An input larger than the budget is mapped where it lies.
"""
from __future__ import annotations

import collections
import threading
from typing import Callable

import numpy as np

MIN_BYTES = 1 << 20  # smaller whole inputs cost nothing to map again: not worth a copy


class WholeCopies:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.bytes = 0
        self.hits = self.copies = 0
        self._items: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}  # a key being read: its other tasks wait for it
        self._lock = threading.Lock()

    @staticmethod
    def wants(item) -> bool:
        """Whether a TaskInput is a whole input to copy: in shared memory, by value, large enough."""
        return item.HasField("shared") and not item.by_reference and item.tensor.total_bytes >= MIN_BYTES

    @staticmethod
    def key(job_id: str, item) -> tuple:
        b, t = item.shared, item.tensor
        return job_id, b.host_id, b.name, b.offset, t.dtype, tuple(t.shape)

    def get(self, key: tuple, nbytes: int, read: Callable[[], np.ndarray]) -> np.ndarray | None:
        """The copy kept under `key`, else `read()` (a private copy of the input), kept; None if
        `nbytes` is over the budget (the caller maps the input instead). Concurrent tasks of one job
        read it once: the others wait for the first."""
        if nbytes > self.budget:
            return None
        with self._lock:
            if (array := self._hit(key)) is not None:
                return array
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            try:
                with self._lock:
                    if (array := self._hit(key)) is not None:
                        return array
                array = read()
                array.flags.writeable = False  # as the mapping was: kernels only read their inputs
                with self._lock:
                    self._items[key] = array
                    self.bytes += array.nbytes
                    self.copies += 1
                    while self.bytes > self.budget:
                        _, evicted = self._items.popitem(last=False)
                        self.bytes -= evicted.nbytes
                return array
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def _hit(self, key: tuple) -> np.ndarray | None:
        array = self._items.get(key)
        if array is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return array

    def __len__(self) -> int:
        return len(self._items)
