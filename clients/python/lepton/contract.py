"""Plain value types every layer shares: what a tensor is before its bytes arrive, what a device is.

They sit beside the generated stubs at the bottom of the import graph (ARCHITECTURE.md §2): the
wire codec builds them from messages, backends and servers use them, and none of them imports
anything of Lepton's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    """What is known of an input before its bytes arrive."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: exact, and 20× np.prod's speed


@dataclass
class DeviceInfo:
    """A device as the cluster sees it: `throughput` is measured input bytes per second, by op."""

    name: str
    kind: str
    description: str
    memory_bytes: int
    ops: list[str]
    throughput: dict[str, float] = field(default_factory=dict)


# What a device's description says when its runs are slowed on purpose: `lepton agent --throttle`
# (lepton.backends.device) or a test hook (--test-delay and the like, node_agent/main.py). The
# coordinator never computes such a device's jobs itself (coordinator/inline.py): they are meant to be slow.
SLOWED_MARKS = (" [throttled ", " [test hooks: ")


def slowed_on_purpose(info: DeviceInfo) -> bool:
    return any(mark in info.description for mark in SLOWED_MARKS)


# -- dataset cache keys ---------------------------------------------------------------------
# The coordinator places dataset partitions in the agents' caches under these keys; an agent parses
# its own keys back to announce what it holds when it (re)joins. Dataset names have no ':' and
# versions are hex, so the format is unambiguous.
DATASET_KEY_PREFIX = "ds:"


def dataset_prefix(name: str, version: str) -> str:
    """The key prefix of every partition of one version of a dataset."""
    return f"{DATASET_KEY_PREFIX}{name}:{version}:"


def dataset_key(name: str, version: str, partition: int, part: str = "") -> str:
    """A partition's key; `part` names one part of a sparse dataset ("" for a dense one)."""
    return f"{dataset_prefix(name, version)}{partition}" + (f".{part}" if part else "")


def parse_dataset_key(key: str) -> tuple[str, str, int, str] | None:
    """(name, version, partition, part) of a dataset key; None for any other key."""
    if not key.startswith(DATASET_KEY_PREFIX):
        return None
    fields = key[len(DATASET_KEY_PREFIX):].split(":")
    if len(fields) != 3:
        return None
    name, version, rest = fields
    partition, _, part = rest.partition(".")
    if not name or not version or not partition.isdigit():
        return None
    return name, version, int(partition), part
