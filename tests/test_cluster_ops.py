"""Every reduction through a real cluster (processes, gRPC) equals NumPy, on 1-3 agents, for each partitioning;
the client's convenience methods and job progress. (The op catalog: test_catalog.py.)"""
import numpy as np
import pytest

from lepton.backends.ops.reductions import OPS as REDUCTIONS
from references import assert_matches, mismatch

PARAMS = {"histogram": {"bins": 16, "range": [-3.0, 3.0]}, "var": {"ddof": 1}}
SCHEMES = ["row_blocks", "hash", "round_robin"]


def data(rng, dtype, shape):
    x = rng.standard_normal(shape) * (1 if dtype.startswith("float") else 1000)
    if dtype.startswith("float"):
        x[::97] = np.round(x[::97])  # repeated keys, so hash partitions are uneven
    return x.astype(dtype)


@pytest.mark.parametrize("agents", [1, 2, 3])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_reduction_matches_numpy(clusters, agents, scheme, rng):
    client = clusters[agents].client(timeout=60)
    for dtype in ("float32", "float64", "int32", "int64"):
        for shape in [(20_011,), (5_003, 3)]:
            x = data(rng, dtype, shape)
            for op in sorted(o.name for o in REDUCTIONS):
                params = PARAMS.get(op, {})
                result = client.run(op, x, partitioning=scheme, partitions=9, **params)
                problem = mismatch(op, x, result, **params)
                assert problem is None, f"{op} {dtype}{shape} {scheme} on {agents} agent(s): {problem}"


def test_convenience_methods_mirror_numpy(client, rng):
    x = rng.standard_normal(100_000).astype(np.float32)
    assert client.min(x) == x.min() and client.max(x) == x.max()
    assert client.count(x) == x.size
    assert_matches("sum", x, {"sum": client.sum(x)})
    assert_matches("mean", x, {"mean": client.mean(x)})
    assert_matches("var", x, {"var": client.var(x, ddof=1)}, ddof=1)
    counts, edges = client.histogram(x, edges=[-1.0, 0.0, 0.5, 2.0])
    want_counts, want_edges = np.histogram(x, bins=[-1.0, 0.0, 0.5, 2.0])
    assert np.array_equal(counts, want_counts) and np.array_equal(edges, want_edges)


def test_job_progress_and_status(client, rng):
    x = rng.standard_normal(4_000_000).astype(np.float32)
    job = client.submit("sum", x, partitions=16, label="progress-test")
    statuses = list(job)
    job.result()
    assert statuses[0].state == 1 and statuses[-1].state == 3  # ACCEPTED ... SUCCEEDED
    assert statuses[-1].partitions_done == statuses[-1].partitions_total == 16
    assert statuses[-1].bytes_received == statuses[-1].bytes_total == x.nbytes
    assert client.job(job.job_id).label == "progress-test"
    assert job.job_id in [j.job_id for j in client.jobs()]
