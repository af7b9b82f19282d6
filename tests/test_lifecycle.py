"""Process lifecycle (issue 16): a shutdown bounded whatever the clients do, no orphans when a starter
dies, and an agent that gives up on a coordinator gone for good.

Every wait here is on a condition, with a generous timeout: an exit "within its bound" is checked as
an exit that happens at all (before a timeout far past the bound) with the orderly path's exit code,
never as a wall-clock figure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import numpy as np
import pytest

import lepton
from lepton import lifecycle
from lepton.v1 import agent_service_pb2 as apb, agent_service_pb2_grpc as apb_grpc
from lepton.v1 import coordinator_service_pb2 as cpb, coordinator_service_pb2_grpc as cpb_grpc
from lepton.v1 import job_pb2, tensor_pb2
from waits import wait_for

GENEROUS = 60  # seconds: how long a test waits for something that should take a few, on a loaded machine
BOUND = "3"  # --shutdown-timeout of the processes under test

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stopped_code(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to one process (not its group) and return its exit code once it has exited."""
    process.send_signal(sig)
    return process.wait(timeout=float(BOUND) + GENEROUS)


class HalfOpen:
    """Client streams that send one message and then neither send more nor end (half-open for good)."""

    def __init__(self, channel: grpc.Channel):
        self.channel = channel  # with the cluster's credentials: the gate must let the streams through
        self._never = threading.Event()
        self._sent: set[int] = set()
        self.calls = []

    def _requests(self, index: int, first):
        yield first
        self._sent.add(index)  # grpc asks for the next request once the first has gone out
        self._never.wait()

    def open(self, method, first, count: int) -> None:
        for _ in range(count):
            self.calls.append(method(self._requests(len(self.calls), first)))

    def wait_sent(self) -> None:
        """Until each stream has sent its first message, or been refused (an aborted call stops asking)."""
        wait_for(lambda: all(i in self._sent or call.done() for i, call in enumerate(self.calls)),
                   f"{len(self.calls)} half-open streams to start")

    def close(self) -> None:
        self._never.set()
        self.channel.close()


def header(name: str, rows: int) -> tensor_pb2.TensorHeader:
    return tensor_pb2.TensorHeader(name=name, dtype=tensor_pb2.DATA_TYPE_FLOAT64, shape=[rows], total_bytes=8 * rows)


# -- bounded shutdown -----------------------------------------------------------------------------

def test_agent_flooded_with_half_open_streams_stops_within_its_bound():
    with lepton.LocalCluster(agents=1, agent_args=["--shutdown-timeout", BOUND]) as cluster:
        address = cluster.client(timeout=10).cluster_status().agents[0].address
        flood = HalfOpen(cluster.channel(address, peer=True))
        stub = apb_grpc.AgentServiceStub(flood.channel)
        task = apb.Task(job_id="half-open", op="sum", partition_count=1, tree_arity=2,
                        partitions=[apb.TaskPartition(inputs=[apb.TaskInput(tensor=header("x", 1000))])])
        count = 12  # of each kind: 48 streams, more than the agent's RPC threads
        try:
            flood.open(stub.RunTask, apb.RunTaskRequest(task=task), count)  # inputs that never arrive
            flood.open(stub.RunTask, apb.RunTaskRequest(chunk=tensor_pb2.TensorChunk()), count)  # refused
            flood.open(stub.CacheTensors.future, apb.CacheTensorsRequest(header=apb.CacheTensorsHeader(
                tensors=[apb.TaskInput(tensor=header("x", 1000), cache_key="k")])), count)
            flood.open(stub.CacheTensors.future, apb.CacheTensorsRequest(chunk=tensor_pb2.TensorChunk()), count)
            flood.wait_sent()
            assert stopped_code(cluster.agents[0]) == 0, cluster.logs()
        finally:
            flood.close()
        log = (cluster.log_dir / "agent-0.log").read_text()
        assert "event=agent.stopping" in log and "reason=SIGTERM" in log
        assert "shutdown.overran" not in log


def test_coordinator_flooded_with_half_open_streams_stops_within_its_bound():
    with lepton.LocalCluster(agents=1, coordinator_args=["--shutdown-timeout", BOUND]) as cluster:
        flood = HalfOpen(cluster.channel())
        stub = cpb_grpc.CoordinatorServiceStub(flood.channel)
        job = job_pb2.JobSpec(op="sum", inputs=[job_pb2.JobInput(name="x", tensor=header("x", 1000))])
        dataset = cpb.DatasetSpec(name="half-open", tensor=header("x", 1000))
        count = 12
        try:
            flood.open(stub.SubmitJob, cpb.SubmitJobRequest(spec=job), count)  # input that never arrives
            flood.open(stub.SubmitJob, cpb.SubmitJobRequest(chunk=tensor_pb2.TensorChunk()), count)
            flood.open(stub.PutDataset.future, cpb.PutDatasetRequest(spec=dataset), count)
            flood.open(stub.PutDataset.future, cpb.PutDatasetRequest(chunk=tensor_pb2.TensorChunk()), count)
            flood.wait_sent()
            code = stopped_code(cluster.coordinator)
            assert code == 0, (code, cluster.logs())
        finally:
            flood.close()
        log = (cluster.log_dir / "coordinator.log").read_text()
        assert "event=coordinator.stopping" in log and "shutdown.overran" not in log


def test_a_second_sigterm_exits_at_once():
    # A long bound, and a stream that holds the drain open: only the second signal can end it soon.
    with lepton.LocalCluster(agents=1, agent_args=["--shutdown-timeout", "600"]) as cluster:
        agent = cluster.agents[0]
        flood = HalfOpen(cluster.channel(cluster.client(timeout=10).cluster_status().agents[0].address, peer=True))
        try:
            flood.open(apb_grpc.AgentServiceStub(flood.channel).CacheTensors.future, apb.CacheTensorsRequest(
                header=apb.CacheTensorsHeader(tensors=[apb.TaskInput(tensor=header("x", 10), cache_key="k")])), 1)
            flood.wait_sent()
            log = cluster.log_dir / "agent-0.log"
            agent.send_signal(signal.SIGTERM)
            wait_for(lambda: "event=agent.stopping" in log.read_text(), "the agent to start stopping")
            assert stopped_code(agent) == 128 + signal.SIGTERM
            assert "event=shutdown.forced" in log.read_text()
        finally:
            flood.close()


def test_the_watchdog_ends_a_shutdown_that_overruns_its_bound():
    # The agent's only device sleeps 600 s in its partition: stopping the device cannot finish in time.
    with lepton.LocalCluster(agents=1, agent_args=["--shutdown-timeout", BOUND, "--test-delay", "600:600"]) as cluster:
        job = cluster.client(timeout=GENEROUS).submit("sum", np.ones(1000))  # kept: its stream stays open
        metrics = cluster.client(timeout=10).cluster_status().agents[0].metrics_address
        wait_for(lambda: _device_busy(metrics), "the partition to reach the device")
        assert stopped_code(cluster.agents[0]) == lifecycle.EXIT_OVERRAN
        log = (cluster.log_dir / "agent-0.log").read_text()
        assert "event=shutdown.overran" in log and "step=\"stopping devices\"" in log, log[-3000:]
        assert "Thread" in log  # the stacks of every thread, to see what overran


def _device_busy(metrics_address: str) -> bool:
    from urllib.request import urlopen

    with urlopen(f"http://{metrics_address}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return any(line.startswith("lepton_device_queued_bytes") and float(line.split()[-1]) > 0 for line in lines)


# -- no orphans ----------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import json, sys, threading
    import lepton

    def start():
        cluster = lepton.LocalCluster(agents=2, devices=sys.argv[2])
        cluster.start()
        print(json.dumps([cluster.coordinator.pid, *(a.pid for a in cluster.agents)]), flush=True)
        return cluster

    if sys.argv[1] == "thread":  # started from a thread that then ends, while the process lives on
        box = []
        spawner = threading.Thread(target=lambda: box.append(start()))
        spawner.start()
        spawner.join()
        # Had PDEATHSIG been tied to the spawning thread, the cluster would be stopping by now.
        print("thread done", float(box[0].client(timeout=30).sum([1.0, 2.0])), flush=True)
    else:
        start()
    sys.stdin.read()  # hold the cluster until killed
""")


def _mpiexec() -> bool:
    try:
        import mpi4py  # noqa: F401
        from lepton.backends.mpi.launch import find_mpiexec

        return bool(find_mpiexec())
    except Exception:  # noqa: BLE001 - no MPI here
        return False


@pytest.mark.parametrize("spawned_from, devices", [
    ("main", "numpy"),
    ("thread", "numpy"),
    # An mpi:N agent is mpiexec, its proxy and the ranks: all of them must go.
    pytest.param("main", "mpi:2", marks=pytest.mark.skipif(not _mpiexec(), reason="needs mpi4py and mpiexec")),
])
def test_a_local_cluster_dies_with_the_process_that_made_it(spawned_from, devices):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, spawned_from, devices], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        started = json.loads(holder.stdout.readline())
        pids = sorted({*started, *(d for pid in started for d in descendants(pid))})
        if spawned_from == "thread":
            assert holder.stdout.readline().split() == ["thread", "done", "3.0"]  # exact: two small integers
            assert all(alive(pid) for pid in pids)
        holder.kill()
        holder.wait(timeout=GENEROUS)
        wait_for(lambda: not any(alive(pid) for pid in pids), f"cluster processes {pids} to end")
    finally:
        holder.kill()
        kill_all(pids)


def up_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lepton", "up", "--agents", "2", *args]


def test_lepton_up_killed_leaves_no_cluster_behind():
    up = subprocess.Popen(up_command(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = []
    try:
        assert up.stdout.readline().startswith("lepton cluster up: coordinator")
        pids = children_of(up.pid)
        assert len(pids) == 3, pids  # the coordinator and two agents
        up.kill()
        up.wait(timeout=GENEROUS)
        wait_for(lambda: not any(alive(pid) for pid in pids), f"cluster processes {pids} to end")
    finally:
        up.kill()
        kill_all(pids)


def test_lepton_up_stops_its_cluster_on_sigterm_within_its_bound():
    up = subprocess.Popen(up_command("--shutdown-timeout", BOUND), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    pids = []
    try:
        assert up.stdout.readline().startswith("lepton cluster up: coordinator")
        pids = children_of(up.pid)
        assert len(pids) == 3, pids
        assert stopped_code(up) == 0
        assert not any(alive(pid) for pid in pids)  # reaped by `lepton up` before it exited
    finally:
        up.kill()
        kill_all(pids)


def test_lepton_up_detach_leaves_a_cluster_that_outlives_it():
    out = subprocess.run(up_command("--detach"), capture_output=True, text=True, timeout=GENEROUS * 2)
    pids = [int(p) for p in out.stdout.rsplit("kill", 1)[-1].split()] if "stop it with: kill" in out.stdout else []
    try:
        assert out.returncode == 0, out.stderr
        assert len(pids) == 3 and all(alive(pid) for pid in pids), out.stdout
        address = out.stdout.split("coordinator ", 1)[1].split(",", 1)[0]
        token_file = out.stdout.split("--token-file ", 1)[1].split()[0]
        with lepton.Client(address, timeout=10, token=Path(token_file).read_text()) as client:
            assert len(client.cluster_status().agents) == 2
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(alive(pid) for pid in pids), "the detached cluster to stop when told")
    finally:
        kill_all(pids)


def health(address: str, token: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lepton", "health", "--timeout", "5", "--coordinator", address],
                          capture_output=True, text=True, timeout=GENEROUS, env={**os.environ, "LEPTON_TOKEN": token})


@pytest.mark.skipif(not shutil.which("etcd"), reason="no etcd binary: apt-get install etcd-server")
def test_lepton_up_ha_runs_jobs_through_the_loss_of_its_leader_and_stops_clean():
    """The real `lepton up --ha`: a job, `lepton health` over both coordinators, the leader SIGKILLed,
    a job again through the same client (it follows the new leader), then SIGTERM: every process it
    started (etcd, two coordinators, two agents) is gone when it exits 0."""
    pytest.importorskip("etcd3gw", reason="the etcd client: pip install 'lepton[ha]'")
    up = subprocess.Popen(up_command("--ha", "--shutdown-timeout", BOUND), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    pids = []
    try:
        first = up.stdout.readline()
        assert first.startswith("lepton cluster up: coordinator"), first
        addresses = first.split("coordinator ", 1)[1].split(", ", 1)[0].split(",")
        ha = up.stdout.readline()
        assert ha.startswith("high availability: etcd at"), ha
        coordinator_pids = [int(p) for p in ha.rsplit("(pids ", 1)[1].rstrip(")\n").split()]
        up.stdout.readline()  # the dashboard
        token_file = up.stdout.readline().split("--token-file ", 1)[1].split()[0]
        pids = sorted({*children_of(up.pid), *(d for c in children_of(up.pid) for d in descendants(c))})
        assert len(children_of(up.pid)) == 5, pids  # etcd, two coordinators, two agents
        assert len(addresses) == 2 and set(coordinator_pids) <= set(pids)

        x = np.arange(3_000_000, dtype=np.float64)  # integers: the float64 sum is exact, whatever the order
        token = Path(token_file).read_text().strip()
        with lepton.Client(",".join(addresses), timeout=GENEROUS, token=token, resubmit_on_unavailable=True) as client:
            assert client.sum(x, partitions=8) == x.sum()
            probe = health(",".join(addresses), token)
            assert probe.returncode == 0, probe.stdout + probe.stderr
            leader = addresses.index(probe.stdout.split("leader: ", 1)[1].split()[0])
            wrong = health(",".join(addresses), "not-the-token")  # refused, not unreachable: and no leader seen
            assert wrong.returncode == 1 and wrong.stdout.count("  UNAUTHENTICATED  ") == 2, wrong.stdout
            os.kill(coordinator_pids[leader], signal.SIGKILL)
            assert client.sum(x, partitions=8) == x.sum()  # dials the dead one first, follows to the new leader
            probe = health(",".join(addresses), token)
            assert probe.returncode == 2, probe.stdout + probe.stderr  # degraded: one leads, the other is gone
            assert f"leader: {addresses[1 - leader]}" in probe.stdout and "UNREACHABLE" in probe.stdout

        assert stopped_code(up) == 0
        assert not any(alive(pid) for pid in pids), [pid for pid in pids if alive(pid)]
        probe = health(",".join(addresses), token)
        assert probe.returncode == 1 and "no coordinator leads" in probe.stdout, probe.stdout + probe.stderr
    finally:
        up.kill()
        kill_all(pids)


# -- an agent alone ------------------------------------------------------------------------------

def test_an_agent_whose_coordinator_is_gone_for_good_exits_and_says_why():
    with lepton.LocalCluster(agents=1, agent_args=["--coordinator-timeout", "2"]) as cluster:
        cluster.coordinator.kill()
        cluster.coordinator.wait(timeout=GENEROUS)
        agent = cluster.agents[0]
        assert agent.wait(timeout=GENEROUS) == 1
        log = (cluster.log_dir / "agent-0.log").read_text()
        assert "event=agent.coordinator_lost" in log and "--coordinator-timeout 2s" in log, log[-2000:]
        assert "event=agent.stopping" in log


def test_an_agent_rejoins_a_coordinator_that_comes_back_within_its_timeout(tmp_path):
    with lepton.LocalCluster(agents=1, agent_args=["--coordinator-timeout", "600"]) as cluster:
        cluster.coordinator.kill()
        cluster.coordinator.wait(timeout=GENEROUS)
        log = cluster.log_dir / "agent-0.log"
        wait_for(lambda: "event=coordinator.unreachable" in log.read_text(), "the agent to miss its coordinator")
        with open(tmp_path / "coordinator.log", "wb") as out:
            again = subprocess.Popen([sys.executable, "-m", "lepton", "coordinator", "--listen", cluster.address],
                                     stdout=out, stderr=subprocess.STDOUT,  # the same cluster: its tokens
                                     env={**os.environ, "LEPTON_TOKEN": cluster.token,
                                          "LEPTON_JOIN_TOKEN": cluster.join_token})
        try:
            with lepton.Client(cluster.address, timeout=10, **cluster.credentials()) as client:
                wait_for(lambda: _agents(client) == 1, "the agent to join the new coordinator")
                assert float(client.sum(np.arange(10.0))) == 45.0  # exact: small integers in float64
        finally:
            again.terminate()
            again.wait(timeout=GENEROUS)
        assert cluster.agents[0].poll() is None  # still serving


def _agents(client) -> int:
    try:
        return len(client.cluster_status().agents)
    except lepton.LeptonError:  # the new coordinator is not serving yet
        return 0


def test_an_agent_retries_its_coordinator_with_doubling_pauses_at_most_5s_apart(monkeypatch):
    """The backoff of "An agent alone gives up": full jitter over a bound that doubles from 0.1 s up to
    5 s (the jitter is pinned to its largest pause here; the pauses are recorded, not slept)."""
    from types import SimpleNamespace

    from lepton.agent import membership

    monkeypatch.setattr(membership.random, "uniform", lambda low, high: high)
    agent = SimpleNamespace(devices=[], credits=1, busy=lambda: False, cache=SimpleNamespace(keys=lambda prefix: []))
    client = membership.MembershipClient(agent, "127.0.0.1:1", "lonely", "127.0.0.1:2")  # nothing on port 1
    pauses = []

    def wait(seconds):
        pauses.append(seconds)
        if len(pauses) == 9:
            client._stop.set()
        return client._stop.is_set()

    monkeypatch.setattr(client._stop, "wait", wait)
    client._loop()
    client._coordinators.close()  # (its channels: one per coordinator address)
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0], pauses


def test_servers_log_one_line_per_event_at_lepton_log_level(monkeypatch):
    """Events are logged at INFO by default; LEPTON_LOG_LEVEL=WARNING leaves them out (job.finished:
    a small job's job.accepted is at DEBUG)."""
    for level, logged in (("", True), ("WARNING", False)):
        monkeypatch.setenv("LEPTON_LOG_LEVEL", level or "INFO")
        with lepton.LocalCluster(agents=1) as cluster:
            assert cluster.client().sum(np.ones(10)) == 10
            lines = [line for line in cluster.logs().splitlines() if "event=job.finished" in line]
        assert bool(lines) == logged, (level, lines)
        assert all(line.count("event=") == 1 for line in lines)
