"""The MPI pool: rank 0 is the agent's device, ranks 1..N-1 are workers; all run one generic protocol.

How a partition is divided (rank 0 decides, before any worker is told to start):
  - ops with an inexact merge (`op.block_bytes`: float sums) are *defined* as a fixed fold of blocks
    (backends/blocks.py). Each rank gets a contiguous range of whole blocks [first_r, last_r),
    balanced by count (ranks past the last block get none), folds it into the maximal nodes of the
    partition's block tree, and rank 0 folds all nodes up to the root: bitwise the NumPy device's
    partial for the same partition.
  - ops with an exact merge (min, max, counts, concatenations) get an even split of rows, combined
    in rank order: exact too.
  Each rank's share is cut with `op.take` (rows along axis 0, columns of A and rows of B for
  matmul.inner, CSR rows with their non-zeros for spmm and gcn_layer); inputs the op does not split
  go whole to every rank. Kernels of `needs_row_offset` ops get the row offset of what they compute.

Per partition, on every rank in the same order (collectives must match):
  1. command   Ibcast int64[2] = (RUN, header size). Idle workers wait on it with Test + a short
               sleep: a blocking bcast was measured burning a whole core while idle.
  2. header    Ibcast of a small pickle: op name, params, each rank's rows (and blocks), the dtype
               and shape of each rank's share of each split input, dtypes and shapes of whole inputs.
  3. inputs    Iscatterv of each split input's shares as raw bytes: straight from the input's buffer
               when the shares are disjoint C-contiguous views of it in rank order (rows along axis
               0, a CSR's indices and data), else from a packed copy of the workers' shares
               (matmul.inner's column blocks of A, a CSR's re-based indptr). Rank 0 keeps its share
               in place. Ibcast of each whole input. Bulk data is never pickled.
  4. compute   op.reference on this rank's blocks (folded) or rows; an empty share gives no partial.
  5. partials  Igather of (status, meta size, data size), then Igatherv of meta (a pickle of tree
               nodes, keys, dtypes and shapes, or the error text) and of the raw bytes of the arrays.
               Rank 0 keeps its own partial where it is.
Nothing here is per op, so every op in the registry runs on the pool.

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

import grpc
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

from lepton.backends.blocks import fold_blocks, layout, run_blocked  # noqa: E402
from lepton.backends.device import Device  # noqa: E402
from lepton.errors import FailedPrecondition, InvalidInput, LeptonError, Unavailable  # noqa: E402
from lepton.backends.mpi import KernelError  # noqa: E402
from lepton.backends.ops import REGISTRY, Op, Partial, runnable  # noqa: E402
from lepton.backends.tree import Tree, TreeAggregator  # noqa: E402

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
    if name not in _scratches or _scratches[name].size < nbytes:
        _scratches[name] = np.empty(nbytes, np.uint8)
    return _scratches[name][:nbytes].view(dtype).reshape(shape)


Nodes = list  # [((lo, hi), partial)]: block-tree nodes (blocked ops) or this rank's one partial


def _encode(nodes: Nodes) -> tuple[bytes, np.ndarray]:
    """Partials as (pickled [(node, [(key, dtype, shape, is_scalar, offset)])], raw aligned bytes)."""
    meta, arrays, offset = [], [], 0
    for node, partial in nodes:
        entries = []
        for key, value in partial.items():
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"partial {key!r} has dtype object; only plain arrays can be gathered")
            entries.append((key, array.dtype.str, np.shape(value),
                            np.ndim(value) == 0 and not isinstance(value, np.ndarray), offset))
            arrays.append((offset, array))
            offset += -(-array.nbytes // ALIGN) * ALIGN
        meta.append((node, entries))
    data = np.zeros(offset, np.uint8)
    for start, array in arrays:
        data[start:start + array.nbytes] = _as_bytes(array)
    return pickle.dumps(meta), data


def _decode(meta: bytes, data: np.ndarray) -> Nodes:
    nodes = []
    for node, entries in pickle.loads(meta):
        partial = {}
        for key, dtype, shape, scalar, offset in entries:
            dtype = np.dtype(dtype)
            size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            array = data[offset:offset + size].view(dtype).reshape(shape)
            partial[key] = array[()] if scalar else array
        nodes.append((node, partial))
    return nodes


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _scatter_source(base: np.ndarray | None, shares: list[np.ndarray]) -> tuple[np.ndarray, list[int], list[int]]:
    """(send buffer, byte counts, byte displacements) for Scatterv of `shares` (one per rank).

    Shares that are disjoint C-contiguous views of `base`'s buffer, in rank order (rows along axis 0,
    a CSR's non-zeros), are sent from that buffer without a copy. Anything else is packed: the
    workers' shares made contiguous one after another (rank 0 keeps its own, MPI.IN_PLACE).
    """
    counts = [share.nbytes for share in shares]
    if base is not None and base.flags.c_contiguous:
        start, end = _address(base), _address(base) + base.nbytes
        displs, position = [], 0
        for share, count in zip(shares, counts):
            if count:
                if not share.flags.c_contiguous or not start + position <= _address(share) <= end - count:
                    break
                position = _address(share) - start
            displs.append(position)
            position += count
        else:
            return _as_bytes(base), counts, displs
    packed = [_as_bytes(np.ascontiguousarray(share)) for share in shares[1:]]
    data = np.concatenate(packed) if packed else np.zeros(0, np.uint8)
    counts[0] = 0
    return data, counts, np.concatenate(([0], np.cumsum(counts[:-1]))).tolist()


def _spread(count: int, ranks: int) -> list[tuple[int, int]]:
    """[first, last) of `count` items per rank: contiguous, balanced by count, earlier ranks first."""
    base, extra = divmod(count, ranks)
    bounds = np.cumsum([0] + [base + (r < extra) for r in range(ranks)]).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _divide(op: Op, inputs: dict[str, np.ndarray], ranks: int) -> tuple[list[tuple[int, int]], tuple | None]:
    """Each rank's rows [start, stop) of the partition, and for blocked ops (rows, rows per block,
    blocks, each rank's blocks [first, last)); None for ops with exact merges."""
    if not op.block_bytes:
        return _spread(op.rows(inputs), ranks), None
    rows, per_block, blocks = layout(op, inputs)
    spans = _spread(blocks, ranks)
    return [(min(first * per_block, rows), min(last * per_block, rows)) for first, last in spans], \
        (rows, per_block, blocks, spans)


def _compute(op: Op, header: dict, local: dict[str, np.ndarray], rank: int) -> Nodes:
    """This rank's partials: maximal block-tree nodes of its blocks, or one partial of its rows."""
    start, stop = header["ranges"][rank]
    params = header["params"]
    if header["blocked"] is not None:
        rows, per_block, blocks, spans = header["blocked"]
        first, last = spans[rank]
        if first == last:
            return []
        return list(fold_blocks(op, op.reference, local, params, first, last, blocks, per_block, rows,
                                row_shift=first * per_block).items())
    if stop == start:
        return []
    return [((rank, rank + 1), op.reference(local, op.params_at_row(params, start)))]


def _error_text(exc: BaseException) -> str:
    """`CODE|text`: the gRPC code of a LeptonError (bad input stays INVALID_ARGUMENT), else INTERNAL."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    code = exc.code if isinstance(exc, LeptonError) else KernelError.code
    text = exc.details if isinstance(exc, LeptonError) else str(exc)
    return f"{code.name}|{type(exc).__name__}: {text}{at}"


def _exchange(comm, header: dict, local: dict | None = None, sources: dict | None = None,
              check=lambda: None, timings: dict | None = None):
    """Steps 3-5 on any rank. Rank 0 passes its own share with the whole inputs (`local`) and the
    Scatterv sources of the split inputs (`sources`), and gets [(error text or None, nodes)] per rank;
    elsewhere None."""
    rank = comm.rank
    requests = []
    t0 = time.perf_counter()
    if rank == 0:
        for name, (data, counts, displs) in sources.items():
            requests.append(comm.Iscatterv([data, counts, displs, MPI.BYTE], MPI.IN_PLACE, root=0))
        for name, _, _ in header["whole"]:
            requests.append(comm.Ibcast([_as_bytes(local[name]), MPI.BYTE], root=0))
    else:
        local = {}
        for name, shares in header["split"]:
            dtype, shape = shares[rank]
            local[name] = _scratch(name, shape, np.dtype(dtype))
            requests.append(comm.Iscatterv(None, [_as_bytes(local[name]), MPI.BYTE], root=0))
        for name, dtype, shape in header["whole"]:
            local[name] = _scratch(name, shape, np.dtype(dtype))
            requests.append(comm.Ibcast([_as_bytes(local[name]), MPI.BYTE], root=0))
    _wait(requests, check=check)
    t1 = time.perf_counter()

    error, nodes = None, []
    try:  # the kernel, and anything that can fail with it, must not skip the collectives below
        nodes = _compute(REGISTRY[header["op"]], header, local, rank)
        meta, data = (b"", np.zeros(0, np.uint8)) if rank == 0 else _encode(nodes)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0 as this partition's error
        error = _error_text(exc)
        meta, data = error.encode(), np.zeros(0, np.uint8)
        if rank == 0:
            meta = b""
    t2 = time.perf_counter()

    sizes = np.array([error is not None, len(meta), data.size], np.int64)
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
    results, m, d = [(error, nodes)], int(table[0, 1]), int(table[0, 2])
    for status, meta_size, data_size in table[1:].tolist():
        meta, data = meta_in[m:m + meta_size].tobytes(), data_in[d:d + data_size]
        results.append((meta.decode(), []) if status else (None, _decode(meta, data)))
        m, d = m + meta_size, d + data_size
    return results


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
        self.kernels = {name: self._kernel(name) for name in runnable()}
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
            # Everything that can fail on rank 0 alone happens before the workers are told to start.
            t0 = time.perf_counter()
            if self.comm.size == 1 or not any(n in inputs for n in op.split_inputs) or op.rows(inputs) == 0:
                # nothing to divide: rank 0 alone, as the NumPy device would
                return run_blocked(op, op.reference, inputs, params) if op.block_bytes else op.reference(inputs, params)
            ranges, blocked = _divide(op, inputs, self.comm.size)
            shares = [op.take(inputs, start, stop) for start, stop in ranges]
            whole = {n: np.ascontiguousarray(a) for n, a in inputs.items() if n not in shares[0]}
            sources = {n: _scatter_source(inputs.get(n), [share[n] for share in shares]) for n in shares[0]}
            header = {"op": op.name, "params": params, "ranges": ranges, "blocked": blocked,
                      "split": [(n, [(share[n].dtype.str, share[n].shape) for share in shares]) for n in shares[0]],
                      "whole": [(n, a.dtype.str, a.shape) for n, a in whole.items()]}
            blob = np.frombuffer(bytearray(pickle.dumps(header)), np.uint8)
            timings = {"cut": time.perf_counter() - t0}
            try:
                _wait([self.comm.Ibcast(np.array([RUN, blob.size], np.int64), root=0)], check=self._check)
                _wait([self.comm.Ibcast(blob, root=0)], check=self._check)
                timings["header"] = time.perf_counter() - t0 - timings["cut"]
                results = _exchange(self.comm, header, {**shares[0], **whole}, sources, self._check, timings)
            except Unavailable:
                raise
            except BaseException as exc:  # an MPI error, or rank 0 failing mid-protocol: out of step for good
                self._fail(f"MPI protocol error on rank 0: {exc!r}")
                self._check()
            t1 = time.perf_counter()
            errors = [(r, error) for r, (error, _) in enumerate(results) if error is not None]
            if errors:
                r, text = errors[0]
                code, _, text = text.partition("|")
                error = KernelError(f"op {op.name!r} failed on MPI rank {r} of {self.comm.size}: {text}")
                error.code = grpc.StatusCode[code]  # the kernel's own code: INVALID_ARGUMENT is not retried elsewhere
                raise error
            if blocked is not None:  # the partition's block tree, folded as the NumPy device folds it
                blocks = blocked[2]
                aggregator = TreeAggregator(Tree(blocks, 2), op.combine)
                for _, nodes in results:
                    for (lo, hi), partial in nodes:
                        aggregator.add(lo, hi, partial)
                combined = aggregator.done[(0, blocks)]
            else:
                combined = {}
                for _, nodes in results:  # rank order is row order
                    for _, partial in nodes:
                        combined = op.combine(combined, partial)
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
        _exchange(comm, pickle.loads(blob.tobytes()))


_opened: list[MpiDevice] = []


def open_pool(ranks: int | None, first_index: int) -> list[Device]:
    """Under mpiexec: rank 0 gets the device; other ranks serve until STOP, then exit the process."""
    if _opened:
        raise InvalidInput("only one 'mpi' device per process: its MPI world is the pool")
    if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
        raise FailedPrecondition("mpi4py.MPI was initialized before lepton.backends.mpi set the thread level; "
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
