"""README claims that had no test: integer overflow, NaN in histograms, empty inputs through a
cluster, the CSR checks, numpy:N devices."""
import grpc
import numpy as np
import pytest

import lepton
from references import assert_matches


def test_int64_sums_wrap_like_numpy_through_a_cluster(client):
    x = np.full(1000, 2**62, dtype=np.int64)  # the sum overflows int64 250 times over
    result = client.run("sum", x, partitions=7)
    assert result["sum"].dtype == np.int64 and result["sum"] == np.sum(x)  # NumPy wraps modulo 2^64
    y = np.full((3000, 2), 2**31 - 1, dtype=np.int32)
    assert np.array_equal(client.run("sum", y, partitions=5)["sum"], np.sum(y, axis=0))  # int32 widens


def test_histogram_counts_ignore_nan_like_numpy(client):
    x = np.random.default_rng(1).standard_normal(10_000)
    x[::7] = np.nan
    counts, edges = client.histogram(x, bins=8, range=[-3, 3], partitions=5)
    want = np.histogram(x, bins=8, range=(-3, 3))  # NumPy drops NaN (it is in no bin)
    assert np.array_equal(counts, want[0]) and np.array_equal(edges, want[1])
    assert client.count(x, partitions=5) == np.count_nonzero(~np.isnan(x))


@pytest.mark.parametrize("op, params", [("sum", {}), ("count", {}), ("histogram", {"bins": 4, "range": [0, 1]})])
def test_empty_input_through_a_cluster(client, op, params):
    x = np.zeros((0, 3), dtype=np.float64)
    assert_matches(op, x, client.run(op, x, **params), **params)


@pytest.mark.parametrize("op", ["min", "mean", "var"])
def test_empty_input_where_an_op_needs_rows_is_invalid_argument(client, op):
    with pytest.raises(lepton.LeptonError) as info:
        client.run(op, np.zeros((0, 2)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "needs at least one row" in info.value.details


def _csr(indptr, indices, data, **extra):
    return {"a_indptr": np.asarray(indptr, np.int64), "a_indices": np.asarray(indices, np.int32),
            "a_data": np.asarray(data, np.float64), "x": np.ones((2, 3)), **extra}


CSR = {
    "a_cols not positive": (_csr([0, 1, 2], [0, 1], [1.0, 2.0]), {"a_cols": 0}, "'a_cols'"),
    "indptr not int64": ({**_csr([0, 1, 2], [0, 1], [1.0, 2.0]), "a_indptr": np.array([0, 1, 2], np.int32)},
                         {"a_cols": 2}, "a_indptr must be 1-D int64"),
    "indices 2-D": ({**_csr([0, 1, 2], [0, 1], [1.0, 2.0]), "a_indices": np.zeros((2, 1), np.int32)},
                    {"a_cols": 2}, "a_indices must be 1-D int32 or int64"),
    "data of another length": (_csr([0, 1, 2], [0, 1], [1.0, 2.0, 3.0]), {"a_cols": 2}, "one value per index"),
    "indptr not ending at nnz": (_csr([0, 1, 1], [0, 1], [1.0, 2.0]), {"a_cols": 2}, "must start at 0"),
    "indptr decreasing": (_csr([0, 2, 1, 2], [0, 1], [1.0, 2.0], x=np.ones((2, 3))), {"a_cols": 2},
                          "never decrease"),
    "x of the wrong shape": (_csr([0, 1, 2], [0, 1], [1.0, 2.0], x=np.ones((3, 3))), {"a_cols": 2},
                             "x must have a's 2 columns"),
    "gcn not square": ({**_csr([0, 1, 2], [0, 1], [1.0, 2.0], x=np.ones((2, 3))), "w": np.ones((3, 2))},
                       {"a_cols": 3}, "must be square"),
}


@pytest.mark.parametrize("case", CSR)
def test_csr_checks_name_the_problem(client, case):
    inputs, params, message = CSR[case]
    op = "gcn_layer" if "w" in inputs else "spmm"
    with pytest.raises(lepton.LeptonError) as info:
        client.run(op, inputs, **params)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert message in info.value.details, info.value.details


def test_numpy_n_gives_an_agent_n_devices_that_all_work():
    with lepton.LocalCluster(agents=1, devices="numpy:3") as cluster:
        client = cluster.client(timeout=120)
        (agent,) = client.cluster_status().agents
        assert sorted(d.name for d in agent.devices) == ["numpy:0", "numpy:1", "numpy:2"]
        x = np.random.default_rng(2).standard_normal(3_000_000)
        job = client.submit("sum", x, partitions=24)
        assert_matches("sum", x, job.result())
        used = {p.device for p in client.trace(job.job_id).partitions}
        assert len(used) > 1, used  # the agent spread its partitions over its devices


def test_a_partition_whose_split_gives_up_is_retried_on_another_agent():
    """README: a device out of memory reruns the partition in halves down to 1/64; past that the
    partition fails and the coordinator retries it on another agent."""
    with lepton.LocalCluster(agents=1) as cluster:
        cluster.add_agent(args=["--test-out-of-memory"])
        client = cluster.client(timeout=120)
        x = np.random.default_rng(4).standard_normal(2_000_000)
        job = client.submit("sum", x, partitions=16)
        assert_matches("sum", x, job.result())
        trace = client.trace(job.job_id).partitions
        sick = next(a.agent_id for a in client.cluster_status().agents
                    if any(t.agent_id == a.agent_id and t.outcome == "RESOURCE_EXHAUSTED" for t in trace))
        failed = {t.partition for t in trace if t.agent_id == sick and t.outcome == "RESOURCE_EXHAUSTED"}
        redone = {t.partition for t in trace if t.agent_id != sick and t.outcome == "done"}
        assert failed and failed <= redone, (failed, redone)
        assert all(t.outcome != "done" for t in trace if t.agent_id == sick)
        log = "".join(p.read_text() for p in cluster.log_dir.glob("agent-*.log"))
        assert "event=partition.split" in log and "depth=6" in log  # halved down to 1/64 first
