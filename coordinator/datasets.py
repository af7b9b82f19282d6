"""Datasets: arrays loaded once, kept by the coordinator as `.npy` files and resident on agents.

The coordinator's copy (rows already in partition order, memory-mapped) is the source of truth:
an agent that evicted or lost a partition gets it again from there, so no job fails because a
cache dropped something. `placement` says where each partition is believed to be resident.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backends.errors import AlreadyExists, InvalidInput, NotFound
from backends.ops import TensorMeta

NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass
class Dataset:
    name: str
    generation: int
    array: np.ndarray  # read-only memory map, rows in partition order
    row_splits: np.ndarray
    created_at: float = field(default_factory=time.time)
    placement: dict[int, str] = field(default_factory=dict)  # partition -> agent id

    @property
    def meta(self) -> TensorMeta:
        return TensorMeta(self.array.dtype, self.array.shape)

    @property
    def partitions(self) -> int:
        return len(self.row_splits) - 1

    @property
    def prefix(self) -> str:
        return f"ds:{self.name}:{self.generation}:"

    def key(self, partition: int) -> str:
        """The agents' cache key of one partition."""
        return f"{self.prefix}{partition}"

    def rows(self, partition: int) -> np.ndarray:
        return self.array[self.row_splits[partition]:self.row_splits[partition + 1]]


class DatasetStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._datasets: dict[str, Dataset] = {}
        self._generation = 0
        self._lock = threading.Lock()

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.match(name):
            raise InvalidInput(f"dataset name {name!r} must be 1 to 128 letters, digits, '.', '_' or '-'")

    def check_new(self, name: str, replace: bool) -> None:
        self.check_name(name)
        with self._lock:
            if name in self._datasets and not replace:
                raise AlreadyExists(f"dataset {name!r} exists; drop it first or put it with replace=True")

    def create(self, name: str, ordered: np.ndarray, row_splits: np.ndarray, replace: bool) -> tuple[Dataset, Dataset | None]:
        """Write the coordinator's copy and register it; returns it and the dataset it replaced."""
        self.check_new(name, replace)
        with self._lock:
            self._generation += 1
            generation = self._generation
        path = self.directory / f"{name}.{generation}.npy"
        np.save(path, ordered)
        dataset = Dataset(name, generation, np.load(path, mmap_mode="r"), row_splits)
        with self._lock:
            old = self._datasets.get(name)
            self._datasets[name] = dataset
        return dataset, old

    def get(self, name: str) -> Dataset:
        with self._lock:
            dataset = self._datasets.get(name)
        if dataset is None:
            raise NotFound(f"no dataset named {name!r}; load it first with client.put({name!r}, array)")
        return dataset

    def drop(self, name: str) -> Dataset:
        with self._lock:
            dataset = self._datasets.pop(name, None)
        if dataset is None:
            raise NotFound(f"no dataset named {name!r}")
        self.remove_file(dataset)
        return dataset

    def remove_file(self, dataset: Dataset) -> None:
        # Jobs still reading keep their memory map: unlinking does not disturb them.
        (self.directory / f"{dataset.name}.{dataset.generation}.npy").unlink(missing_ok=True)

    def all(self) -> list[Dataset]:
        with self._lock:
            return list(self._datasets.values())
