"""Faults a cluster survives with exact answers: an agent killed or stopped mid-job, and (across
network-namespace hosts) an agent's link cut mid-job. Each disturbed result is compared bitwise with
the same job undisturbed, and with NumPy."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lepton
from references import assert_matches, numpy_stages
from waits import wait_for
import netns

# float64 data of wide dynamic range: its partials differ in their last bits with the fold's order,
# so an exactly-once, fixed-tree fold is the only way to get the undisturbed run's bits back.
RNG = np.random.default_rng(13)
X = RNG.standard_normal((240_000, 2)) * np.exp(RNG.uniform(-20, 20, size=(240_000, 1)))
PARTITIONS = 48
DELAY = "0.05:0.15"  # seconds per partition: long enough to act mid-job
# Namespace hosts serve beyond loopback: these tests are about faults, not credentials (test_multihost.py
# runs its hosts with TLS and tokens).
INSECURE = ["--insecure"]



def close_to_numpy(total: np.ndarray) -> None:
    # The fold's bound (tests/references.py) for blocks no longer than a partition: 2e-14 of sum(|x|).
    assert_matches("sum", X, {"sum": total}, lambda op, x: numpy_stages(op, x, rows=-(-len(x) // PARTITIONS)))


@pytest.fixture(scope="module")
def undisturbed():
    """The reference results, from a cluster nobody touches."""
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", DELAY]) as cluster:
        client = cluster.client(timeout=300)
        total = client.sum(X, partitions=PARTITIONS)
        dataset = client.put("points", X[:60_000], partitions=12)
        kmeans = client.kmeans(dataset, centroids=X[:4], max_iter=10, tol=0.0)
    close_to_numpy(total)
    return total, kmeans


def started(job, partitions: int):
    return lambda: job.status is not None and job.status.partitions_done >= partitions


def test_an_agent_killed_mid_sum_changes_nothing(undisturbed):
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", DELAY]) as cluster:
        job = cluster.client(timeout=300).submit("sum", X, partitions=PARTITIONS)
        wait_for(started(job, PARTITIONS // 4), "a quarter of the partitions")
        cluster.kill_agent(1)
        total = job.result()["sum"]
        assert job.status.partitions_done == PARTITIONS
    assert np.array_equal(total, undisturbed[0])  # bitwise


def test_an_agent_killed_mid_kmeans_changes_nothing(undisturbed):
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", DELAY]) as cluster:
        client = cluster.client(timeout=300)
        dataset = client.put("points", X[:60_000], partitions=12)
        job = client.submit("kmeans", {"x": dataset, "centroids": X[:4]}, k=4, max_iter=10, tol=0.0)
        wait_for(lambda: job.status is not None and job.status.iteration >= 3, "the third iteration")
        cluster.kill_agent(2)
        result = job.result()
    for name, expected in undisturbed[1].items():
        assert np.array_equal(result[name], expected), name


def test_a_stopped_agent_is_overtaken_by_speculation_and_counts_once_after_it_resumes(undisturbed):
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", DELAY]) as cluster:
        client = cluster.client(timeout=300)
        t0 = time.monotonic()
        job = client.submit("sum", X, partitions=PARTITIONS)
        wait_for(started(job, PARTITIONS // 4), "a quarter of the partitions")
        stopped = cluster.agents[0]
        stopped.send_signal(signal.SIGSTOP)
        try:
            total = job.result()["sum"]  # while the agent is still stopped
            seconds = time.monotonic() - t0
        finally:
            stopped.send_signal(signal.SIGCONT)
        assert np.array_equal(total, undisturbed[0])
        # It comes back (it is forgotten after its heartbeat timeout, then joins again), and a
        # new job over all three agents still gives the same bits: nothing is counted twice.
        wait_for(lambda: len(client.cluster_status().agents) == 3, "the resumed agent to rejoin")
        assert np.array_equal(client.sum(X, partitions=PARTITIONS), undisturbed[0])
    print(f"\nsum with one agent stopped mid-job: {seconds:.2f}s")


why = netns.unavailable()


@pytest.mark.skipif(why is not None, reason=f"no network namespaces here: {why}")
def test_a_cut_link_is_a_lost_agent_and_a_restored_one_rejoins_without_double_counting(tmp_path, undisturbed):
    with netns.Hosts() as hosts:
        for host in ("coordinator", "agent1", "agent2", "agent3", "client"):
            hosts.add(host)
        ready = tmp_path / "address"
        log = open(tmp_path / "coordinator.log", "w+")
        coordinator = hosts.python("coordinator", ["-m", "lepton", "coordinator", "--listen",
                                                   f"{hosts.addresses['coordinator']}:0", "--ready-file", str(ready), *INSECURE],
                                   stdout=log, stderr=subprocess.STDOUT)
        wait_for(ready.exists, "the coordinator")
        address = ready.read_text()
        for name in ("agent1", "agent2", "agent3"):
            hosts.python(name, ["-m", "lepton", "agent", "--coordinator", address, "--test-delay", DELAY, *INSECURE],
                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        np.save(tmp_path / "x.npy", X)
        out = tmp_path / "sums.npy"
        client = hosts.python("client", [str(Path(__file__).parent / "faults_client.py"), address,
                                         str(tmp_path / "x.npy"), str(out), str(PARTITIONS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The client prints "started" once a quarter of the first job's partitions are done.
        assert client.stdout.readline().strip() == "started", client.stderr.read()
        hosts.cut("agent2")
        assert client.stdout.readline().strip() == "first done", client.stderr.read()

        def removed() -> bool:
            log.seek(0)
            return "event=agent.removed" in log.read()

        wait_for(removed, "the cut agent to be dropped, as a killed one is")
        hosts.restore("agent2")
        _, errors = client.communicate(timeout=300)
        assert client.returncode == 0, errors
        assert coordinator.poll() is None
        first, second = np.load(out)
        assert np.array_equal(first, undisturbed[0]) and np.array_equal(second, undisturbed[0])


# 50 ms of delay and 1% loss on every host's link: with `tc netem` where the kernel has the qdisc;
# else the loss from iptables `statistic` rules on each host's veth and the delay from a TCP relay
# (tests/delay_relay.py) in front of every server, holding each segment 50 ms each way, so that every
# round trip between two hosts takes 100 ms more, as under netem.
NETEM = netns.netem_unavailable() is None
slow_links = None if NETEM else netns.drop_unavailable()
PORT = 50051  # each host is a namespace of its own: a fixed port is free on every one


@pytest.mark.skipif(slow_links is not None, reason=f"links cannot be made slow and lossy here: {slow_links}")
def test_50ms_of_delay_and_1_percent_loss_on_every_link_still_give_exact_results(tmp_path, undisturbed):
    with netns.Hosts() as hosts:
        for host in ("coordinator", "agent1", "agent2", "agent3", "client"):
            hosts.add(host)
            if NETEM:
                hosts.netem(host, "delay 50ms loss 1%")
            else:
                hosts.drop(host, 0.01)

        def serve(host: str, local_port: int) -> tuple[str, str]:
            """(listen, address peers dial) of the server on `host`: behind the delay relay without netem."""
            if NETEM:
                return f"{hosts.addresses[host]}:0", ""
            return f"127.0.0.1:{local_port}", hosts.delay_relay(host, PORT, f"127.0.0.1:{local_port}", 0.05)

        ready = tmp_path / "address"
        listen, address = serve("coordinator", PORT + 1)
        hosts.python("coordinator", ["-m", "lepton", "coordinator", "--listen", listen,
                                     "--ready-file", str(ready), *INSECURE], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(ready.exists, "the coordinator")
        address = address or ready.read_text()
        for name in ("agent1", "agent2", "agent3"):
            listen, advertise = serve(name, PORT + 1)
            where = [] if NETEM else ["--listen", listen, "--advertise", advertise]
            hosts.python(name, ["-m", "lepton", "agent", "--coordinator", address, *where, *INSECURE],
                         stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        np.save(tmp_path / "x.npy", X)
        out = tmp_path / "sums.npy"
        client = hosts.python("client", [str(Path(__file__).parent / "faults_client.py"), address,
                                         str(tmp_path / "x.npy"), str(out), str(PARTITIONS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, errors = client.communicate(timeout=600)
        assert client.returncode == 0, errors
        assert all(np.array_equal(total, undisturbed[0]) for total in np.load(out))
        if not NETEM:  # the loss was real: TCP had segments to resend
            assert sum(hosts.dropped(host) for host in hosts.addresses) > 0


@pytest.mark.skipif(netns.unavailable() is not None, reason=f"no network namespaces here: {why}")
def test_the_delay_relay_holds_every_segment_50ms_each_way():
    """A round trip through tests/delay_relay.py takes at least 100 ms (a lower bound: load only adds)."""
    with netns.Hosts() as hosts:
        hosts.add("server")
        echo = hosts.python("server", ["-c", "import socket; s = socket.create_server(('127.0.0.1', 7)); "
                                       "c = s.accept()[0]\nwhile d := c.recv(99): c.sendall(d)"])
        address = hosts.delay_relay("server", PORT, "127.0.0.1:7", 0.05)
        rtts = hosts.run("server", [sys.executable, "-c", f"""
import socket, time
host, port = {address!r}.split(':')
c = socket.create_connection((host, int(port)))
for _ in range(3):
    t = time.monotonic(); c.sendall(b'x'); assert c.recv(9) == b'x'; print(time.monotonic() - t)
"""], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=120)
        assert rtts.returncode == 0, rtts.stderr
        assert all(float(t) >= 0.1 for t in rtts.stdout.split()), rtts.stdout
        echo.kill()
