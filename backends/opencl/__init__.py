"""OpenCL backend (pyopencl): GPUs, FPGAs from prebuilt binaries, PoCL on CPUs (ARCHITECTURE.md §8).

Device specs (`lepton agent --device ...`):
    opencl              every device of every platform
    opencl:I            the I-th device in `describe_devices()` order (platforms, then their devices)
    opencl:TEXT         devices whose platform name, device name or type (cpu, gpu, accelerator)
                        contains TEXT, case-insensitively
    opencl:I@MANIFEST   (or opencl:TEXT@MANIFEST, opencl:@MANIFEST for all) run only the prebuilt
                        binaries a JSON manifest lists (e.g. opencl:0@/opt/fpga/manifest.json; format
                        in manifest.py; the path may not contain ','). Such a device never compiles,
                        offers only the ops its binaries cover, and a missing or corrupt binary stops
                        it from opening with FAILED_PRECONDITION. export_binaries() writes one.
Devices are named opencl:0, opencl:1, ... in the order the agent opens them.

Environment:
    LEPTON_OPENCL_CACHE   built-program cache (default ~/.cache/lepton/opencl)
    POCL_CACHE_DIR        set to $LEPTON_OPENCL_CACHE/pocl when unset: PoCL's own kernel cache was
                          seen serving stale binaries, so it lives where we control (and clear) it.

Modules: compiler (program cache), device (OpenCLDevice, launches), kernels (the reductions' op
semantics), catalog (the op catalog's), transfer (pinned staging for devices with memory of their
own), manifest (prebuilt binaries), errors (pyopencl -> Lepton errors); kernels in reduce.cl,
histogram.cl, gemm.cl, catalog.cl.
"""
from __future__ import annotations

import os

from lepton.backends.opencl.compiler import cache_dir

# Before any pyopencl call: PoCL reads it when the platform is first initialised.
os.environ.setdefault("POCL_CACHE_DIR", str(cache_dir() / "pocl"))

import pyopencl as cl  # noqa: E402

from lepton.backends import discovery  # noqa: E402
from lepton.errors import FailedPrecondition, InvalidInput  # noqa: E402
from lepton.backends.opencl.compiler import ProgramCache, program_binary  # noqa: E402
from lepton.backends.opencl.device import OpenCLDevice  # noqa: E402
from lepton.backends.opencl.manifest import export_binaries, read_manifest  # noqa: E402

__all__ = ["OpenCLDevice", "ProgramCache", "all_devices", "describe_devices", "export_binaries", "open_devices",
           "program_binary", "read_manifest", "select_devices"]


def all_devices() -> list[cl.Device]:
    """Every device of every platform, in `opencl:I` order."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return []  # no ICD loader entries at all
    devices = []
    for platform in platforms:
        try:
            devices.extend(platform.get_devices())
        except cl.Error:
            pass  # a platform with no usable device
    return devices


def describe_devices() -> list[dict]:
    """Every OpenCL device, in `opencl:I` index order, for `lepton devices` and the like."""
    return [{"index": i, "platform": d.platform.name.strip(), "name": d.name.strip(),
             "type": cl.device_type.to_string(d.type).lower(), "compute_units": d.max_compute_units,
             "global_memory_bytes": d.global_mem_size, "driver_version": d.driver_version,
             "opencl_version": d.version, "fp64": "cl_khr_fp64" in d.extensions}
            for i, d in enumerate(all_devices())]


def select_devices(selector: str | None) -> list[cl.Device]:
    """The pyopencl devices a spec's selector names (all for None or '')."""
    devices = all_devices()
    if not devices:
        raise FailedPrecondition("no OpenCL devices found: no platform is registered with the ICD loader "
                                 "(see /etc/OpenCL/vendors/*.icd; `pip install pocl-binary-distribution` "
                                 "gives a CPU device)")
    listing = "; ".join(f"{i}: {d.name.strip()} ({d.platform.name.strip()})" for i, d in enumerate(devices))
    if not selector:
        return devices
    if selector.isdigit():
        if int(selector) >= len(devices):
            raise InvalidInput(f"device spec 'opencl:{selector}': there are {len(devices)} OpenCL devices: {listing}")
        return [devices[int(selector)]]
    text = selector.lower()
    chosen = [d for d in devices
              if text in f"{d.platform.name} {d.name} {cl.device_type.to_string(d.type)}".lower()]
    if not chosen:
        raise InvalidInput(f"device spec 'opencl:{selector}' matches no OpenCL device; there are: {listing}")
    return chosen


def open_devices(arg: str | None, first_index: int = 0, **options) -> list[OpenCLDevice]:
    """The discovery factory: `arg` is what follows 'opencl:' in a spec (see the module docstring)."""
    selector, _, manifest = (arg or "").partition("@")
    binaries = read_manifest(manifest) if manifest else None
    cache = ProgramCache()  # shared, so the devices of one agent share counts
    opened: list[OpenCLDevice] = []
    try:
        for device in select_devices(selector):
            opened.append(OpenCLDevice(device, f"opencl:{first_index + len(opened)}", cache=cache,
                                       binaries=binaries, **options))
    except BaseException:
        for device in opened:
            device.close()
        raise
    return opened


discovery.FACTORIES["opencl"] = open_devices
