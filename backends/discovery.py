"""Turn `--device` specs into devices.

Specs (comma-separated, repeatable):
    numpy        one NumPy reference device        numpy:N    N of them
    opencl       every OpenCL device               opencl:I   the I-th; opencl:NAME  name filter
    mpi          an MPI pool (see backends/mpi)    mpi:N      launch N ranks
"""
from __future__ import annotations

from typing import Callable

from lepton.backends.device import Device
from lepton.errors import FailedPrecondition, InvalidInput
from lepton.backends.numpy_device import NumpyDevice


def _numpy(arg: str | None, first_index: int) -> list[Device]:
    count = 1 if arg is None else _positive_int(arg, "numpy")
    return [NumpyDevice(first_index + i) for i in range(count)]


def _positive_int(text: str, kind: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"device spec '{kind}:{text}': expected a positive count")
    return int(text)


# Backends register a factory here: kind -> (argument after ':', index of the first new device).
FACTORIES: dict[str, Callable[[str | None, int], list[Device]]] = {"numpy": _numpy}
# Kinds whose backend did not import here (its extra is not installed), with the reason.
MISSING: dict[str, str] = {}


def _load_optional_backends() -> None:
    for kind in ("opencl", "mpi"):
        try:
            __import__(f"lepton.backends.{kind}")
        except ImportError as exc:
            MISSING[kind] = str(exc)


def open_devices(specs: list[str]) -> list[Device]:
    """Open the devices the specs name, in order."""
    _load_optional_backends()
    devices: list[Device] = []
    for spec in ",".join(specs).split(","):
        spec = spec.strip()
        if not spec:
            continue
        kind, _, arg = spec.partition(":")
        factory = FACTORIES.get(kind)
        if factory is None and kind in MISSING:
            raise FailedPrecondition(f"device kind {kind!r} is not installed here ({MISSING[kind]}); install it "
                                     f"with pip install 'lepton[{kind}]'")
        if factory is None:
            raise InvalidInput(f"unknown device kind {kind!r} in {spec!r}; known: {', '.join(sorted(FACTORIES))}")
        same_kind = sum(d.kind == kind for d in devices)
        devices.extend(factory(arg or None, same_kind))
    if not devices:
        raise InvalidInput("no devices given; try --device numpy")
    return devices
