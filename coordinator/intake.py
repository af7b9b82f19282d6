"""A job's input as it arrives: chunks checked one by one, the scheduler told as partitions become
ready, the input ended, and small jobs run without a thread of their own.

Plain Python over an iterator of chunks: the servicer turns request messages into chunks, and
tests can feed chunks directly.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import grpc

from lepton.errors import LeptonError
from lepton.coordinator.jobs import Job

# A job with at most this many input bytes is read on the caller's thread and, with one partition,
# run there too: it has arrived by the time the first message is read, and a thread hop costs more.
SMALL_JOB_BYTES = 1 << 20


def seconds_left(time_remaining: float | None) -> float | None:
    """A call's `time_remaining`, or None for a call without a deadline (gRPC says ~1e9 or more then,
    which a wait would overflow: "timestamp out of range for platform time_t")."""
    return time_remaining if time_remaining is not None and time_remaining < 1e9 else None


def deadline_from(time_remaining: float | None) -> float | None:
    """The epoch deadline of a call with `time_remaining` seconds left, or None for none."""
    left = seconds_left(time_remaining)
    return None if left is None else time.time() + left


_END = object()


def read_ahead(items: Iterator, depth: int = 4, name: str = "read-ahead") -> Iterator:
    """`items`, pulled on a thread of its own up to `depth` items ahead of the caller, so that the
    caller's work on one (a chunk's pwrite and checksum, which let go of the GIL) overlaps gRPC
    reading the next: gRPC asks the client for the next message only when it is read. What pulling
    raises (a malformed request, the call ending) is raised to the caller in order. The caller
    stopping early (an exception, or closing the generator) stops the thread at its next item."""
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def pull() -> None:
        try:
            for item in items:
                ahead.put((item, None))
                if stop.is_set():
                    return  # (the caller drained the queue: that put could not block)
            ahead.put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            ahead.put((_END, exc))

    threading.Thread(target=pull, name=name, daemon=True).start()
    try:
        while True:
            item, error = ahead.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while True:  # room for the puller's last put, after which it sees `stop`
            try:
                ahead.get_nowait()
            except queue.Empty:
                break


class InputReader:
    def __init__(self, coordinator):
        self.c = coordinator

    def start(self, job: Job, chunks: Iterator) -> None:
        """Read `job`'s input chunks: a small job's here and now (and its only run with them, if an
        agent has a credit free), a large one's on a thread of its own, as they stream."""
        if job.record.bytes_total > SMALL_JOB_BYTES:
            threading.Thread(target=self.read, args=(job, chunks), name=f"input-{job.id}", daemon=True).start()
            return
        scheduler = self.c.scheduler
        if job.plan.count == 1:
            scheduler.hold(job)  # its run is ours to start: the dispatcher leaves it alone meanwhile
        if self.read(job, chunks, notify=False) and job.plan.count == 1:
            inline = self.c.inline
            if inline.eligible(job) and inline.run(job):  # tiny: computed here (coordinator/inline.py)
                scheduler.done_here(job)
                return
            scheduler.run_here(job)  # (or, with no credit free, hands it to the dispatcher)
        else:
            scheduler.release(job)

    def read(self, job: Job, chunks: Iterator, notify: bool = True) -> bool:
        """Take every chunk, then end the input; with `notify`, tell the scheduler as partitions become
        ready. False if the job ended meanwhile. Any error in the input fails the job with a status
        saying why."""
        scheduler = self.c.scheduler
        try:
            for chunk in chunks:
                if job.state.final:
                    return False
                if job.add_chunk(chunk) and notify:
                    scheduler.notify()
            if job.state.final:
                return False
            job.end_input()
            if notify:
                scheduler.notify()
            return True
        except LeptonError as exc:
            self.c.fail(job, exc.code.name, exc.details)
        except grpc.RpcError as exc:  # the client went away mid-stream
            self.c.fail(job, "CANCELLED", f"the input stream broke: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - a bug must fail the job, not leave it waiting
            self.c.fail(job, "INTERNAL", f"reading the input failed: {exc!r}")
        return False
