"""OpenCL backend (pyopencl): GPUs, FPGAs from prebuilt binaries, PoCL on CPUs (ARCHITECTURE.md §8).

Device specs (`lepton agent --device ...`):
    opencl              every usable device of every platform
    opencl:I            the I-th device in `describe_devices()` order (platforms, then their devices);
                        an unusable one is FAILED_PRECONDITION with its build log
    opencl:TEXT         the usable devices whose platform name, device name or type (cpu, gpu,
                        accelerator) contains TEXT, case-insensitively
    opencl:I@MANIFEST   (or opencl:TEXT@MANIFEST, opencl:@MANIFEST for all) run only the prebuilt
                        binaries a JSON manifest lists (e.g. opencl:0@/opt/fpga/manifest.json; format
                        in manifest.py; the path may not contain ','). Such a device never compiles,
                        offers only the ops its binaries cover, and a missing or corrupt binary stops
                        it from opening with FAILED_PRECONDITION. export_binaries() writes one.
Devices are named opencl:0, opencl:1, ... in the order the agent opens them.
A device is usable (manifest devices aside) when it built and ran probe.py's trivial kernel (the
verdict is cached on disk); the others are left out with one log line each, and `lepton devices`
shows why.

Environment:
    LEPTON_OPENCL_CACHE   built-program cache (default ~/.cache/lepton/opencl)
    POCL_CACHE_DIR        set to $LEPTON_OPENCL_CACHE/pocl when unset: PoCL's own kernel cache was
                          seen serving stale binaries, so it lives where we control (and clear) it.

Modules: probe (does a device build and run a kernel?), device (OpenCLDevice, composing the next
three), compiler (source -> binary, cached on disk), program (binary -> callable kernels), allocator
(buffers, copies in and out, staging through transfer's pinned slots), variants (program names),
reductions and catalog (the ops' launches and kernels), manifest (prebuilt binaries), errors
(pyopencl -> Lepton errors); kernels in reduce.cl, histogram.cl, gemm.cl, catalog.cl.
"""
from __future__ import annotations

import logging
import os

from lepton.backends.opencl.compiler import cache_dir

# Before any pyopencl call: PoCL reads it when the platform is first initialised.
os.environ.setdefault("POCL_CACHE_DIR", str(cache_dir() / "pocl"))

import pyopencl as cl  # noqa: E402

from lepton.backends import discovery  # noqa: E402
from lepton.backends.opencl import probe  # noqa: E402
from lepton.logs import event  # noqa: E402
from lepton.errors import FailedPrecondition, InvalidInput  # noqa: E402
from lepton.backends.opencl.compiler import Compiler, ProgramCache  # noqa: E402
from lepton.backends.opencl.device import OpenCLDevice  # noqa: E402
from lepton.backends.opencl.manifest import export_binaries, read_manifest  # noqa: E402

log = logging.getLogger("lepton.opencl")

__all__ = ["Compiler", "OpenCLDevice", "ProgramCache", "all_devices", "describe_devices", "export_binaries",
           "open_devices", "read_manifest", "select_devices"]


def _platforms() -> list[tuple[cl.Platform, list[cl.Device]]]:
    """Every registered platform with its devices (none where the platform cannot list them)."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return []  # no ICD loader entries at all
    listed = []
    for platform in platforms:
        try:
            listed.append((platform, platform.get_devices()))
        except cl.Error:
            listed.append((platform, []))  # a platform with no device it can offer
    return listed


def all_devices() -> list[cl.Device]:
    """Every device of every platform, usable or not, in `opencl:I` order."""
    return [device for _, devices in _platforms() for device in devices]


def describe_devices(fresh: bool = False) -> list[dict]:
    """Every OpenCL device, in `opencl:I` index order, with its probe verdict (fresh: probe again)."""
    described = []
    for i, d in enumerate(all_devices()):
        verdict = probe.verdict(d, fresh=fresh)
        described.append({
            "index": i, "platform": d.platform.name.strip(), "platform_version": d.platform.version.strip(),
            "name": d.name.strip(), "type": cl.device_type.to_string(d.type).lower(),
            "compute_units": d.max_compute_units, "global_memory_bytes": d.global_mem_size,
            "driver_version": d.driver_version, "opencl_version": d.version, "fp64": "cl_khr_fp64" in d.extensions,
            "usable": verdict.usable, "reason": verdict.reason, "log": verdict.log})
    return described


# What to do when nothing works: the two ways to a device that builds kernels.
_ADVICE = ("to get one: install a PoCL built for every CPU generation (Debian/Ubuntu: "
           "`apt-get install pocl-opencl-icd`) or your GPU's OpenCL driver; `lepton devices` probes every "
           "device again and lists what it found")


def _label(device: cl.Device) -> str:
    return f"{device.name.strip()} ({device.platform.name.strip()}, driver {device.driver_version})"


def _platform(platform: cl.Platform) -> str:
    return f"{platform.name.strip()} ({' '.join(platform.version.split())})"


def select_devices(selector: str | None, probe_first: bool = True) -> list[cl.Device]:
    """The pyopencl devices a spec's selector names: every usable one for None or ''.

    With probe_first (the default) only devices whose probe passed are chosen: `opencl` and
    `opencl:TEXT` leave the others out with one log line each, and `opencl:I` naming one is
    FAILED_PRECONDITION with its build log. A manifest device (probe_first=False) never compiles,
    so its binaries are its check.
    """
    platforms = _platforms()
    devices = [device for _, listed in platforms for device in listed]
    if not devices:
        tried = "; ".join(f"{_platform(p)}: no devices" for p, _ in platforms)
        raise FailedPrecondition(
            f"no usable OpenCL device: {f'platforms tried: {tried}' if tried else 'no OpenCL platform is registered'}"
            f" (the ICD loader reads /etc/OpenCL/vendors/*.icd, or $OCL_ICD_VENDORS); {_ADVICE}")
    listing = "; ".join(f"{i}: {_label(d)}" for i, d in enumerate(devices))
    if selector and selector.isdigit():
        if int(selector) >= len(devices):
            raise InvalidInput(f"device spec 'opencl:{selector}': there are {len(devices)} OpenCL devices: {listing}")
        device = devices[int(selector)]
        verdict = probe.verdict(device) if probe_first else None
        if verdict is not None and not verdict.usable:
            lines = [f"device spec 'opencl:{selector}': {_label(device)} is unusable: {verdict.reason}",
                     verdict.log, _ADVICE]
            raise FailedPrecondition("\n".join(line for line in lines if line))
        return [device]
    text = (selector or "").lower()
    chosen = [d for d in devices if text in f"{d.platform.name} {d.name} {cl.device_type.to_string(d.type)}".lower()]
    if not chosen:
        raise InvalidInput(f"device spec 'opencl:{selector}' matches no OpenCL device; there are: {listing}")
    if not probe_first:
        return chosen
    usable, unusable = [], []
    for device in chosen:
        verdict = probe.verdict(device)
        (usable if verdict.usable else unusable).append((device, verdict))
    for device, verdict in unusable:
        event(log, "opencl.device_unusable", level=logging.WARNING, device=_label(device), reason=verdict.reason)
    if not usable:
        spec = f"opencl:{selector}" if selector else "opencl"
        tried = "; ".join(f"{_platform(d.platform)}: {d.name.strip()}: {v.reason}" for d, v in unusable)
        raise FailedPrecondition(f"no usable OpenCL device for '{spec}': platforms tried: {tried}; {_ADVICE}")
    return [device for device, _ in usable]


def open_devices(arg: str | None, first_index: int = 0, **options) -> list[OpenCLDevice]:
    """The discovery factory: `arg` is what follows 'opencl:' in a spec (see the module docstring)."""
    selector, _, manifest = (arg or "").partition("@")
    binaries = read_manifest(manifest) if manifest else None
    cache = ProgramCache()  # shared, so the devices of one agent share counts
    opened: list[OpenCLDevice] = []
    try:
        for device in select_devices(selector, probe_first=binaries is None):
            opened.append(OpenCLDevice(device, f"opencl:{first_index + len(opened)}", cache=cache,
                                       binaries=binaries, **options))
    except BaseException:
        for device in opened:
            device.close()
        raise
    return opened


discovery.FACTORIES["opencl"] = open_devices
