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
