"""Discovery that checks before it promises (backends/opencl/probe.py), on any machine.

The device under test is made unusable at the edge of discovery: its probe gets a kernel the
compiler rejects, so the driver's real build failure and log flow through describe_devices,
select_devices, the agent's device opening and the CLI. Every other device probes as usual.
"""
from __future__ import annotations

import pytest

from opencl_devices import usable_opencl_device

CL_DEVICE, SPEC = usable_opencl_device()
INDEX = int(SPEC.split(":")[1])

import pyopencl as cl  # noqa: E402

from lepton import cli  # noqa: E402
from lepton.backends import discovery  # noqa: E402
from lepton.backends.opencl import all_devices, describe_devices, probe, select_devices  # noqa: E402
from lepton.errors import FailedPrecondition  # noqa: E402

# An undeclared name: every OpenCL compiler rejects it, and says so in its build log.
BROKEN_SOURCE = "__kernel void lepton_probe(__global int *out) { out[get_global_id(0)] = no_such_name; }"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    """Verdicts of this test only: the run's cache must not answer for a device broken on purpose."""
    monkeypatch.setenv("LEPTON_OPENCL_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def builds(monkeypatch):
    """Counts probe builds (device names, in order), passing the device under test BROKEN_SOURCE."""
    real, built = probe._build_and_run, []

    def build_and_run(device, source):
        built.append(device.name)
        return real(device, BROKEN_SOURCE if device == CL_DEVICE else source)

    monkeypatch.setattr(probe, "_build_and_run", build_and_run)
    return built


def test_unusable_device_is_listed_with_the_compilers_message(builds):
    entry = describe_devices()[INDEX]
    assert entry["usable"] is False
    assert "error" in entry["reason"] and "no_such_name" in entry["reason"]  # the compiler's own line
    assert "no_such_name" in entry["log"] and not entry["log"].startswith("clBuildProgram failed: BUILD_PROGRAM_FAILURE -")


def test_verdicts_are_cached_on_disk_and_fresh_probes_again(builds, fresh_cache):
    first = probe.verdict(CL_DEVICE)
    assert not first.usable and builds.count(CL_DEVICE.name) == 1
    assert probe.verdict(CL_DEVICE) == first and builds.count(CL_DEVICE.name) == 1  # the second costs a file read
    assert len(list((fresh_cache / "probe").glob("*.json"))) == 1
    again = probe.verdict(CL_DEVICE, fresh=True)
    assert not again.usable and "no_such_name" in again.reason and builds.count(CL_DEVICE.name) == 2


def test_a_usable_verdict_is_cached_too(monkeypatch):
    real, built = probe._build_and_run, []
    monkeypatch.setattr(probe, "_build_and_run", lambda device, source: built.append(1) or real(device, source))
    assert probe.verdict(CL_DEVICE).usable and probe.verdict(CL_DEVICE).usable
    assert len(built) == 1


def test_opencl_and_opencl_text_leave_the_unusable_device_out(builds, caplog):
    others = [d for d in all_devices() if d != CL_DEVICE and probe.verdict(d).usable]
    for selector in (None, "cpu"):
        if others:
            assert CL_DEVICE not in select_devices(selector)
        else:
            with pytest.raises(FailedPrecondition, match="no usable OpenCL device"):
                select_devices(selector)
    unusable_lines = [r.getMessage() for r in caplog.records if "opencl.device_unusable" in r.getMessage()]
    # Only the lines about the broken device: on a CPU the wheel's PoCL cannot build for (Zen 5), its
    # device is rightly reported unusable too, with its own reason.
    about_it = [line for line in unusable_lines if f'device="{CL_DEVICE.name} (' in line]
    assert about_it and all("no_such_name" in line for line in about_it)


def test_naming_the_unusable_device_is_failed_precondition_with_the_build_log(builds):
    for open_it in (lambda: select_devices(str(INDEX)), lambda: discovery.open_devices([SPEC])):
        with pytest.raises(FailedPrecondition) as info:
            open_it()
        assert f"'{SPEC}'" in info.value.details and "unusable" in info.value.details
        assert info.value.details.count("no_such_name") >= 2  # the reason line, then the build log


def test_lepton_devices_lists_the_unusable_device_with_the_reason(builds, capsys):
    # (The agent's start on such a device, in a process of its own: tests/test_opencl_platforms.py.)
    assert cli.main(["devices"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{SPEC} ")]
    assert "unusable" in row and "no_such_name" in row, row


def test_no_usable_device_names_the_platforms_and_how_to_get_one(monkeypatch):
    monkeypatch.setattr(probe, "PROBE_SOURCE", BROKEN_SOURCE)  # every device fails
    for selector in (None, "cpu"):
        with pytest.raises(FailedPrecondition) as info:
            select_devices(selector)
        details = info.value.details
        assert "no usable OpenCL device" in details and CL_DEVICE.platform.name.strip() in details
        assert "pocl-opencl-icd" in details and "GPU" in details and "no_such_name" in details


def test_manifest_devices_are_not_probed(builds):
    # Prebuilt binaries (FPGAs) are checked by their manifest, not by compiling: no probe, no refusal.
    assert select_devices(str(INDEX), probe_first=False) == [CL_DEVICE] and builds == []


def test_wrong_answers_make_a_device_unusable(monkeypatch):
    monkeypatch.setattr(probe, "_build_and_run", lambda device, source: probe.np.zeros(probe.PROBE_ITEMS, "int32"))
    verdict = probe.verdict(CL_DEVICE)
    assert not verdict.usable and f"{probe.PROBE_ITEMS} wrong values" in verdict.reason


def test_errors_that_may_pass_are_not_cached(monkeypatch, fresh_cache):
    def out_of_resources(device, source):
        raise cl.RuntimeError(cl._cl._ErrorRecord(msg="clEnqueueNDRangeKernel failed", routine="clTest",
                                                  code=cl.status_code.OUT_OF_RESOURCES))

    monkeypatch.setattr(probe, "_build_and_run", out_of_resources)
    assert not probe.verdict(CL_DEVICE).usable
    assert not list((fresh_cache / "probe").glob("*.json"))  # the next start probes again
