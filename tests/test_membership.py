"""Agents come and go: killed agents are dropped, new ones are used, and no job is lost."""
import collections
import subprocess
import sys

import numpy as np
import pytest

import lepton
from references import assert_matches
from waits import wait_for


def status_text(cluster):
    out = subprocess.run([sys.executable, "-m", "lepton", "status", "--coordinator", cluster.address,
                          "--token-file", str(cluster.token_file)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_killed_agent_is_dropped_and_a_new_agent_is_used():
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client()
        assert client.sum(np.ones(1000, np.float32)) == 1000
        pid = cluster.agents[0].pid
        (killed,) = [a for a in client.cluster_status().agents if a.name.endswith(f"-{pid}")]
        cluster.kill_agent(0)  # SIGKILL: no goodbye
        wait_for(lambda: killed.address not in status_text(cluster), "the killed agent still listed")
        assert f"event=agent.removed agent={killed.agent_id}" in cluster.logs(100_000)
        assert "no heartbeat for" in cluster.logs(100_000)  # dropped by the heartbeat timeout
        newcomer = cluster.add_agent("numpy")
        x = np.arange(8_000_000, dtype=np.float64)
        assert client.sum(x, partitions=16) == x.sum()
        (record,) = [a for a in client.cluster_status().agents if a.name.endswith(f"-{newcomer.pid}")]
        assert record.partitions_done > 0  # the newcomer took work


def test_agent_killed_mid_job_loses_no_job():
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", "0.1"]) as cluster:
        client = cluster.client()
        x = np.random.default_rng(3).standard_normal(4_000_000)
        job = client.submit("sum", x, partitions=60)
        for status in job:
            if status.partitions_done >= 5:
                cluster.kill_agent(1)
                break
        total = job.result(timeout=120)["sum"]
        assert_matches("sum", x, {"sum": np.asarray(total)})
        assert client.job(job.job_id).retries >= 1


def test_sigterm_stops_an_agent_cleanly_and_it_leaves_at_once():
    import signal

    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client()
        process = cluster.agents[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        wait_for(lambda: len(client.cluster_status().agents) == 1, "the stopped agent still listed")
        logs = cluster.logs(100_000)
        assert "reason=left" in logs and "no heartbeat for" not in logs, logs  # it said goodbye
        assert client.sum(np.ones(100)) == 100
        assert cluster.coordinator.poll() is None


def test_deadline_ends_the_job_and_the_cluster_stays_usable():
    import grpc

    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.3"]) as cluster:
        client = cluster.client()
        job = client.submit("sum", np.ones(1_000_000), partitions=40, timeout=1.0)
        job_id = job.job_id
        try:
            job.result(timeout=30)
            raise AssertionError("the job should have missed its deadline")
        except lepton.LeptonError as exc:
            assert exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: client.job(job_id).state in (4, 5), "the job to end")  # FAILED or CANCELLED
        assert client.sum(np.ones(10), partitions=1) == 10


def test_coordinator_sigterm_fails_running_jobs_cleanly():
    import grpc
    import signal

    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.3"]) as cluster:
        job = cluster.client().submit("sum", np.ones(1_000_000), partitions=40)
        assert job.job_id
        cluster.coordinator.send_signal(signal.SIGTERM)
        with pytest.raises(lepton.LeptonError) as info:
            job.result(timeout=30)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE, (info.value, cluster.logs())
        assert "shutting down" in info.value.details, (info.value, cluster.logs())
        assert cluster.coordinator.wait(timeout=20) == 0, cluster.logs()


@pytest.mark.slow  # about 14 s
def test_a_straggling_agent_is_outrun_by_speculative_copies():
    with lepton.LocalCluster(agents=1) as cluster:
        # Every partition there takes 10 minutes: the job can only end within the client's 120 s if
        # speculative copies replace them.
        cluster.add_agent("numpy", ["--test-delay", "600:600"])
        client = cluster.client(timeout=120)
        x = np.random.default_rng(4).standard_normal(2_000_000)
        total = client.sum(x, partitions=16)
        assert_matches("sum", x, {"sum": np.asarray(total)})
        trace = client.trace(client.jobs(limit=1)[0].job_id)
        tries = collections.Counter(p.partition for p in trace.partitions)
        assert max(tries.values()) == 2, tries  # some partitions ran twice: the straggler's and a copy
        assert {p.outcome for p in trace.partitions} == {"done", "superseded"}
        assert client.sum(np.ones(10), partitions=1) == 10  # the cluster is fine afterwards
