"""Source or prebuilt binary -> built OpenCL program, with an on-disk cache of built binaries.

A program is built once per (platform, device, driver version, source hash, options): the cache key
hashes all of them, so an edited kernel or a new driver never loads a stale binary. Entries are written
atomically and carry their own sha256, checked before the bytes reach the driver: PoCL segfaults on a
truncated binary and silently accepts flipped bytes, so the driver cannot be the one to check.
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


def program_binary(program: cl.Program) -> bytes:
    """The device binary of a built single-device program (what FPGA manifests and the cache hold)."""
    return bytes(program.get_info(cl.program_info.BINARIES)[0])


def load_binary(context: cl.Context, device: cl.Device, binary: bytes, what: str) -> cl.Program:
    """clCreateProgramWithBinary + build; the caller has already checked the bytes' integrity."""
    with cl_errors(f"loading the binary of {what}", refused=FailedPrecondition):
        return cl.Program(context, [device], [binary]).build(devices=[device])


class ProgramCache:
    """Builds programs from source or loads them from the disk cache; counts which happened.

    `stats`: compiled / loaded (disk hits) / stale (corrupt entries rebuilt), and the seconds spent in
    each, so tests and operators can see that a warm cache skips compilation.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir()
        self.stats: Counter = Counter()
        self._lock = threading.Lock()

    def key(self, device: cl.Device, text: str, options: str) -> str:
        ident = [device.platform.name, device.platform.version, device.name, device.driver_version,
                 device.version, hashlib.sha256(text.encode()).hexdigest(), options]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def build(self, context: cl.Context, device: cl.Device, name: str, options: str) -> cl.Program:
        """The program of source file `name` built with `options`: from the cache, else compiled."""
        text = source(name)
        path = self.directory / f"{self.key(device, text, options)}.bin"
        binary = self._read(path)
        if binary is not None:
            start = time.perf_counter()
            try:
                program = load_binary(context, device, binary, f"cached {name} {options}")
            except FailedPrecondition:
                self._count("stale", 0.0)  # the driver refuses its own old binary: rebuild it
            else:
                self._count("loaded", time.perf_counter() - start)
                return program
        start = time.perf_counter()
        with cl_errors(f"building {name} with options {options!r} on {device.name}", refused=FailedPrecondition):
            # cache_dir=False: this class is the cache; pyopencl's own would hide compilations from stats.
            program = cl.Program(context, text).build(options=options, devices=[device], cache_dir=False)
        self._count("compiled", time.perf_counter() - start)
        self._write(path, program_binary(program))
        return program

    def _count(self, what: str, seconds: float) -> None:
        with self._lock:
            self.stats[what] += 1
            self.stats[f"{what}_seconds"] += seconds

    def _read(self, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        digest, binary = data[:32], data[32:]
        if hashlib.sha256(binary).digest() != digest:
            self._count("stale", 0.0)  # torn or corrupt entry: rebuild and overwrite it
            return None
        return binary

    def _write(self, path: Path, binary: bytes) -> None:
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
