"""Datasets: arrays loaded once, kept by the coordinator as `.npy` files and resident on agents.

The coordinator's copy (rows already in partition order, memory-mapped) is the source of truth:
an agent that evicted or lost a partition gets it again from there, so no job fails because a
cache dropped something. `placement` says where each partition is believed to be resident.

The copy is written to disk in the background: until the file is written (`Dataset.saved`) the
received arrays themselves serve, so a put waits for the network and the agents, not for the disk
(writing 1 GiB took 5 s on the benchmark machine, where placing it took under 2). A durable put
(DatasetSpec.durable) waits for the copy as well (`DatasetStore.wait_saved`): once it returns, the
dataset survives a crash of the coordinator and of every agent.

The copy survives a crash whole or not at all: each part goes to a temporary file in the same
folder, is flushed to the disk and renamed into place, and a small manifest written the same way
last is what makes the dataset exist (`DatasetStore.catalog()` reads the manifests back when a
coordinator starts on the folder). A replaced version's files go only once its successor's manifest
is in place, so a crash during a put leaves the old dataset, or none, never half of one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton.contract import dataset_key, dataset_prefix
from lepton.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidInput, NotFound, ResourceExhausted
from lepton.logs import event
from lepton.backends.ops.sparse import take_csr

log = logging.getLogger("lepton.coordinator.datasets")
NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


CSR_PARTS = ("indptr", "indices", "data")


@dataclass
class Dataset:
    """A dense array ({"x": array}) or a CSR matrix ({"indptr", "indices", "data"} and `cols`)."""

    name: str
    generation: int  # orders the puts of a name in one data folder
    version: str  # unique to this put, across coordinators: its agents' cache keys are its own
    arrays: dict[str, np.ndarray]  # dense rows in partition order: memory maps once `saved`
    row_splits: np.ndarray
    cols: int | None = None  # set for a sparse matrix
    created_at: float = field(default_factory=time.time)
    placement: dict[int, str] = field(default_factory=dict)  # partition -> agent id
    saved: threading.Event = field(default_factory=threading.Event)  # the copy is on disk
    written: threading.Event = field(default_factory=threading.Event)  # the writer is done: saved, failed or abandoned
    save_error: OSError | None = None  # why the copy could not be written
    dropped: bool = False

    @property
    def sparse(self) -> bool:
        return self.cols is not None

    @property
    def partitions(self) -> int:
        return len(self.row_splits) - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.arrays["indptr"]) - 1, self.cols) if self.sparse else self.arrays["x"].shape

    @property
    def dtype(self) -> np.dtype:
        return self.arrays["data" if self.sparse else "x"].dtype

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def prefix(self) -> str:
        return dataset_prefix(self.name, self.version)

    def key(self, partition: int, part: str = "x") -> str:
        """The agents' cache key of one partition (of one part of a sparse matrix)."""
        return dataset_key(self.name, self.version, partition, part if self.sparse else "")

    def inputs(self, name: str) -> dict[str, str]:
        """A job input named `name` as the op inputs it stands for -> the part each one is."""
        return {f"{name}_{part}": part for part in CSR_PARTS} if self.sparse else {name: "x"}

    def share(self, partition: int) -> dict[str, np.ndarray]:
        """One partition's parts, exactly as ops cut them."""
        start, stop = int(self.row_splits[partition]), int(self.row_splits[partition + 1])
        if self.sparse:
            return dict(zip(CSR_PARTS, take_csr(*(self.arrays[p] for p in CSR_PARTS), start, stop)))
        return {"x": self.arrays["x"][start:stop]}


# The files of one version: NAME.VERSION.PART.npy and NAME.VERSION.json (its manifest, written last).
MANIFEST = ".json"
TEMPORARY = ".lepton-tmp-"  # a file being written: renamed when whole, removed at start if a crash left it
OWN_FILE = re.compile(r"^[A-Za-z0-9._-]{1,128}\.[0-9a-f]{16}\.(x|indptr|indices|data)\.npy$")


def write_atomically(path: Path, write, test_delay: float = 0.0) -> None:
    """write(file) into a temporary file beside `path`, flush it to the disk, rename it to `path`:
    a crash leaves the old file or the new one, never part of one."""
    tmp = path.with_name(f"{TEMPORARY}{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if test_delay:
                time.sleep(test_delay)  # (tests: a crash while the copy is written)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


SAVE_PIECE_BYTES = 64 << 20  # the copy is written in pieces of this size, so a drop stops it soon


class Abandoned(Exception):
    """The dataset was dropped or replaced while its copy was being written: stop writing it."""


def save_array(f, array: np.ndarray, abandoned) -> None:
    """np.save(f, array), written in pieces; raises Abandoned as soon as abandoned() says so (a put
    then drop of 1 GiB went on writing, and flushing, the whole gigabyte while the next put came in)."""
    if not array.flags.c_contiguous:
        np.save(f, array)
        return
    np.lib.format.write_array_header_2_0(f, np.lib.format.header_data_from_array_1_0(array))
    data = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    for start in range(0, len(data), SAVE_PIECE_BYTES):
        if abandoned():
            raise Abandoned()
        f.write(data[start:start + SAVE_PIECE_BYTES])


def sync_directory(directory: Path) -> None:
    """Flush the folder's entries (the renames) to the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DatasetStore:
    """The catalog of datasets by name, and their copies in `directory`. Every change of the catalog
    goes through these methods (a shared store can sit under them)."""

    def __init__(self, directory: Path, test_save_delay: float = 0.0, reload: bool = True,
                 on_saved=lambda dataset: None, on_dropped=lambda dataset: None):
        """reload: read the folder's datasets back now. A standby sharing the folder with a leader
        must not (the reload removes files it does not know, such as the leader's copies being
        written): it calls reload() when it takes over. on_saved and on_dropped keep the metadata
        store in step (lepton.coordinator.store)."""
        self.directory, self.test_save_delay = Path(directory), test_save_delay
        self.directory.mkdir(parents=True, exist_ok=True)
        self._datasets: dict[str, Dataset] = {}
        self._placing: dict[str, Dataset] = {}  # by version: made by new(), placed, not added yet
        self._generation = 0
        self._on_saved, self._on_dropped = on_saved, on_dropped
        self._lock = threading.Lock()
        if reload:
            self._reload()

    def reload(self) -> None:
        """The datasets a previous coordinator on this (shared) folder left, as at a start."""
        with self._lock:
            self._reload()

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.match(name):
            raise InvalidInput(f"dataset name {name!r} must be 1 to 128 letters, digits, '.', '_' or '-'")

    def check_new(self, name: str, replace: bool) -> None:
        self.check_name(name)
        with self._lock:
            if name in self._datasets and not replace:
                raise AlreadyExists(f"dataset {name!r} exists; drop it first or put it with replace=True")

    def create(self, name: str, arrays: dict[str, np.ndarray], row_splits: np.ndarray, replace: bool,
               cols: int | None = None) -> tuple[Dataset, Dataset | None]:
        """Register a dataset and write the coordinator's copy; returns it and the dataset it replaced."""
        self.check_new(name, replace)
        return self.add(self.new(name, arrays, row_splits, cols), replace)

    def new(self, name: str, arrays: dict[str, np.ndarray], row_splits: np.ndarray,
            cols: int | None = None) -> Dataset:
        """A dataset with a fresh version (its cache keys are its own), not registered yet: its
        partitions can be placed while its rows still arrive."""
        self.check_name(name)
        with self._lock:
            self._generation += 1
            dataset = Dataset(name, self._generation, secrets.token_hex(8), dict(arrays), row_splits, cols)
            self._placing[dataset.version] = dataset  # an agent rejoining meanwhile keeps what it got
        return dataset

    def abandon(self, dataset: Dataset) -> None:
        """A dataset from new() that will not be added (its put failed)."""
        with self._lock:
            self._placing.pop(dataset.version, None)

    def add(self, dataset: Dataset, replace: bool) -> tuple[Dataset, Dataset | None]:
        """Register `dataset` and start writing its copy; returns the dataset it replaced, whose
        files stay until the new copy is whole on disk."""
        self.check_new(dataset.name, replace)
        with self._lock:
            old = self._datasets.get(dataset.name)
            self._datasets[dataset.name] = dataset
            self._placing.pop(dataset.version, None)
        if old is not None:
            old.dropped = True  # its copy, if still being written, is abandoned
        threading.Thread(target=self._save, args=(dataset, old), name=f"save-{dataset.name}", daemon=True).start()
        return dataset, old

    def _path(self, dataset: Dataset, part: str) -> Path:
        return self.directory / f"{dataset.name}.{dataset.version}.{part}.npy"

    def _manifest(self, dataset: Dataset) -> Path:
        return self.directory / f"{dataset.name}.{dataset.version}{MANIFEST}"

    def _save(self, dataset: Dataset, replaced: Dataset | None = None) -> None:
        try:
            self._write(dataset, replaced)
        finally:
            dataset.written.set()

    def _write(self, dataset: Dataset, replaced: Dataset | None) -> None:
        """Write the copy (parts, then the manifest that makes it exist), then serve it from memory
        maps (the received buffers are freed), then remove the version it replaced."""
        maps = {}
        try:
            for part, array in dataset.arrays.items():
                if dataset.dropped:
                    return
                write_atomically(self._path(dataset, part), lambda f, a=array: save_array(f, a, lambda: dataset.dropped),
                                 self.test_save_delay)
                maps[part] = np.load(self._path(dataset, part), mmap_mode="r")
            manifest = {"name": dataset.name, "version": dataset.version, "generation": dataset.generation,
                        "row_splits": [int(r) for r in dataset.row_splits], "cols": dataset.cols,
                        "created_at": dataset.created_at, "parts": list(dataset.arrays)}
            if dataset.dropped:
                return
            write_atomically(self._manifest(dataset), lambda f: f.write(json.dumps(manifest).encode()))
            sync_directory(self.directory)
        except Abandoned:
            return  # (the files go below)
        except OSError as exc:  # a full disk: the arrays in memory still serve, correctly
            dataset.save_error = exc
            event(log, "dataset.save_failed", level=logging.WARNING, dataset=dataset.name, error=str(exc))
            return
        finally:
            if dataset.dropped:  # dropped or replaced while it was being written: so is what it replaced
                self.remove_file(dataset)
                if replaced is not None:
                    self.remove_file(replaced)
        dataset.arrays = maps
        dataset.saved.set()
        if replaced is not None:
            self.remove_file(replaced)
        self._on_saved(dataset)

    @staticmethod
    def wait_saved(dataset: Dataset, timeout: float | None = None) -> None:
        """Return once the copy of `dataset` is on the disk (its parts and manifest flushed, and the
        folder's entries): a durable put. Raises, saying so, if it will not be: the dataset is
        still loaded and serves jobs then, but a crash of the coordinator would lose what no agent
        holds."""
        if not dataset.written.wait(timeout):
            raise DeadlineExceeded(f"the copy of dataset {dataset.name!r} was not on the coordinator's disk within "
                                   f"the call's deadline ({timeout:.0f} s left); it is loaded and serves jobs, and "
                                   f"its DatasetInfo.saved says when the copy is written")
        if dataset.saved.is_set():
            return
        if dataset.save_error is not None:
            error = dataset.save_error
            full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            kind = ResourceExhausted if full else FailedPrecondition
            raise kind(f"the coordinator could not write its copy of dataset {dataset.name!r} ({error}); it is loaded "
                       f"and serves jobs but would not survive a coordinator crash: check the coordinator's "
                       f"data folder (--data-dir: space, permissions) and put it again with replace=True")
        raise FailedPrecondition(f"dataset {dataset.name!r} was dropped or replaced while its copy was being written; "
                                 f"nothing of this put is on disk")

    def _reload(self) -> None:
        """Read back the datasets whose manifests a previous coordinator on this folder wrote: the
        newest version of each name. Files of other versions, and any a crash left half-written,
        are removed."""
        found: dict[str, Dataset] = {}
        for path in sorted(self.directory.glob(f"*{MANIFEST}")):
            if path.name.startswith(TEMPORARY):
                continue
            try:
                dataset = self._read(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                event(log, "dataset.unreadable", level=logging.WARNING, manifest=path.name, error=str(exc))
                continue
            self._generation = max(self._generation, dataset.generation)
            current = found.get(dataset.name)
            if current is None or dataset.generation > current.generation:
                found[dataset.name] = dataset
        kept = {p.name for d in found.values() for p in [self._manifest(d), *(self._path(d, part) for part in d.arrays)]}
        for path in self.directory.iterdir():
            ours = path.name.startswith(TEMPORARY) or OWN_FILE.match(path.name) or path.name.endswith(MANIFEST)
            if ours and path.name not in kept and path.is_file():
                path.unlink(missing_ok=True)
        self._datasets = found
        for dataset in found.values():
            event(log, "dataset.reloaded", dataset=dataset.name, bytes=dataset.nbytes, partitions=dataset.partitions)

    def _read(self, manifest: Path) -> Dataset:
        meta = json.loads(manifest.read_text())
        name, version = meta["name"], meta["version"]
        self.check_name(name)
        arrays = {part: np.load(self.directory / f"{name}.{version}.{part}.npy", mmap_mode="r")
                  for part in meta["parts"]}
        dataset = Dataset(name, int(meta["generation"]), version, arrays, np.asarray(meta["row_splits"], np.int64),
                          meta["cols"], created_at=float(meta["created_at"]))
        rows = len(arrays["indptr"]) - 1 if dataset.sparse else len(arrays["x"])
        if dataset.row_splits[-1] != rows:
            raise ValueError(f"its partitions cover {dataset.row_splits[-1]} rows of {rows}")
        dataset.saved.set()
        dataset.written.set()
        return dataset

    def adopt(self, agent_id: str, resident) -> tuple[list[str], list[str]]:
        """What an agent that (re)joins says it holds: `resident` lists (name, version, part,
        [(start, end), ...]). Partitions of versions in the catalog are placed on it; returns their
        cache keys, and the key prefixes of the versions it must drop (unknown, replaced, or not
        shaped like the catalog's)."""
        announced: dict[tuple[str, str], list] = {}
        for name, version, part, ranges in resident:
            announced.setdefault((name, version), []).append((part, ranges))
        keys, stale = [], []
        for (name, version), entries in sorted(announced.items()):
            with self._lock:
                dataset = self._datasets.get(name)
                if dataset is None or dataset.version != version:
                    dataset = self._placing.get(version) or dataset  # a put in progress
            parts = dict(entries)
            if (dataset is None or dataset.version != version or dataset.dropped or len(parts) != len(entries)
                    or not parts.keys() <= (set(CSR_PARTS) if dataset.sparse else {""})
                    or any(not 0 <= lo < hi <= dataset.partitions for _, ranges in entries for lo, hi in ranges)):
                stale.append(dataset_prefix(name, version))  # none of it is trusted
                continue
            held = {part: {p for lo, hi in ranges for p in range(lo, hi)} for part, ranges in entries}
            keys += [dataset.key(p, part or "x") for part, partitions in held.items() for p in sorted(partitions)]
            if len(held) == (len(CSR_PARTS) if dataset.sparse else 1):  # a sparse partition needs all its parts
                for p in set.intersection(*held.values()):
                    dataset.placement[p] = agent_id
        return keys, stale

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
        self._on_dropped(dataset)  # (a replaced dataset's record is overwritten by its successor's instead)
        return dataset

    def remove_file(self, dataset: Dataset) -> None:
        # Jobs still reading keep their memory maps: unlinking does not disturb them. A copy still
        # being written is removed by its writer when it is done. The manifest goes first: without
        # it, the parts are leftovers the next start removes.
        dataset.dropped = True
        self._manifest(dataset).unlink(missing_ok=True)
        for part in dataset.arrays:
            self._path(dataset, part).unlink(missing_ok=True)

    def all(self) -> list[Dataset]:
        with self._lock:
            return list(self._datasets.values())
