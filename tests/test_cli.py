"""The `lepton` command as a user runs it."""
import subprocess
import sys

import numpy as np


def at(cluster) -> list[str]:
    """--coordinator and the cluster's client token (LocalCluster makes a random one)."""
    return ["--coordinator", cluster.address, "--token-file", str(cluster.token_file)]


def lepton(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lepton", *args], capture_output=True, text=True, timeout=timeout)


def test_run_on_an_npy_file(clusters, tmp_path):
    x = np.random.default_rng(5).uniform(0, 1, size=(30_000, 2))
    np.save(tmp_path / "x.npy", x)
    out = lepton("run", "histogram", str(tmp_path / "x.npy"), "-p", "bins=4", "-p", "range=0,1",
                 *at(clusters[2]))
    assert out.returncode == 0, out.stderr
    assert "edges" in out.stdout
    out = lepton("run", "histogram", str(tmp_path / "x.npy"), "-p", "bins=4", "-p", "range=0,1", "--json",
                 *at(clusters[2]))
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout)
    assert result["counts"] == [np.histogram(c, bins=4, range=(0, 1))[0].tolist() for c in x.T]
    assert result["edges"] == np.linspace(0, 1, 5).tolist()


def test_status_lists_agents_devices_ops_and_jobs(clusters):
    clusters[2].client().sum(np.ones(5))
    out = lepton("status", *at(clusters[2]))
    assert out.returncode == 0, out.stderr
    assert "2 agent(s)" in out.stdout and "numpy:0" in out.stdout
    from lepton.backends.ops import REGISTRY

    assert ",".join(sorted(n for n, op in REGISTRY.items() if not op.abstract)) in out.stdout
    assert "SUCCEEDED" in out.stdout
    jobs = lepton("jobs", "--json", *at(clusters[2]))
    assert jobs.returncode == 0 and '"state": "JOB_STATE_SUCCEEDED"' in jobs.stdout


def test_put_run_on_and_drop_a_dataset(clusters, tmp_path):
    x = np.random.default_rng(9).standard_normal((40_000, 3))
    np.save(tmp_path / "x.npy", x)
    address = [*at(clusters[2])]
    out = lepton("put", "cli-x", str(tmp_path / "x.npy"), "--partitions", "4", "--replace", "--durable", *address)
    assert out.returncode == 0 and "4 partitions" in out.stdout and "saved to disk" in out.stdout, out.stderr
    assert next(d for d in clusters[2].client().datasets() if d.name == "cli-x").info.saved  # before put returned
    assert "cli-x" in lepton("datasets", *address).stdout
    out = lepton("run", "max", "-i", "x=@cli-x", "--json", *address)
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["max"] == x.max(axis=0).tolist()
    assert lepton("drop", "cli-x", *address).returncode == 0
    out = lepton("run", "max", "-i", "x=@cli-x", *address)
    assert out.returncode == 1 and "NOT_FOUND" in out.stderr and "client.put" in out.stderr


def test_devices_lists_what_an_agent_can_open():
    from opencl_devices import usable_opencl_device

    _, spec = usable_opencl_device()
    out = lepton("devices")
    assert out.returncode == 0, out.stderr
    assert "numpy" in out.stdout and spec in out.stdout and "mpi:N" in out.stdout


def test_unreachable_coordinator_says_what_to_do():
    out = lepton("status", "--coordinator", "127.0.0.1:1", timeout=60)
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr and "lepton up" in out.stderr


def test_demo_verifies_every_result():
    out = lepton("demo", "--rows", "2000000", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "13/13 results match NumPy" in out.stdout


def test_run_with_named_inputs_and_json(clusters, tmp_path):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((8, 3))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    out = lepton("run", "matmul", "-i", f"a={tmp_path / 'a.npy'}", "-i", f"b={tmp_path / 'b.npy'}", "--json",
                 "-o", str(tmp_path / "c.npz"), *at(clusters[2]))
    assert out.returncode == 0, out.stderr
    import json

    assert np.allclose(json.loads(out.stdout)["c"], a @ b, rtol=1e-12)
    assert np.allclose(np.load(tmp_path / "c.npz")["c"], a @ b, rtol=1e-12)


def test_the_demos_check_rejects_wrong_results():
    """`lepton demo` has a check of its own: it must reject a sum with one of 16 partitions missing,
    a variance 1e-4 off and a histogram one count off, and pass the right answers."""
    from lepton.demo import mismatch

    x = np.random.default_rng(7).standard_normal(2_000_000, dtype=np.float32)
    total = np.sum(x, dtype=np.float64)
    assert mismatch("sum", x, {"sum": np.float32(total)}) is None
    missing = total - np.sum(x[-len(x) // 16:], dtype=np.float64)
    assert mismatch("sum", x, {"sum": np.float32(missing)}) is not None
    assert mismatch("var", x, {"var": np.float32(x.var(dtype=np.float64))}, ddof=0) is None
    assert mismatch("var", x, {"var": np.float32(x.var(dtype=np.float64) * (1 + 1e-4))}, ddof=0) is not None
    counts = np.histogram(x, bins=8, range=(-4, 4))[0]
    assert mismatch("histogram", x, {"counts": counts}, bins=8, range=[-4, 4]) is None
    counts[3] += 1
    assert mismatch("histogram", x, {"counts": counts}, bins=8, range=[-4, 4]) is not None


def test_health_over_several_addresses_says_who_leads_and_exits_for_a_supervisor():
    """`lepton health` over two coordinators that each lead alone (two clusters, no etcd): both say
    SERVING and name themselves: exit 3, several lead. (0, 2 and 1 with a real HA pair, in
    test_lifecycle.py::test_lepton_up_ha_….) With one address it stays the plain probe."""
    from lepton import LocalCluster

    with LocalCluster(agents=0, token="") as one, LocalCluster(agents=0, token="") as two:  # coordinators alone
        out = lepton("health", "--coordinator", f"{one.address},{two.address}")
        assert out.returncode == 3, out.stdout + out.stderr
        assert f"several coordinators say they lead: {one.address}, {two.address}" in out.stdout
        assert out.stdout.count(" leader\n") == 2
        out = lepton("health", "--coordinator", one.address)
        assert (out.returncode, out.stdout) == (0, "SERVING\n"), out.stderr
