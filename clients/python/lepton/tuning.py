"""Process tuning for the data path: glibc malloc's thresholds and arenas, and the idle trim."""
import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def keep_large_buffers_in_heap(server: bool = False) -> None:
    """Stop glibc from serving each 1 MiB message buffer with a fresh mmap.

    gRPC and protobuf allocate a new buffer per chunk; by default glibc maps each one afresh and
    every byte then page-faults: serializing 1 MiB chunks ran at 1.0 GB/s that way and 5.8 GB/s with
    the buffers kept in the heap (measured on the 2-core CI machine).

    server: also keep the whole process in one malloc arena (LEPTON_MALLOC_ARENAS=N allows N; 0 is
    glibc's default, 8 per core), and call it before the server's threads start. The trim threshold
    above means a thread arena never gives its top back (glibc shrinks one only past the threshold,
    and one is at most 64 MiB), and malloc_trim, which IdleTrim calls, gives back a thread arena's
    free bins but not its top: every gRPC thread's arena kept its peak for good. Fuzzing (the
    servers' worst case for scattered allocations; tests/test_fuzz.py) grew them by 45-60% that
    way, and by 1-3% in one arena. The one arena's lock cost nothing measurable on the 2-core
    machine (benchmarks/bench_heap.py, 7 runs: a streamed 128 MiB sum 0.395 s median against
    0.383 s, small jobs 453 against 398 per second, both within the noise of a shared machine), and
    the servers ended that benchmark at 79-114 MiB against 226-239 MiB. Untried on many cores,
    where the lock has more threads to serve: LEPTON_MALLOC_ARENAS=0 there if it shows.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
        arenas = int(os.environ.get("LEPTON_MALLOC_ARENAS", "1"))
        if server and arenas > 0:
            libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError, ValueError):
        pass  # not glibc (or a malformed LEPTON_MALLOC_ARENAS): nothing to tune


class IdleTrim:
    """Hand freed heap back to the system while a server is idle.

    The thresholds above keep large freed buffers in the heap while data flows (that is their point),
    so after a burst of requests a process would keep its peak RSS for good. `poll(busy, now)` is
    called from a periodic thread: while no job is running it calls glibc's malloc_trim at most every
    `every` seconds (a few milliseconds when there is little to give back).
    """

    done = 0  # trims by every IdleTrim of this process (trims_done())

    def __init__(self, every: float = 5.0):
        self.every = every
        self._last = 0.0
        self._trim = None
        if sys.platform.startswith("linux"):
            try:
                self._trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):
                pass  # not glibc

    def poll(self, busy: bool, now: float) -> bool:
        """Trim if idle and due; returns whether it trimmed."""
        if busy or self._trim is None or now - self._last < self.every:
            return False
        self._last = now
        self._trim(0)
        IdleTrim.done += 1
        return True


def trims_done() -> int:
    """Idle trims this process has finished: the servers export it (lepton_heap_trims_total), so
    that a test can wait for a trim after some event instead of sleeping past one."""
    return IdleTrim.done
