"""Prebuilt program binaries (the FPGA path): a JSON manifest mapping program variants to files.

    {"format": "lepton-opencl-binaries/2",
     "device": "...", "driver_version": "...",          informative
     "programs": {"<variant>": {"file": "<variant>.bin", "sha256": "<hex>"}, ...}}

Files are relative to the manifest. A variant names one build of one kernel source, defines and all
(variants.py, e.g. 'reduce.BLOCK=256,...,T=float,VEC=16'; reductions.variant gives the reductions'):
a device loads the binary under the name it would build itself, so one exported for another layout
or precision is never picked. `export_binaries` writes them. (Format 1 named variants in a grammar
of their own, 'reduce.sum.float32.flat'.) The sha256 is required and checked before the driver sees the
bytes: PoCL crashes on a truncated binary and accepts a corrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from lepton.errors import FailedPrecondition
FORMAT = "lepton-opencl-binaries/2"


def read_manifest(path: str | os.PathLike) -> dict[str, bytes]:
    """Variant -> binary bytes; FailedPrecondition naming the file for anything missing or corrupt."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        programs = manifest["programs"]
        if manifest.get("format") != FORMAT or not isinstance(programs, dict):
            raise ValueError(f"expected format {FORMAT!r} with a 'programs' object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FailedPrecondition(f"OpenCL binary manifest {path}: cannot read it: {error}; re-export it with "
                                 f"lepton.backends.opencl.export_binaries") from None
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
    """Build `variants` (names, see variants.py) on `device` (an OpenCLDevice that compiles) and
    write their binaries with a manifest.

    Returns the manifest's path, usable as `--device opencl:I@PATH` on the same kind of device.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    programs = {}
    for variant in variants:
        binary = device.program(variant).binary
        file = f"{variant}.bin"
        (directory / file).write_bytes(binary)
        programs[variant] = {"file": file, "sha256": hashlib.sha256(binary).hexdigest()}
    path = directory / "manifest.json"
    path.write_text(json.dumps({"format": FORMAT, "device": device.cl_device.name,
                                "driver_version": device.cl_device.driver_version,
                                "programs": programs}, indent=1) + "\n")
    return path
