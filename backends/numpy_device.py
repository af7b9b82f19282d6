"""The NumPy reference device: always available, the ground truth in tests."""
from __future__ import annotations

import os
import platform

from backends.device import Device
from backends.ops import REGISTRY


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class NumpyDevice(Device):
    kind = "numpy"
    # Every registered op's reference kernel.
    kernels = {name: (lambda op: lambda device, inputs, params: op.reference(inputs, params))(op)
               for name, op in REGISTRY.items() if not op.abstract}

    def __init__(self, index: int = 0):
        super().__init__(f"numpy:{index}", f"NumPy on {platform.processor() or platform.machine()}",
                         physical_memory())
