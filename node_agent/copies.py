"""Private copies of the whole inputs a job's tasks receive in shared memory, kept for its later runs.

A whole input in the client's memfd (SpMM's x, matmul's b: ARCHITECTURE.md §7) was mapped anew by
every task, its page tables filled each time, and read by the kernel through 4 KiB pages: shared
memory gets no transparent huge pages where `shmem_enabled` is `never` (the usual default), while
NumPy puts its large arrays on them. SpMM gathers rows of x at random, so on the mapping nearly every
non-zero missed the TLB: W3's partitions ran about 20% slower on it than on a private copy. So the
first task of a job to name a shared whole input copies it once (256 MiB: about 35 ms), and the
job's later tasks on this agent use that copy without mapping anything.

A copy is keyed by the job and where the bytes lie (the memfd's name, the offset, dtype and shape):
the memfd is sealed, so those bytes cannot change, and the job id keeps one client's memfd names out
of other jobs. Copies are kept LRU under a budget (a quarter of the tensor cache's): those of jobs
that ended age out as new jobs come. An input larger than the budget is used where it lies.
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
        self._loading: dict[tuple, threading.Lock] = {}  # a key being copied: its other tasks wait for it
        self._lock = threading.Lock()

    @staticmethod
    def wants(item) -> bool:
        """Whether a TaskInput is a whole input to copy: in shared memory, by value, large enough."""
        return item.HasField("shared") and not item.by_reference and item.tensor.total_bytes >= MIN_BYTES

    @staticmethod
    def key(job_id: str, item) -> tuple:
        b, t = item.shared, item.tensor
        return job_id, b.host_id, b.name, b.offset, t.dtype, tuple(t.shape)

    def get(self, key: tuple, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The copy kept under `key`, else a copy of what `load()` maps (kept if it fits the budget;
        one larger than the budget is returned as `load()` gave it). Concurrent tasks of one job copy
        once: the others wait for the first."""
        with self._lock:
            if (array := self._hit(key)) is not None:
                return array
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            try:
                with self._lock:
                    if (array := self._hit(key)) is not None:
                        return array
                view = load()
                if view.nbytes > self.budget:
                    return view
                array = np.empty_like(view)  # NumPy asks for huge pages for large arrays (madvise)
                np.copyto(array, view)
                array.flags.writeable = False  # as the mapping was: kernels only read their inputs
                view = None  # the mapping goes now, not when the view's frame does
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
