"""The OpenCL backend through a real cluster: a coordinator and agents started with --device opencl.

Sums, means and variances are held to the bound of an OpenCL device's fold (tests/references.py, with
references.opencl_stages for the deepest launch any device could make), folded over partitions in
float64, plus the rounding of the final result to the input's float type; extremes, counts,
histograms and integer sums are exact.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from opencl_devices import opencl_stages, usable_opencl_device
from references import assert_matches

CL_DEVICE, SPEC = usable_opencl_device()  # agents, started with this environment, name it by index

import lepton  # noqa: E402

from lepton.backends.opencl import OpenCLDevice, ProgramCache, export_binaries, reductions  # noqa: E402

FP64 = "cl_khr_fp64" in CL_DEVICE.extensions


@pytest.fixture(scope="module")
def cluster():
    with lepton.LocalCluster(agents=2, devices=SPEC) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.client(timeout=120)


def data(dtype: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype.startswith("int"):
        return rng.integers(-(1 << 20), 1 << 20, size=shape).astype(dtype)
    return (100 + 10 * rng.standard_normal(shape)).astype(dtype)


def assert_reductions(client, x: np.ndarray) -> None:
    stages = opencl_stages(fp64=FP64)
    kw = {"partitions": 4}  # several partials per job: the OpenCL partials meet the op's combine
    assert np.array_equal(client.min(x, **kw), x.min(axis=0))
    assert np.array_equal(client.max(x, **kw), x.max(axis=0))
    assert np.array_equal(client.count(x, **kw), np.full(x.shape[1:], len(x)))
    assert_matches("sum", x, {"sum": client.sum(x, **kw)}, stages)  # integers: exact
    assert_matches("mean", x, {"mean": client.mean(x, **kw)}, stages)
    assert_matches("var", x, {"var": client.var(x, ddof=1, **kw)}, stages, ddof=1)
    if x.ndim <= 2:
        for params in ({"bins": 50, "range": [float(x.min()), float(x.max())]}, {"edges": [80, 95, 100, 101, 130]}):
            counts, edges = client.histogram(x, **params, **kw)
            columns = [x] if x.ndim == 1 else x.T
            want = [np.histogram(c, bins=params.get("edges", params.get("bins")), range=params.get("range"))
                    for c in columns]
            assert np.array_equal(counts, want[0][0] if x.ndim == 1 else np.stack([w[0] for w in want]))
            np.testing.assert_array_equal(edges, want[0][1])


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_reductions_equal_numpy_through_a_cluster(client, dtype):
    assert_reductions(client, data(dtype, (400_003,)))


def test_columns_through_a_cluster(client):
    assert_reductions(client, data("float32", (50_001, 4)))
    assert_reductions(client, data("int64", (30_001, 3)))


def test_status_shows_opencl_devices_with_measured_throughput(client):
    agents = client.cluster_status().agents
    assert len(agents) == 2
    for agent in agents:
        (device,) = agent.devices
        assert device.kind == "opencl" and device.name == "opencl:0"
        assert set(device.ops) >= {"sum", "min", "max", "mean", "var", "count", "histogram"}
        assert device.throughput["sum"] > 0  # calibrated when the agent opened the device


@pytest.fixture(scope="module")
def sum_only_manifest(tmp_path_factory):
    device = OpenCLDevice(CL_DEVICE, "export", cache=ProgramCache(tmp_path_factory.mktemp("cache")), calibrate=False)
    try:
        return export_binaries(device, [reductions.variant(device, "sum", np.float32, "flat")],
                               tmp_path_factory.mktemp("binaries"))
    finally:
        device.close()


def test_binary_only_agent_runs_what_its_binaries_cover(sum_only_manifest, tmp_path):
    env = {"LEPTON_OPENCL_CACHE": str(tmp_path / "cache"), "POCL_CACHE_DIR": str(tmp_path / "pocl")}
    with lepton.LocalCluster(agents=1, devices=f"{SPEC}@{sum_only_manifest}", env=env) as cluster:
        client = cluster.client(timeout=60)
        (agent,) = client.cluster_status().agents
        assert list(agent.devices[0].ops) == ["mean", "sum"]  # a float mean is the same float sum program
        x = data("float32", (300_001,))
        assert_matches("sum", x, {"sum": client.sum(x, partitions=3)}, opencl_stages(fp64=FP64))
        with pytest.raises(lepton.LeptonError) as info:
            client.var(x)
        assert "FAILED_PRECONDITION" in str(info.value.code)


def test_agent_with_a_corrupt_binary_refuses_to_start(sum_only_manifest, tmp_path):
    manifest = json.loads(sum_only_manifest.read_text())
    (entry,) = manifest["programs"].values()
    binary = (sum_only_manifest.parent / entry["file"]).read_bytes()
    (tmp_path / entry["file"]).write_bytes(binary[: len(binary) // 2])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with lepton.LocalCluster(agents=0) as cluster:
        with pytest.raises(RuntimeError, match="corrupt"):
            cluster.add_agent(devices=f"{SPEC}@{tmp_path / 'manifest.json'}")
