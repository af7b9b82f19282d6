"""The agent's tensor cache: inputs kept between tasks (dataset partitions, weights), LRU under a budget."""
from __future__ import annotations

import collections
import threading

import numpy as np


class TensorCache:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        # Prefixes dropped (a dropped dataset): a task still running on it sends its partitions with
        # their keys, and those must not be kept again. Placing keys under one (CacheTensors: a new
        # coordinator reusing a name and generation) lifts it.
        self._dropped: set[str] = set()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            array = self._items.get(key)
            if array is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return array

    def put(self, key: str, array: np.ndarray, placed: bool = False) -> bool:
        """Keep `array` under `key`, evicting the least recently used; one larger than the budget, or
        under a dropped prefix (unless `placed` there on purpose), is not kept."""
        with self._lock:
            dropped = [p for p in self._dropped if key.startswith(p)]
            if dropped and not placed:
                return False
            self._dropped.difference_update(dropped)
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            if array.nbytes > self.budget:
                return False
            self._items[key] = array
            self.bytes += array.nbytes
            while self.bytes > self.budget:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes
                self.evictions += 1
            return key in self._items

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [k for k in self._items if k.startswith(prefix)]

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            self._dropped.add(prefix)
            for key in [k for k in self._items if k.startswith(prefix)]:
                self.bytes -= self._items.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._items)
