"""The small-job path of issue 20 (W6): a one-partition job runs on its RPC's own thread, on the
agent too, and many run at once without queueing for credits; a tiny reduction runs in the
coordinator itself (coordinator/inline.py), bitwise as an agent runs it. Results are checked against
NumPy (sums of float32 in float64: rtol 1e-6; the inlined ops by tests/references.py's bounds)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from lepton import wire
from lepton.agent.agent import Agent
from lepton.backends.numpy_device import NumpyDevice
from lepton.coordinator.coordinator import Config, Coordinator
from lepton.coordinator.intake import InputReader
from lepton.coordinator.planner import Scheme


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


def test_a_run_in_place_is_sized_by_the_share_once_the_agents_are_measured(coordinator):
    """ARCHITECTURE.md §4: a run whose rows are on its agent's host already (resident there, or in the
    client's shared memory) ships nothing, so once every agent is measured it holds the placement's
    share, for one credit; a run that ships its rows holds half the agent's 2 credits' worth of bytes
    (one 8 MiB partition), and so does a run in place while the agents are still being measured."""
    scheduler = coordinator.scheduler
    coordinator.membership.join("elsewhere", "127.0.0.1:10", [NumpyDevice().info()], 2)
    agents = coordinator.membership.agents()
    x = np.empty(64 << 21, dtype=np.float32)  # 64 partitions of 8 MiB (untouched: no memory)
    job = coordinator.submit("sum", {}, [wire.header("x", x, checksum=False)], Scheme.ROW_BLOCKS, 64, 0, 0, "", None)
    with scheduler.cond, job.lock:
        job.parts.release(job.plan.count)  # as if the rows had arrived (the dispatcher is locked out)
        assert scheduler.run_size(job, agents[0], agents, in_place=True) == 1  # not measured yet
        for agent in agents:  # 8 GB/s each: 0.2 s of compute (MIN_RUN_SECONDS) is the whole share
            scheduler.placement.speeds.observe(agent.id, "sum", agent.devices[0].name, 8 << 20, 1e-3)
        assert scheduler.run_size(job, agents[0], agents) == 1
        assert scheduler.run_size(job, agents[0], agents, in_place=True) == 32
        assert scheduler.credits_of(job, 32) == 32.0
        assert scheduler.credits_of(job, 32, in_place=True) == 1.0


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


# -- tiny jobs computed by the coordinator itself (coordinator/inline.py) -----------------------

def _ran_on(client, job) -> list[tuple[str, str]]:
    return [(a.agent_id, a.device) for a in client.trace(job.job_id).partitions]


def test_a_tiny_job_runs_in_the_coordinator_bitwise_as_an_agent_runs_it_and_its_trace_says_so():
    """Every inlined op on float32, float64 and int32 data: the coordinator's result is bitwise an
    agent's (a cluster with --inline-kib 0, same run) and matches NumPy (tests/references.py bounds:
    exact for min, max, count, histogram and integer sums)."""
    from tests.references import assert_matches

    rng = np.random.default_rng(20)
    data = [rng.random(1024, dtype=np.float32), rng.standard_normal((300, 3)), rng.integers(-50, 50, 777).astype(np.int32)]
    ops = {"sum": {}, "min": {}, "max": {}, "count": {}, "mean": {}, "var": {"ddof": 1}, "describe": {},
           "histogram": {"bins": 8, "range": [-4.0, 4.0]}}
    import lepton

    with lepton.LocalCluster(agents=1) as inline, \
            lepton.LocalCluster(agents=1, coordinator_args=["--inline-kib", "0"]) as agents:
        here, there = inline.client(timeout=30), agents.client(timeout=30)
        for x in data:
            for op, params in ops.items():
                if op == "histogram" and x.dtype.kind != "f":
                    continue
                job = here.submit(op, x, **params)
                got = job.result()
                assert _ran_on(here, job) == [("coordinator", "numpy:inline")], op
                other = there.submit(op, x, **params)
                want = other.result()
                (agent_id, device), = _ran_on(there, other)
                assert agent_id != "coordinator" and device == "numpy:0", (op, agent_id, device)
                assert got.keys() == want.keys(), op
                for name in want:
                    a, b = np.asarray(got[name]), np.asarray(want[name])
                    assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), (op, name, a, b)
                assert_matches(op, x, got, **params)
        # Small jobs by RunJob (client.sum and the like) take the same path.
        assert here.sum(data[0]) == there.sum(data[0])


def test_the_coordinator_inlines_only_tiny_reductions_that_plain_numpy_agents_would_run(coordinator):
    from lepton.contract import DeviceInfo

    inline = coordinator.inline
    x = np.ones(1024, dtype=np.float32)
    assert inline.eligible(_submit(coordinator, x))
    assert not inline.eligible(_submit(coordinator, np.ones(64 << 10, dtype=np.float32)))  # 256 KiB: over 64 KiB
    assert not inline.eligible(_submit(coordinator, x, partitions=2))
    w = np.ones((4, 4), dtype=np.float32)
    matmul = coordinator.submit("matmul", {}, [wire.header("a", w), wire.header("b", w)], Scheme.ROW_BLOCKS, 1, 0, 0,
                                "", None)
    assert not inline.eligible(matmul)  # BLAS: its bits may depend on the thread count
    (agent,) = coordinator.membership.agents()
    numpy_info = agent.devices[0]
    slowed = NumpyDevice()
    slowed.set_throttle(2)
    for devices in ([slowed.info()],  # --throttle
                    [DeviceInfo(**{**numpy_info.__dict__, "description": numpy_info.description +
                                   " [test hooks: --test-delay]"})],
                    [numpy_info, DeviceInfo("opencl:0", "opencl", "a GPU", 1 << 30, ["sum"])]):  # might run it there
        agent.devices = devices
        assert not inline.eligible(_submit(coordinator, x)), devices
    agent.devices = [numpy_info]
    inline.max_bytes = 0  # --inline-kib 0
    assert not inline.eligible(_submit(coordinator, x))


def test_an_inlined_job_is_traced_counted_and_off_the_dispatchers_list(coordinator):
    from lepton.coordinator import metrics

    x = np.random.default_rng(3).random(1000, dtype=np.float32)
    before = metrics.INLINE_PARTITIONS._value.get()
    job = _submit(coordinator, x)
    InputReader(coordinator).start(job, wire.chunks([x]))  # the agent at 127.0.0.1:9 is never called
    assert job.state.name == "SUCCEEDED"
    np.testing.assert_allclose(job.result["sum"], x.astype(np.float64).sum(), rtol=1e-6)  # float32 pairwise
    assert [(a.agent_id, a.device, a.outcome_text) for a in job.record.trace] == [("coordinator", "numpy:inline", "done")]
    assert job.record.partitions_done == 1 and not job.runs and job not in coordinator.scheduler.jobs
    assert metrics.INLINE_PARTITIONS._value.get() == before + 1


def test_an_agent_with_test_hooks_runs_even_tiny_jobs():
    """Tests that slow an agent down on purpose (--test-delay) must see their small jobs on it."""
    import lepton

    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.001"]) as cluster:
        client = cluster.client(timeout=30)
        job = client.submit("sum", np.ones(16, dtype=np.float32))
        assert job.result()["sum"] == 16
        (agent_id, device), = _ran_on(client, job)
        assert agent_id != "coordinator" and device == "numpy:0"
        assert "[test hooks: --test-delay]" in client.cluster_status().agents[0].devices[0].description
