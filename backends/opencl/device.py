"""One OpenCL device behind the common interface, composed as tinygrad composes its devices.

    compiler   (compiler.py)   source -> binary, cached on disk; absent where only prebuilt binaries run
    programs   (program.py)    binary -> Program, whose kernels are callables that launch
    allocator  (allocator.py)  buffers, copies in and out, staging, host arrays read in place
The op kernels (reductions.py, catalog.py) use only these and the device's description: which
layout suits it (is_gpu, vec, compute_units), fp64 and its queue.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyopencl as cl

from lepton.backends.device import Device
from lepton.errors import FailedPrecondition
from lepton.backends.opencl import catalog, reductions, variants
from lepton.backends.opencl.allocator import Allocator
from lepton.backends.opencl.compiler import Compiler, ProgramCache
from lepton.backends.opencl.errors import cl_errors
from lepton.backends.opencl.program import Program


def describe(device: cl.Device) -> str:
    kind = cl.device_type.to_string(device.type).lower()
    return (f"{device.name.strip()} ({kind}, {device.max_compute_units} compute units, "
            f"{device.platform.name.strip()}, driver {device.driver_version})")


def _shares_host_memory(device: cl.Device) -> bool:
    try:
        return bool(device.host_unified_memory)  # deprecated in OpenCL 2.0; some drivers refuse it
    except cl.Error:
        return bool(device.type & cl.device_type.CPU)


class OpenCLDevice(Device):
    """An OpenCL device. With `binaries` (variant name -> program binary, see manifest.py) it never
    compiles and offers only the ops those binaries cover. `fp64`, `zero_copy`, `gpu_layout` (the
    work-group tree kernels) and `int8_dot` (qmatmul's products: catalog.INT8_DOTS) default to what
    the device reports; tests override them to run the paths other devices take on PoCL."""

    kind = "opencl"

    def __init__(self, cl_device: cl.Device, name: str, *, cache: ProgramCache | None = None,
                 binaries: dict[str, bytes] | None = None, fp64: bool | None = None,
                 zero_copy: bool | None = None, gpu_layout: bool | None = None, int8_dot: str | None = None,
                 calibrate: bool = True):
        super().__init__(name, describe(cl_device), cl_device.global_mem_size)
        self.cl_device = cl_device
        self.is_gpu = bool(cl_device.type & cl.device_type.GPU) if gpu_layout is None else gpu_layout
        self.vec = 4 if self.is_gpu else 16
        self.compute_units = cl_device.max_compute_units
        self.fp64 = "cl_khr_fp64" in cl_device.extensions if fp64 is None else fp64
        self.int8_dot = catalog.int8_dot(cl_device, self.is_gpu) if int8_dot is None else int8_dot
        if self.int8_dot not in catalog.INT8_DOTS or (self.int8_dot != "int32" and not self.is_gpu):
            raise ValueError(f"int8_dot must be one of {catalog.INT8_DOTS} (the packed ones on the GPU layout "
                             f"only); got {self.int8_dot!r}")
        self.cache = cache if cache is not None else ProgramCache()
        self.programs: dict[str, Program] = {}  # variant name -> loaded program
        self._run_lock = threading.RLock()      # kernels and buffers are not thread-safe
        with cl_errors(f"opening OpenCL device {describe(cl_device)}"):
            self.context = cl.Context([cl_device])
            # Profiling costs nothing measurable and lets benchmarks read kernel time off the device clock.
            self.queue = cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.profile: list[cl.Event] | None = None  # a list collects every kernel launch's event
        self.compiler = None if binaries is not None else Compiler(self.context, cl_device, self.cache)
        # Devices sharing host memory (CPUs, integrated GPUs) read the caller's arrays in place.
        zero_copy = _shares_host_memory(cl_device) if zero_copy is None else zero_copy
        self.allocator = Allocator(name, self.context, self.queue, cl_device, zero_copy)
        for variant, binary in (binaries or {}).items():
            variants.parse(variant)  # rejects names that are not variants
            self.programs[variant] = Program(self, variant, binary, f"prebuilt program {variant} on {name}")
        self.kernels = {**reductions.offered(self), **catalog.offered(self)}
        if calibrate:
            self.calibrate()

    def has_program(self, variant: str) -> bool:
        """Whether program(variant) can give it: loaded already, or compiled on demand."""
        return variant in self.programs or self.compiler is not None

    def program(self, variant: str) -> Program:
        """The program of a variant (variants.py): loaded once, from a binary the compiler gives."""
        program = self.programs.get(variant)
        if program is None:
            if self.compiler is None:
                raise FailedPrecondition(f"{self.name} runs prebuilt binaries only and has none for {variant}; "
                                         f"it has {', '.join(sorted(self.programs))}")
            source, options = variants.source_file(variant), variants.options(variant)
            try:
                program = Program(self, variant, self.compiler.compile(source, options))
            except FailedPrecondition:
                # The driver refuses a cached binary of its own (changed under the same version string).
                program = Program(self, variant, self.compiler.compile(source, options, fresh=True))
            self.programs[variant] = program
        return program

    # -- the Device interface ---------------------------------------------------------------------

    def run(self, op, inputs, params):
        with self._run_lock, cl_errors(f"running {op.name} on {self.name}"):
            return super().run(op, inputs, params)

    def calibrate(self, nbytes: int = 4 << 20) -> None:
        """Seed the measured throughput with a float32 sum of a few MiB (builds or loads it too)."""
        if "sum" not in self.kernels or reductions.accumulators(self, "sum", np.float32) is None:
            return
        x = np.ones(nbytes // 4, np.float32)
        with self._run_lock, cl_errors(f"calibrating {self.name}"):
            try:
                reductions.reduce(self, "sum", x)  # build, load and first launch are not throughput
            except FailedPrecondition:
                return  # a binary-only device without this variant: observed runs will fill it in
            best = math.inf
            for _ in range(3):
                start = time.perf_counter()
                reductions.reduce(self, "sum", x)
                best = min(best, time.perf_counter() - start)
        with self._lock:
            self._throughput["sum"] = x.nbytes / best

    def close(self) -> None:
        with self._run_lock:
            try:
                self.queue.finish()
            except cl.Error:
                pass  # closing must not fail; the context goes with this object
            self.allocator.close()
            self.programs.clear()
