"""Does this OpenCL device really work? Build and run a trivial kernel once, and remember the answer.

A driver can list a device that cannot build anything: the PoCL in pyopencl's wheel (3.0-rc2, LLVM
14) names the CPU of an AMD Zen 5 machine and then fails every build with "unknown target CPU
'generic'". Discovery therefore promises only devices that passed this probe.

The verdict is kept on disk under the OpenCL cache ($LEPTON_OPENCL_CACHE/probe), one small JSON file
per (platform, platform version, device, driver version, device version): the second probe is a file
read. A build failure or a wrong answer is a property of that driver on that device, so it is cached
like a success; any other OpenCL error (a context or queue that cannot be created, out of resources)
may be passing, so it is not cached and the next start probes again. `lepton devices` re-probes
(fresh=True), which is how a repaired driver gets a second chance.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyopencl as cl

from lepton.backends.opencl.compiler import cache_dir

# Small, but it exercises what every Lepton kernel needs: a build, a global buffer, a launch, a read.
PROBE_SOURCE = """
__kernel void lepton_probe(__global int *out) {
    int i = get_global_id(0);
    out[i] = 3 * i + 1;
}
"""
PROBE_ITEMS = 64
# Errors that say the driver cannot build or run a program at all: cached. Others may pass next time.
_DRIVER_REFUSED = {cl.status_code.BUILD_PROGRAM_FAILURE, cl.status_code.COMPILER_NOT_AVAILABLE,
                   cl.status_code.INVALID_BINARY, cl.status_code.INVALID_PROGRAM_EXECUTABLE}


@dataclass(frozen=True)
class Verdict:
    usable: bool
    reason: str = ""  # one line: the compiler's own error line where there is one
    log: str = ""     # the driver's full message (build log included)


def verdict(device: cl.Device, fresh: bool = False) -> Verdict:
    """The device's verdict: from the disk cache, else (or with fresh) probed now and cached."""
    path = cache_dir() / "probe" / f"{_key(device)}.json"
    if not fresh:
        cached = _read(path)
        if cached is not None:
            return cached
    result, cacheable = _probe(device)
    if cacheable:
        _write(path, result)
    return result


def _key(device: cl.Device) -> str:
    ident = [device.platform.name, device.platform.version, device.name, device.driver_version, device.version]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def _probe(device: cl.Device) -> tuple[Verdict, bool]:
    """(verdict, whether it is a property of the driver worth caching)."""
    if not device.compiler_available:
        return Verdict(False, "no OpenCL compiler: usable only with prebuilt binaries (opencl:I@MANIFEST)"), True
    try:
        got = _build_and_run(device, PROBE_SOURCE)
    except cl.Error as error:
        message = _without_preamble(str(error))
        return Verdict(False, _first_error_line(message), message), getattr(error, "code", None) in _DRIVER_REFUSED
    want = 3 * np.arange(PROBE_ITEMS, dtype=np.int32) + 1
    if not np.array_equal(got, want):
        wrong = int(np.count_nonzero(got != want))
        return Verdict(False, f"the probe kernel ran but returned {wrong} wrong values of {PROBE_ITEMS}"), True
    return Verdict(True), True


def _build_and_run(device: cl.Device, source: str) -> np.ndarray:
    """Build `source` on the device alone, run its kernel over PROBE_ITEMS work-items, read the result."""
    context = cl.Context([device])
    queue = cl.CommandQueue(context, device)
    # cache_dir=False: pyopencl's own cache would answer for a build that never happened.
    program = cl.Program(context, source).build(devices=[device], cache_dir=False)
    out = cl.Buffer(context, cl.mem_flags.WRITE_ONLY, PROBE_ITEMS * 4)
    program.lepton_probe(queue, (PROBE_ITEMS,), None, out)
    got = np.empty(PROBE_ITEMS, np.int32)
    cl.enqueue_copy(queue, got, out)
    queue.finish()
    return got


def _without_preamble(message: str) -> str:
    """pyopencl's message minus its repeated "clBuildProgram failed" and "Build on <...>" lines."""
    lines = [line.rstrip() for line in message.splitlines()]
    kept = [line for line in lines[1:] if line.strip() and not line.startswith("Build on <pyopencl.Device")]
    return "\n".join([lines[0].split(" - ")[0], *kept]) if lines else ""


def _first_error_line(message: str) -> str:
    """The line a person needs ("error: unknown target CPU 'generic'"), not pyopencl's preamble nor
    the location in the probe's temporary source file."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and not line.startswith("clBuildProgram failed"):
            return re.sub(r"^error: \S+:\d+:\d+: ", "error: ", line)
    return lines[0] if lines else "unknown OpenCL error"


def _read(path: Path) -> Verdict | None:
    try:
        return Verdict(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent, torn or from another version: probe again


def _write(path: Path, result: Verdict) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(result), f)
        os.replace(tmp, path)  # agents starting together each see a whole verdict
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # a read-only cache only costs a probe next time
