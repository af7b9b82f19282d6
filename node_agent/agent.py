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
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Callable, Iterator

import numpy as np

from lepton.backends.device import Device
from lepton.errors import FailedPrecondition, LeptonError, ResourceExhausted
from lepton.backends.ops import Op, get_op
from lepton.backends.tree import Tree, TreeAggregator
from lepton.logs import event
from lepton.agent import metrics
from lepton.agent.cache import TensorCache

log = logging.getLogger("lepton.agent")


MAX_SPLITS = 6  # halve a partition at most this many times (64 pieces) when a device runs out of memory


def run_in_pieces(device: Device, op: Op, inputs: dict[str, np.ndarray], params: dict, depth: int = 0) -> dict:
    """Run a partition; if the device runs out of memory, run its two halves and combine them (the
    partial of a partition is the combine of its pieces', so the answer stays right)."""
    try:
        return device.run(op, inputs, params)
    except ResourceExhausted:
        rows = op.rows(inputs)
        if depth >= MAX_SPLITS or rows < 2:
            raise
    event(log, "partition.split", level=logging.WARNING, device=device.name, op=op.name, rows=rows, depth=depth + 1)
    halves = []
    for start, stop in ((0, rows // 2), (rows // 2, rows)):
        piece = {**inputs, **op.take(inputs, start, stop)}
        halves.append(run_in_pieces(device, op, piece, op.params_at_row(params, start), depth + 1))
    return op.combine(*halves)


class DeviceWorker:
    """A device and the one thread that feeds it from its queue."""

    def __init__(self, device: Device, test_delay: tuple[float, float] = (0.0, 0.0)):
        self.device, self.test_delay = device, test_delay
        self.queued_bytes = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"device-{device.name}", daemon=True)
        self._thread.start()

    def submit(self, op: Op, inputs: dict[str, np.ndarray], params: dict) -> Future:
        future: Future = Future()
        nbytes = sum(a.nbytes for a in inputs.values())
        self.queued_bytes += nbytes
        self._queue.put((future, op, inputs, params, nbytes))
        return future

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            future, op, inputs, params, nbytes = item
            try:
                if future.set_running_or_notify_cancel():
                    if self.test_delay[1]:  # test hook: shuffle arrival order, or make a straggler
                        time.sleep(random.uniform(*self.test_delay))
                    start = time.time()
                    partial = run_in_pieces(self.device, op, inputs, params)
                    end = time.time()
                    metrics.PARTITIONS.labels(self.device.name, op.name).inc()
                    metrics.BUSY_SECONDS.labels(self.device.name).inc(end - start)
                    future.set_result((partial, start, end))
            except LeptonError as exc:
                future.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - a kernel bug fails its partition, not the agent
                err = LeptonError(f"{self.device.name} failed running {op.name!r}: {exc!r}")
                future.set_exception(err)
            finally:
                self.queued_bytes -= nbytes

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.device.close()


class Agent:
    def __init__(self, devices: list[Device], credits: int = 0, test_delay: tuple[float, float] = (0.0, 0.0),
                 cache_bytes: int = 2 << 30):
        self.workers = [DeviceWorker(d, test_delay) for d in devices]
        self.credits = credits or max(2, 2 * len(devices))
        self.cache = TensorCache(cache_bytes)

    @property
    def devices(self) -> list[Device]:
        return [w.device for w in self.workers]

    def run_task(self, job_id: str, op_name: str, params: dict, first: int, partitions: int, arity: int,
                 split: list[dict[str, np.ndarray]], whole: dict[str, np.ndarray], row_offsets: list[int],
                 is_active: Callable[[], bool] = lambda: True) -> Iterator[tuple[int, int, dict, list]]:
        """Run partitions [first, first + len(split)), `split[j]` holding partition j's rows of the split
        inputs; yield each complete tree node as (lo, hi, partial, timings), timings being
        (partition, device, started_at, finished_at)."""
        op = get_op(op_name)
        workers = [w for w in self.workers if op.name in w.device.kernels]
        if not workers:
            raise FailedPrecondition(f"no device on this agent offers op {op.name!r}")
        aggregator = TreeAggregator(Tree(partitions, arity), op.combine, first, first + len(split))
        futures: dict[Future, tuple[int, str]] = {}
        for j, rows in enumerate(split):
            if any(len(a) == 0 for a in rows.values()):
                aggregator.add(first + j, first + j + 1, {})  # an empty partition: the identity
                continue
            inputs = {**rows, **whole}
            kernel_params = {**params, "row_offset": row_offsets[j]} if op.needs_row_offset else params
            worker = min(workers, key=lambda w: w.queued_bytes)
            futures[worker.submit(op, inputs, kernel_params)] = (first + j, worker.device.name)
        sent: set = set()
        timings: dict[int, tuple] = {}
        try:
            while True:
                for node in [n for n in aggregator.done if n not in sent]:
                    sent.add(node)
                    yield (*node, aggregator.done[node],
                           [timings[p] for p in range(*node) if p in timings])
                if not futures:
                    return
                finished, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                if not is_active():
                    raise LeptonError("the coordinator cancelled the task")
                for future in finished:
                    partition, device = futures.pop(future)
                    partial, started, finished = future.result()
                    event(log, "partition.done", level=logging.DEBUG, job=job_id, partition=partition,
                          device=device, seconds=f"{finished - started:.4f}")
                    timings[partition] = (partition, device, started, finished)
                    aggregator.add(partition, partition + 1, partial)
        finally:
            for future in futures:
                future.cancel()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
