"""Datasets: loaded once, resident on agents, used by name; evictions and lost agents lose nothing."""
import urllib.request

import grpc
import numpy as np
import pytest

import lepton
from references import assert_matches
from waits import wait_for


def bytes_sent(client):
    """The coordinator's counter of bytes shipped to agents."""
    address = client.cluster_status().metrics_address
    for line in urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode().splitlines():
        if line.startswith("lepton_agent_bytes_sent_total "):
            return float(line.split()[1])
    raise AssertionError("no lepton_agent_bytes_sent_total metric")


@pytest.fixture(scope="module")
def own():
    """A cluster of two agents for this module alone: byte counters move only with its own jobs."""
    with lepton.LocalCluster(agents=2) as cluster:
        yield cluster


def cache_bytes(client):
    """Bytes the agents keep in their caches, summed over agents."""
    total = 0.0
    for agent in client.cluster_status().agents:
        text = urllib.request.urlopen(f"http://{agent.metrics_address}/metrics", timeout=10).read().decode()
        total += sum(float(line.split()[1]) for line in text.splitlines()
                     if line.startswith("lepton_agent_cache_bytes "))
    return total


def test_jobs_on_a_dataset_ship_no_input_bytes(own, rng):
    client = own.client()
    x = rng.standard_normal((1_000_000, 4))
    cached = cache_bytes(client)
    ds = client.put("resident-x", x, partitions=8, replace=True)
    assert cache_bytes(client) >= cached + x.nbytes  # resident on the agents
    assert ds.shape == x.shape and ds.info.partitions == 8
    # Spread over both agents (in blocks by their measured speeds, even while they are about equal).
    assert len(ds.info.placement) == 2 and sum(ds.info.placement.values()) == 8, ds.info.placement
    before = bytes_sent(client)
    for _ in range(3):
        assert_matches("sum", x, {"sum": client.sum(ds)})
        assert_matches("var", x, {"var": client.var("resident-x")})
        assert np.array_equal(client.max(ds), x.max(axis=0))
    assert bytes_sent(client) - before == 0
    assert "resident-x" in [d.name for d in client.datasets()]
    client.drop("resident-x")
    wait_for(lambda: cache_bytes(client) <= cached, "the agents to free the dropped partitions")
    with pytest.raises(lepton.LeptonError) as info:
        client.sum(ds)
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "client.put" in info.value.details


def test_hash_partitioned_dataset_matches_numpy(clusters, rng):
    client = clusters[3].client()
    x = rng.integers(0, 100, size=(300_000, 2)).astype(np.float64)
    ds = client.put("hashed", x, partitioning="hash", partitions=6, key_column=1, replace=True)
    counts, _ = client.histogram(ds, bins=10, range=[0, 100])
    assert np.array_equal(counts, np.stack([np.histogram(c, bins=10, range=(0, 100))[0] for c in x.T]))
    client.drop("hashed")


def test_names_and_existence_are_checked(clusters):
    client = clusters[1].client()
    client.put("once", np.arange(10.0), replace=True)
    with pytest.raises(lepton.LeptonError) as info:
        client.put("once", np.arange(10.0))
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    replaced = client.put("once", np.arange(20.0), replace=True)
    assert client.sum(replaced) == np.arange(20.0).sum()
    with pytest.raises(lepton.LeptonError) as info:
        client.put("bad name!", np.arange(3.0))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "dataset name" in info.value.details
    with pytest.raises(lepton.LeptonError) as info:
        client.drop("never-loaded")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    client.drop("once")


def test_evicted_partitions_are_reloaded_from_the_coordinator_copy(rng):
    # Each agent caches at most 1 MiB: most of the 16 MB dataset is evicted at once.
    with lepton.LocalCluster(agents=2, agent_args=["--cache-mib", "1"]) as cluster:
        client = cluster.client()
        x = rng.standard_normal(2_000_000)
        ds = client.put("big", x, partitions=16)
        outcomes = []
        for _ in range(2):
            assert_matches("sum", x, client.run("sum", ds))
            outcomes += [p.outcome for p in client.trace(client.jobs(limit=1)[0].job_id).partitions]
        assert set(outcomes) == {"done", "NOT_FOUND"}, outcomes  # something was evicted, then sent again


def test_a_lost_agent_loses_no_dataset_job(rng):
    with lepton.LocalCluster(agents=3) as cluster:
        client = cluster.client()
        x = rng.standard_normal((600_000, 2))
        ds = client.put("kept", x, partitions=12)
        assert len(ds.info.placement) == 3
        pid = cluster.agents[0].pid
        (killed,) = [a.agent_id for a in client.cluster_status().agents if a.name.endswith(f"-{pid}")]
        cluster.kill_agent(0)
        for _ in range(2):
            assert_matches("sum", x, {"sum": client.sum(ds)})
        placement = {d.name: d for d in client.datasets()}["kept"].info.placement
        assert sum(placement.values()) == 12 and killed not in placement  # moved to the live agents


def test_a_sparse_dataset_is_one_input_to_spmm_and_gcn(own, rng):
    from references import close, csr

    client = own.client()
    n = 2000
    dense = (rng.random((n, n)) < 0.01) * rng.random((n, n))
    dense[:20] = (rng.random((20, n)) < 0.5) * rng.random((20, n))  # a few heavy rows
    ds = client.put("sparse-graph", csr(dense), partitions=6, replace=True)
    assert ds.info.sparse and ds.shape == (n, n) and ds.info.partitions == 6
    x = rng.standard_normal((n, 8))
    close(client.spmm(ds, x), dense @ x, np.abs(dense) @ np.abs(x))
    before = bytes_sent(client)
    close(client.spmm("sparse-graph", x), dense @ x, np.abs(dense) @ np.abs(x))
    assert bytes_sent(client) - before == 0  # the matrix is resident and x is cached by content
    trace = client.trace(client.jobs(limit=1)[0].job_id)
    rows = [p.rows for p in sorted(trace.partitions, key=lambda p: p.partition)]
    nnz = np.diff(csr(dense)[0][np.concatenate([[0], np.cumsum(rows)])])
    even = np.diff(csr(dense)[0][np.linspace(0, n, 7).astype(int)])  # six blocks of equal rows
    # Balanced by non-zeros: equal row counts would put 2.6x the mean on the heavy first block.
    assert nnz.max() <= 1.25 * nnz.mean() and even.max() > 2 * even.mean(), (nnz, even)
    # The put checked the indices against the matrix's own column count, so jobs naming it do not
    # read them again; a job naming another count is checked anew: fewer columns than the indices
    # reach is refused, more (x padded with zero rows) is a right product.
    top = int(csr(dense)[1].max())  # one column too few
    with pytest.raises(lepton.LeptonError) as info:
        client.spmm(ds, x[:top], a_cols=top)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "column outside" in info.value.details
    close(client.spmm(ds, np.vstack([x, np.zeros((5, 8))]), a_cols=n + 5), dense @ x, np.abs(dense) @ np.abs(x))
    client.drop("sparse-graph")
    bad = list(csr(dense))
    bad[1] = bad[1][::-1].copy()  # columns out of order
    with pytest.raises(lepton.LeptonError) as info:
        client.put("bad-graph", tuple(bad))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "strictly increasing" in info.value.details
    with pytest.raises(lepton.LeptonError) as info:
        client.put("hashed-graph", csr(dense), partitioning="hash")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "balanced by non-zeros" in info.value.details


@pytest.mark.parametrize("check_caches", [False, True])
def test_dropping_a_dataset_while_a_job_runs_on_it(rng, check_caches):
    """The job ends, with its right result or NOT_FOUND naming the dataset, never a hang; the
    cluster stays usable, and the agents free the dataset's partitions."""
    with lepton.LocalCluster(agents=2, agent_args=["--test-delay", "0.2:0.3"]) as cluster:
        client = cluster.client(timeout=120)
        x = rng.standard_normal((400_000, 2))
        cached = cache_bytes(client)
        ds = client.put("dropped", x, partitions=16)
        job = client.submit("sum", ds)
        wait_for(lambda: client.job(job.job_id).partitions_done >= 2, "the job to be under way")
        client.drop("dropped")
        try:
            assert_matches("sum", x, job.result(timeout=120))
        except lepton.LeptonError as exc:
            assert exc.code == grpc.StatusCode.NOT_FOUND and "dropped" in exc.details, exc
        assert "dropped" not in [d.name for d in client.datasets()]
        assert client.sum(np.ones(10), partitions=1) == 10
        if check_caches:
            wait_for(lambda: cache_bytes(client) <= cached, "the agents to free the dropped partitions")


def test_partitions_move_off_an_agent_more_than_16_behind(rng):
    """An agent with 20 of a job's resident partitions waiting, each 0.3 s there, is more than 16
    behind: the fast agent takes some of them (sent to it from the coordinator's copy)."""
    import collections

    with lepton.LocalCluster(agents=1) as cluster:
        slow = cluster.add_agent("numpy", ["--test-delay", "0.3:0.3"])
        client = cluster.client(timeout=120)
        x = rng.standard_normal((400_000, 2))
        ds = client.put("behind", x, partitions=40)
        (fast,) = [a.agent_id for a in client.cluster_status().agents if not a.name.endswith(f"-{slow.pid}")]
        assert ds.info.placement[fast] == 20
        job = client.submit("sum", ds)
        assert_matches("sum", x, job.result())
        attempts = collections.defaultdict(list)
        for p in client.trace(job.job_id).partitions:
            attempts[p.partition].append(p.agent_id)
        only_fast = sum(agents == [fast] for agents in attempts.values())  # not speculative copies
        assert only_fast > 20, (only_fast, dict(attempts))


@pytest.mark.parametrize("array", [np.arange(10, dtype=np.float32).reshape(2, 5), np.zeros((0, 3), np.int64),
                                   np.arange(5.0)[::2], np.float64(3).reshape(()), np.arange(1 << 20, dtype=np.int32)])
def test_the_copy_is_written_in_pieces_as_np_save_writes_it_and_stops_when_dropped(tmp_path, monkeypatch, array):
    """datasets.save_array: the file np.load reads back is the array (shape, dtype, bytes), and a
    dataset dropped while its copy is written stops within a piece (checked before each one)."""
    from lepton.coordinator import datasets

    monkeypatch.setattr(datasets, "SAVE_PIECE_BYTES", 1 << 16)
    with open(tmp_path / "x.npy", "wb") as f:
        datasets.save_array(f, array, lambda: False)
    back = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    if array.nbytes > 4 << 16:
        asked = []
        with open(tmp_path / "y.npy", "wb") as f, pytest.raises(datasets.Abandoned):
            datasets.save_array(f, array, lambda: asked.append(1) or len(asked) > 2)  # dropped after 2 pieces
        assert (tmp_path / "y.npy").stat().st_size < 3 << 16
