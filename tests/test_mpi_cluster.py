"""An MPI agent of 2 ranks ('mpi:2') in a real cluster: coordinator and agents as processes on loopback.

Every process of a cluster carries a unique LEPTON_TEST_TAG; teardown checks that none outlives it
(hydra puts each rank in its own session, out of reach of the cluster's process-group kill).
"""
from __future__ import annotations

import os
import re
import signal
import sys
import uuid

import numpy as np
import pytest

import lepton
from lepton.backends.ops import REGISTRY
from references import assert_matches, check_kmeans, check_pca, check_topk, close, csr, gcn_reference
from waits import wait_for

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_mpi_device import _gone, _tagged  # noqa: E402

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 8


def inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    f32 = (rng.standard_normal((120_001, 3)) * 1000).astype(np.float32)
    f32[17, 2] = np.nan
    return [f32, rng.standard_normal(200_003) * 1000, rng.integers(-2**31, 2**31 - 1, 100_000, dtype=np.int32),
            rng.integers(-2**40, 2**40, (50_001, 2), dtype=np.int64)]


def run_all(client) -> dict:
    """Every reduction op on every input: {(op, input index): results}."""
    answers = {}
    for i, x in enumerate(inputs()):
        for name in ("sum", "min", "max", "count", "mean", "var"):
            answers[name, i] = (client.run(name, x, partitions=PARTITIONS), x, {})
        x, params = np.nan_to_num(x), {"bins": 50, "range": [-3000.0, 3000.0]}
        answers["histogram", i] = (client.run("histogram", x, partitions=PARTITIONS, **params), x, params)
    return answers


class Cluster:
    def __init__(self, devices: list[str], **kwargs):
        self.tag = uuid.uuid4().hex
        self.local = lepton.LocalCluster(agents=len(devices), devices=devices, env={"LEPTON_TEST_TAG": self.tag},
                                         **kwargs)

    def __enter__(self):
        self.local.start()
        return self

    def __exit__(self, *exc):
        self.local.close()
        stray = [] if _gone(self.tag, 10) else _tagged(self.tag)
        for pid in stray:
            os.kill(pid, signal.SIGKILL)
        assert not stray, f"processes outlived the cluster: {stray}"


@pytest.fixture(scope="module")
def mpi_client():
    """A cluster whose only agent is an MPI pool of 2 ranks: every partition goes through the pool."""
    with Cluster(["mpi:2"]) as cluster:
        client = cluster.local.client(timeout=120)
        [agent] = client.cluster_status().agents
        assert [d.kind for d in agent.devices] == ["mpi"]
        yield client


@pytest.fixture(scope="module")
def mixed_client():
    with Cluster(["numpy", "mpi:2"]) as cluster:
        client = cluster.local.client(timeout=120)
        assert sorted(d.kind for a in client.cluster_status().agents for d in a.devices) == ["mpi", "numpy"]
        yield client


@pytest.fixture(scope="module")
def mpi_answers(mpi_client):
    return run_all(mpi_client)


@pytest.fixture(scope="module")
def mixed_answers(mixed_client):
    answers = run_all(mixed_client)
    assert all(a.partitions_done > 0 for a in mixed_client.cluster_status().agents)  # both took part
    return answers


def test_the_mpi_and_numpy_devices_advertise_the_same_ops(mixed_client):
    ops = {d.kind: list(d.ops) for a in mixed_client.cluster_status().agents for d in a.devices}
    assert ops["mpi"] == ops["numpy"]
    assert "matmul" not in ops["mpi"]  # abstract: it only picks matmul.rows or matmul.inner


@pytest.mark.parametrize("cluster", ["mpi", "mixed"])
def test_every_reduction_equals_numpy(cluster, mpi_answers, mixed_answers):
    answers = mpi_answers if cluster == "mpi" else mixed_answers
    for (name, _), (got, x, params) in answers.items():
        assert_matches(name, x, got, **params)


def test_mixed_cluster_is_bitwise_the_mpi_cluster(mpi_answers, mixed_answers):
    # Exact ops by their nature; float sums because every device computes a partition's canonical
    # partial (backends/blocks.py).
    for (name, i), (got, _, _) in mixed_answers.items():
        for key, value in got.items():
            assert np.array_equal(value, mpi_answers[name, i][0][key], equal_nan=True), (name, i, key)
            assert value.dtype == mpi_answers[name, i][0][key].dtype


@pytest.mark.slow  # about 10 s: 18 jobs of 68 MiB, so that every partition holds two blocks
def test_float_reductions_are_bitwise_the_numpy_clusters_run_to_run(mixed_client, clusters):
    """Partitions of two blocks or more, so the pool really splits them across its ranks; the mixed
    cluster's results must not depend on which agent ran which partition, nor differ from a
    NumPy-only cluster's by a bit."""
    from lepton.backends.blocks import layout

    partitions = 16
    # float64 of wide range (68 MiB): any other fold order of its float64 partials gives other bits.
    rng = np.random.default_rng(13)
    x = rng.standard_normal((partitions * 35_000, 16)) * np.exp(rng.uniform(-20, 20, (partitions * 35_000, 16)))
    assert layout(REGISTRY["sum"], {"x": x[:len(x) // partitions]})[2] >= 2
    numpy_client = clusters[1].client(timeout=120)
    done = lambda: {a.agent_id: a.partitions_done for a in mixed_client.cluster_status().agents}  # noqa: E731
    before = done()
    for name in ("sum", "var", "mean"):
        want = numpy_client.run(name, x, partitions=partitions)[name]
        runs = {mixed_client.run(name, x, partitions=partitions)[name].tobytes() for _ in range(5)}
        assert runs == {want.tobytes()}, (name, len(runs))
    after = done()
    assert len(after) == 2 and all(after[agent] > before[agent] for agent in after), (before, after)  # both ran some


# ---------------------------------------------------------------- the op catalog through the pool
# Tolerances as in tests/test_catalog.py. Ops with inexact merges (matmul.inner, pca, kmeans) are
# sized past one block (about 4 MiB) per partition, so the pool gives each rank blocks of its own.



def test_matmul_inner_and_rows(mpi_client):
    rng = np.random.default_rng(31)
    for (m, k, n), plan, dtype, rtol, partitions in [((16, 60_000, 12), "inner", np.float32, 1e-4, 1),
                                                      ((16, 2_000, 12), "inner", np.float64, 1e-10, 3),
                                                      ((500, 64, 48), "rows", np.float32, 1e-4, 3),
                                                      ((500, 64, 48), "rows", np.float64, 1e-10, 3)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        c = mpi_client.matmul(a, b, plan=plan, partitions=partitions)
        assert c.dtype == dtype
        close(c, a @ b, np.abs(a) @ np.abs(b), rtol)




def test_spmm_and_gcn_layer(mpi_client):
    rng = np.random.default_rng(32)
    n = 600
    degree = np.minimum((rng.pareto(1.2, n) + 1) * 3, n).astype(int)  # power law
    dense = np.zeros((n, n))
    for i, d in enumerate(degree):
        dense[i, rng.choice(n, d, replace=False)] = rng.random(d)
    dense[5] = 0  # an empty row
    x = rng.standard_normal((n, 16))
    close(mpi_client.spmm(csr(dense), x, partitions=3), dense @ x, np.abs(dense) @ np.abs(x))
    w = rng.standard_normal((16, 4))
    sym = np.maximum(dense, dense.T)
    want = gcn_reference(sym, x, w)
    close(mpi_client.gcn_layer(csr(sym), x, w, partitions=3), want, np.abs(want) + 1, 1e-9)


def test_topk(mpi_client):
    check_topk(mpi_client, np.random.default_rng(33).integers(-50, 50, size=(3000, 3)).astype(np.int64), partitions=3)


def test_pca(mpi_client):
    rng = np.random.default_rng(34)
    x = rng.standard_normal((90_000, 8)) @ rng.standard_normal((8, 8))  # 5.8 MB: two blocks
    check_pca(mpi_client, x, partitions=1)




def test_kmeans(mpi_client):
    rng = np.random.default_rng(35)
    x = np.concatenate([rng.normal(c, 0.7, size=(40_000, 4)) for c in rng.uniform(-6, 6, size=(5, 4))])  # 6.4 MB
    check_kmeans(mpi_client, x, x[rng.choice(len(x), 5, replace=False)], 8, partitions=1)


@pytest.mark.slow  # about 25 s: partitions of 1-1.5 s each
def test_killing_a_worker_rank_mid_job_retries_elsewhere_and_the_job_succeeds():
    # A delay of 1-1.5 s before each partition keeps the MPI agent's run in flight while the worker dies.
    with Cluster(["numpy", "mpi:2"], agent_args=["--test-delay", "1:1.5"]) as cluster:
        client = cluster.local.client()
        [(agent_id, mpi)] = [(a.agent_id, d) for a in client.cluster_status().agents for d in a.devices
                             if d.kind == "mpi"]
        worker = int(re.search(r"workers 1:[^/]+/(\d+)", mpi.description).group(1))  # the test hook
        x = np.random.default_rng(5).standard_normal(400_000)
        job = client.submit("histogram", x, partitions=16, bins=100, range=[-5.0, 5.0])
        # Kill the worker only once the MPI agent holds a partition it has not returned.
        wait_for(lambda: any(p.agent_id == agent_id and p.outcome == "running"
                             for p in client.trace(job.job_id).partitions), "the MPI agent to hold a partition",
                 every=0.02)
        os.kill(worker, signal.SIGKILL)
        result = job.result(timeout=120)
        assert np.array_equal(result["counts"], np.histogram(x, bins=100, range=(-5, 5))[0])
        # On one host, hydra's proxy SIGKILLs rank 0 (the agent) too when a rank dies by a signal;
        # the coordinator loses the agent and runs its partitions on the NumPy agent.
        assert client.job(job.job_id).retries >= 1, cluster.local.logs()


def test_bad_input_found_by_a_kernel_on_the_pool_stays_invalid_argument(mpi_client):
    import grpc

    x = np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0], [5.0, 6.0]])
    with pytest.raises(lepton.LeptonError) as info:
        mpi_client.kmeans(x, centroids=x[[0, 2]])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in info.value.details
    assert mpi_client.job(mpi_client.jobs(limit=1)[0].job_id).retries == 0  # not retried elsewhere
