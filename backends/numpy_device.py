"""The NumPy reference device: always available, the ground truth in tests."""
from __future__ import annotations

import os
import platform

from lepton.backends.blocks import run_blocked
from lepton.backends.device import Device
from lepton.backends.ops import Op, runnable


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def reference_kernel(op: Op):
    """The op's NumPy reference as a device kernel, blocked canonically where its merge is inexact."""
    if op.block_bytes:
        return lambda device, inputs, params: run_blocked(op, op.reference, inputs, params)
    return lambda device, inputs, params: op.reference(inputs, params)


class NumpyDevice(Device):
    kind = "numpy"
    kernels = {name: reference_kernel(op) for name, op in runnable().items()}

    def __init__(self, index: int = 0):
        super().__init__(f"numpy:{index}", f"NumPy on {platform.processor() or platform.machine()}",
                         physical_memory())
