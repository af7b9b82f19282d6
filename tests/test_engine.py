"""The coordinator's engine: partition states, job states under one lock, cache keys, job history,
and the agent link's cache keys (issue #11, section 2 and defects 1, 4, 5 and 9)."""
from __future__ import annotations

import sys
import threading

import crc32c
import numpy as np
import pytest

from lepton.backends.numpy_device import NumpyDevice
from lepton.backends.ops import get_op
from lepton.coordinator.agent_link import CachedKeys
from lepton.coordinator.coordinator import Config, Coordinator
from lepton.coordinator.jobs import JobRecord, JobState, Run
from lepton.coordinator.partitions import PartitionState, PartitionTable
from lepton import wire

W, R, X, D = PartitionState.WAITING, PartitionState.READY, PartitionState.RUNNING, PartitionState.DONE


@pytest.fixture
def fast_switching():
    """Switch threads as often as the interpreter can, so that unlocked read-modify-writes interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


# -- partition states --------------------------------------------------------------------------
def test_partition_table_allows_only_the_listed_transitions():
    table = PartitionTable(4)
    table.release(3)
    assert table.state == [R, R, R, W] and table.ready_count == 3
    table.move(0, X)
    table.move(0, D)
    with pytest.raises(RuntimeError, match="DONE -> RUNNING"):
        table.move(0, X)
    with pytest.raises(RuntimeError, match="WAITING -> RUNNING"):
        table.move(3, X)
    table.move(1, X)
    table.retry(1, "agent-1")
    assert table.state[1] is R and table.attempts[1] == 1 and table.failed_on[1] == {"agent-1"}
    assert table.counts() == {W: 1, R: 2, X: 0, D: 1}


def test_ready_partitions_are_filed_by_home_agent():
    homes = {0: "agent-1", 1: "agent-2", 2: "agent-1", 3: None}
    table = PartitionTable(4, homes.get)
    table.release(4)
    assert list(table.ready["agent-1"]) == [0, 2] and table.backlog("agent-2") == 1
    homes[0] = "agent-2"  # another job moved it meanwhile: it stays filed where it was counted
    table.move(0, X)
    assert list(table.ready["agent-1"]) == [2] and table.backlog("agent-2") == 1 and table.ready_count == 3


# -- defect 4: a cancel must not be undone by a run starting -----------------------------------
def _job(coordinator: Coordinator, rows: int = 8):
    x = np.zeros(rows, dtype=np.float32)
    from lepton.coordinator.planner import Scheme
    return coordinator.submit("sum", {}, [wire.header("x", x)], Scheme.ROW_BLOCKS, 2, 0, 0, "", None)


@pytest.fixture
def coordinator():
    """A coordinator without a network: one agent joined by address (nothing listens there, and no
    job in these tests ever has its input, so nothing is sent to it)."""
    c = Coordinator(Config(history=2))
    c.membership.join("nowhere", "127.0.0.1:9", [NumpyDevice().info()], 2)
    yield c
    c.stop()


class RacyRecord(JobRecord):
    """A record whose first read of `state` on the armed thread lets a cancel run at that moment:
    between a check of the state and the write that follows it."""

    armed: threading.Thread | None = None
    job = None

    @property
    def state(self):
        value = self.__dict__["_state"]
        if self.armed is threading.current_thread():
            self.armed = None
            self.canceller = threading.Thread(target=self.job.cancel)
            self.canceller.start()
            self.canceller.join(timeout=1.0)  # done at once unless the job's lock keeps it out (the fix)
        return value

    @state.setter
    def state(self, value):
        self.__dict__["_state"] = value


def test_a_cancel_landing_while_a_run_starts_stays_cancelled(coordinator):
    job = _job(coordinator)
    record = RacyRecord(**vars(job.record))
    record.job, record.armed = job, threading.current_thread()
    job.record = record
    with coordinator.scheduler.cond, job.lock:  # as the scheduler starts a run (its input is in, say)
        job.parts.release(1)
        job.start_run(Run(0, 1, "agent-1"))
    record.canceller.join(timeout=10)
    assert job.state is JobState.CANCELLED


# -- defect 9: history eviction keeps active jobs -----------------------------------------------
def test_job_history_never_drops_an_active_job(coordinator):
    jobs = [_job(coordinator) for _ in range(3)]  # history=2; none can finish: no input arrives
    assert all(not j.state.final for j in jobs)
    assert coordinator.record(jobs[0].id).state is JobState.ACCEPTED
    coordinator.cancel(jobs[0].id)
    assert jobs[0].state is JobState.CANCELLED
    _job(coordinator)  # now the oldest is final: it goes
    with pytest.raises(Exception, match="no job"):
        coordinator.record(jobs[0].id)


# -- defect 5: shared state under locks --------------------------------------------------------
def test_cached_keys_survive_concurrent_updates_and_drops(fast_switching):
    """Run threads add the keys an agent received while a dataset drop filters them out."""
    keys = CachedKeys()
    keys.update(f"blob:{i}" for i in range(20_000))
    errors: list[BaseException] = []
    stop = threading.Event()

    def add():
        i = 0
        while not stop.is_set():
            keys.update([f"ds:{i}", f"blob:x{i}"])
            i += 1

    def drop():
        try:
            for _ in range(200):
                keys.drop_prefix("ds:")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=add), threading.Thread(target=drop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert "blob:19999" in keys


# -- defect 1: whole inputs equal under CRC-32C are still different inputs -----------------------
def crc_twin(w: np.ndarray) -> np.ndarray:
    """A float32 array of w's shape, clearly different from w, with the same CRC-32C.

    CRC-32C is affine over GF(2): crc(a ^ d) = crc(a) ^ L(d) for a linear L, fixed length. Flip the
    top mantissa bit e of one value, then solve L(d) = L(e) over the low mantissa bits of other values
    (so every value stays finite): w ^ e ^ d has w's CRC."""
    base = w.astype("<f4").tobytes()
    zero = crc32c.crc32c(bytes(len(base)))

    def lin(bits: list[int]) -> int:
        d = bytearray(len(base))
        for bit in bits:
            d[bit // 8] ^= 1 << (bit % 8)
        return crc32c.crc32c(bytes(d)) ^ zero

    e = [8 * 4 * 5 + 22]  # value 5, its top mantissa bit: the value changes by a third or more
    candidates = [8 * 4 * v + b for v in range(8, 8 + 48) for b in range(16)]  # low 16 mantissa bits
    target = lin(e)
    # Gaussian elimination over GF(2): rows are (L(bit) value, set of bits that make it).
    basis: dict[int, tuple[int, frozenset]] = {}
    for bit in candidates:
        value, combo = lin([bit]), frozenset([bit])
        for pivot in sorted(basis, reverse=True):
            if value >> pivot & 1:
                value, combo = value ^ basis[pivot][0], combo ^ basis[pivot][1]
        if value:
            basis[value.bit_length() - 1] = (value, combo)
    value, combo = target, frozenset()
    for pivot in sorted(basis, reverse=True):
        if value >> pivot & 1:
            value, combo = value ^ basis[pivot][0], combo ^ basis[pivot][1]
    assert value == 0, "the candidate bits do not span the CRC space"
    d = bytearray(base)
    for bit in [*e, *combo]:
        d[bit // 8] ^= 1 << (bit % 8)
    twin = np.frombuffer(bytes(d), dtype="<f4").reshape(w.shape).copy()
    assert crc32c.crc32c(twin.tobytes()) == crc32c.crc32c(base) and not np.array_equal(twin, w)
    return twin


def test_whole_inputs_with_equal_crc32c_give_their_own_results(client, rng):
    """Two weight matrices with equal CRC-32C, dtype and shape: the second job must not compute with
    the first one's weights from the agents' cache. Tolerance: float32 matmul against NumPy's float32
    matmul of the same values, rtol 1e-5 (BLAS block order)."""
    a = rng.standard_normal((64, 16)).astype(np.float32)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    w2 = crc_twin(w1)
    for w in (w1, w2, w1):
        got = client.matmul(a, w, plan="rows", partitions=4)
        np.testing.assert_allclose(got, a @ w, rtol=1e-5, atol=1e-6)
    assert np.abs(a @ w1 - a @ w2).max() > 0.1  # the results tell the weights apart


# -- the input reader, without a network ------------------------------------------------------
def test_input_reader_releases_row_blocks_as_they_arrive_and_fails_bad_input(coordinator):
    from lepton.coordinator.intake import InputReader
    from lepton.coordinator.planner import Scheme

    x = np.arange(8 << 18, dtype=np.float32)  # 8 MiB: several chunks
    chunks = list(wire.chunks([x]))
    job = coordinator.submit("sum", {}, [wire.header("x", x)], Scheme.ROW_BLOCKS, 4, 0, 0, "", None)
    seen = []

    def feed():
        for chunk in chunks:
            yield chunk
            seen.append(job.ready_partitions())

    with coordinator.scheduler.cond:  # keep the dispatcher from sending anything to the fake agent
        coordinator.scheduler.jobs.remove(job)
    assert InputReader(coordinator).read(job, feed(), notify=False)
    assert seen == sorted(seen) and seen[0] < 4 and job.ready_partitions() == 4 and job.input_complete

    bad = coordinator.submit("sum", {}, [wire.header("x", x)], Scheme.ROW_BLOCKS, 4, 0, 0, "", None)
    broken = [*chunks[:-1], type(chunks[-1])(tensor_index=0, offset=chunks[-1].offset, data=b"\0" * len(chunks[-1].data))]
    assert not InputReader(coordinator).read(bad, iter(broken))
    assert bad.state is JobState.FAILED and bad.record.error_code == "INVALID_ARGUMENT"


def test_the_agent_cache_keeps_nothing_under_a_dropped_prefix_unless_placed_there():
    from lepton.agent.cache import TensorCache

    cache = TensorCache(1 << 20)
    assert cache.put("ds:a:1:0", np.ones(4))
    cache.drop_prefix("ds:a:1:")
    assert cache.get("ds:a:1:0") is None
    assert not cache.put("ds:a:1:1", np.ones(4))  # a task still reading the dropped dataset
    assert cache.put("ds:b:2:0", np.ones(4))
    assert cache.put("ds:a:1:1", np.ones(4), placed=True)  # a new coordinator placed it on purpose
    assert cache.put("ds:a:1:2", np.ones(4))
