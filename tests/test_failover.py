"""Failover of the coordinator through etcd: a real etcd, two real coordinators (one leading, one
standby), real agents, real gRPC (LocalCluster(ha=True)). The leader is SIGKILLed mid-job; the
standby takes over with the metadata from etcd, and the job, resubmitted, gives the undisturbed
run's bits. A leader stalled past its lease (SIGSTOP) steps down when it resumes, serves as a
standby, and leads again at the next failover. Needs Debian's etcd-server (CI installs it; a skip
there is a failure)."""
from __future__ import annotations

import os
import shutil
import signal
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

import lepton
from lepton import failover
from lepton.coordinator.store import MemoryStore, WriteBehind
from lepton.errors import Unavailable
from lepton.failover import LEADER_METADATA
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc
from waits import wait_for

pytest.importorskip("etcd3gw", reason="the etcd client: pip install 'lepton[ha]'")
if not shutil.which("etcd"):
    pytest.skip("no etcd binary: apt-get install etcd-server", allow_module_level=True)

# Wide dynamic range float64 (as in test_faults.py): only an exactly-once fold in the fixed tree gives
# the undisturbed run's bits back.
RNG = np.random.default_rng(17)
X = RNG.standard_normal((240_000, 2)) * np.exp(RNG.uniform(-20, 20, size=(240_000, 1)))
POINTS = X[:60_000]
PARTITIONS = 48
DELAY = "0.05:0.15"  # seconds per partition: long enough to kill the leader mid-job


def close_to_numpy(total: np.ndarray) -> None:
    # A few ulps of the float64 magnitudes summed: the tree fold reassociates, nothing more.
    bound = 64 * np.finfo(np.float64).eps * np.abs(X).sum(axis=0)
    assert np.all(np.abs(total - X.sum(axis=0)) <= bound)


@pytest.fixture(scope="module")
def undisturbed():
    """The reference results, from a plain (single-coordinator) cluster nobody touches."""
    with lepton.LocalCluster(agents=2, agent_args=["--test-delay", DELAY]) as cluster:
        client = cluster.client(timeout=300)
        total = client.sum(X, partitions=PARTITIONS)
        points = client.put("points", POINTS, partitions=12)
        kmeans = client.kmeans(points, centroids=X[:4], max_iter=10, tol=0.0)
        points_sum = client.sum(points)
    close_to_numpy(total)
    assert np.all(np.abs(points_sum - POINTS.sum(axis=0)) <= 64 * np.finfo(np.float64).eps * np.abs(POINTS).sum(axis=0))
    return total, kmeans, points_sum


@pytest.fixture
def ha_cluster():
    with lepton.LocalCluster(agents=2, ha=True, agent_args=["--test-delay", DELAY]) as cluster:
        yield cluster


def serving(cluster, index: int) -> bool:
    """Whether coordinator `index` leads (a standby's health says NOT_SERVING; health is never redirected)."""
    with lepton.Client(cluster.addresses[index], timeout=2, **cluster.credentials()) as client:
        try:
            return client.health() == "SERVING"
        except lepton.LeptonError:
            return False


def leader_index(cluster) -> int:
    return wait_for(lambda: next((i + 1 for i in range(len(cluster.addresses)) if serving(cluster, i)), None),
                    "a coordinator to lead", timeout=60) - 1


def test_the_leader_killed_mid_job_hands_over_and_the_resubmitted_job_is_exact(ha_cluster, undisturbed):
    cluster = ha_cluster
    leader = leader_index(cluster)
    standby = 1 - leader
    # Both addresses; jobs lost with their coordinator are submitted again (lepton/retry.py).
    client = lepton.Client(cluster.address, timeout=300, resubmit_on_unavailable=True, **cluster.credentials())
    dataset = client.put("points", POINTS, partitions=12)  # before the kill: its placement is in etcd
    job = client.submit("sum", X, partitions=PARTITIONS)
    wait_for(lambda: job.status is not None and job.status.partitions_done >= PARTITIONS // 4,
             "a quarter of the partitions")
    killed_id = job.job_id
    killed_at = time.monotonic()
    cluster.kill_coordinator(index=leader)  # SIGKILL: no goodbye, its lease just stops being renewed
    # Generous for a loaded CI machine; the figure printed is what counts (lease TTL 2 s).
    wait_for(lambda: serving(cluster, standby), "the standby to lead", timeout=30)
    print(f"\ntakeover: the standby led {time.monotonic() - killed_at:.2f} s after the leader's SIGKILL")

    total = job.result(timeout=300)["sum"]  # the client resubmitted it, to the new leader
    assert job.resubmits >= 1 and job.job_id != killed_id
    assert np.array_equal(total, undisturbed[0])  # bitwise: the undisturbed single-coordinator run's
    close_to_numpy(total)
    # The dataset put before the kill serves the new leader without a re-upload (files shared, metadata in etcd).
    assert [d.name for d in client.datasets()] == ["points"]
    kmeans = client.kmeans(dataset, centroids=X[:4], max_iter=10, tol=0.0)
    for name, expected in undisturbed[1].items():
        assert np.array_equal(kmeans[name], expected), name
    # The new leader knows the lost job from etcd, ended as its clients saw it end.
    record = client.job(killed_id)
    assert lepton.client.state_name(record) == "FAILED" and record.error_code == "UNAVAILABLE"


def refusal(cluster, index: int) -> grpc.RpcError | None:
    """What coordinator `index` answers a raw call (no client following the leader): a standby's error, or None."""
    channel = cluster.channel(cluster.addresses[index])
    try:
        pb_grpc.CoordinatorServiceStub(channel).GetClusterStatus(pb.GetClusterStatusRequest(), timeout=10)
        return None
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()


def names_leader(error: grpc.RpcError | None, address: str) -> bool:
    return (error is not None and error.code() == grpc.StatusCode.UNAVAILABLE and address in error.details()
            and (LEADER_METADATA, address) in tuple(error.trailing_metadata()))


def test_a_standby_names_the_leader(ha_cluster):
    cluster = ha_cluster
    leader = leader_index(cluster)
    assert names_leader(refusal(cluster, 1 - leader), cluster.addresses[leader])


def test_a_leader_stalled_past_its_lease_steps_down_and_leads_again_later(ha_cluster, undisturbed):
    """SIGSTOP the leader mid-job for longer than its lease: the standby takes over. On SIGCONT the
    old leader finds its lease gone and steps down: its job fails with UNAVAILABLE naming the new
    leader, it answers as a standby does, and the client's next jobs follow to the leader. Then the
    new leader is killed, and the old one leads again, with the dataset put in its first term."""
    cluster = ha_cluster
    first = leader_index(cluster)
    second = 1 - first
    client = lepton.Client(cluster.address, timeout=300, **cluster.credentials())  # no resubmission: we see the error
    dataset = client.put("points", POINTS, partitions=12)
    job = client.submit("sum", X, partitions=PARTITIONS)
    # Early in the job: the agents finish the runs they hold while the leader is stopped, and most
    # partitions are still to be handed out when it resumes.
    wait_for(lambda: job.status is not None and job.status.partitions_done >= 1, "the first partition")
    stalled = cluster.coordinators[first]
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: serving(cluster, second), "the standby to lead while the leader is stopped", timeout=30)
        # The new leader serves while the old one is still stopped: the agents' heartbeats to it time
        # out and they move on (the new leader first here, as a stopped process accepts connections).
        with lepton.Client(f"{cluster.addresses[second]},{cluster.addresses[first]}", timeout=300,
                           **cluster.credentials()) as meanwhile:
            assert np.array_equal(meanwhile.sum(dataset), undisturbed[2])  # (12 partitions: quicker than X's 48)
            moved = f"turned_away_by={cluster.addresses[first]} trying={cluster.addresses[second]} code=DEADLINE_EXCEEDED"
            wait_for(lambda: all(moved in (cluster.log_dir / f"agent-{i}.log").read_text() for i in range(2)),
                     "both agents to give up on the stopped leader")
            wait_for(lambda: [a.last_heartbeat_age_seconds < 1 for a in meanwhile.cluster_status().agents]
                     == [True, True], "both agents to heartbeat the new leader")
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
    with pytest.raises(lepton.LeptonError) as caught:
        job.result(timeout=60)
    # (Named when the old leader had seen the new one by then: its step-down asks etcd; a result
    # that came in as it resumed is refused on its lease's age alone, before etcd is asked.)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "lost the leadership" in caught.value.details
    print(f"\nthe stalled leader's job: {caught.value.details}")
    # The old leader is a standby now, naming the new one (the raw answer, then through a client).
    wait_for(lambda: names_leader(refusal(cluster, first), cluster.addresses[second]), "the old leader to stand by")
    print(f"step-down: the old leader named the new one {time.monotonic() - resumed_at:.2f} s after its SIGCONT")
    assert not serving(cluster, first) and stalled.poll() is None  # stepped down, did not exit

    assert np.array_equal(client.sum(dataset), undisturbed[2])  # the client still dials the old leader first: it follows

    cluster.kill_coordinator(index=second)  # and back: the old leader leads again
    wait_for(lambda: serving(cluster, first), "the old leader to lead again", timeout=30)
    assert np.array_equal(client.sum(dataset), undisturbed[2])  # put in its first term, from etcd and the folder
    record = client.job(job.job_id)  # ended by its successor, as its client saw it end
    assert lepton.client.state_name(record) == "FAILED" and record.error_code == "UNAVAILABLE"


def test_an_agent_given_both_addresses_joins_the_leader(ha_cluster):
    cluster = ha_cluster
    leader = leader_index(cluster)
    standby_first = f"{cluster.addresses[1 - leader]},{cluster.addresses[leader]}"
    agent = cluster.add_agent(args=["--coordinator", standby_first])  # returns once the leader counts it
    with lepton.Client(cluster.addresses[leader], timeout=10, **cluster.credentials()) as client:
        assert len(client.cluster_status().agents) == 3
    assert agent.poll() is None
    assert "turned_away_by=" + cluster.addresses[1 - leader] in (cluster.log_dir / "agent-2.log").read_text()


# -- the pieces, at their edges ------------------------------------------------------------------
@pytest.fixture
def etcd(tmp_path):
    from lepton.etcd_process import EtcdProcess

    server = EtcdProcess(tmp_path)
    yield server
    server.stop()


def test_a_deposed_leaders_writes_do_not_land(etcd):
    """Store writes are fenced on the leader's lease: once another lease holds the leader key, the
    old leader's write fails with UNAVAILABLE, changes nothing, and tells its leadership."""
    from lepton.coordinator.etcd_store import EtcdStore
    from lepton.coordinator.leadership import connect

    client = connect(etcd.url)
    ours = client.lease(30)
    assert client.create("/t/leader", "a:1", ours)
    lost = []
    leadership = SimpleNamespace(key="/t/leader", lease=ours, lose=lost.append)  # the edge of Leadership
    store = EtcdStore(client, "/t/", leadership)
    store.put("jobs", "job-1", {"state": "RUNNING"})
    assert store.load("jobs") == {"job-1": {"state": "RUNNING"}}
    ours.revoke()  # as if our lease had lapsed while we stalled ...
    assert client.create("/t/leader", "b:2", client.lease(30))  # ... and a standby took over
    with pytest.raises(Unavailable):
        store.put("jobs", "job-1", {"state": "SUCCEEDED"})
    with pytest.raises(Unavailable):
        store.delete("jobs", "job-1")
    assert store.load("jobs") == {"job-1": {"state": "RUNNING"}}
    assert lost, "the leadership was not told"


def test_coordinator_lists_are_parsed_in_order():
    assert failover.parse("a:1, b:2,,a:1") == ["a:1", "b:2"]
    assert failover.parse(["b:2", "a:1"]) == ["b:2", "a:1"]
    with pytest.raises(ValueError):
        failover.parse(" , ")


def test_a_standby_with_no_leader_yet_says_so_and_opens_once_elected():
    """The gate alone, in a real gRPC server: before any leader is known the answer is UNAVAILABLE
    with an empty `lepton-leader`; health is answered by the standby itself; once it leads, calls pass."""
    from lepton.coordinator.coordinator import Coordinator
    from lepton.coordinator.server import serve

    coordinator = Coordinator()
    leadership = SimpleNamespace(leading=False, leader="")  # the edge of Leadership: what the gate reads
    server, port, _ = serve(coordinator, "127.0.0.1:0", leadership=leadership)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.CoordinatorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListJobs(pb.ListJobsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no coordinator leads yet" in caught.value.details()
        assert (LEADER_METADATA, "") in tuple(caught.value.trailing_metadata())
        with lepton.Client(f"127.0.0.1:{port}", timeout=10, token="") as client:
            assert client.health() == "SERVING"  # (main.py sets NOT_SERVING on a standby; the gate lets it through)
        leadership.leading = True
        assert list(stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == []
    finally:
        channel.close()
        server.stop(None)
        coordinator.stop()


def test_lagging_job_records_land_in_order_and_latest_last():
    """WriteBehind: every key ends with its latest write (a delete included), whatever was batched."""
    store, errors = MemoryStore(), []
    lagging = WriteBehind(store, on_error=lambda exc, count: errors.append(exc))
    for i in range(500):
        lagging.put("jobs", f"job-{i % 10}", {"n": i})
    lagging.delete("jobs", "job-3")
    lagging.put("jobs", "job-4", {"n": "last"})
    lagging.close()
    expected = {f"job-{k}": {"n": 490 + k} for k in range(10) if k != 3} | {"job-4": {"n": "last"}}
    assert store.load("jobs") == expected and not errors


# -- etcd: several endpoints, TLS ----------------------------------------------------------------
def test_an_etcd_endpoint_that_answers_nothing_costs_a_timeout_not_a_hang(etcd):
    """A listening socket nobody serves (a hung host: the kernel completes the handshake, no reply
    comes): connecting moves past it after the timeout, and a watch on it (etcd3gw sets no timeout
    on one) ends instead of holding a campaign for ever."""
    import socket
    import threading

    from lepton.coordinator.etcd_client import connect

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        silent = f"http://127.0.0.1:{hole.getsockname()[1]}"
        client = connect(f"{silent},{etcd.url}", timeout=1)
        assert client.url == etcd.url
        client.put("/t/k", "v")
        client._next(client.index, RuntimeError("test: back to the silent endpoint"))  # (its one way there)
        assert client.url == silent
        ended = []
        watcher = threading.Thread(target=lambda: ended.append(_watch_ends(client)), daemon=True)
        watcher.start()
        watcher.join(timeout=30)
        assert ended == [True], "a watch on an endpoint that answers nothing did not end"
        from etcd3gw.exceptions import ConnectionTimeoutError

        with pytest.raises(ConnectionTimeoutError):  # a call that timed out is not repeated (it may have landed) ...
            client.get("/t/k")
        assert client.get("/t/k") == [b"v"]  # ... but the next goes to the next endpoint


def _watch_ends(client) -> bool:
    try:
        client.watch_once("/t/k", timeout=0.5)
    except Exception:  # noqa: BLE001 - requests' timeout, or etcd3gw's WatchTimedOut
        pass
    return True



def _dead_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening, closed: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory):
    """A real etcd serving only https and requiring client certificates, with the certificates of
    `lepton certs` (the coordinator's pair serves as etcd's and as the client's: server and client use)."""
    from lepton import certs
    from lepton.etcd_process import EtcdProcess

    directory = tmp_path_factory.mktemp("etcd-tls")
    made = certs.create(directory / "certs", agents=0)
    tls = (made / "ca.pem", made / "coordinator.pem", made / "coordinator.key")
    server = EtcdProcess(directory, tls=tls)
    yield server, tls, directory
    server.stop()


def test_a_coordinator_reaches_etcd_over_tls_past_a_dead_first_endpoint(etcd_tls, undisturbed):
    """--etcd https://DEAD,https://LIVE with --etcd-ca/--etcd-cert/--etcd-key: the coordinator moves
    past the endpoint that refuses connections, leads over TLS, and its job is the undisturbed bits."""
    server, (ca, cert, key), _ = etcd_tls
    dead = f"https://127.0.0.1:{_dead_port()}"
    args = ["--etcd", f"{dead},{server.url}", "--etcd-ca", str(ca), "--etcd-cert", str(cert), "--etcd-key", str(key),
            "--etcd-prefix", "/tls-test/"]
    with lepton.LocalCluster(agents=2, coordinator_args=args, agent_args=["--test-delay", "0"]) as cluster:
        assert np.array_equal(cluster.client(timeout=120).sum(X, partitions=PARTITIONS), undisturbed[0])
        log = (cluster.log_dir / "coordinator.log").read_text()
    assert "event=leadership.elected" in log
    assert f"event=etcd.endpoint_failed failed={dead} trying={server.url}" in log, log


def test_a_wrong_etcd_ca_is_refused_with_a_clear_message(etcd_tls):
    import subprocess
    import sys
    from lepton import certs

    server, (ca, cert, key), directory = etcd_tls
    other = certs.create(directory / "other", agents=0)  # a CA that did not sign etcd's certificate
    out = subprocess.run([sys.executable, "-m", "lepton", "coordinator", "--listen", "127.0.0.1:0", "--etcd",
                          server.url, "--etcd-ca", str(other / "ca.pem"), "--etcd-cert", str(cert),
                          "--etcd-key", str(key)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"cannot reach etcd at {server.url}" in out.stderr and "certificate verify failed" in out.stderr, out.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd_three(tmp_path):
    """A real 3-member etcd cluster on loopback: [(process, client URL)] (members m0, m1, m2)."""
    import subprocess
    import urllib.request

    ports = [(_free_port(), _free_port()) for _ in range(3)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    members = []
    for i, (client, peer) in enumerate(ports):
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        with open(tmp_path / f"etcd-m{i}.log", "ab") as log:
            members.append((subprocess.Popen(
                [shutil.which("etcd"), "--name", f"m{i}", "--data-dir", str(tmp_path / f"m{i}"),
                 "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
                 "--initial-advertise-peer-urls", peer_url, "--initial-cluster", initial,
                 "--initial-cluster-state", "new", "--initial-cluster-token", "lepton-test",
                 "--logger", "zap", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), url))

    def healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as reply:
                return b'"true"' in reply.read()
        except OSError:
            return False

    try:
        wait_for(lambda: all(healthy(url) for _, url in members), "the 3 etcd members to be healthy", timeout=60)
        yield members
    finally:
        for process, _ in members:
            process.kill()
            process.wait()


def test_a_leader_keeps_its_lead_when_the_etcd_member_it_talks_to_dies(etcd_three, undisturbed):
    """--etcd lists the three members; the one the coordinator talks to is SIGKILLed between two jobs:
    its lease renewals go to the next member, it never loses the lead, and both jobs are exact.
    (--lease-ttl 5: above etcd's election timeout, should the member killed be etcd's raft leader.)"""
    urls = [url for _, url in etcd_three]
    args = ["--etcd", ",".join(urls), "--etcd-prefix", "/three/", "--lease-ttl", "5"]
    with lepton.LocalCluster(agents=2, coordinator_args=args, agent_args=["--test-delay", "0"]) as cluster:
        client = cluster.client(timeout=120)
        assert np.array_equal(client.sum(X, partitions=PARTITIONS), undisturbed[0])
        log = cluster.log_dir / "coordinator.log"
        etcd_three[0][0].kill()
        wait_for(lambda: f"event=etcd.endpoint_failed failed={urls[0]} trying={urls[1]}" in log.read_text(),
                 "the coordinator to go on to the next etcd member")
        assert np.array_equal(client.sum(X, partitions=PARTITIONS), undisturbed[0])
        assert client.health() == "SERVING"
        text = log.read_text()
    assert text.count("event=leadership.elected") == 1 and "event=leadership.lost" not in text, text
