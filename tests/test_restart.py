"""A coordinator restarted on the same address and data folder: agents rejoin by themselves and
announce the dataset partitions they hold, so datasets put before the restart serve jobs after it
without a byte sent again; the catalog comes back from the coordinator's atomically written copies;
jobs in flight fail with UNAVAILABLE, and clients that asked for it resubmit them. And the retry
budget: a partition that fails on three agents fails its job with the last error."""
from __future__ import annotations

import threading
import urllib.request

import grpc
import numpy as np
import pytest

import lepton
from lepton.agent.membership import resident
from lepton.coordinator.datasets import DatasetStore
from references import assert_matches
from waits import wait_for

RNG = np.random.default_rng(31)
# float64 of wide dynamic range: a partial folded in another order differs in its last bits, so a
# bitwise match with an undisturbed run shows every partition was counted once, in the fixed tree.
X = RNG.standard_normal((120_000, 3)) * np.exp(RNG.uniform(-20, 20, size=(120_000, 1)))
POINTS = RNG.standard_normal((40_000, 2)) + RNG.integers(0, 4, size=(40_000, 1)) * 6.0
DELAY = "0.02:0.06"  # seconds per partition: jobs are still running when the coordinator dies


def metric(address: str, name: str) -> float:
    """A counter's value from a Prometheus endpoint (0 if it has not been set yet)."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(f"{name} "))


def bytes_to_agents(client) -> float:
    """Bytes the coordinator sent to agents (its counter starts at 0 in each coordinator process)."""
    return metric(client.cluster_status().metrics_address, "lepton_agent_bytes_sent_total")


def cache_bytes(client) -> float:
    """Bytes the agents hold in their caches, over all agents."""
    return sum(metric(a.metrics_address, "lepton_agent_cache_bytes") for a in client.cluster_status().agents)


def saved(client, name: str) -> bool:
    return any(d.name == name and d.info.saved for d in client.datasets())


def csr(rows: int, cols: int, seed: int):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < 0.05)
    indptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))]).astype(np.int64)
    indices = np.nonzero(dense)[1].astype(np.int32)
    return dense, (indptr, indices, dense[dense != 0], dense.shape)


def test_datasets_put_before_a_restart_serve_jobs_after_it_without_a_byte_sent_again():
    dense, matrix = csr(3_000, 200, seed=5)
    vector = RNG.standard_normal((200, 4))
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client(timeout=120)
        client.put("x", X, partitions=12)
        client.put("a", matrix, partitions=6)
        before = client.sum("x"), client.spmm("a", vector)
        wait_for(lambda: saved(client, "x") and saved(client, "a"), "the coordinator's copies on disk")

        cluster.restart_coordinator()
        cluster.wait_for_agents(2)
        client = cluster.client(timeout=120)
        info = {d.name: d.info for d in client.datasets()}
        assert set(info) == {"x", "a"} and info["x"].saved and info["x"].partitions == 12
        # Both agents announced their partitions when they rejoined: all of them are placed again.
        assert sum(info["x"].placement.values()) == 12 and sum(info["a"].placement.values()) == 6
        total = client.sum("x")
        assert bytes_to_agents(client) == 0  # nothing of the dataset went to the agents again
        product = client.spmm("a", vector)
        assert bytes_to_agents(client) <= 6 * vector.nbytes  # the vector, once per partition at most
        after = total, product
    assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])  # bitwise
    assert_matches("sum", X, {"sum": after[0]})
    # float64 sums of 200 products each: a few ulps of the magnitudes added.
    assert np.allclose(after[1], dense @ vector, rtol=1e-12, atol=1e-12)


def test_what_no_agent_holds_comes_from_the_coordinators_copy():
    with lepton.LocalCluster(agents=1) as cluster:
        client = cluster.client(timeout=120)
        client.put("x", X, partitions=8)
        wait_for(lambda: saved(client, "x"), "the coordinator's copy on disk")
        cluster.kill_agent(0)  # its partitions are gone with it
        cluster.restart_coordinator()
        cluster.add_agent()
        client = cluster.client(timeout=120)
        assert_matches("sum", X, {"sum": client.sum("x")})
        assert bytes_to_agents(client) >= X.nbytes  # placed again, from the copy on disk


def test_a_crash_while_a_replacing_copy_is_written_leaves_the_old_dataset_whole():
    old, new = X[:50_000], X
    with lepton.LocalCluster(agents=1) as cluster:
        client = cluster.client(timeout=120)
        client.put("x", old, partitions=4)
        wait_for(lambda: saved(client, "x"), "the first copy on disk")
        # The restarted coordinator's disk is slow: the replacing copy stays half-written long
        # enough to crash in the middle of it.
        cluster.restart_coordinator(args=["--test-slow-disk", "120"])
        cluster.wait_for_agents(1)
        client = cluster.client(timeout=120)
        client.put("x", new, partitions=4, replace=True)
        data = cluster.log_dir / "data"
        wait_for(lambda: any(p.name.startswith(".lepton-tmp-") for p in data.iterdir()), "a half-written copy")
        cluster.restart_coordinator()
        cluster.wait_for_agents(1)
        client = cluster.client(timeout=120)
        (info,) = [d.info for d in client.datasets()]
        assert tuple(info.shape) == old.shape and info.saved
        result = client.sum("x")
        assert not any(p.name.startswith(".lepton-tmp-") for p in data.iterdir())  # the torn file is gone
    assert_matches("sum", old, {"sum": result})


def test_a_crash_during_a_first_put_leaves_no_dataset():
    with lepton.LocalCluster(agents=1, coordinator_args=["--test-slow-disk", "120"]) as cluster:
        client = cluster.client(timeout=120)
        client.put("x", X, partitions=4)
        data = cluster.log_dir / "data"
        wait_for(lambda: any(p.name.startswith(".lepton-tmp-") for p in data.iterdir()), "a half-written copy")
        cluster.restart_coordinator()
        cluster.wait_for_agents(1)
        client = cluster.client(timeout=120)
        assert client.datasets() == [] and list(data.iterdir()) == []
        assert cache_bytes(client) == 0  # the agent announced its partitions; told they are stale, it dropped them
        with pytest.raises(lepton.NotFound):
            client.sum("x")


def test_a_durable_put_survives_the_coordinator_and_every_agent_killed_as_it_returns():
    # The disk is slow (0.5 s per file written): a put that returned before its copy was whole
    # would lose the dataset to the crash right after it.
    with lepton.LocalCluster(agents=2, coordinator_args=["--test-slow-disk", "0.5"]) as cluster:
        client = cluster.client(timeout=120)
        client.put("undisturbed", X, partitions=12)
        before = client.sum("undisturbed")
        dataset = client.put("x", X, partitions=12, durable=True)
        assert dataset.info.saved
        cluster.kill_coordinator()
        for index in range(len(cluster.agents)):  # and their partitions: only the disk holds the dataset
            cluster.kill_agent(index)
        cluster.start_coordinator()
        for _ in range(2):
            cluster.add_agent()
        client = cluster.client(timeout=120)
        infos = {d.name: d.info for d in client.datasets()}
        assert "x" in infos, f"the durable put's dataset did not survive the crash (listed: {sorted(infos)})"
        info = infos["x"]
        assert info.saved and tuple(info.shape) == X.shape and info.partitions == 12
        after = client.sum("x")
        assert bytes_to_agents(client) >= X.nbytes  # placed again, from the copy on disk
    assert np.array_equal(after, before)  # bitwise: the same rows in the same partitions and tree
    assert_matches("sum", X, {"sum": after})


def test_a_durable_put_whose_copy_cannot_be_written_says_so(tmp_path):
    store = DatasetStore(tmp_path / "data")
    (tmp_path / "data").rmdir()  # the folder is gone: writing the copy fails
    dataset, _ = store.create("x", {"x": np.arange(8.0).reshape(4, 2)}, np.array([0, 2, 4]), replace=False)
    with pytest.raises(lepton.FailedPrecondition, match="could not write its copy of dataset 'x'.*loaded and serves"):
        store.wait_saved(dataset, timeout=30)
    assert store.get("x") is dataset and not dataset.saved.is_set()


def test_stale_and_unknown_announcements_are_not_trusted(tmp_path):
    store = DatasetStore(tmp_path)
    splits = np.array([0, 5, 10, 15, 20])
    x, _ = store.create("x", {"x": np.arange(40.0).reshape(20, 2)}, splits, replace=False)
    w, _ = store.create("w", {"x": np.arange(20.0)}, splits, replace=False)
    keys, stale = store.adopt("agent-1", [("x", x.version, "", [(0, 2)]),
                                          ("x", "0123456789abcdef", "", [(2, 4)]),  # an older version
                                          ("y", x.version, "", [(0, 1)]),  # no such dataset
                                          ("w", w.version, "", [(0, 1)]), ("w", w.version, "indptr", [(1, 2)])])
    assert keys == [x.key(0), x.key(1)] and x.placement == {0: "agent-1", 1: "agent-1"}
    # w is dense: an announcement of a sparse part is not what the coordinator put, so none of it counts.
    assert sorted(stale) == ["ds:w:" + w.version + ":", "ds:x:0123456789abcdef:", f"ds:y:{x.version}:"]
    assert w.placement == {}
    keys, stale = store.adopt("agent-2", [("x", x.version, "", [(3, 9)])])  # past its 4 partitions
    assert keys == [] and stale == [f"ds:x:{x.version}:"] and 3 not in x.placement
    # A version still being put (placed while its rows arrive, not in the catalog yet) is not stale.
    placing = store.new("x", {"x": np.zeros((20, 2))}, splits)
    keys, stale = store.adopt("agent-3", [("x", placing.version, "", [(0, 1)])])
    assert keys == [placing.key(0)] and stale == [] and placing.placement == {0: "agent-3"}
    store.abandon(placing)
    assert store.adopt("agent-3", [("x", placing.version, "", [(0, 1)])]) == ([], [f"ds:x:{placing.version}:"])


def test_an_agent_announces_its_partitions_as_ranges():
    keys = ["ds:x:ab:0", "ds:x:ab:1", "ds:x:ab:2", "ds:x:ab:7", "ds:a:cd:3.indptr", "blob:0f", "ds:bad"]
    assert [(r.name, r.version, r.part, [(g.start, g.end) for g in r.ranges]) for r in resident(keys)] == [
        ("a", "cd", "indptr", [(3, 4)]), ("x", "ab", "", [(0, 3), (7, 8)])]


def test_the_catalog_comes_back_from_disk_and_leftovers_are_removed(tmp_path):
    store = DatasetStore(tmp_path)
    x = np.arange(30.0).reshape(10, 3)
    first, _ = store.create("x", {"x": x}, np.array([0, 4, 10]), replace=False)
    assert first.saved.wait(60)
    (tmp_path / ".lepton-tmp-y.0123456789abcdef.x.npy").write_bytes(b"torn")  # a crash mid-write
    (tmp_path / "y.0123456789abcdef.x.npy").write_bytes(b"no manifest")  # a crash before the manifest
    (tmp_path / "notes.txt").write_text("not ours")
    again = DatasetStore(tmp_path)
    (reloaded,) = again.all()
    assert (reloaded.version, reloaded.generation) == (first.version, first.generation)
    assert np.array_equal(reloaded.arrays["x"], x) and list(reloaded.row_splits) == [0, 4, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"x.{first.version}.json", f"x.{first.version}.x.npy", "notes.txt"])
    assert again.new("z", {"x": x}, np.array([0, 10])).generation > first.generation


def test_in_flight_jobs_fail_with_unavailable_and_idempotent_calls_wait_for_the_restart():
    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.2"]) as cluster:
        client = cluster.client(timeout=120)
        job = client.submit("sum", X, partitions=40)
        wait_for(lambda: job.status is not None and job.status.partitions_done >= 2, "the job to be running")
        cluster.kill_coordinator()
        with pytest.raises(lepton.Unavailable):
            job.result(timeout=60)  # not UNKNOWN, and no hang
        lost = job.status.job_id
        status = {}
        asking = threading.Thread(target=lambda: status.update(agents=client.cluster_status().agents))
        asking.start()  # while no coordinator listens: retried with backoff
        cluster.start_coordinator()
        asking.join(timeout=60)
        assert "agents" in status  # it got its answer from the new coordinator
        with pytest.raises(lepton.NotFound, match="restarted forgets its jobs"):
            client.job(lost)


class Counting(grpc.UnaryUnaryClientInterceptor):
    """Counts the calls a client makes, by method."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def intercept_unary_unary(self, continuation, details, request):
        name = details.method.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        return continuation(details, request)


def test_only_idempotent_calls_are_retried():
    counting = Counting()
    with lepton.Client("127.0.0.1:1", timeout=5, retry_for=1) as client:  # nothing listens there
        client._bind(grpc.intercept_channel(client._channel, counting))
        for call in (client.cluster_status, client.datasets, lambda: client.drop("x"),
                     lambda: client.run("sum", np.ones(4))):
            with pytest.raises(lepton.Unavailable):
                call()
    assert counting.calls["GetClusterStatus"] > 1 and counting.calls["ListDatasets"] > 1
    assert counting.calls["DropDataset"] == 1 and counting.calls["RunJob"] == 1  # may have happened: not repeated
    counting.calls.clear()
    with lepton.Client("127.0.0.1:1", timeout=5, retry_for=1, resubmit_on_unavailable=True) as client:
        client._bind(grpc.intercept_channel(client._channel, counting))
        with pytest.raises(lepton.Unavailable):
            client.run("sum", np.ones(4))
    assert counting.calls["RunJob"] > 1  # asked for: a job is pure, so it is submitted again


def test_under_load_a_restart_loses_no_job_of_clients_that_resubmit():
    """Client threads submit jobs while the coordinator is SIGKILLed and restarted: with
    resubmit_on_unavailable every job succeeds, bitwise equal to an undisturbed run."""
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", DELAY]) as cluster:
        client = cluster.client(timeout=300)
        reference = {"sum": {"sum": client.sum(X, partitions=24)}}
        client.put("points", POINTS, partitions=6)
        reference["kmeans"] = client.kmeans("points", centroids=POINTS[:4], max_iter=5, tol=0.0)
        wait_for(lambda: saved(client, "points"), "the coordinator's copy on disk")

        results, errors, stop, resubmits = [], [], threading.Event(), []
        done = threading.Semaphore(0)

        def load():
            with lepton.Client(cluster.address, 300, resubmit_on_unavailable=True, retry_for=120,
                               **cluster.credentials()) as mine:
                while not stop.is_set():
                    try:
                        job = mine.submit("sum", X, partitions=24)
                        results.append(("sum", job.result()))
                        resubmits.append(job.resubmits)
                        kmeans = mine.submit("kmeans", {"x": "points", "centroids": POINTS[:4]}, k=4, max_iter=5,
                                             tol=0.0)
                        results.append(("kmeans", kmeans.result()))
                        resubmits.append(kmeans.resubmits)
                    except lepton.LeptonError as exc:
                        errors.append(exc)
                    done.release()

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: done.acquire(blocking=False), "a first round of jobs")
        cluster.restart_coordinator()
        cluster.wait_for_agents(3)
        finished = len(results)
        wait_for(lambda: len(results) >= finished + 6, "jobs after the restart", timeout=300)
        stop.set()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert any(resubmits), "no job was in flight at the crash"

        # The dataset put before the restart serves a job after it, its partitions where they were.
        client = cluster.client(timeout=300)
        sent = bytes_to_agents(client)
        after = client.kmeans("points", centroids=POINTS[:4], max_iter=5, tol=0.0)
        assert bytes_to_agents(client) - sent < POINTS.nbytes / 10  # the centroids, not the points
    for kind, result in results + [("kmeans", after)]:
        for name, value in reference[kind].items():
            assert np.array_equal(result[name], value), (kind, name)
    assert_matches("sum", X, reference["sum"])


def test_a_partition_failing_on_three_agents_fails_its_job_with_the_last_error():
    """The retry budget: every agent runs out of memory on every partition, so each partition fails
    on three different agents, and then the job fails, saying why, instead of retrying for ever."""
    with lepton.LocalCluster(agents=4, agent_args=["--test-out-of-memory"]) as cluster:
        client = cluster.client(timeout=120)
        job = client.submit("sum", X, partitions=4)
        with pytest.raises(lepton.ResourceExhausted) as info:
            job.result(timeout=120)
        assert "failed 3 times; last error:" in info.value.details and "--test-out-of-memory" in info.value.details
        trace = client.trace(job.job_id).partitions
        failing = int(info.value.details.split()[1])  # "partition N failed 3 times ..."
        tries = [t.agent_id for t in trace if t.partition == failing]
        assert len(tries) == 3 and len(set(tries)) == 3, tries  # three agents, each once
        assert all(t.outcome == "RESOURCE_EXHAUSTED" for t in trace if t.partition == failing)
