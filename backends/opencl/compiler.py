"""The compiler: kernel source -> program binary for one device, with an on-disk cache of binaries.

A binary is built once per (platform, device, driver version, source hash, options): the cache key
hashes all of them, so an edited kernel or a new driver never loads a stale binary. Entries are written
atomically and carry their own sha256, checked before the bytes reach the driver: PoCL segfaults on a
truncated binary and silently accepts flipped bytes, so the driver cannot be the one to check.
What the compiler returns is bytes: a Program (program.py) is only ever made from a binary.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyopencl as cl

from lepton.errors import FailedPrecondition
from lepton.backends.opencl.errors import cl_errors

SOURCES = Path(__file__).parent


def cache_dir() -> Path:
    """`LEPTON_OPENCL_CACHE`, else ~/.cache/lepton/opencl (XDG_CACHE_HOME honoured)."""
    configured = os.environ.get("LEPTON_OPENCL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lepton" / "opencl"


def source(name: str) -> str:
    return (SOURCES / name).read_text()


class ProgramCache:
    """Binaries on disk, shared by the devices of one agent; counts what happened.

    `stats`: compiled / loaded (disk hits) / stale (corrupt or refused entries rebuilt), and the
    seconds spent in each, so tests and operators can see that a warm cache skips compilation.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir()
        self.stats: Counter = Counter()
        self._lock = threading.Lock()

    def key(self, device: cl.Device, text: str, options: str) -> str:
        ident = [device.platform.name, device.platform.version, device.name, device.driver_version,
                 device.version, hashlib.sha256(text.encode()).hexdigest(), options]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def count(self, what: str, seconds: float) -> None:
        with self._lock:
            self.stats[what] += 1
            self.stats[f"{what}_seconds"] += seconds

    def get(self, key: str) -> bytes | None:
        """The binary stored under `key`, or None (absent, or torn or corrupt: counted stale)."""
        try:
            data = (self.directory / f"{key}.bin").read_bytes()
        except OSError:
            return None
        digest, binary = data[:32], data[32:]
        if hashlib.sha256(binary).digest() != digest:
            self.count("stale", 0.0)  # torn or corrupt entry: rebuilt and overwritten
            return None
        return binary

    def put(self, key: str, binary: bytes) -> None:
        path = self.directory / f"{key}.bin"
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(binary).digest() + binary)
            os.replace(tmp, path)  # readers see the old entry or the whole new one
        except OSError:
            # A read-only or full cache only costs a rebuild next time.
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


class Compiler:
    """Source -> binary for one device (its context), through a ProgramCache."""

    def __init__(self, context: cl.Context, device: cl.Device, cache: ProgramCache):
        self.context = context
        self.device = device
        self.cache = cache

    def compile(self, name: str, options: str, fresh: bool = False) -> bytes:
        """The binary of source file `name` built with `options`: from the cache, else compiled and
        stored. fresh=True skips the cache's entry (the driver refused it) and overwrites it."""
        text = source(name)
        key = self.cache.key(self.device, text, options)
        if fresh:
            self.cache.count("stale", 0.0)
        else:
            start = time.perf_counter()
            binary = self.cache.get(key)
            if binary is not None:
                self.cache.count("loaded", time.perf_counter() - start)
                return binary
        start = time.perf_counter()
        with cl_errors(f"building {name} with options {options!r} on {self.device.name}",
                       refused=FailedPrecondition):
            # cache_dir=False: ProgramCache is the cache; pyopencl's own would hide compilations from stats.
            program = cl.Program(self.context, text).build(options=options, devices=[self.device], cache_dir=False)
            binary = bytes(program.get_info(cl.program_info.BINARIES)[0])
        self.cache.count("compiled", time.perf_counter() - start)
        self.cache.put(key, binary)
        return binary
