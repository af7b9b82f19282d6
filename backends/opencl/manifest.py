"""Prebuilt program binaries (the FPGA path): a JSON manifest mapping program variants to files.

    {"format": "lepton-opencl-binaries/1",
     "device": "...", "driver_version": "...",          informative
     "programs": {"reduce.sum.float32.flat": {"file": "reduce.sum.float32.flat.bin", "sha256": "<hex>"},
                  ...}}

Files are relative to the manifest. A variant names one build of one kernel source (see
`OpenCLDevice.variant`); the binary must have been built with the options the device computes for it,
which is what `export_binaries` does. The sha256 is required and checked before the driver sees the
bytes: PoCL crashes on a truncated binary and accepts a corrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from lepton.errors import FailedPrecondition
from lepton.backends.opencl.compiler import program_binary

FORMAT = "lepton-opencl-binaries/1"


def read_manifest(path: str | os.PathLike) -> dict[str, bytes]:
    """Variant -> binary bytes; FailedPrecondition naming the file for anything missing or corrupt."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        programs = manifest["programs"]
        if manifest.get("format") != FORMAT or not isinstance(programs, dict):
            raise ValueError(f"expected format {FORMAT!r} with a 'programs' object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FailedPrecondition(f"OpenCL binary manifest {path}: cannot read it: {error}") from None
    binaries = {}
    for variant, entry in programs.items():
        try:
            file = path.parent / entry["file"]
            expected = entry["sha256"]
            binary = file.read_bytes()
        except (OSError, KeyError, TypeError) as error:
            raise FailedPrecondition(f"OpenCL binary manifest {path}: program {variant!r}: {error!r}") from None
        if hashlib.sha256(binary).hexdigest() != expected:
            raise FailedPrecondition(f"OpenCL binary {file} (program {variant!r}) is corrupt: its sha256 is "
                                     f"not the one {path} records; rebuild or re-export it")
        binaries[variant] = binary
    if not binaries:
        raise FailedPrecondition(f"OpenCL binary manifest {path} lists no programs")
    return binaries


def export_binaries(device, variants: Iterable[str], directory: str | os.PathLike) -> Path:
    """Build `variants` on `device` (an OpenCLDevice that compiles) and write them with a manifest.

    Returns the manifest's path, usable as `--device opencl:I@PATH` on the same kind of device.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    programs = {}
    for variant in variants:
        binary = program_binary(device.program(variant))
        file = f"{variant}.bin"
        (directory / file).write_bytes(binary)
        programs[variant] = {"file": file, "sha256": hashlib.sha256(binary).hexdigest()}
    path = directory / "manifest.json"
    path.write_text(json.dumps({"format": FORMAT, "device": device.cl_device.name,
                                "driver_version": device.cl_device.driver_version,
                                "programs": programs}, indent=1) + "\n")
    return path
