"""README claims about a job's life and the servers': credits, cancellation and deadlines reaching
agents, NOT_SERVING while the coordinator shuts down, `lepton up`, the BLAS thread split and the
environment-variable flags. Each waits on a condition with a generous deadline, never on a clock."""
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import lepton
from waits import wait_for


def samples(address: str, name: str) -> float:
    """The sum of a metric's samples on a server's Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def in_flight_peak(trace, agent_id: str) -> int:
    """Most partitions an agent held at once: sent and not yet returned, from the job's trace."""
    moments = sorted([(p.sent_at, 1) for p in trace.partitions if p.agent_id == agent_id] +
                     [(p.received_at, -1) for p in trace.partitions if p.agent_id == agent_id])
    held = peak = 0
    for _, step in moments:  # a return at the same moment as a send counts first (-1 < 1)
        held += step
        peak = max(peak, held)
    return peak


def runs_in_flight_peak(trace, agent_id: str) -> int:
    """Most runs an agent held at once: a run's partitions share the moment they were sent, and it is
    held until its last partial is back."""
    runs: dict[float, float] = {}
    for p in trace.partitions:
        if p.agent_id == agent_id:
            runs[p.sent_at] = max(runs.get(p.sent_at, 0.0), p.received_at)
    moments = sorted([(sent, 1) for sent in runs] + [(back, -1) for back in runs.values()])
    held = peak = 0
    for _, step in moments:
        held += step
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize("shared_memory", [False, True], ids=["streamed", "in shared memory"])
def test_an_agent_never_holds_more_work_than_its_credits(shared_memory):
    """A credit is one partition of the coordinator's target size in flight (a run of smaller ones
    takes one per target size): with a target of one partition here (80,000 bytes), one credit each.
    A run whose rows the agent maps from the client's shared memory ships none of them and takes one
    credit whatever its size (ARCHITECTURE.md §3): at most 4 such runs at once, of many partitions."""
    with lepton.LocalCluster(agents=1, agent_args=["--credits", "4", "--test-delay", "0.05:0.15"],
                             coordinator_args=["--target-partition-mib", "0.0763"]) as cluster:
        client = cluster.client(timeout=120, shared_memory=shared_memory)
        (agent,) = client.cluster_status().agents
        job = client.submit("sum", np.ones(400_000), partitions=40)  # 3.2 MB: over shared memory's 1 MiB
        assert job.result()["sum"] == 400_000
        trace = client.trace(job.job_id)
        peak, runs = in_flight_peak(trace, agent.agent_id), runs_in_flight_peak(trace, agent.agent_id)
        if shared_memory:
            assert 2 <= runs <= 4 < peak, (runs, peak)  # its credits in runs, and more partitions than that
        else:
            assert 2 <= peak <= 4, peak  # it used its credits, and never more


@pytest.mark.parametrize("how", ["lepton cancel", "deadline"])
def test_cancellation_and_deadlines_reach_the_agent_and_free_its_queue(how):
    with lepton.LocalCluster(agents=1, agent_args=["--credits", "16", "--test-delay", "0.5:0.5"]) as cluster:
        client = cluster.client(timeout=120)
        (agent,) = client.cluster_status().agents
        x = np.ones(4_000_000)  # 40 partitions of 800 KB, each 0.5 s on the agent
        job = client.submit("sum", x, partitions=40, timeout=None if how == "lepton cancel" else 3.0)
        wait_for(lambda: samples(agent.metrics_address, "lepton_device_queued_bytes") > 0, "work queued on the agent")
        if how == "lepton cancel":
            out = subprocess.run([sys.executable, "-m", "lepton", "cancel", job.job_id, "--coordinator",
                                  cluster.address, "--token-file", str(cluster.token_file)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "CANCELLED" in out.stdout, out.stdout + out.stderr
        with pytest.raises(lepton.LeptonError) as info:
            job.result(timeout=120)
        assert info.value.code == (grpc.StatusCode.CANCELLED if how == "lepton cancel"
                                   else grpc.StatusCode.DEADLINE_EXCEEDED), info.value
        ran_then = samples(agent.metrics_address, "lepton_device_partitions_total")
        queued = samples(agent.metrics_address, "lepton_device_queued_bytes") // 800_000
        # The agent drops what it queued for the job: its queue empties, and it runs at most the
        # partition on its device and one more started before it heard (it checks every 0.5 s).
        wait_for(lambda: samples(agent.metrics_address, "lepton_device_queued_bytes") == 0, "the queue to empty")
        ran = samples(agent.metrics_address, "lepton_device_partitions_total") - ran_then
        assert ran <= 3 < queued, (ran, queued)  # it had more queued than it ran
        assert client.sum(np.ones(10), partitions=1) == 10


def test_coordinator_reports_not_serving_while_it_shuts_down():
    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.3"]) as cluster:
        client = cluster.client()
        job = client.submit("sum", np.ones(1_000_000), partitions=40)  # keeps it busy while it stops
        assert job.job_id
        channel = cluster.channel()
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="lepton.v1.CoordinatorService"), timeout=60)
        seen = [next(watch).status]

        def read():
            try:
                seen.extend(r.status for r in watch)
            except grpc.RpcError:
                pass  # the server went away after saying NOT_SERVING

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        cluster.coordinator.send_signal(signal.SIGTERM)
        reader.join(timeout=60)
        channel.close()
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen[1:], (seen, cluster.logs())


def test_lepton_up_serves_until_ctrl_c():
    up = subprocess.Popen([sys.executable, "-m", "lepton", "up", "--agents", "2"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = wait_for(lambda: up.stdout.readline() or up.poll() is not None, "lepton up to start", 120)
        assert isinstance(line, str) and "coordinator" in line, line
        address = line.split("coordinator ", 1)[1].split(",")[0]
        hint = wait_for(lambda: (lambda text: text if "--token-file" in text else None)(up.stdout.readline()),
                          "lepton up to say where its token is", 120)
        token = Path(hint.split("--token-file ", 1)[1].split()[0]).read_text()
        with lepton.Client(address, timeout=60, token=token) as client:
            assert len(wait_for(lambda: len(client.cluster_status().agents) == 2 and client.cluster_status().agents,
                                  "both agents")) == 2
            x = np.arange(100_000, dtype=np.float64)
            assert client.sum(x) == x.sum()
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()


def test_every_agent_blas_pool_has_one_thread_whatever_the_agent_count():
    with lepton.LocalCluster(agents=3) as cluster:
        cluster.add_agent("numpy")
        assert len(cluster.agents) == 4
        for agent in cluster.agents:
            with open(f"/proc/{agent.pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            for var in (b"OPENBLAS_NUM_THREADS", b"OMP_NUM_THREADS", b"MKL_NUM_THREADS"):
                assert env.get(var) == os.environ.get(var.decode(), "1").encode(), (var, env.get(var))


def test_every_flag_has_an_environment_equivalent(monkeypatch):
    """--help names the variable of every server flag, and setting it changes the default."""
    import argparse

    from lepton.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    checked = 0
    for command in ("coordinator", "agent"):
        for action in commands[command]._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS) or action.dest == "help":
                continue
            assert "[LEPTON_" in action.help, f"lepton {command} {action.option_strings[0]} names no variable"
            var = action.help.rsplit("[", 1)[1].rstrip("]").split(",")[0]
            switch = isinstance(action, argparse._StoreTrueAction)  # --mtls, --insecure: VAR=1
            value = "1" if switch else {int: "7", float: "7.5"}.get(action.type, "127.0.0.1:7")
            monkeypatch.setenv(var, value)
            fresh = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
            parsed = fresh.choices[command].parse_args([])
            got = getattr(parsed, action.dest)
            monkeypatch.delenv(var)
            if got is None and action.default is None:  # read when the server starts (--device)
                continue
            if switch:
                assert got is True, (command, var, got)
            else:
                assert str(got if not isinstance(got, list) else got[0]) == value, (command, var, got)
            checked += 1
    assert checked >= 10
