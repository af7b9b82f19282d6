"""The agent as plain Python: one work queue per device, and local pre-combining of partials.

A task is a contiguous run of partitions of one job. Each non-empty partition goes to the capable
device with the least work queued; partials are folded with the job's aggregation tree as they
finish, and every maximal tree node the run covers is handed back as soon as it is complete.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from lepton.backends.device import Device
from lepton.errors import FailedPrecondition, InvalidInput, LeptonError, NotCached, ResourceExhausted
from lepton.backends.ops import Op, get_op
from lepton.backends.blocks import layout
from lepton.backends.tree import Tree, TreeAggregator
from lepton.logs import event
from lepton.agent import metrics
from lepton.agent.cache import TensorCache
from lepton.agent.copies import WholeCopies
from lepton.sharedmem import WRITTEN

log = logging.getLogger("lepton.agent")


# A run that computes longer than this reports the timings of its partitions done at most this often
# (progress), before its partial: 0.05 s keeps the messages few where runs are short.
PROGRESS_SECONDS = 0.05
MAX_SPLITS = 6  # halve a partition at most this many times (64 pieces) when a device runs out of memory


def split_point(op: Op, inputs: dict[str, np.ndarray]) -> tuple[int, bool] | None:
    """Where to cut a partition in two, and whether combining the halves' partials gives bitwise its
    own partial; None if it has one row. Ops with exact merges cut anywhere. A blocked op's partial
    is the fold of its canonical block tree (lepton.backends.blocks), so the cut is where that tree's
    root splits: the left half is exactly its left subtree, the right half its right one. A single
    block can only be cut inexactly (its rounding changes in the last bits)."""
    rows = op.rows(inputs)
    if rows < 2:
        return None
    if not op.block_bytes:
        return rows // 2, True
    rows, per_block, blocks = layout(op, inputs)
    if blocks < 2:
        return rows // 2, False
    return min(rows, 2 ** (Tree(blocks, 2).top - 1) * per_block), True


def run_in_pieces(device: Device, op: Op, inputs: dict[str, np.ndarray], params: dict, depth: int = 0) -> dict:
    """Run a partition; if the device runs out of memory, run its two halves and combine them (cut
    by `split_point`, so the answer keeps its bits wherever the partition has more than one block)."""
    try:
        return device.run(op, inputs, params)
    except ResourceExhausted:
        split = split_point(op, inputs)
        if depth >= MAX_SPLITS or split is None:
            raise
    rows = op.rows(inputs)
    cut, exact = split
    event(log, "partition.split", level=logging.WARNING, device=device.name, op=op.name, rows=rows, depth=depth + 1,
          cut=cut, **({} if exact else {"note": "one block cut in two: the last bits may differ from other runs"}))
    halves = []
    for start, stop in ((0, cut), (cut, rows)):
        piece = {**inputs, **op.take(inputs, start, stop)}
        halves.append(run_in_pieces(device, op, piece, op.params_at_row(params, start), depth + 1))
    return op.combine(*halves)


class DeviceWorker:
    """A device and the thread that feeds it from its queue. A lone partition for an idle device runs
    on the task's own thread instead (`run_here`): a small task then costs no hand-off to the device
    thread and back. Either way the device runs one partition at a time (`_running`)."""

    def __init__(self, device: Device, test_delay: tuple[float, float] = (0.0, 0.0),
                 after_partition: Callable[[], None] = lambda: None):
        self.device, self.test_delay, self.after_partition = device, test_delay, after_partition
        self._queued_bytes = 0  # submitted and not finished: what "least loaded" means
        self._lock = threading.Lock()  # guards _queued_bytes: task threads add, the device thread subtracts
        self._running = threading.Lock()  # held while a partition runs, on whichever thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=f"device-{device.name}", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def submit(self, op: Op, inputs: dict[str, np.ndarray], params: dict, done: Callable[[tuple], None],
               tag=None, cancelled: threading.Event | None = None) -> None:
        """Queue one partition; the device thread calls `done((tag, partial, started, finished))` or
        `done((tag, exception))` when it ends, or nothing if `cancelled` is set before it starts."""
        nbytes = sum(a.nbytes for a in inputs.values())
        with self._lock:
            self._queued_bytes += nbytes
        self._queue.put((done, tag, cancelled, op, inputs, params, nbytes))

    def run_here(self, op: Op, inputs: dict[str, np.ndarray], params: dict, tag=None) -> tuple | None:
        """Run one partition on the calling thread if the device is idle (nothing queued or running):
        the result as `submit` hands it to `done`. None if the device is busy: submit it instead."""
        nbytes = sum(a.nbytes for a in inputs.values())
        with self._lock:
            if self._queued_bytes or not self._running.acquire(blocking=False):
                return None
            self._queued_bytes += nbytes
        try:
            return self._run(op, inputs, params, tag)
        finally:
            self._running.release()
            with self._lock:
                self._queued_bytes -= nbytes

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            done, tag, cancelled, op, inputs, params, nbytes = item
            try:
                if cancelled is not None and cancelled.is_set():
                    item = inputs = None
                    continue
                with self._running:
                    result = self._run(op, inputs, params, tag)
            finally:
                with self._lock:
                    self._queued_bytes -= nbytes
            done(result)
            # Hold nothing while waiting for the next partition: a view of shared memory would keep
            # the whole memfd alive (lepton.sharedmem).
            item = inputs = result = None

    def _run(self, op: Op, inputs: dict[str, np.ndarray], params: dict, tag) -> tuple:
        """(tag, partial, started, finished), or (tag, error): a kernel's failure is its partition's."""
        try:
            start = time.time()
            if self.test_delay[1]:  # test hook: shuffle arrival order, or make a straggler
                time.sleep(random.uniform(*self.test_delay))  # timed: a straggler's device is slow
            partial = run_in_pieces(self.device, op, inputs, params)
            end = time.time()
            metrics.PARTITIONS.labels(self.device.name, op.name).inc()
            metrics.BUSY_SECONDS.labels(self.device.name).inc(end - start)
            self.after_partition()
            return tag, partial, start, end
        except LeptonError as exc:
            return tag, exc
        except Exception as exc:  # noqa: BLE001 - a kernel bug fails its partition, not the agent
            return tag, LeptonError(f"{self.device.name} failed running {op.name!r}: {exc!r}")

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.device.close()


@dataclass
class TaskInput:
    """How one input of a task arrives: by value (with a cache key to keep it under, or none), or
    by reference to what the cache holds."""

    name: str
    cache_key: str = ""
    by_reference: bool = False


class Agent:
    def __init__(self, devices: list[Device], credits: int = 0, test_delay: tuple[float, float] = (0.0, 0.0),
                 cache_bytes: int = 2 << 30, throttle: float = 1.0, test_throttle_after: tuple[int, float] = (0, 1.0)):
        for device in devices:
            device.set_throttle(throttle)
        # Test hook: after this many partitions on the agent, every device changes to that throttle.
        self._throttle_after, self._partitions_run = test_throttle_after, 0
        self._count_lock = threading.Lock()
        self.workers = [DeviceWorker(d, test_delay, self._partition_ran) for d in devices]
        self.credits = credits or max(2, 2 * len(devices))
        self.cache = TensorCache(cache_bytes)
        self.copies = WholeCopies(cache_bytes // 4)  # shared whole inputs, copied once per job

    def _partition_ran(self) -> None:
        count, factor = self._throttle_after
        if not count:
            return
        with self._count_lock:
            self._partitions_run += 1
            change = self._partitions_run == count
        if change:
            event(log, "agent.throttle_changed", level=logging.WARNING, partitions=count, throttle=factor,
                  note="test hook --test-throttle-after")
            for worker in self.workers:
                worker.device.set_throttle(factor)

    @property
    def devices(self) -> list[Device]:
        return [w.device for w in self.workers]

    def busy(self) -> bool:
        """Partitions queued or running on any device."""
        return any(w.queued_bytes for w in self.workers)

    def resolve(self, inputs: list[TaskInput], received: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        """The arrays of a task's inputs, in order: `received` holds those sent by value (in order);
        they are kept in the cache under their keys, and referenced ones come from it."""
        received_values = iter(received)
        values = []
        for item in inputs:
            if item.by_reference:
                array = self.cache.get(item.cache_key)
                if array is None:
                    raise NotCached(f"{item.cache_key} is no longer cached here; send its bytes")
            else:
                array = next(received_values)
                if item.cache_key:
                    self.cache.put(item.cache_key, array)
            values.append((item.name, array))
        return values

    def keep(self, keys: list[str], arrays: list[np.ndarray]) -> list[str]:
        """Cache arrays under their keys (dataset partitions); returns the keys kept."""
        return [key for key, array in zip(keys, arrays) if self.cache.put(key, array, placed=True)]

    @staticmethod
    def cut_run(op_name: str, rows: dict[str, np.ndarray], row_splits: list[int]
                ) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        """A run's split inputs in one piece, cut into its partitions (views) at `row_splits`, and
        each partition's first row in the job."""
        if len(row_splits) < 2:
            raise InvalidInput("a task with run inputs needs row_splits, one more than its partitions")
        op, base = get_op(op_name), row_splits[0]
        split = [op.take(rows, lo - base, hi - base) for lo, hi in zip(row_splits, row_splits[1:])]
        return split, row_splits[:-1]

    def run_task(self, job_id: str, op_name: str, params: dict, first: int, partitions: int, arity: int,
                 split: list[dict[str, np.ndarray]], whole: dict[str, np.ndarray], row_offsets: list[int],
                 is_active: Callable[[], bool] = lambda: True,
                 write: Callable[[int, int, int, dict], bool] | None = None) -> Iterator[tuple[int, int, dict, list]]:
        """Run partitions [first, first + len(split)), `split[j]` holding partition j's rows of the split
        inputs; yield each complete tree node as (lo, hi, partial, timings), timings being
        (partition, device, started_at, finished_at); and, while a node waits for its other
        partitions, progress as (None, None, None, timings) of those done (which its node's timings
        then leave out).

        With `write` (the task's result goes into shared memory: node_agent/results.py), each
        partition's partial is offered to write(partition, first row, rows, partial) as it finishes and
        comes back alone, as a leaf: `sharedmem.WRITTEN` if it was written, else itself (nothing is
        folded: rows written in place need no concatenation, and a leaf is always a node)."""
        if partitions < 1 or arity < 2 or not 0 <= first <= first + len(split) <= partitions or not split:
            raise InvalidInput(f"a task covers partitions [first_partition, first_partition + its partitions) of "
                               f"partition_count >= 1, with tree_arity >= 2; got [{first}, {first + len(split)}) of "
                               f"{partitions}, arity {arity}")
        op = get_op(op_name)
        workers = [w for w in self.workers if op.name in w.device.kernels]
        if not workers:
            raise FailedPrecondition(f"no device on this agent offers op {op.name!r}")
        aggregator = TreeAggregator(Tree(partitions, arity), op.combine, first, first + len(split))
        finished: queue.SimpleQueue = queue.SimpleQueue()  # (partition, partial, started, finished) or (p, error)
        cancelled = threading.Event()  # the task ended early: queued partitions are skipped, not run
        outstanding = 0
        expected: dict[int, tuple[int, int]] = {}  # partition -> (first row, rows) of what `write` gets
        leaves: list[tuple] = []  # with `write`: partitions done, to hand back as they are
        for j, rows in enumerate(split):
            if any(len(a) == 0 for a in rows.values()):
                if write is None:
                    aggregator.add(first + j, first + j + 1, {})  # an empty partition: the identity
                else:
                    leaves.append((first + j, first + j + 1, {}, []))
                continue
            if write is not None:
                expected[first + j] = (row_offsets[j], op.rows(rows))
            inputs = {**rows, **whole}
            kernel_params = {**params, "row_offset": row_offsets[j]} if op.needs_row_offset else params
            worker = workers[0] if len(workers) == 1 else min(workers, key=lambda w: w.queued_bytes)
            tag = (first + j, worker.device.name)
            result = worker.run_here(op, inputs, kernel_params, tag) if len(split) == 1 else None
            if result is not None:  # a lone partition, run on this thread: the device was idle
                finished.put(result)
            else:
                worker.submit(op, inputs, kernel_params, finished.put, tag, cancelled)
            outstanding += 1
        sent = 0  # nodes of aggregator.done handed back (it only grows, in completion order)
        timings: dict[int, tuple] = {}  # partitions finished whose node has not gone back yet
        reported: set[int] = set()  # partitions whose timings went back ahead of their node
        last_progress = time.monotonic()
        try:
            while True:
                while leaves:
                    yield leaves.pop(0)
                done = list(aggregator.done)
                for node in done[sent:]:
                    node_timings = [timings.pop(p) for p in range(*node) if p in timings]
                    yield (*node, aggregator.done[node], [t for t in node_timings if t[0] not in reported])
                sent = len(done)
                if not outstanding:
                    return
                # Progress: partitions done whose node is not, at most every PROGRESS_SECONDS (a run
                # shorter than that sends none).
                news = [t for p, t in timings.items() if p not in reported]
                due = PROGRESS_SECONDS - (time.monotonic() - last_progress)
                if news and due <= 0:
                    reported.update(t[0] for t in news)
                    last_progress = time.monotonic()
                    yield None, None, None, news
                    news = []
                try:
                    result = finished.get(timeout=max(0.001, due) if news else 0.5)
                except queue.Empty:
                    result = None
                if not is_active():
                    raise LeptonError("the coordinator cancelled the task")
                while result is not None:  # everything that finished meanwhile, then hand nodes back
                    outstanding -= 1
                    (partition, device), *outcome = result
                    if isinstance(outcome[0], BaseException):
                        raise outcome[0]
                    partial, started, ended = outcome
                    timings[partition] = (partition, device, started, ended)
                    if write is None:
                        aggregator.add(partition, partition + 1, partial)
                    else:
                        written = write(partition, *expected[partition], partial)
                        leaves.append((partition, partition + 1, WRITTEN if written else partial,
                                       [timings.pop(partition)]))
                    outcome = partial = None
                    try:
                        result = finished.get_nowait() if outstanding else None
                    except queue.Empty:
                        result = None
        finally:
            cancelled.set()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
