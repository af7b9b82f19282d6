"""The common device interface (ARCHITECTURE.md §8).

A device has a name, a kind, memory, the ops it implements and a measured throughput per op, and
runs one op on one partition's inputs. Backends subclass `Device` and fill `kernels`; everything
else (which ops it offers, timing, throughput) is shared here.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from lepton.backends.ops import Op, Partial
from lepton.contract import DeviceInfo

Kernel = Callable[["Device", dict[str, np.ndarray], dict], Partial]


class Device:
    """Base class. Subclasses set `kind` and `kernels` (op name -> kernel) and may override `close`."""

    kind: str = ""
    kernels: dict[str, Kernel] = {}
    #: Set by the agent: a device that breaks for good (an MPI rank died) calls it with the reason,
    #: and the agent stops so that it can be restarted; its partitions run elsewhere meanwhile.
    on_failure: Callable[[str], None] | None = None
    #: Set by the agent (--throttle): run this many times slower than the hardware does, by waiting
    #: (factor - 1) x the measured compute time after each partition. An honest slowdown for tests and
    #: demos of heterogeneous clusters on one machine; `info()` names it in the description.
    throttle: float = 1.0

    def __init__(self, name: str, description: str, memory_bytes: int):
        self.name = name
        self.description = description
        self.memory_bytes = memory_bytes
        self._throughput: dict[str, float] = {}  # input bytes per second, smoothed
        self._lock = threading.Lock()

    @property
    def ops(self) -> list[str]:
        return sorted(self.kernels)

    def run(self, op: Op, inputs: dict[str, np.ndarray], params: dict) -> Partial:
        """Run `op` on one non-empty partition; record the throughput seen."""
        start = time.perf_counter()
        partial = self.kernels[op.name](self, inputs, params)
        throttle = self.throttle
        if throttle > 1:
            time.sleep((throttle - 1) * (time.perf_counter() - start))
        self._observe(op.name, sum(a.nbytes for a in inputs.values()), time.perf_counter() - start)
        return partial

    def set_throttle(self, factor: float) -> None:
        """Run `factor` times slower from now on (1: full speed); what was measured is scaled to match."""
        with self._lock:
            old, self.throttle = self.throttle, float(factor)
            self._throughput = {op: rate * old / self.throttle for op, rate in self._throughput.items()}

    def _observe(self, op: str, nbytes: int, seconds: float) -> None:
        if nbytes < 1 << 16 or seconds <= 0:
            return  # tiny runs measure overhead, not the device
        rate = nbytes / seconds
        with self._lock:
            old = self._throughput.get(op)
            self._throughput[op] = rate if old is None else 0.8 * old + 0.2 * rate

    def info(self) -> DeviceInfo:
        with self._lock:
            throughput = dict(self._throughput)
        description = self.description if self.throttle == 1 else f"{self.description} [throttled {self.throttle:g}x]"
        return DeviceInfo(self.name, self.kind, description, self.memory_bytes, self.ops, throughput)

    def close(self) -> None:
        """Release the device's resources; called once at agent shutdown."""
