"""Platform mixes, simulated: the ICD loader pointed at a folder of our own .icd files (OCL_ICD_VENDORS).

Each mix runs in subprocesses that see only its platforms: the wheel's PoCL (3.0-rc2, LLVM 14, in
pyopencl/.libs), Debian's pocl-opencl-icd (3.1, LLVM 15, /etc/OpenCL/vendors), both, and a *broken*
wheel PoCL. The broken one stands in for the wheel's PoCL on an AMD Zen 5, where it lists the CPU
and then fails every build ("unknown target CPU 'generic'"): the same library, loaded from a copy of
its folder layout that lacks its OpenCL headers, so the real driver lists a device and its real
compiler refuses to build (the headers' "file not found"; where the wheel's compiler rejects the CPU
itself, that line comes first). On a machine where the wheel's PoCL does fail, the wheel mix shows it
unusable the same way.

pyopencl's own ICD loader also reads $PYOPENCL_HOME/.libs/*.icd (the wheel's PoCL), and pyopencl sets
PYOPENCL_HOME when imported; the subprocesses point it at the vendors folder, which has no .libs,
before the loader first runs, so OCL_ICD_VENDORS alone decides.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opencl_devices import missing, opencl_stages, usable_opencl_device
from references import assert_matches

usable_opencl_device()  # skips (or fails on CI) without the OpenCL backend and a working device

import pyopencl  # noqa: E402

import lepton  # noqa: E402

TESTS = Path(__file__).parent
WHEEL_LIBS = Path(pyopencl.__file__).parent / ".libs"  # where pocl-binary-distribution puts libpocl
WHEEL_SHARE = WHEEL_LIBS.parent.parent / "pocl_binary_distribution" / ".libs"  # its RELOC data: ../../

# Run in each subprocess first: only OCL_ICD_VENDORS' platforms (see the module docstring).
ONLY_THESE_ICDS = ("import os, sys, pyopencl; os.environ['PYOPENCL_HOME'] = os.environ['OCL_ICD_VENDORS']; "
                   "sys.path.insert(0, os.environ['LEPTON_TESTS'])\n")
LEPTON_CLI = ONLY_THESE_ICDS + "from lepton.cli import main; sys.argv[0] = 'lepton'; sys.exit(main())"
# The tests' own picker, then a sum on the device it picked, against NumPy in the parent.
PICK_AND_SUM = ONLY_THESE_ICDS + """
import json, numpy as np
from opencl_devices import usable_opencl_device
from lepton.backends.opencl import open_devices
from lepton.backends.ops import REGISTRY, TensorMeta
device, spec = usable_opencl_device()
(dev,) = open_devices(spec.split(":", 1)[1], calibrate=False)
x = np.random.default_rng(3).standard_normal(100_003).astype(np.float32)
op = REGISTRY["sum"]
params = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
print(json.dumps({"spec": spec, "driver": device.driver_version, "sum": float(dev.run(op, {"x": x}, params)["sum"])}))
"""


def wheel_library() -> Path:
    found = sorted(WHEEL_LIBS.glob("libpocl*.so*"))
    if not found:
        missing(f"no wheel PoCL in {WHEEL_LIBS} (pip install pocl-binary-distribution)")
    return found[0]


def debian_library() -> Path:
    for icd in sorted(Path("/etc/OpenCL/vendors").glob("*.icd")):
        library = icd.read_text().strip()
        if "libpocl" in library:
            return Path(library)
    missing("no Debian PoCL registered in /etc/OpenCL/vendors (apt-get install pocl-opencl-icd; .ci/run does)")


def wheel_reason_here() -> str | None:
    """Why the intact wheel PoCL cannot build on this CPU (its compiler's line), or None where it can.

    Where it cannot (AMD Zen 5), its broken copy fails with that same line before it looks for headers.
    """
    from lepton.backends.opencl import all_devices, probe
    wheel = [d for d in all_devices() if "3.0-rc2" in d.driver_version and d.type & pyopencl.device_type.CPU]
    if not wheel:
        missing("the wheel's PoCL lists no CPU device in this process")
    verdict = probe.verdict(wheel[0])
    return None if verdict.usable else verdict.reason


def broken_reason() -> str:
    """What the broken copy's build must fail with here: the missing headers, or the CPU the wheel rejects."""
    reason = wheel_reason_here()
    return "file not found" if reason is None else reason.splitlines()[0][:60]


def broken_wheel_library(root: Path) -> Path:
    """The wheel's libpocl in a copy of its folder layout (symlinks) without its include headers."""
    real = wheel_library()
    libs, share = root / "pyopencl" / ".libs", root / "pocl_binary_distribution" / ".libs"
    (share / "share" / "pocl" / "include").mkdir(parents=True)  # empty: the headers are what is broken
    libs.mkdir(parents=True)
    (libs / real.name).symlink_to(real)
    for dependency in WHEEL_SHARE.glob("*.so*"):  # libhwloc, found through the RPATH $ORIGIN/../../...
        (share / dependency.name).symlink_to(dependency)
    for kernel_library in (WHEEL_SHARE / "share" / "pocl").glob("*.bc"):
        (share / "share" / "pocl" / kernel_library.name).symlink_to(kernel_library)
    return libs / real.name


# name: the platforms, one .icd file each. Debian's PoCL builds on every CPU seen so far; the wheel's
# may not (AMD Zen 5), and there it must show as unusable with its compiler's message; the broken
# one never builds.
MIXES = {
    "wheel": ["wheel"],
    "debian": ["debian"],
    "both": ["debian", "wheel"],
    "broken-wheel": ["broken"],
    "debian+broken-wheel": ["debian", "broken"],
}


@pytest.fixture
def mix_env(tmp_path):
    """env(mix name) -> the environment of a subprocess that sees only that mix's platforms."""
    def env(name: str) -> dict:
        vendors = tmp_path / f"vendors-{name}"
        vendors.mkdir()
        for i, platform in enumerate(MIXES[name]):
            library = {"wheel": wheel_library, "debian": debian_library,
                       "broken": lambda: broken_wheel_library(tmp_path / f"broken-{name}")}[platform]()
            (vendors / f"{i}-{platform}.icd").write_text(f"{library}\n")
        return {**os.environ, "OCL_ICD_VENDORS": str(vendors), "LEPTON_TESTS": str(TESTS), "CI": "",
                "LEPTON_OPENCL_CACHE": str(tmp_path / f"cache-{name}"), "POCL_CACHE_DIR": str(tmp_path / f"pocl-{name}")}
    return env


def python(code: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", list(MIXES))
def test_each_mix_gives_a_usable_cpu_device_where_its_platform_works(name, mix_env):
    platforms, env = MIXES[name], mix_env(name)
    devices = python(LEPTON_CLI, env, "devices")
    assert devices.returncode == 0 and "Traceback" not in devices.stderr, devices.stderr
    rows = [line for line in devices.stdout.splitlines() if line.startswith("opencl:")]
    assert len(rows) == len(platforms), devices.stdout  # one CPU device per PoCL platform
    # The loader lists platforms in the folder's directory order: tell the rows apart by driver version
    # (the wheel's PoCL and its broken copy, both 3.0-rc2, are never in one mix).
    kinds = {"debian" if "driver 3.1" in row else next(p for p in platforms if p != "debian"): row for row in rows}
    assert sorted(kinds) == sorted(platforms), devices.stdout
    for kind, row in kinds.items():
        usable = "unusable" not in row
        if kind == "broken":
            assert not usable and "error:" in row and broken_reason() in row, row  # the compiler's own line
        elif kind == "debian":
            assert usable and "CUs" in row, row
        else:
            assert ("CUs" in row) if usable else ("error" in row), row  # works, or says why not (Zen 5)

    picked = python(PICK_AND_SUM, env)
    usable_specs = [row.split()[0] for row in rows if "unusable" not in row]
    if not usable_specs:
        assert picked.returncode != 0 and "no usable OpenCL device" in picked.stdout + picked.stderr
        return
    assert picked.returncode == 0, picked.stderr
    report = json.loads(picked.stdout.strip().splitlines()[-1])
    assert report["spec"] == usable_specs[0]  # the first usable CPU device, whichever platform it is on
    x = np.random.default_rng(3).standard_normal(100_003).astype(np.float32)
    # float32 sums: within the bound of the deepest OpenCL fold (tests/references.py), whatever the device.
    assert_matches("sum", x, {"sum": np.asarray(report["sum"], dtype=np.float32)}, opencl_stages(fp64=False))


def test_only_a_broken_platform_agent_start_is_a_readable_error(mix_env):
    env = mix_env("broken-wheel")
    for spec, says in (("opencl", "no usable OpenCL device"), ("opencl:cpu", "no usable OpenCL device"),
                       ("opencl:0", "is unusable")):
        agent = python(LEPTON_CLI, env, "agent", "--device", spec, "--coordinator", "127.0.0.1:1",
                       "--metrics-listen", "off")
        assert agent.returncode == 1 and "Traceback" not in agent.stderr, agent.stderr
        assert "lepton: FAILED_PRECONDITION" in agent.stderr and says in agent.stderr, agent.stderr
        assert broken_reason() in agent.stderr  # the compiler's message: the reason, or the whole build log
        if spec != "opencl:0":
            assert "Portable Computing Language" in agent.stderr and "pocl-opencl-icd" in agent.stderr


def test_only_a_broken_platform_a_numpy_cluster_still_works(mix_env):
    # The cluster's processes get the broken-only vendors folder (LocalCluster's own `python -m lepton`
    # children also see the wheel's PoCL through PYOPENCL_HOME; NumPy agents touch no platform at all).
    env = mix_env("broken-wheel")
    x = np.arange(1000, dtype=np.float64)
    with lepton.LocalCluster(agents=1, devices="numpy", env={"OCL_ICD_VENDORS": env["OCL_ICD_VENDORS"]}) as cluster:
        assert cluster.client(timeout=60).sum(x) == x.sum()  # integers in float64: exact
