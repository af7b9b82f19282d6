"""One OpenCL device behind the common interface: programs, buffers and the two reduction launches.

Op semantics (which partial each op returns) live in kernels.py; this module knows the device: which
kernel layout suits it (CPU: a few work-items streaming contiguous chunks with 16-wide loads; GPU: a
grid-stride loop with 4-wide loads and a local-memory tree per work-group), how programs are built or
loaded, and which buffers are kept between calls. Devices with memory of their own copy large arrays
through pinned staging slots (transfer.py), reducing each chunk as it lands.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pyopencl as cl

from lepton.backends.device import Device
from lepton.errors import FailedPrecondition, ResourceExhausted
from lepton.backends.opencl import catalog, kernels
from lepton.backends.opencl.compiler import ProgramCache, load_binary
from lepton.backends.opencl.errors import cl_errors
from lepton.backends.opencl.transfer import Stager

CL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
            np.dtype(np.int32): "int", np.dtype(np.int64): "long"}
NP_TYPES = {name: dtype for dtype, name in CL_TYPES.items()}
PRIMS = {"sum": "OP_SUM", "fsum": "OP_SUM", "m2": "OP_M2", "count": "OP_COUNT", "min": "OP_MIN", "max": "OP_MAX"}

BLOCK = 256                 # loads summed in the inner accumulator before the outer one (see reduce.cl)
WG = 256                    # GPU work-group size
MIN_LOADS_PER_ITEM = 4096   # CPU: below this a chunk costs more to schedule than to read
HISTOGRAM_BYTES = 16 << 20  # device memory for per-work-group histogram copies


def describe(device: cl.Device) -> str:
    kind = cl.device_type.to_string(device.type).lower()
    return (f"{device.name.strip()} ({kind}, {device.max_compute_units} compute units, "
            f"{device.platform.name.strip()}, driver {device.driver_version})")


def _shares_host_memory(device: cl.Device) -> bool:
    try:
        return bool(device.host_unified_memory)  # deprecated in OpenCL 2.0; some drivers refuse it
    except cl.Error:
        return bool(device.type & cl.device_type.CPU)


class OpenCLDevice(Device):
    """An OpenCL device. With `binaries` (variant -> program binary, see manifest.py) it never
    compiles and offers only the ops those binaries cover. `fp64`, `zero_copy` and `gpu_layout` (the
    work-group tree kernels) default to what the device reports; tests override them to run the
    paths other devices take on PoCL."""

    kind = "opencl"

    def __init__(self, cl_device: cl.Device, name: str, *, cache: ProgramCache | None = None,
                 binaries: dict[str, bytes] | None = None, fp64: bool | None = None,
                 zero_copy: bool | None = None, gpu_layout: bool | None = None, calibrate: bool = True):
        super().__init__(name, describe(cl_device), cl_device.global_mem_size)
        self.cl_device = cl_device
        self.is_gpu = bool(cl_device.type & cl.device_type.GPU) if gpu_layout is None else gpu_layout
        self.vec = 4 if self.is_gpu else 16
        self.compute_units = cl_device.max_compute_units
        self.fp64 = "cl_khr_fp64" in cl_device.extensions if fp64 is None else fp64
        # Devices sharing host memory (CPUs, integrated GPUs) read the caller's array in place.
        self.zero_copy = _shares_host_memory(cl_device) if zero_copy is None else zero_copy
        self.max_alloc = cl_device.max_mem_alloc_size
        self.align = max(128, cl_device.mem_base_addr_align // 8)  # bytes; double16 loads need 128
        self.cache = cache if cache is not None else ProgramCache()
        self.binary_only = binaries is not None
        self._programs: dict[str, cl.Program] = {}
        self._kernels: dict[tuple[str, str], cl.Kernel] = {}  # created once: clCreateKernel is not free
        self._buffers: dict[str, cl.Buffer] = {}              # grow-only, one per role
        self._run_lock = threading.RLock()                    # kernels and buffers are not thread-safe
        with cl_errors(f"opening OpenCL device {describe(cl_device)}"):
            self.context = cl.Context([cl_device])
            # Profiling costs nothing measurable and lets benchmarks read kernel time off the device clock.
            self.queue = cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.profile: list[cl.Event] | None = None  # a list collects every kernel launch's event
        # Large inputs to a device with memory of its own go through pinned slots (see transfer.py).
        self.stager = None if self.zero_copy else Stager(self.context)
        for variant, binary in (binaries or {}).items():
            self._options(variant)  # rejects names this version does not know
            self._programs[variant] = load_binary(self.context, cl_device, binary,
                                                  f"prebuilt program {variant} on {name}")
        self.kernels = kernels.offered(self)
        if calibrate:
            self.calibrate()

    # -- programs ---------------------------------------------------------------------------------

    def variant(self, prim: str, dtype: np.dtype, layout: str) -> str:
        """The program variant name: 'reduce.<prim>.<dtype>.<flat|columns>' or 'histogram.<dtype>.<edge type>'."""
        dtype = np.dtype(dtype)
        if prim == "histogram":
            return f"histogram.{dtype}.{layout}"
        if prim == "fsum" and dtype.kind == "f":
            prim = "sum"  # the same build: float sums already accumulate in floating point
        return f"reduce.{prim}.{dtype}.{layout}"

    def accumulators(self, prim: str, dtype: np.dtype) -> tuple[str, str] | None:
        """(inner, outer) accumulator types, or None when this device cannot run it (no fp64)."""
        dtype = np.dtype(dtype)
        t = CL_TYPES[dtype]
        if prim in ("min", "max"):
            acc = (t, t)
        elif prim == "count":
            acc = ("int" if dtype == np.float32 else "long", "long")  # inner: what float compares return
        elif prim == "sum" and dtype.kind == "i":
            acc = ("long", "long")  # wraps like np.sum(dtype=int64)
        elif dtype == np.float32:
            acc = ("float", "double")
        else:
            acc = ("double", "double")  # float64 data, and int means/variances (np uses float64)
        if not self.fp64:
            if dtype == np.float32:
                acc = tuple("float" if a == "double" else a for a in acc)
            if "double" in acc:
                return None
        return acc

    def _options(self, variant: str) -> str:
        if variant.split(".")[0] in catalog.SOURCES:
            try:
                return catalog.options(self, variant)
            except ValueError:
                raise FailedPrecondition(f"unknown OpenCL program variant {variant!r}") from None
        try:
            source, *rest = variant.split(".")
            prim, dtype, layout = rest if source == "reduce" else ["histogram", *rest]
            t = CL_TYPES[np.dtype(dtype)]
            if source == "histogram" and layout in ("float", "double"):
                opts = [f"-DT={t}", f"-DE={layout}"] + ([] if self.is_gpu else ["-DCHUNKED"])
            elif source == "reduce" and prim in PRIMS and layout in ("flat", "columns"):
                inner, outer = self.accumulators(prim, dtype) or ("double", "double")
                opts = [f"-D{PRIMS[prim]}", f"-DT={t}", f"-DIN={inner}", f"-DOUT={outer}", f"-DBLOCK={BLOCK}",
                        f"-DVEC={self.vec if layout == 'flat' else 1}"]
                if self.is_gpu and layout == "flat":
                    opts.append(f"-DWG={WG}")
                if np.dtype(dtype).kind == "f":
                    opts += ["-DIS_FLOAT", f"-DMASK={'int' if t == 'float' else 'long'}"]
            else:
                raise ValueError
        except (ValueError, TypeError):
            raise FailedPrecondition(f"unknown OpenCL program variant {variant!r} (expected e.g. "
                                     f"'reduce.sum.float32.flat' or 'histogram.float32.float')") from None
        if self.fp64:
            opts.append("-DHAS_FP64")
        return " ".join(opts + ["-w"])  # -w: PoCL warns about float16 ABIs on every build

    def program(self, variant: str) -> cl.Program:
        program = self._programs.get(variant)
        if program is None:
            if self.binary_only:
                raise FailedPrecondition(f"{self.name} runs prebuilt binaries only and has none for {variant}; "
                                         f"it has {', '.join(sorted(self._programs))}")
            program = self.cache.build(self.context, self.cl_device, f"{variant.split('.')[0]}.cl",
                                       self._options(variant))
            self._programs[variant] = program
        return program

    def _kernel(self, variant: str, name: str) -> cl.Kernel:
        kernel = self._kernels.get((variant, name))
        if kernel is None:
            kernel = self._kernels[(variant, name)] = cl.Kernel(self.program(variant), name)
        return kernel

    # -- buffers ----------------------------------------------------------------------------------

    def _check_size(self, nbytes: int) -> None:
        if nbytes > self.max_alloc:
            raise ResourceExhausted(f"{self.name}: a partition of {nbytes} bytes exceeds the device's largest "
                                    f"allocation ({self.max_alloc} bytes); use smaller partitions")

    def _buffer(self, role: str, nbytes: int) -> cl.Buffer:
        """The buffer kept for `role`, reallocated only when a call needs more than it holds."""
        self._check_size(nbytes)
        buffer = self._buffers.get(role)
        if buffer is None or buffer.size < nbytes:
            if buffer is not None:
                del self._buffers[role]
                buffer.release()
            # Small buffers grow by powers of two, large ones by whole MiB (partitions vary little).
            size = max(4096, 1 << (nbytes - 1).bit_length()) if nbytes <= 1 << 20 else -(-nbytes // (1 << 20)) << 20
            size = min(size, self.max_alloc)
            buffer = self._buffers[role] = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size)
        return buffer

    def upload(self, x: np.ndarray, keep: bool = False, chunks: bool = False) -> tuple:
        """`x` on the device as (buffer, head): the buffer holds rows x[head:].

        Where memory is shared the kernels read the caller's array in place, from the first row whose
        address has the device's base alignment (the vector loads need it; NumPy only aligns to 16
        bytes); the `head` rows before it are left to the host. Otherwise x is copied into the kept
        input buffer, large arrays through the stager. With chunks=True a staged copy is left under
        way: (buffer, 0, pending), and iterating pending yields (lo, hi, event) as rows x[lo:hi] are
        sent (each at an offset the device's alignment allows: a multiple of `self.align` bytes), so
        the caller can launch on each chunk as it lands. keep=True gives a buffer of its own
        (benchmarks keep data resident).
        """
        self._check_size(x.nbytes)
        if keep:
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
            return cl.Buffer(self.context, flags, hostbuf=np.ascontiguousarray(x)), 0
        rows = self.stager.rows_per_chunk(x, self.align) if self.stager is not None else 0
        if rows:
            buffer = self._buffer("x", x.nbytes)
            pending = self.stager.chunks(self.queue, buffer, x, rows)
            if chunks:
                return buffer, 0, pending
            for _ in pending:
                pass
            return buffer, 0
        x = np.ascontiguousarray(x)
        if self.zero_copy:
            row_bytes = x.nbytes // x.shape[0]
            for head in range(min(x.shape[0], self.align)):
                if (x.ctypes.data + head * row_bytes) % self.align == 0:
                    flags = cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR
                    return cl.Buffer(self.context, flags, hostbuf=x[head:]), head
        buffer = self._buffer("x", x.nbytes)
        cl.enqueue_copy(self.queue, buffer, x, is_blocking=False)  # x outlives the call; the queue is in order
        return buffer, 0

    def write(self, buffer: cl.Buffer, x: np.ndarray) -> None:
        """Copy x into `buffer` (from byte 0) before whatever is enqueued next: staged when large."""
        x = np.ascontiguousarray(x)
        flat = x.reshape(-1).view(np.uint8)  # any row width fits the slots
        rows = self.stager.rows_per_chunk(flat) if self.stager is not None else 0
        if rows:
            self.stager.copy(self.queue, buffer, flat, rows)
        else:
            cl.enqueue_copy(self.queue, buffer, x, is_blocking=False)

    def _read(self, buffer: cl.Buffer, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """The start of `buffer` as a new host array, once all enqueued is done: staged when large."""
        host = np.empty(shape, dtype)
        flat = host.reshape(-1).view(np.uint8)
        rows = self.stager.rows_per_chunk(flat) if self.stager is not None else 0
        if rows:
            self.stager.read(self.queue, buffer, flat, rows)
        else:
            cl.enqueue_copy(self.queue, host, buffer, is_blocking=True)
        return host

    # -- launches ---------------------------------------------------------------------------------

    def reduce(self, prim: str, x: np.ndarray, shift: np.ndarray | None = None,
               resident: tuple | None = None) -> tuple[np.ndarray | None, np.ndarray | None, int, int]:
        """Reduce rows of `x` along axis 0 with primitive `prim` (see PRIMS).

        Returns (first, second, lo, hi): per-column results shaped x.shape[1:] for rows x[lo:hi]
        (second only for m2: sums of d and of d*d with d = x - shift; both None when lo == hi).
        The flat kernels cover whole VEC-wide loads and in-place reads start at an aligned row, so the
        caller reduces the few rows outside [lo, hi) on the host.
        `shift` is per column, already in the inner accumulator's type; `resident`: upload(x)'s result
        (upload(x, chunks=True)'s is consumed by the first call; pass its first two items to later ones).
        A staged upload still under way is reduced chunk by chunk as each lands, so the kernels overlap
        the copy; every primitive's partials add up (or take extremes) across chunks like across
        work-items, and chunk bounds depend only on the shape, so results are the same every run.
        """
        xbuf, head, *pending = resident if resident is not None else self.upload(x, chunks=True)
        dtype = x.dtype
        inner, _ = self.accumulators(prim, dtype)
        cols = x.size // x.shape[0]
        flat = self.vec % cols == 0
        shift_buf = None
        if shift is not None:
            shift_host = np.tile(shift.reshape(-1), self.vec // cols) if flat else shift.reshape(-1)
            shift_host = np.ascontiguousarray(shift_host, dtype=NP_TYPES[inner])
            shift_buf = self._buffer("shift", shift_host.nbytes)
            cl.enqueue_copy(self.queue, shift_buf, shift_host, is_blocking=False)
        row_bytes = x.itemsize * cols
        parts = []
        try:
            for lo, hi, event in pending[0] if pending else [(0, x.shape[0] - head, None)]:
                chunk = xbuf if event is None else xbuf.get_sub_region(lo * row_bytes, (hi - lo) * row_bytes)
                parts.append(self._reduce_rows(prim, dtype, chunk, hi - lo, cols, flat, shift_buf, event))
        finally:
            if pending:
                pending[0].close()  # after an error: stops the copies (see Stager.chunks)
        parts = [p for p in parts if p is not None]
        if not parts:
            return None, None, head, head
        parts[-1][3][-1].wait()  # the last read; the queue is in order
        covered = sum(p[0] for p in parts)
        first = self._fold(prim, np.concatenate([p[1] for p in parts]), cols, flat)
        second = self._fold(prim, np.concatenate([p[2] for p in parts]), cols, flat) if prim == "m2" else None
        columns = x.shape[1:]
        return (first.reshape(columns), None if second is None else second.reshape(columns),
                head, head + covered)

    def _reduce_rows(self, prim: str, dtype: np.dtype, xbuf: cl.Buffer, rows: int, cols: int, flat: bool,
                     shift_buf: cl.Buffer | None, after: cl.Event | None):
        """Launch `prim` over `rows` rows in xbuf (once `after` completes) and a read of its partials:
        (rows covered, partials, second partials or None, the reads' events), or None if it covers none."""
        _, outer = self.accumulators(prim, dtype)
        res = dtype if prim in ("min", "max") else NP_TYPES[outer]
        if flat:
            nvec = rows * cols // self.vec
            covered = nvec * self.vec // cols
            if nvec == 0:
                return None
            if self.is_gpu:
                groups = max(1, min(self.compute_units * 16, math.ceil(nvec / WG)))
                per, local, name = 0, WG, "reduce_tree"
                global_size = (groups * WG,)
            else:
                groups = max(1, min(self.compute_units * 4, nvec // MIN_LOADS_PER_ITEM))
                per = math.ceil(nvec / groups)
                groups = math.ceil(nvec / per)
                local, name, global_size = 1, "reduce_chunked", (groups,)
            out_shape = (groups, self.vec)
            args = [np.uint64(nvec), np.uint64(per)]
            local_size = (local,)
        else:
            covered = rows
            lx = 64 if self.is_gpu else min(cols, 16)
            gx = math.ceil(cols / lx) * lx
            target = self.compute_units * (2048 if self.is_gpu else 4)
            chunks = max(1, min(rows, target // gx if self.is_gpu else math.ceil(target / (gx // lx))))
            per = math.ceil(rows / chunks)
            chunks = math.ceil(rows / per)
            name, global_size, local_size = "reduce_columns", (gx, chunks), (lx, 1)
            out_shape = (chunks, cols)
            args = [np.uint64(rows), np.uint64(per)]
        kernel = self._kernel(self.variant(prim, dtype, "flat" if flat else "columns"), name)
        nbytes = int(np.prod(out_shape)) * np.dtype(res).itemsize
        out = self._buffer("out", nbytes)
        out2 = self._buffer("out2", nbytes) if prim == "m2" else None
        kernel.set_args(xbuf, *args, shift_buf, out, out2, *([np.uint64(cols)] if not flat else []))
        self._launched(cl.enqueue_nd_range_kernel(self.queue, kernel, global_size, local_size,
                                                  wait_for=[after] if after is not None else None))
        # Non-blocking reads: the next chunk's kernel reuses out, after the read (the queue is in order).
        first, second = np.empty(out_shape, res), np.empty(out_shape, res) if out2 is not None else None
        # Their events are kept: pyopencl waits for a dropped copy event there and then.
        reads = [cl.enqueue_copy(self.queue, first, out, is_blocking=False)]
        if out2 is not None:
            reads.append(cl.enqueue_copy(self.queue, second, out2, is_blocking=False))
        self.queue.flush()  # start the kernel while the host fills the next chunk
        return covered, first, second, reads

    def _launched(self, event: cl.Event) -> None:
        if self.profile is not None:
            self.profile.append(event)

    @staticmethod
    def _fold(prim: str, partials: np.ndarray, cols: int, flat: bool) -> np.ndarray:
        """(items, lanes or columns) partials -> one value per column, in float64 / int64 for sums."""
        if prim == "min":
            fold = np.min
        elif prim == "max":
            fold = np.max
        else:
            wide = np.float64 if partials.dtype.kind == "f" else np.int64
            fold = lambda a, axis: np.sum(a, axis=axis, dtype=wide)  # noqa: E731
        lanes = fold(partials, axis=0)
        return fold(lanes.reshape(-1, cols), axis=0) if flat else lanes

    def histogram(self, x: np.ndarray, edges: np.ndarray, uniform: bool) -> np.ndarray:
        """Counts (columns, bins) int64 of a 1-D or (rows, columns) input, as np.histogram bins them.
        A staged upload is counted chunk by chunk as it lands: the launches add into the same counts."""
        # xbuf is held until the read: kernel arguments do not keep buffers alive.
        xbuf, head, *pending = self.upload(x, chunks=True)
        cols = 1 if x.ndim == 1 else x.shape[1]
        nb = len(edges) - 1
        etype = "float" if edges.dtype == np.float32 else "double"
        kernel = self._kernel(self.variant("histogram", x.dtype, etype), "histogram")
        edges = np.ascontiguousarray(edges, dtype=NP_TYPES[etype])
        edges_buf = self._buffer("edges", edges.nbytes)
        cl.enqueue_copy(self.queue, edges_buf, edges, is_blocking=False)
        # A positive norm turns on the arithmetic guess of uniform bins; zero means binary search.
        norm = edges.dtype.type(nb / (float(edges[-1]) - float(edges[0]))) if uniform else edges.dtype.type(0)
        n_all = (x.shape[0] - head) * cols
        copies = max(1, min(self._histogram_groups(n_all)[0], HISTOGRAM_BYTES // (cols * nb * 4)))
        counts = self._buffer("counts", copies * cols * nb * 4)
        cl.enqueue_fill_buffer(self.queue, counts, np.uint32(0), 0, copies * cols * nb * 4)
        row_bytes = x.itemsize * cols
        chunks = []  # sub-buffers, held until the read
        try:
            for lo, hi, event in pending[0] if pending else [(0, x.shape[0] - head, None)]:
                chunk = xbuf if event is None else xbuf.get_sub_region(lo * row_bytes, (hi - lo) * row_bytes)
                chunks.append(chunk)
                groups, local, per = self._histogram_groups((hi - lo) * cols)
                kernel.set_args(chunk, np.uint64((hi - lo) * cols), np.uint64(per), np.uint64(cols), edges_buf,
                                np.uint32(nb), norm, counts, np.uint32(copies))
                self._launched(cl.enqueue_nd_range_kernel(self.queue, kernel, (groups * local,), (local,),
                                                          wait_for=[event] if event is not None else None))
                self.queue.flush()
        finally:
            if pending:
                pending[0].close()
        counts = self._read(counts, (copies, cols, nb), np.uint32).sum(axis=0, dtype=np.int64)
        for c in range(cols if head else 0):  # the unaligned head rows (see upload)
            counts[c] += np.histogram(x[:head].reshape(head, cols)[:, c], bins=edges)[0]
        return counts

    def _histogram_groups(self, n: int) -> tuple[int, int, int]:
        """(work-groups, work-group size, values per work-item or 0 for grid-stride) for n values."""
        if self.is_gpu:
            return max(1, min(self.compute_units * 16, math.ceil(n / WG))), WG, 0
        groups = max(1, min(self.compute_units * 4, n // (MIN_LOADS_PER_ITEM * 16)))
        per = math.ceil(n / groups)
        return math.ceil(n / per), 1, per

    # -- the Device interface ---------------------------------------------------------------------

    def run(self, op, inputs, params):
        with self._run_lock, cl_errors(f"running {op.name} on {self.name}"):
            return super().run(op, inputs, params)

    def calibrate(self, nbytes: int = 4 << 20) -> None:
        """Seed the measured throughput with a float32 sum of a few MiB (builds or loads it too)."""
        if "sum" not in self.kernels or self.accumulators("sum", np.float32) is None:
            return
        x = np.ones(nbytes // 4, np.float32)
        with self._run_lock, cl_errors(f"calibrating {self.name}"):
            try:
                self.reduce("sum", x)  # build, load and first launch are not throughput
            except FailedPrecondition:
                return  # a binary-only device without this variant: observed runs will fill it in
            best = math.inf
            for _ in range(3):
                start = time.perf_counter()
                self.reduce("sum", x)
                best = min(best, time.perf_counter() - start)
        with self._lock:
            self._throughput["sum"] = x.nbytes / best

    def close(self) -> None:
        with self._run_lock:
            try:
                self.queue.finish()
            except cl.Error:
                pass  # closing must not fail; the context goes with this object
            if self.stager is not None:
                self.stager.close()
            for buffer in self._buffers.values():
                buffer.release()
            self._buffers.clear()
            self._kernels.clear()
            self._programs.clear()
