"""The small-job path of issue 20 (W6): a one-partition job runs on its RPC's own thread, on the
agent too, and many run at once without queueing for credits. Results are checked against NumPy
(sums of float32 in float64: rtol 1e-6)."""
from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

import lepton

from lepton import wire
from lepton.agent.agent import Agent
from lepton.backends.numpy_device import NumpyDevice
from lepton.coordinator.coordinator import Config, Coordinator
from lepton.coordinator.intake import InputReader
from lepton.coordinator.planner import Scheme
from waits import wait_for


@pytest.fixture
def coordinator():
    """A coordinator without a network: one agent of 2 credits joined by address (nothing listens
    there; the runs these tests start are never executed)."""
    c = Coordinator(Config())
    c.membership.join("nowhere", "127.0.0.1:9", [NumpyDevice().info()], 2)
    yield c
    c.stop()


def _submit(coordinator: Coordinator, x: np.ndarray, partitions: int = 1):
    return coordinator.submit("sum", {}, [wire.header("x", x)], Scheme.ROW_BLOCKS, partitions, 0, 0, "", None)


def test_a_tiny_run_takes_an_eighth_of_a_credit_and_a_full_one_a_whole_credit(coordinator):
    scheduler = coordinator.scheduler
    (agent,) = coordinator.membership.agents()
    tiny = _submit(coordinator, np.ones(1024, dtype=np.float32))
    full = _submit(coordinator, np.ones(2 << 20, dtype=np.float32))  # one partition of the 8 MiB target
    assert scheduler.credits_of(tiny, 1) == 1 / 8
    assert scheduler.credits_of(full, 1) == 1.0
    with scheduler.cond:
        agent.in_flight = 2 - 1 / 8  # room for one tiny run, not for a full partition
        assert scheduler.run_size(tiny, agent, [agent]) == 1
        assert scheduler.run_size(full, agent, [agent]) == 0
        agent.in_flight = 2 - 1 / 16
        assert scheduler.run_size(tiny, agent, [agent]) == 0
        agent.in_flight = 0


def test_a_run_of_a_many_partition_job_takes_one_credit_per_8_mib(coordinator):
    """README: a run of small partitions takes one credit per 8 MiB, whole credits, at least one:
    eighths are for one-partition jobs only, so a slow agent cannot hold 8x its share in flight."""
    scheduler = coordinator.scheduler
    job = _submit(coordinator, np.ones(1 << 20, dtype=np.float32), partitions=64)  # 64 KiB each
    assert job.plan.count == 64
    assert scheduler.credits_of(job, 1) == 1.0
    assert scheduler.credits_of(job, 128) == 1.0  # 8 MiB of rows (the job's 64 twice over)
    assert scheduler.credits_of(job, 129) == 2.0


def test_a_held_small_job_is_left_to_its_caller(coordinator):
    scheduler = coordinator.scheduler
    x = np.arange(1024, dtype=np.float32)
    job = _submit(coordinator, x)
    scheduler.hold(job)
    with scheduler.cond:  # the dispatcher cannot run meanwhile: we call its pass ourselves
        assert InputReader(coordinator).read(job, wire.chunks([x]), notify=False)
        launches, _ = scheduler._assign()
        assert not launches  # ready, but its caller starts it (Scheduler.run_here)
        job.held = False  # what run_here does when it cannot start the run itself
        launches, _ = scheduler._assign()
        assert [(j, run.lo, run.hi) for _, j, run in launches] == [(job, 0, 1)]


class ThreadRecordingDevice(NumpyDevice):
    """A NumPy device that notes the thread each sum ran on."""

    kernels = dict(NumpyDevice.kernels)

    def __init__(self):
        super().__init__()
        self.threads: list[threading.Thread] = []
        sum_kernel = NumpyDevice.kernels["sum"]

        def recording(device, inputs, params):
            self.threads.append(threading.current_thread())
            return sum_kernel(device, inputs, params)
        self.kernels = {**NumpyDevice.kernels, "sum": recording}


@pytest.mark.parametrize("partitions", [1, 3])
def test_an_idle_device_runs_a_lone_partition_on_the_tasks_thread(partitions):
    device = ThreadRecordingDevice()
    agent = Agent([device])
    try:
        x = np.random.default_rng(1).random(3000, dtype=np.float32)
        params = {"dtype": "<f4", "columns": [], "out_dtype": "<f4"}
        splits = np.linspace(0, len(x), partitions + 1).astype(int)
        split = [{"x": x[lo:hi]} for lo, hi in zip(splits, splits[1:])]
        nodes = list(agent.run_task("job-1", "sum", params, 0, partitions, 8, split, {}, list(splits[:-1])))
        assert [(lo, hi) for lo, hi, *_ in nodes] == [(0, partitions)]
        np.testing.assert_allclose(nodes[0][2]["sum"], x.astype(np.float64).sum(), rtol=1e-6)
        on_caller = [t is threading.current_thread() for t in device.threads]
        assert on_caller == ([True] if partitions == 1 else [False] * partitions)
    finally:
        agent.stop()


def test_a_small_task_whose_partial_is_too_big_for_one_reply_streams_it_instead(client, rng):
    """A task of little input can have a partial over what RunSmallTask's one reply carries inline
    (256 KiB a partial): the agent says so, and the coordinator runs the task again with RunTask. A
    float32 matmul of 64 x 64 by 64 x 2,048 sends 528 KiB (a small task) and gets a partial of 512
    KiB. Checked against NumPy (float32 products: rtol 1e-4 of |a| @ |b|)."""
    from references import close

    a = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal((64, 2048)).astype(np.float32)
    c = client.matmul(a, b, plan="rows", partitions=1)
    close(c, a @ b, np.abs(a) @ np.abs(b), 1e-4)
    trace = client.trace(client.jobs(limit=1)[0].job_id)
    assert [p.outcome for p in trace.partitions] == ["done"], trace.partitions  # one attempt, no retry


def test_many_small_jobs_at_once_on_real_agents(client):
    """16 callers of small sums at once over real gRPC (the unary RunSmallTask path): every result
    is NumPy's (float32 summed in float64 accumulators: rtol 1e-6)."""
    xs = [np.random.default_rng(seed).random(1024, dtype=np.float32) for seed in range(16)]
    got: dict[int, float] = {}

    def call(i: int) -> None:
        for _ in range(5):
            got[i] = client.sum(xs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(got[i], x.astype(np.float64).sum(), rtol=1e-6)


def test_a_small_run_on_a_stopped_agent_is_cancelled_when_the_agent_is_lost_and_runs_elsewhere():
    """A small job's one run (RunSmallTask) on a SIGSTOPped agent never answers: dropping the agent
    (heartbeat timeout) must end that call (the scheduler cancels it, and the link's channel closes)
    so that the job runs on another agent. Checked against NumPy (float32 summed in float64: rtol 1e-6)."""
    x = np.random.default_rng(7).random(1024, dtype=np.float32)
    with lepton.LocalCluster(agents=1, coordinator_args=["--heartbeat-timeout", "1.5"]) as cluster:
        client = cluster.client(timeout=60)
        stopped = cluster.agents[0]
        (first,) = client.cluster_status().agents
        stopped.send_signal(signal.SIGSTOP)
        try:
            got: list = []
            caller = threading.Thread(target=lambda: got.append(client.sum(x)))
            caller.start()
            wait_for(lambda: client.jobs(limit=1) and client.jobs(limit=1)[0].partitions_total == 1
                     and client.trace(client.jobs(limit=1)[0].job_id).partitions, "the run on the stopped agent")
            cluster.add_agent(wait=False)  # somewhere to go once the stopped one is dropped
            # Dropped after 1.5 s of silence, its run cancelled and sent to the new agent: seconds. (With
            # neither the cancel nor the link's close, something else gave up on the call after ~20 s.)
            caller.join(timeout=12)
            assert not caller.is_alive(), "the small job did not finish: its run on the stopped agent was not cancelled"
        finally:
            stopped.send_signal(signal.SIGCONT)
        np.testing.assert_allclose(got[0], x.astype(np.float64).sum(), rtol=1e-6)
        attempts = client.trace(client.jobs(limit=1)[0].job_id).partitions
        assert [a.agent_id == first.agent_id for a in attempts] == [True, False], attempts
        assert attempts[-1].outcome == "done"
