"""Plain value types every layer shares: what a tensor is before its bytes arrive, what a device is.

They sit beside the generated stubs at the bottom of the import graph (ARCHITECTURE.md §2): the
wire codec builds them from messages, backends and servers use them, and none of them imports
anything of Lepton's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    """What is known of an input before its bytes arrive."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class DeviceInfo:
    """A device as the cluster sees it: `throughput` is measured input bytes per second, by op."""

    name: str
    kind: str
    description: str
    memory_bytes: int
    ops: list[str]
    throughput: dict[str, float] = field(default_factory=dict)
