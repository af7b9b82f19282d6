"""The allocator: one OpenCL device's memory, and host arrays into and out of it.

Buffers are allocated and freed; those kept between calls (one per role, grow-only: partitions vary
little) are reused by every launch that names the role. Devices sharing host memory (CPUs, integrated
GPUs) read the caller's arrays in place; devices with memory of their own copy large arrays through
pinned staging slots (transfer.py's Stager), in chunks that kernels can start on as each lands.
"""
from __future__ import annotations

import numpy as np
import pyopencl as cl

from lepton.errors import ResourceExhausted
from lepton.backends.opencl.transfer import Stager


class Allocator:
    """Memory of one device: `context` and the in-order `queue` the copies go on. `zero_copy`: the
    device shares host memory (then there is no stager). Not thread-safe: the device calls it under
    its run lock."""

    def __init__(self, name: str, context: cl.Context, queue: cl.CommandQueue, device: cl.Device, zero_copy: bool):
        self.name = name
        self.context = context
        self.queue = queue
        self.zero_copy = zero_copy
        self.max_alloc = device.max_mem_alloc_size
        self.align = max(128, device.mem_base_addr_align // 8)  # bytes; double16 loads need 128
        self.kept: dict[str, cl.Buffer] = {}  # role -> buffer
        self.stager = None if zero_copy else Stager(context)

    def check_size(self, nbytes: int) -> None:
        if nbytes > self.max_alloc:
            raise ResourceExhausted(f"{self.name}: a partition of {nbytes} bytes exceeds the device's largest "
                                    f"allocation ({self.max_alloc} bytes); use smaller partitions")

    def alloc(self, nbytes: int) -> cl.Buffer:
        self.check_size(nbytes)
        return cl.Buffer(self.context, cl.mem_flags.READ_WRITE, nbytes)

    def free(self, buffer: cl.Buffer) -> None:
        buffer.release()

    def buffer(self, role: str, nbytes: int) -> cl.Buffer:
        """The buffer kept for `role`, reallocated only when a call needs more than it holds."""
        self.check_size(nbytes)
        buffer = self.kept.get(role)
        if buffer is None or buffer.size < nbytes:
            if buffer is not None:
                del self.kept[role]
                self.free(buffer)
            # Small buffers grow by powers of two, large ones by whole MiB (partitions vary little).
            size = max(4096, 1 << (nbytes - 1).bit_length()) if nbytes <= 1 << 20 else -(-nbytes // (1 << 20)) << 20
            buffer = self.kept[role] = self.alloc(min(size, self.max_alloc))
        return buffer

    def in_place(self, x: np.ndarray) -> cl.Buffer:
        """A buffer over the caller's (contiguous) array itself, for devices that share host memory."""
        return cl.Buffer(self.context, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=x)

    def copyin(self, buffer: cl.Buffer, x: np.ndarray) -> None:
        """Copy x into `buffer` (from byte 0) before whatever is enqueued next: staged when large."""
        x = np.ascontiguousarray(x)
        flat = x.reshape(-1).view(np.uint8)  # any row width fits the slots
        rows = self.stager.rows_per_chunk(flat) if self.stager is not None else 0
        if rows:
            self.stager.copy(self.queue, buffer, flat, rows)
        else:
            cl.enqueue_copy(self.queue, buffer, x, is_blocking=False)

    def copyout(self, buffer: cl.Buffer, shape: tuple, dtype: np.dtype, ready: list | None = None) -> np.ndarray:
        """The start of `buffer` as a new host array, once all enqueued is done: staged when large.
        `ready`: [(end byte, event), ...], bytes final once their event is (Stager.read)."""
        host = np.empty(shape, dtype)
        flat = host.reshape(-1).view(np.uint8)
        rows = self.stager.rows_per_chunk(flat) if self.stager is not None else 0
        if rows:
            self.stager.read(self.queue, buffer, flat, rows, ready)
        else:
            cl.enqueue_copy(self.queue, host, buffer, is_blocking=True)
        return host

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
        self.check_size(x.nbytes)
        if keep:
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
            return cl.Buffer(self.context, flags, hostbuf=np.ascontiguousarray(x)), 0
        rows = self.stager.rows_per_chunk(x, self.align) if self.stager is not None else 0
        if rows:
            buffer = self.buffer("x", x.nbytes)
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
                    return self.in_place(x[head:]), head
        buffer = self.buffer("x", x.nbytes)
        cl.enqueue_copy(self.queue, buffer, x, is_blocking=False)  # x outlives the call; the queue is in order
        return buffer, 0

    def close(self) -> None:
        if self.stager is not None:
            self.stager.close()
        for buffer in self.kept.values():
            self.free(buffer)
        self.kept.clear()


class Inputs:
    """Host arrays on the device for one call: read in place where memory is shared, else copied into
    the allocator's kept buffers (one per role). Holds the arrays until the call's blocking read."""

    def __init__(self, allocator: Allocator):
        self.allocator = allocator
        self.held = []
        self.in_place = {}  # role -> host address of an array the device reads in place

    def __call__(self, role: str, x: np.ndarray) -> cl.Buffer:
        memory = self.allocator
        x = np.ascontiguousarray(x)
        self.held.append(x)
        memory.check_size(x.nbytes)
        if memory.zero_copy and x.nbytes:
            self.in_place[role] = x.ctypes.data
            return memory.in_place(x)
        buffer = memory.buffer(role, max(x.nbytes, 1))
        if x.nbytes:
            memory.copyin(buffer, x)  # large arrays through pinned staging slots (transfer.py)
        return buffer
