"""A program: one binary loaded on one device, and its kernels as callables that launch.

The only way a program is made is from a binary (clCreateProgramWithBinary + build), whether the
compiler (compiler.py) just built it, the disk cache held it or a manifest of prebuilt FPGA binaries
(manifest.py) listed it, so the three need no different paths.
"""
from __future__ import annotations

import pyopencl as cl

from lepton.errors import FailedPrecondition
from lepton.backends.opencl.errors import cl_errors


class Program:
    """`binary` loaded on `device` (an OpenCLDevice: its context, queue and profile) under the
    variant name `name` (variants.py). FailedPrecondition when the driver refuses the binary."""

    def __init__(self, device, name: str, binary: bytes, what: str | None = None):
        self.device = device
        self.name = name
        self.binary = binary
        with cl_errors(f"loading the binary of {what or name}", refused=FailedPrecondition):
            self.program = cl.Program(device.context, [device.cl_device], [binary]).build(devices=[device.cl_device])
        self._kernels: dict[str, Kernel] = {}  # created once: clCreateKernel is not free

    def kernel(self, name: str) -> Kernel:
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = self._kernels[name] = Kernel(self.device, cl.Kernel(self.program, name))
        return kernel


class Kernel:
    """kernel(global_size, local_size, *args, after=event, offset=None) enqueues one launch (with a
    global offset: part of a grid) on the device's queue and returns its event, which the device's
    `profile` list collects when it has one."""

    def __init__(self, device, kernel: cl.Kernel):
        self.device = device
        self.kernel = kernel

    def __call__(self, global_size: tuple, local_size: tuple | None, *args, after: cl.Event | None = None,
                 offset: tuple | None = None) -> cl.Event:
        self.kernel.set_args(*args)
        event = cl.enqueue_nd_range_kernel(self.device.queue, self.kernel, global_size, local_size,
                                           global_work_offset=offset, wait_for=[after] if after is not None else None)
        if self.device.profile is not None:
            self.device.profile.append(event)
        return event
