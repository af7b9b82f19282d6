"""Lepton: a compute fabric for heterogeneous accelerator clusters.

`Client` talks to a coordinator; `LocalCluster` starts a real one (coordinator and agents as
processes on loopback) for use on a single machine.

The names below are imported on first use (PEP 562), so `import lepton`, and every `lepton.*`
import that goes through this package, loads neither gRPC nor NumPy until something needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {"Client": "lepton.client", "Dataset": "lepton.client", "Early": "lepton.client", "Estimate": "lepton.client",
          "Job": "lepton.client",
          "LocalCluster": "lepton.local",
          **{name: "lepton.errors" for name in ("AlreadyExists", "Cancelled", "DeadlineExceeded", "FailedPrecondition",
                                                "InvalidInput", "LeptonError", "NotFound", "PermissionDenied",
                                                "ResourceExhausted", "Unauthenticated", "Unavailable")}}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:
    from lepton.client import Client, Dataset, Early, Estimate, Job
    from lepton.errors import (AlreadyExists, Cancelled, DeadlineExceeded, FailedPrecondition, InvalidInput,
                               LeptonError, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated,
                               Unavailable)
    from lepton.local import LocalCluster


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'lepton' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
