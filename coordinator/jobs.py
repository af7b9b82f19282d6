"""A job's state machine, its input, its partitions and its aggregation.

States (JobState in the contract):
    ACCEPTED   validated and planned; input may still be arriving; nothing sent to an agent yet
    RUNNING    at least one partition was sent to an agent
    SUCCEEDED  the root partial was finalized; `result` holds the named result arrays
    FAILED     bad input found late (truncated stream, checksum), a non-retryable kernel error,
               retries exhausted, or no capable agent for too long; `error` says which
    CANCELLED  the client cancelled or went away
Only ACCEPTED -> RUNNING and {ACCEPTED, RUNNING} -> a final state happen (JOB_TRANSITIONS). Each
partition's own state is in lepton.coordinator.partitions. One lock per job, `Job.lock`, guards all
of the job's mutable state: its record, partition table, runs and aggregation.
"""
from __future__ import annotations

import enum
import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lepton.errors import LeptonError
from lepton.backends.ops import Op
from lepton.backends.tree import Tree, TreeAggregator
from lepton.coordinator import metrics
from lepton.coordinator.early import EarlyAnswers
from lepton.coordinator.partitions import PartitionState, PartitionTable
from lepton.coordinator.planner import Plan
from lepton import wire
from lepton.logs import event

log = logging.getLogger("lepton.coordinator")


def content_key(array: np.ndarray) -> str:
    """The agents' cache key of a whole input: a BLAKE2b hash of its bytes, dtype and shape. Not the
    wire checksum: CRC-32C is linear, so two inputs with equal CRCs are easy to make, and the agent
    would compute the second job with the first job's cached bytes."""
    digest = hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=32).hexdigest()
    return f"blob:{digest}:{array.dtype.str}:{'x'.join(map(str, array.shape))}"


class JobState(enum.Enum):
    ACCEPTED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


#: Allowed job transitions (the module docstring says when each happens); `Job._move` enforces them.
JOB_TRANSITIONS = {(JobState.ACCEPTED, JobState.RUNNING)} | {
    (old, new) for old in (JobState.ACCEPTED, JobState.RUNNING)
    for new in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}


class Outcome(enum.Enum):
    """How one attempt of a partition ended, for the trace (the partition's state is in PartitionTable)."""

    RUNNING = "running"
    DONE = "done"
    SUPERSEDED = "superseded"  # a speculative copy of its run got there first
    CACHE_MISS = "NOT_FOUND"  # the agent forgot a cached input; the bytes go again
    FAILED = "failed"  # `Attempt.code` says how


@dataclass
class Attempt:
    """One execution of one partition, for the job's trace (epoch seconds; 0 = did not happen)."""

    partition: int
    attempt: int
    agent_id: str
    queued_at: float
    sent_at: float
    rows: int
    device: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    received_at: float = 0.0
    outcome: Outcome = Outcome.RUNNING
    code: str = ""  # the gRPC status code name of a FAILED attempt

    @property
    def outcome_text(self) -> str:
        return self.code if self.outcome is Outcome.FAILED else self.outcome.value


@dataclass(eq=False)  # identity: runs with equal ranges are distinct (speculative copies)
class Run:
    """A contiguous run of partitions [lo, hi) sent to one agent as one task."""

    lo: int
    hi: int
    agent_id: str
    round: int = 0
    attempts: dict[int, Attempt] = field(default_factory=dict)
    call: object = None  # the in-flight gRPC call, to cancel it
    started: float = field(default_factory=time.monotonic)
    duplicated: bool = False  # a speculative copy of it runs elsewhere
    credits: float = 1.0  # of the agent's credits it holds while in flight (in eighths)

    def __len__(self) -> int:
        return self.hi - self.lo


@dataclass
class JobRecord:
    """What outlives a job's data: enough for GetJob and ListJobs."""

    job_id: str
    op: str
    label: str
    state: JobState = JobState.ACCEPTED
    bytes_received: int = 0
    bytes_total: int = 0
    partitions_done: int = 0
    partitions_total: int = 0
    submitted_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    error_code: str = ""
    error_message: str = ""
    retries: int = 0
    iteration: int = 0
    trace: list[Attempt] = field(default_factory=list)


class Job:
    """One job. Every mutable field, the record's included, is guarded by `lock` (the scheduler
    takes its own lock first, then this one, never the other way round)."""

    def __init__(self, job_id: str, op: Op, params: dict, label: str, inputs, plan: Plan, tree_arity: int,
                 deadline: float | None, datasets: dict | None = None, early: EarlyAnswers | None = None):
        self.id, self.op, self.params, self.plan = job_id, op, params, plan
        self.inputs = inputs  # a TensorAssembler over the inputs streamed with the job
        self.names = [h.name for h in inputs.headers]
        # The split inputs all lie in the client's shared memory: an agent on this host maps a run's
        # rows, so no run ships them (Scheduler.run_size).
        split = [i for i, n in enumerate(self.names) if n in op.split_inputs]
        self.split_in_shared_memory = bool(split) and all(i in inputs.shared for i in split)
        self.datasets = datasets or {}  # op input name -> (lepton.coordinator.datasets.Dataset, part)
        self.tree_arity, self.deadline = tree_arity, deadline
        self.record = JobRecord(job_id, op.name, label, bytes_total=inputs.bytes_total,
                                partitions_total=plan.count)
        self.lock = threading.Lock()
        # ("progress",) | ("estimate", Estimate) | ("done",) for the submit stream
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.early = early  # running estimates asked for (coordinator/early.py), or None
        if early is not None:
            early.emit = lambda estimate: self.events.put(("estimate", estimate))
        self.wake: Callable[[], None] = lambda: None  # the scheduler's: new partitions are ready
        self.on_finish: Callable[[], None] = lambda: None  # the coordinator's: store the final record
        self.held = False  # its caller starts its run (a small job): the dispatcher leaves it alone
        self.aggregator = TreeAggregator(Tree(plan.count, tree_arity), op.combine)
        self.result: dict[str, np.ndarray] | None = None
        # The result written in place into the client's memfd (coordinator/results.py), or None; once
        # the job succeeded, `result_shared` says whether it lies there (else `result` holds it).
        self.result_memory = None
        self.result_shared = False
        self.input_complete = False
        # The split inputs' values were checked when their datasets were put (Coordinator.submit sets
        # it): end_input does not read them again.
        self.data_checked = False
        self._ready = 0  # partitions whose rows have arrived, while the input streams
        self._ordered: dict[str, np.ndarray] | None = None  # split inputs in plan order, permuted once
        self.parts = PartitionTable(plan.count, self.home)
        split_bytes = sum(h.total_bytes for h in inputs.headers if h.name in op.split_inputs) + \
            sum(d.arrays[part].nbytes for n, (d, part) in self.datasets.items() if n in op.split_inputs)
        self.partition_bytes = split_bytes / plan.count  # on average: what sizes a run
        self.runs: list[Run] = []
        self.waiting_since: float | None = None  # no capable agent since then (the scheduler's clock)
        self.run_seconds: list[float] = []  # per partition, of finished runs: what "slow" means
        self._whole: dict[str, tuple] = {}  # name -> (array, header, cache key), per round
        self._prepared: dict[str, np.ndarray] | None = None  # whole inputs after op.prepare
        self.round = 0
        self._finishing = -1  # the round whose completion is being handled
        self._last_progress = 0.0

    # -- state -------------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self.record.state

    def _move(self, new: JobState) -> bool:
        """Change state if the table allows it (the caller holds `lock`)."""
        if (self.record.state, new) not in JOB_TRANSITIONS:
            return False
        self.record.state = new
        return True

    def _finish(self, state: JobState, code: str = "", message: str = "") -> bool:
        with self.lock:
            if not self._move(state):
                return False
            self.record.finished_at = time.time()
            self.record.error_code, self.record.error_message = code, message
            self.inputs = self._ordered = self._prepared = None  # free the data at once
            self._whole = {}
        event(log, "job.finished", job=self.id, op=self.op.name, state=state.name,
              seconds=f"{self.record.finished_at - self.record.submitted_at:.3f}", retries=self.record.retries,
              bytes=self.record.bytes_total, partitions=self.plan.count)
        metrics.JOBS.labels(self.op.name, state.name).inc()
        metrics.JOB_SECONDS.labels(self.op.name).observe(self.record.finished_at - self.record.submitted_at)
        self.on_finish()  # before the client hears of it: a successor then knows the job ended
        self.events.put(("done",))
        return True

    def fail(self, code: str, message: str) -> bool:
        return self._finish(JobState.FAILED, code, message)

    def cancel(self, reason: str = "cancelled by the client") -> bool:
        return self._finish(JobState.CANCELLED, "CANCELLED", reason)

    # -- runs (the scheduler calls these holding `lock`) ---------------------------------------
    def release_ready(self) -> None:
        """Partitions whose rows have all arrived become READY (an early job's all at once, in its
        random order)."""
        if self.parts.released < self.plan.count:
            if self.early is None:
                self.parts.release(self.ready_partitions())
            elif self.ready_partitions():
                self.parts.release(self.plan.count, self.early.order)
                self.early.begin([self.parts.queued_home[p] for p in range(self.plan.count)], self.plan.row_splits)

    @property
    def max_run(self) -> int:
        """Partitions a run may hold: one for early answers, whose unit of sampling is a partition."""
        return 1 if self.early is not None else self.plan.count

    def start_run(self, run: Run) -> bool:
        """Send `run`: its partitions READY -> RUNNING, the job RUNNING, attempts in the trace."""
        if self.record.state.final:
            return False
        self._move(JobState.RUNNING)  # a no-op once RUNNING
        now, splits, parts = time.time(), self.plan.row_splits, self.parts
        for p in range(run.lo, run.hi):
            if not run.duplicated:
                parts.move(p, PartitionState.RUNNING)
            attempt = Attempt(p, parts.attempts[p] + 1, run.agent_id, now if run.duplicated else parts.queued_at[p],
                              now, int(splits[p + 1] - splits[p]))
            run.attempts[p] = attempt
            self.record.trace.append(attempt)
        self.runs.append(run)
        return True

    def unfinished(self, run: Run) -> list[int]:
        """The run's partitions (of this round) that no partial covers yet."""
        if run.round != self.round:
            return []
        state = self.parts.state
        return [p for p in range(run.lo, run.hi) if state[p] is not PartitionState.DONE]

    # -- input -------------------------------------------------------------------------------
    def add_chunk(self, chunk) -> bool:
        """Take one input chunk (raises InvalidInput on a bad one); True if more partitions are ready."""
        inputs = self.inputs
        if inputs is None:
            raise LeptonError("the job ended while its input was arriving")
        inputs.add(chunk)
        metrics.INPUT_BYTES.inc(len(chunk.data))
        ready = self._rows_ready(inputs)
        with self.lock:
            self.record.bytes_received = inputs.bytes_received
            more, self._ready = ready > self._ready, max(ready, self._ready)
        self._progress()
        return more

    def end_input(self) -> None:
        """The client sent everything: check it, and order the rows for permuting schemes."""
        inputs = self.inputs
        arrays = inputs.finish()
        with self.lock:  # inputs in shared memory came by no chunk: they count as received now
            self.record.bytes_received = inputs.bytes_received
        if not self.data_checked:
            self.op.check_data({**arrays, **self._resident()}, self.params)
        split = [arrays[n] for n in self.op.split_inputs if n in arrays]
        order = self.plan.order(split) if split else None
        weights = self.op.row_weights(arrays) if split else None
        if weights is not None:
            self.plan.balance(weights)
        ordered = {n: (a if order is None or n not in self.op.split_inputs else a[order])
                   for n, a in arrays.items()}
        with self.lock:
            if self.record.state.final:
                return
            self._ordered = ordered
            self.input_complete = True
        self._round_complete()  # partitions may all be done already: only now is the input verified

    def ready_partitions(self) -> int:
        """Partitions 0..n-1 have all their rows here (row blocks stream; others wait for all, and so
        do early jobs: the rows that arrive first are no random sample)."""
        if self.input_complete:
            return self.plan.count
        return 0 if self.early is not None else self._ready

    def _rows_ready(self, inputs) -> int:
        """How many partitions the input received so far covers."""
        if self.plan.needs_whole_input:
            return 0
        if self.datasets:  # split inputs are resident; only the whole inputs stream
            return self.plan.count if inputs.complete() else 0
        split_index = [i for i, n in enumerate(self.names) if n in self.op.split_inputs]
        whole_done = all(inputs.received[i] == inputs.metas[i].nbytes
                         for i in range(len(self.names)) if i not in split_index)
        if not whole_done:
            return 0
        rows = min(inputs.rows_received(i) for i in split_index)
        return int(np.searchsorted(self.plan.row_splits, rows, side="right")) - 1

    def _source(self) -> dict[str, np.ndarray]:
        """The inputs: in plan order once complete, else views of what has arrived."""
        resident = self._resident()
        with self.lock:
            if self._ordered is not None:
                return {**self._ordered, **resident}
            if self.inputs is not None:
                return {**{n: self.inputs.array(i) for i, n in enumerate(self.names)}, **resident}
        raise LeptonError("the job ended while its task was being sent")

    def _resident(self) -> dict[str, np.ndarray]:
        return {n: dataset.arrays[part] for n, (dataset, part) in self.datasets.items()}

    def split_key(self, name: str, partition: int) -> str:
        """The agents' cache key of a split input's partition: set for dataset inputs only."""
        dataset, part = self.datasets.get(name, (None, ""))
        return dataset.key(partition, part) if dataset else ""

    def home(self, partition: int) -> str | None:
        """The agent where the partition's data is resident, if any."""
        for dataset, _ in self.datasets.values():
            return dataset.placement.get(partition)
        return None

    def resident_on(self, partition: int, agent_id: str) -> None:
        for dataset, _ in self.datasets.values():
            dataset.placement[partition] = agent_id

    def whole(self) -> dict[str, np.ndarray]:
        """The whole inputs as kernels see them: after `op.prepare`, computed once per job."""
        if self._prepared is None:
            prepared = self.op.prepare(self._source(), self.params)
            with self.lock:
                self._prepared = self._prepared if self._prepared is not None else prepared
        return self._prepared

    def whole_input(self, name: str, keyed: bool = True):
        """A whole input as (little-endian array, header, content cache key), computed once per round;
        without `keyed` the key may be None and the header without its checksum (hashing takes a
        while, 0.03 s for the CRC of W3's 256 MiB x: a whole input that goes to an agent in shared
        memory crosses no wire and needs neither, since mapping it again costs nothing)."""
        whole = self.whole()
        with self.lock:
            if name not in self._whole:
                array = wire.little_endian(whole[name])
                self._whole[name] = [array, wire.header(name, array, checksum=False), None]
            entry = self._whole[name]
        if keyed and entry[2] is None:  # outside the lock; two threads at once compute the same
            header, key = wire.header(name, entry[0]), content_key(entry[0])
            entry[1], entry[2] = header, key  # (in this order: a key set means the header has its CRC)
        return tuple(entry)

    def task_inputs(self, run: Run) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Each partition's rows of the split inputs, and the whole inputs: views, no copies."""
        source = self._source()
        splits = self.plan.row_splits
        split = [self.op.take(source, int(splits[p]), int(splits[p + 1])) for p in range(run.lo, run.hi)]
        return split, self.whole()

    def run_inputs(self, run: Run) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The run's rows of the split inputs in one piece, and the whole inputs: views, no copies."""
        splits = self.plan.row_splits
        return self.op.take(self._source(), int(splits[run.lo]), int(splits[run.hi])), self.whole()

    # -- partials ----------------------------------------------------------------------------
    def progress(self, run: Run, timings: list[tuple]) -> None:
        """A run's agent says when and where partitions ran whose partial is still to come."""
        with self.lock:
            self._timed(run, timings)

    def _timed(self, run: Run, timings: list[tuple]) -> None:
        for p, device, started, finished in timings:
            attempt = run.attempts.get(p)
            if attempt is not None:  # (an agent's word on a partition not in the run is ignored)
                attempt.device, attempt.started_at, attempt.finished_at = device, started, finished

    def node_done(self, run: Run, lo: int, hi: int, partial, timings: list[tuple]) -> None:
        """A run's agent sent the partial of [lo, hi): trace it, and aggregate it."""
        now = time.time()
        with self.lock:
            self._timed(run, timings)
            for p in range(lo, hi):
                run.attempts[p].received_at = now
            if self.datasets:
                for p in range(lo, hi):
                    self.resident_on(p, run.agent_id)
        self.add_partial(lo, hi, partial, run.round, run)

    def add_partial(self, lo: int, hi: int, partial, round: int = 0, run: Run | None = None) -> None:
        """Aggregate the partial of [lo, hi) (of `run`, whose trace says whether it was used: a
        speculative twin's partial that comes second is computed but superseded, so that each
        partition has one "done" attempt)."""
        memory = self.result_memory
        if memory is not None:  # rows that came as bytes go where the agents write theirs; the
            memory.write(lo, hi, partial)  # tree then only counts ranges (a duplicate writes nothing)
            partial = {}
        with self.lock:
            used = not self.record.state.final and round == self.round and self.aggregator.add(lo, hi, partial)
            if run is not None:
                for p in range(lo, hi):
                    run.attempts[p].outcome = Outcome.DONE if used else Outcome.SUPERSEDED
            if not used:
                return
            for p in range(lo, hi):
                self.parts.move(p, PartitionState.DONE)
            self.record.partitions_done = self.aggregator.covered_count
        if self.early is not None:
            self.early.add(lo, hi, partial)
        self._progress()
        self._round_complete()

    def _round_complete(self) -> None:
        """Finish the round once every partition is in and the input was verified (the last chunk's
        checksum), whichever comes last; exactly once."""
        with self.lock:
            if not (self.aggregator.complete and self.input_complete) or self._finishing == self.round:
                return
            self._finishing = self.round
        root = self.aggregator.done[(0, self.plan.count)]
        try:
            if self.op.iterative:
                params, value = self.op.next_round(self.params, self.whole(), root, self.round)
                if params is not None:
                    self._next_round(params, value)
                    return
                result = value
            elif self.result_memory is not None:
                result = self.result_memory.finish()  # None: it lies whole in the client's sealed memfd
                self.result_shared = result is None
                result = result or {}
            else:
                result = self.op.finalize(root, self.params)
        except LeptonError as exc:
            self.fail(exc.code.name, exc.details)
            return
        except Exception as exc:  # a finalize bug must fail the job, not the server
            self.fail("INTERNAL", f"finalize of {self.op.name!r} failed: {exc!r}")
            return
        self.result = result
        self._finish(JobState.SUCCEEDED)

    def _next_round(self, params: dict, whole: dict[str, np.ndarray]) -> None:
        """Start over on the same partitions with new params and whole inputs."""
        with self.lock:
            if self.record.state.final:
                return
            self.params, self._prepared, self._whole = params, whole, {}
            self.round += 1
            self.aggregator = TreeAggregator(Tree(self.plan.count, self.tree_arity), self.op.combine)
            self.parts.next_round()
            self.record.iteration, self.record.partitions_done = self.round, 0
        self.events.put(("progress",))
        self.wake()

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress >= 0.1:
            self._last_progress = now
            self.events.put(("progress",))
