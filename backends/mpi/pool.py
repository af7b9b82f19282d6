"""The MPI pool: rank 0 is the agent's device, ranks 1..N-1 are workers; all run one generic protocol.

Per partition, on every rank in the same order (collectives must match):
  1. command   Ibcast int64[2] = (RUN, header size). Idle workers wait on it with Test + a short
               sleep: a blocking bcast was measured burning a whole core while idle.
  2. header    Ibcast of a small pickle: op name, params, input dtypes and shapes, rows per rank.
  3. inputs    Iscatterv of each split input's row blocks as raw bytes (rank 0 keeps the first block
               in place); Ibcast of each whole input. Bulk data is never pickled.
  4. compute   op.reference on this rank's rows; an empty share gives the empty partial {}.
  5. partials  Igather of (status, meta size, data size), then Igatherv of meta (a pickle of keys,
               dtypes and shapes, or the error text) and of the raw bytes of the arrays.
Rank 0 combines the partials with op.combine in rank order: a fixed order, so a result is bitwise
the same run to run. Nothing here is per op, so every op in the registry runs on the pool.

Failures: a kernel exception on any rank is reported through step 5, so every rank still takes part
in every collective and the pool stays usable (KernelError). A rank that exits is noticed on rank 0
by polling the PIDs of ranks on this host and by SIGUSR1, which hydra started with
-disable-auto-cleanup (as `mpi:N` does) sends to the other ranks of a host when one exits. Rank 0
never blocks in MPI, so it raises Unavailable instead of hanging; the device then stays failed
(`failed`, `on_failure`) and skips MPI_Finalize. A rank killed by a signal is different: hydra's
proxy then SIGKILLs every rank it started on that host whatever the cleanup flag, rank 0 (the agent)
included, and the coordinator reschedules the agent's partitions. Workers keep SIGUSR1's default
action, so they die with the pool even inside a kernel.
Stopping: rank 0 broadcasts STOP from `close()` (also at exit); a worker that gets SIGTERM/SIGINT
waits up to STOP_GRACE for it, then exits anyway.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Callable

import mpi4py
import numpy as np

# The agent calls MPI from one thread at a time, but not always the same one: the main thread opens
# and closes the pool, the agent's device thread runs partitions. That is MPI_THREAD_SERIALIZED;
# "funneled" would be wrong and "multiple" adds locking to every call. Set in the environment too,
# because MPI4PY_RC_THREAD_LEVEL, when a user has set it, overrides mpi4py.rc.
os.environ["MPI4PY_RC_THREAD_LEVEL"] = mpi4py.rc.thread_level = "serialized"
# We call MPI_Finalize ourselves, and only while the pool is healthy: it can hang on a dead peer.
mpi4py.rc.finalize = False
os.environ["MPI4PY_RC_FINALIZE"] = "false"
from mpi4py import MPI  # noqa: E402 - after the rc settings, which MPI_Init_thread reads

from backends.device import Device  # noqa: E402
from backends.errors import FailedPrecondition, InvalidInput, LeptonError, Unavailable  # noqa: E402
from backends.mpi import KernelError  # noqa: E402
from backends.ops import REGISTRY, Op, Partial  # noqa: E402

log = logging.getLogger("lepton.mpi")

RUN, STOP = 1, 2
IDLE_SLEEP = 0.002    # idle workers poll the command Ibcast 500 times a second: ~1 ms start latency
MAX_NAP = 0.001       # busy waits spin for 1 ms, then nap up to this long (a peer still computing)
STOP_GRACE = 2.0      # a signalled worker waits this long for rank 0's STOP before leaving anyway
CLOSE_TIMEOUT = 5.0
ALIGN = 16            # partial arrays are 16-byte aligned in the gathered buffer

_stop_requested: list[float] = []  # when a worker got SIGTERM/SIGINT


def _as_bytes(array: np.ndarray) -> np.ndarray:
    """A uint8 view of a C-contiguous array (no copy)."""
    return array.reshape(-1).view(np.uint8)


def _wait(requests: list, idle: bool = False, check=lambda: None) -> None:
    """Complete `requests` by polling, so signals and peer checks are seen and no call ever blocks."""
    start = next_check = time.monotonic()
    while not MPI.Request.Testall(requests):
        now = time.monotonic()
        if now >= next_check:
            check()
            next_check = now + 0.05
        waited = now - start
        time.sleep(IDLE_SLEEP if idle else (0 if waited < 0.001 else min(MAX_NAP, waited / 10)))


_scratches: dict[str, np.ndarray] = {}


def _scratch(name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """A worker's receive array for input `name`, reusing memory between partitions: a fresh large
    allocation is a fresh mmap, and page-faulting it in cost more than the transfer itself (a 64 MiB
    sum's scatter took 11-12 ms with fresh arrays, 8 ms reused). Kernels only read their inputs."""
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if _scratches.get(name, np.empty(0, np.uint8)).size < nbytes:
        _scratches[name] = np.empty(nbytes, np.uint8)
    return _scratches[name][:nbytes].view(dtype).reshape(shape)


def _encode(partial: Partial) -> tuple[bytes, np.ndarray]:
    """A partial as (pickled list of (key, dtype, shape, is_scalar, offset), raw aligned bytes)."""
    meta, arrays, offset = [], [], 0
    for key, value in partial.items():
        array = np.ascontiguousarray(value)
        if array.dtype.hasobject:
            raise TypeError(f"partial {key!r} has dtype object; only plain arrays can be gathered")
        meta.append((key, array.dtype.str, np.shape(value), np.ndim(value) == 0 and not isinstance(value, np.ndarray),
                     offset))
        arrays.append((offset, array))
        offset += -(-array.nbytes // ALIGN) * ALIGN
    data = np.zeros(offset, np.uint8)
    for start, array in arrays:
        data[start:start + array.nbytes] = _as_bytes(array)
    return pickle.dumps(meta), data


def _decode(meta: bytes, data: np.ndarray) -> Partial:
    partial = {}
    for key, dtype, shape, scalar, offset in pickle.loads(meta):
        dtype = np.dtype(dtype)
        array = data[offset:offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64))].view(dtype).reshape(shape)
        partial[key] = array[()] if scalar else array
    return partial


def _exchange(comm, header: dict, inputs: dict | None, check=lambda: None, timings: dict | None = None):
    """Steps 3-5 on any rank. At rank 0 returns [(status, meta bytes, data)] per rank; elsewhere None."""
    rank, rows = comm.rank, header["rows"]
    mine = rows[rank]
    local, requests = {}, []
    t0 = time.perf_counter()
    for name, dtype, tail in header["split"]:
        dtype = np.dtype(dtype)
        row_bytes = dtype.itemsize * int(np.prod(tail, dtype=np.int64))
        counts = [r * row_bytes for r in rows]
        displs = np.concatenate(([0], np.cumsum(counts[:-1]))).tolist()
        if rank == 0:  # inputs are C-contiguous here (run_on_pool)
            local[name] = inputs[name][:mine]
            send, recv = [_as_bytes(inputs[name]), counts, displs, MPI.BYTE], MPI.IN_PLACE
        else:
            local[name] = _scratch(name, (mine, *tail), dtype)
            send, recv = None, [_as_bytes(local[name]), MPI.BYTE]
        requests.append(comm.Iscatterv(send, recv, root=0))
    for name, dtype, shape in header["whole"]:
        array = inputs[name] if rank == 0 else _scratch(name, shape, np.dtype(dtype))
        local[name] = array
        requests.append(comm.Ibcast([_as_bytes(array), MPI.BYTE], root=0))
    _wait(requests, check=check)
    t1 = time.perf_counter()

    try:  # the kernel, and anything that can fail with it, must not skip the collectives below
        partial = REGISTRY[header["op"]].reference(local, header["params"]) if mine else {}
        status, (meta, data) = 0, _encode(partial)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0 as this partition's error
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})"
        status, meta, data = 1, text.encode(), np.zeros(0, np.uint8)
    t2 = time.perf_counter()

    sizes = np.array([status, len(meta), data.size], np.int64)
    table = np.zeros((comm.size, 3), np.int64) if rank == 0 else None
    _wait([comm.Igather(sizes, table, root=0)], check=check)
    meta_in = data_in = None
    if rank == 0:
        meta_in = np.empty(int(table[:, 1].sum()), np.uint8)
        data_in = np.empty(int(table[:, 2].sum()), np.uint8)
    meta_out = np.frombuffer(bytearray(meta), np.uint8)
    requests = []
    for out, into, column in ((meta_out, meta_in, 1), (data, data_in, 2)):
        if rank == 0:
            counts = table[:, column].tolist()
            displs = np.concatenate(([0], np.cumsum(counts[:-1]))).tolist()
            into = [into, counts, displs, MPI.BYTE]
        requests.append(comm.Igatherv([out, MPI.BYTE], into, root=0))
    _wait(requests, check=check)
    if rank != 0:
        return None
    if timings is not None:
        timings.update(scatter=t1 - t0, compute=t2 - t1, gather=time.perf_counter() - t2)
    results, m, d = [], 0, 0
    for status, meta_size, data_size in table.tolist():
        results.append((status, meta_in[m:m + meta_size].tobytes(), data_in[d:d + data_size]))
        m, d = m + meta_size, d + data_size
    return results


def _split_rows(rows: int, ranks: int) -> list[int]:
    base, extra = divmod(rows, ranks)
    return [base + (r < extra) for r in range(ranks)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie is dead
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class MpiDevice(Device):
    """Rank 0's view of the pool. Its `run` is called from one thread (the agent's device thread)."""

    kind = "mpi"

    def __init__(self, comm, index: int, ranks: list[tuple[str, int]]):
        here = ranks[0][0]
        #: rank -> PID of each worker; the test hook for killing one mid-job
        self.worker_pids = {r: pid for r, (_, pid) in enumerate(ranks) if r}
        workers = ", ".join(f"{r}:{host}/{pid}" for r, (host, pid) in enumerate(ranks) if r) or "none"
        super().__init__(f"mpi:{index}", f"MPI pool of {comm.size} ranks, rank 0 on {here} "
                         f"({' '.join(MPI.Get_library_version().split()[:3])}); workers {workers}",
                         _memory_bytes())  # the whole partition lives on rank 0's host
        self.comm = comm
        self.kernels = {name: self._kernel(name) for name in REGISTRY}
        #: why the pool is unusable (a rank died, an MPI error); set once, never cleared
        self.failed: str | None = None
        #: called once with the reason when the pool fails: the agent may exit so it is restarted
        self.on_failure: Callable[[str], None] | None = None
        #: seconds per phase of the last run (header, scatter, compute, gather, combine)
        self.last_timings: dict[str, float] = {}
        self._local = {r: pid for r, (host, pid) in enumerate(ranks) if r and host == here}
        self._mpi = threading.Lock()  # serialized: one MPI call sequence at a time
        self._closed = False

    @staticmethod
    def _kernel(name: str):
        return lambda device, inputs, params: device.run_on_pool(REGISTRY[name], inputs, params)

    def _fail(self, reason: str) -> None:
        if self.failed is None:  # no lock: the SIGUSR1 handler calls this too
            self.failed = reason
            self.description += f" [FAILED: {reason}]"
            log.error("%s failed: %s", self.name, reason)
            if self.on_failure is not None:
                self.on_failure(reason)

    def _check(self) -> None:
        """Raise Unavailable (and stay failed) when a rank has died."""
        if self.failed is None:
            dead = [f"{r} (pid {pid})" for r, pid in self._local.items() if not _alive(pid)]
            if dead:
                self._fail(f"MPI rank {', '.join(dead)} died")
        if self.failed is not None:
            raise Unavailable(f"{self.name}: {self.failed}; the device stays failed until the agent restarts")

    def run_on_pool(self, op: Op, inputs: dict[str, np.ndarray], params: dict) -> Partial:
        with self._mpi:
            if self._closed:
                raise Unavailable(f"{self.name} is closed")
            self._check()
            split = [n for n in op.split_inputs if n in inputs]
            if not split:  # nothing to divide: rank 0 alone
                return op.reference(inputs, params)
            # Everything that can fail on rank 0 alone happens before the workers are told to start.
            t0 = time.perf_counter()
            inputs = {n: np.ascontiguousarray(a) for n, a in inputs.items()}
            header = {"op": op.name, "params": params,
                      "rows": _split_rows(len(inputs[split[0]]), self.comm.size),
                      "split": [(n, inputs[n].dtype.str, inputs[n].shape[1:]) for n in split],
                      "whole": [(n, a.dtype.str, a.shape) for n, a in inputs.items() if n not in split]}
            blob = np.frombuffer(bytearray(pickle.dumps(header)), np.uint8)
            try:
                _wait([self.comm.Ibcast(np.array([RUN, blob.size], np.int64), root=0)], check=self._check)
                _wait([self.comm.Ibcast(blob, root=0)], check=self._check)
                timings = {"header": time.perf_counter() - t0}
                results = _exchange(self.comm, header, inputs, self._check, timings)
            except Unavailable:
                raise
            except BaseException as exc:  # an MPI error, or rank 0 failing mid-protocol: out of step for good
                self._fail(f"MPI protocol error on rank 0: {exc!r}")
                self._check()
            t1 = time.perf_counter()
            errors = [(r, meta.decode()) for r, (status, meta, _) in enumerate(results) if status]
            if errors:
                r, text = errors[0]
                raise KernelError(f"op {op.name!r} failed on MPI rank {r} of {self.comm.size}: {text}")
            combined: Partial = {}
            for _, meta, data in results:  # rank order: bitwise repeatable
                combined = op.combine(combined, _decode(meta, data))
            timings["combine"] = time.perf_counter() - t1
            self.last_timings = timings
            return combined

    def close(self) -> None:
        """Stop the workers (they finalize MPI and exit). Safe to call twice."""
        if not self._mpi.acquire(timeout=CLOSE_TIMEOUT):
            self._fail("closed while a partition was still running")
            return
        try:
            if self._closed:
                return
            self._closed = True
            if self.failed is None:
                deadline = time.monotonic() + CLOSE_TIMEOUT

                def check():
                    self._check()
                    if time.monotonic() > deadline:
                        self._fail("workers did not take the STOP message")
                        self._check()
                try:
                    _wait([self.comm.Ibcast(np.array([STOP, 0], np.int64), root=0)], check=check)
                except (LeptonError, MPI.Exception):
                    pass  # workers already gone: nothing left to stop
        finally:
            self._mpi.release()

    def _at_exit(self) -> None:
        self.close()
        # Hydra (with -disable-auto-cleanup) sends SIGUSR1 whenever a rank exits, cleanly or not.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if self.failed is None:
            MPI.Finalize()


def _serve_worker(comm) -> None:
    """Ranks 1..N-1: run partitions until rank 0 says STOP."""
    def on_stop_signal(signum, frame):
        _stop_requested.append(time.monotonic())

    def check():  # a signalled worker leaves after a grace, in case rank 0 never sends STOP
        if _stop_requested and time.monotonic() - _stop_requested[0] > STOP_GRACE:
            os._exit(128 + signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop_signal)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # a rank died: this pool is over, die at once
    command = np.zeros(2, np.int64)
    while True:
        _wait([comm.Ibcast(command, root=0)], idle=True, check=check)
        if command[0] == STOP:
            return
        blob = np.empty(int(command[1]), np.uint8)
        _wait([comm.Ibcast(blob, root=0)])
        _exchange(comm, pickle.loads(blob.tobytes()), None)


_opened: list[MpiDevice] = []


def open_pool(ranks: int | None, first_index: int) -> list[Device]:
    """Under mpiexec: rank 0 gets the device; other ranks serve until STOP, then exit the process."""
    if _opened:
        raise InvalidInput("only one 'mpi' device per process: its MPI world is the pool")
    if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
        raise FailedPrecondition("mpi4py.MPI was initialized before backends.mpi set the thread level; "
                                 "MPI_THREAD_SERIALIZED is needed")
    comm = MPI.COMM_WORLD
    if ranks is not None and ranks != comm.size:
        if comm.rank != 0:
            os._exit(2)  # rank 0 reports it; a worker must not carry on into the agent's code
        raise InvalidInput(f"device spec 'mpi:{ranks}' but mpiexec started {comm.size} ranks; use 'mpi' "
                           f"under a manual mpiexec")
    everyone = comm.allgather((socket.gethostname(), os.getpid()))
    if comm.rank != 0:
        try:
            _serve_worker(comm)
        except BaseException:  # never fall back into the caller's code (the agent) on a worker rank
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        # From here on, SIGUSR1 only says another rank exited too (hydra sends it for any exit).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        MPI.Finalize()
        sys.exit(0)
    device = MpiDevice(comm, first_index, everyone)

    def on_rank_exit(signum, frame):  # fail at once, so on_failure fires even while the pool is idle
        if not device._closed:
            device._fail("mpiexec reported that a rank of the pool exited")

    try:
        signal.signal(signal.SIGUSR1, on_rank_exit)
    except ValueError:
        pass  # not the main thread: PID polling still notices local ranks dying
    atexit.register(device._at_exit)
    _opened.append(device)
    return [device]
