"""The one OpenCL device picker of the tests: a usable device by capability, never by index.

Which platforms a machine has (pyopencl's wheel PoCL, Debian's pocl-opencl-icd, a GPU driver, several
at once) decides the indices, so tests ask for "a usable CPU device" and pass its `opencl:I` on to
agents started with the same environment. benchmarks/gpu_check.sh asks for a GPU instead
(LEPTON_TEST_OPENCL_DEVICE=gpu). With CI=true a missing device fails the test: CI installs one.
"""
from __future__ import annotations

import os

import pytest


def usable_opencl_device():
    """(pyopencl device, agent spec 'opencl:I') of the first usable OpenCL device whose type, name or
    platform contains $LEPTON_TEST_OPENCL_DEVICE (default "cpu"); skips (fails on CI) without one."""
    wanted = os.environ.get("LEPTON_TEST_OPENCL_DEVICE", "cpu")
    try:
        from lepton.backends.opencl import all_devices, select_devices
    except ImportError as exc:
        missing(f"the OpenCL backend cannot be imported ({exc}); pip install 'lepton[opencl]'")
    from lepton.errors import LeptonError

    try:
        device = select_devices(wanted)[0]  # usable ones only
    except LeptonError as exc:
        missing(f"no usable OpenCL device matches {wanted!r}: {exc.details}")
    return device, f"opencl:{all_devices().index(device)}"


def missing(why: str):
    """Skip the module (or test) saying why; on CI, where .ci/run installs a device, fail instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def opencl_stages(device=None, fp64: bool | None = None):
    """The `stages` argument of references.mismatch for results an OpenCL device computed: its reduce
    kernels' fold (references.opencl_stages), with the loads per work-item of its launch plan when
    `device` (an OpenCLDevice) is given, else the deepest plan any device could make (16 lanes, the
    whole input per work-item, float32 outer sums unless fp64)."""
    import math

    from references import opencl_stages as stages

    if device is None:
        return lambda op, x: stages(op, x, 16, bool(fp64), False, None)
    from lepton.backends.opencl.reductions import ReducePlan

    def for_device(op, x):
        cols = max(1, math.prod(x.shape[1:]))
        flat = device.vec % cols == 0
        plan = ReducePlan.make(device, len(x), cols, flat) if len(x) else None
        per = None if plan is None else (-(-plan.count // plan.global_size[0]) if device.is_gpu and flat else plan.per)
        return stages(op, x, device.vec if flat else 1, device.fp64, device.is_gpu and flat, per)
    return for_device
