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


class read_ahead:  # noqa: N801 - used as a function: read_ahead(items)
    """`items`, pulled on a thread of its own up to `depth` items ahead of the caller, so that the
    caller's work on one (a chunk's pwrite and checksum, which let go of the GIL) overlaps gRPC
    reading the next: gRPC asks the client for the next message only when it is read. What pulling
    raises (a malformed request, the call ending) is raised to the caller in order. close() (the
    caller stopping early) stops the thread at its next item.

    An iterator, not a generator: an error raised out of a generator's frame stays referenced by
    that frame, a cycle (error -> traceback -> frame -> error) that kept the caller's frames, and a
    failed put's memory, until a GC ran (28 s in tests/test_shared_memory.py)."""

    def __init__(self, items: Iterator, depth: int = 4, name: str = "read-ahead"):
        self._ahead: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._done = False
        threading.Thread(target=self._pull, args=(items,), name=name, daemon=True).start()

    def _pull(self, items: Iterator) -> None:
        try:
            for item in items:
                self._ahead.put(item)
                if self._stop.is_set():
                    return  # (close() drained the queue: that put could not block)
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            # (without this thread's frames: nothing of them is the caller's business)
            self._errors.append(exc.with_traceback(None))
        self._ahead.put(_END)

    def __iter__(self) -> "read_ahead":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._ahead.get()
        if item is not _END:
            return item
        self.close()
        if self._errors:
            raise self._errors.pop()  # (no local holds it: no cycle through this frame)
        raise StopIteration

    def close(self) -> None:
        self._done = True
        self._stop.set()
        while True:  # room for the puller's last put, after which it sees `stop`
            try:
                self._ahead.get_nowait()
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
