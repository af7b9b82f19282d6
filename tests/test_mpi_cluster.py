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

lepton = pytest.importorskip("lepton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_mpi_device import _gone, _tagged, assert_close, numpy_result  # noqa: E402

pytestmark = pytest.mark.timeout(60)

EXACT = ("min", "max", "count", "histogram")
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
def mpi_answers():
    with Cluster(["mpi:2"]) as cluster:
        client = cluster.local.client()
        [agent] = client.cluster_status().agents
        assert [d.kind for d in agent.devices] == ["mpi"]
        answers = run_all(client)
        x = inputs()[0]
        sums = {client.run("sum", x, partitions=PARTITIONS)["sum"].tobytes() for _ in range(5)}
        yield answers, sums


@pytest.fixture(scope="module")
def mixed_answers():
    with Cluster(["numpy", "mpi:2"]) as cluster:
        client = cluster.local.client()
        assert sorted(d.kind for a in client.cluster_status().agents for d in a.devices) == ["mpi", "numpy"]
        answers = run_all(client)
        assert all(a.partitions_done > 0 for a in client.cluster_status().agents)  # both took part
        yield answers


@pytest.mark.parametrize("cluster", ["mpi", "mixed"])
def test_every_op_equals_numpy(cluster, mpi_answers, mixed_answers):
    answers = mpi_answers[0] if cluster == "mpi" else mixed_answers
    for (name, _), (got, x, params) in answers.items():
        for key, want in numpy_result(name, x, params).items():
            assert_close(name, key, got[key], want, x)


def test_mixed_cluster_is_bitwise_the_mpi_cluster_for_exact_ops(mpi_answers, mixed_answers):
    for (name, i), (got, _, _) in mixed_answers.items():
        if name in EXACT:
            for key, value in got.items():
                assert np.array_equal(value, mpi_answers[0][name, i][0][key], equal_nan=True), (name, i, key)
                assert value.dtype == mpi_answers[0][name, i][0][key].dtype


def test_float_sum_is_bitwise_stable_run_to_run(mpi_answers):
    # All partitions run on the MPI device. (A mixed cluster is not bitwise stable for float sums:
    # the pool splits a partition across ranks, so its partial differs in the last bits from the
    # NumPy device's for the same partition, and which agent runs which partition varies.)
    assert len(mpi_answers[1]) == 1


def test_killing_a_worker_rank_mid_job_retries_elsewhere_and_the_job_succeeds():
    # A random delay before each partition keeps both agents' runs in flight while the worker dies.
    with Cluster(["numpy", "mpi:2"], agent_args=["--test-delay", "0.3"]) as cluster:
        client = cluster.local.client()
        [mpi] = [d for a in client.cluster_status().agents for d in a.devices if d.kind == "mpi"]
        worker = int(re.search(r"workers 1:[^/]+/(\d+)", mpi.description).group(1))  # the test hook
        x = np.random.default_rng(5).standard_normal(400_000)
        job = client.submit("histogram", x, partitions=16, bins=100, range=[-5.0, 5.0])
        assert job.job_id
        os.kill(worker, signal.SIGKILL)
        result = job.result(timeout=30)
        assert np.array_equal(result["counts"], np.histogram(x, bins=100, range=(-5, 5))[0])
        # On one host, hydra's proxy SIGKILLs rank 0 (the agent) too when a rank dies by a signal;
        # the coordinator loses the agent and runs its partitions on the NumPy agent.
        assert client.job(job.job_id).retries >= 1, cluster.local.logs()
