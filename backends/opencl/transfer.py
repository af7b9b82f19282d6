"""Host->device copies through pinned staging buffers, for devices that do not share host memory.

A copy from pageable NumPy memory makes the driver bounce it through its own staging memory, one core
at a time (7.6 GB/s on an H100 over PCIe, where the kernels read 3 TB/s). The Stager instead keeps a
few host buffers allocated once with ALLOC_HOST_PTR (the driver pins them) and mapped once. Each chunk
of the caller's array is copied into a free slot by a few threads (np.copyto releases the GIL; one
core's memcpy bandwidth is the limit otherwise) and DMA'd from there on a transfer queue of its own,
so that filling chunk i+1 overlaps the DMA of chunk i, and kernels on the compute queue can start on
chunk i (wait_for its event) while later chunks are still being copied. Large results come back the
same way in reverse.
"""
from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyopencl as cl

# Measured on an H100 over PCIe with 16 cores (noisy: +-15% between runs): pageable copies 7.4 GB/s,
# pinned DMA 54 GB/s, the fill 6 GB/s on one thread and about 30 on 8-12. 3 slots of 64 MiB with 12
# threads copied 1 GiB at 20-30 GB/s (32 MiB slots 20-27, 16 MiB 10-22; 12 threads beat 8 in each run)
# and a float32 sum of 1 GiB ran at 24-26 GB/s end to end against 7.0 plain; 16 MiB arrays staged in
# 1.8 ms against 2.2 plain, 8 MiB ones lost (1.6 against 1.2).
SLOTS = 3               # two alternate fill and DMA; the third absorbs jitter in either
SLOT_BYTES = 64 << 20
MIN_BYTES = 16 << 20    # below this the plain copy wins or ties: staging adds a host copy and a few waits
THREADS = 12
FILL_PART = 1 << 20     # bytes per fill thread at the least: smaller parts cost more to hand out


class Stager:
    """Pinned staging slots and a transfer queue for one OpenCL context. Not thread-safe: its device
    calls it under its run lock. Slots and threads are made on first use, released in close()."""

    def __init__(self, context: cl.Context, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES,
                 min_bytes: int = MIN_BYTES, threads: int | None = None):
        self.context = context
        self.slot_bytes = slot_bytes
        self.min_bytes = min_bytes
        self.threads = threads or min(THREADS, os.cpu_count() or 1)
        self.nslots = slots
        self.queue: cl.CommandQueue | None = None
        self._slots: list[tuple[cl.Buffer, np.ndarray]] = []  # (pinned buffer, its mapping)
        self._busy: list[cl.Event | None] = []                # each slot's last DMA
        self._pool: ThreadPoolExecutor | None = None

    def rows_per_chunk(self, x: np.ndarray, align: int = 1, multiple: int = 1) -> int:
        """Rows of x per chunk, each chunk a multiple of `align` bytes (so that kernels can read it
        through a sub-buffer) and of `multiple` rows (a kernel's row blocks), or 0 when x should take
        the plain copy."""
        if x.ndim == 0 or x.nbytes < self.min_bytes:
            return 0
        row_bytes = x.nbytes // x.shape[0]
        unit = math.lcm(align // math.gcd(row_bytes, align), multiple)
        return self.slot_bytes // (row_bytes * unit) * unit  # 0 for rows too wide for a slot: plain copy

    def _open(self) -> None:
        # Allocated on first use: devices that never copy a large array pin nothing.
        self.queue = cl.CommandQueue(self.context)  # in order: its DMAs complete in the order enqueued
        for _ in range(self.nslots):
            buffer = cl.Buffer(self.context, cl.mem_flags.READ_ONLY | cl.mem_flags.ALLOC_HOST_PTR,
                               self.slot_bytes)
            host, _ = cl.enqueue_map_buffer(self.queue, buffer, cl.map_flags.WRITE, 0, (self.slot_bytes,),
                                            np.uint8, is_blocking=True)
            self._slots.append((buffer, host))
            self._busy.append(None)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lepton-stage")

    def chunks(self, consumer: cl.CommandQueue, buffer: cl.Buffer, x: np.ndarray, rows: int):
        """Copy x (any strides) into `buffer` from byte 0, `rows` rows at a time (rows_per_chunk).
        Yields (lo, hi, event) for rows x[lo:hi] in order, mostly once the host has seen the chunk's DMA
        done (the last few while theirs still run: the consumer waits for the event); run to the end,
        it makes `consumer` wait for all, so commands enqueued there after it see the whole array."""
        if self.queue is None:
            self._open()
        row_bytes = x.nbytes // x.shape[0]
        sent = deque()  # (lo, hi, event) not yet handed to the consumer
        try:
            for i, lo in enumerate(range(0, x.shape[0], rows)):
                hi = min(lo + rows, x.shape[0])
                k = i % self.nslots
                if self._busy[k] is not None:
                    self._busy[k].wait()  # the slot's previous DMA must be done before it is refilled
                if i >= self.nslots:
                    # That was chunk i - nslots: its kernels then wait on no copy in flight. Handing
                    # chunks over as soon as their DMA was enqueued ran 0-20% slower on the H100.
                    yield sent.popleft()
                host = self._slots[k][1][:(hi - lo) * row_bytes].view(x.dtype).reshape((hi - lo,) + x.shape[1:])
                self._fill(host, x[lo:hi])
                self._busy[k] = cl.enqueue_copy(self.queue, buffer, host, dst_offset=lo * row_bytes,
                                                is_blocking=False)
                self.queue.flush()  # start the DMA now, not when the queue next fills up
                sent.append((lo, hi, self._busy[k]))
            last = sent[-1][2] if sent else None
            while sent:
                yield sent.popleft()
            if last is not None:
                cl.enqueue_barrier(consumer, wait_for=[last])  # in order: the last DMA done means all are
        except BaseException:
            self.queue.finish()  # abandoned halfway (an error): no DMA may write the buffer later
            raise

    def copy(self, consumer: cl.CommandQueue, buffer: cl.Buffer, x: np.ndarray, rows: int) -> None:
        for _ in self.chunks(consumer, buffer, x, rows):
            pass

    def read(self, producer: cl.CommandQueue, buffer: cl.Buffer, out: np.ndarray, rows: int,
             ready: list | None = None) -> None:
        """out[...] = the start of `buffer` once all enqueued on `producer` is done, the other way
        round: DMAs into the slots, `rows` rows at a time, each slot emptied by the threads while the
        DMAs into the others run. With `ready`, [(end, event), ...] by increasing end, rows of `out`
        before `end` are final once `event` is: each DMA waits only for the first event covering its
        rows, so the first rows come back while kernels still compute the last."""
        if self.queue is None:
            self._open()
        row_bytes = out.nbytes // out.shape[0]
        starts = range(0, out.shape[0], rows)
        done = None if ready else [cl.enqueue_marker(producer)]
        producer.flush()

        def fetch(i: int) -> np.ndarray:
            k, lo = i % self.nslots, starts[i]
            hi = min(lo + rows, out.shape[0])
            host = self._slots[k][1][:(hi - lo) * row_bytes].view(out.dtype).reshape((hi - lo,) + out.shape[1:])
            after = done or [next(event for end, event in ready if end >= hi)]
            # The transfer queue is in order: the slot's last DMA out (a write) is done before this one.
            self._busy[k] = cl.enqueue_copy(self.queue, host, buffer, src_offset=lo * row_bytes, wait_for=after,
                                            is_blocking=False)
            self.queue.flush()
            return host

        hosts = [fetch(i) for i in range(min(self.nslots, len(starts)))]
        try:
            for i, lo in enumerate(starts):
                k = i % self.nslots
                self._busy[k].wait()
                self._fill(out[lo:lo + rows], hosts[k])
                if i + self.nslots < len(starts):
                    hosts[k] = fetch(i + self.nslots)
        except BaseException:
            self.queue.finish()  # no DMA may still write a slot the next call fills
            raise

    def _fill(self, dst: np.ndarray, src: np.ndarray) -> None:
        """dst[...] = src, split over the pool's threads (into a slot, or out of one)."""
        if src.flags.c_contiguous:  # split the bytes evenly, whatever the row width
            dst, src = dst.reshape(-1).view(np.uint8), src.reshape(-1).view(np.uint8)
        parts = min(self.threads, max(1, dst.nbytes // FILL_PART), len(dst))
        if parts == 1:
            np.copyto(dst, src)
            return
        step = math.ceil(len(dst) / parts)
        list(self._pool.map(lambda lo: np.copyto(dst[lo:lo + step], src[lo:lo + step]), range(0, len(dst), step)))

    def close(self) -> None:
        """Unmap and free the slots, stop the threads. Never raises: it runs on shutdown."""
        try:
            if self.queue is not None:
                self.queue.finish()
            for buffer, host in self._slots:
                host.base.release(self.queue)  # unmap (host.base is pyopencl's MemoryMap)
                buffer.release()
        except cl.Error:
            pass
        self._slots.clear()
        self._busy.clear()
        self.queue = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
