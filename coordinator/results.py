"""A job's row-block result written in place into its client's shared memory (ARCHITECTURE.md §7).

When the client is on this host and offers an empty memfd (JobSpec.result_buffer), and the op's one
result is the concatenation of its partitions' rows (`Op.row_result`: matmul, spmm, linear, mlp,
gcn_layer), the result does not travel: `SharedResult` sizes the client's memfd as

    [one claim byte per partition, padded to a page][the result's rows, C order]

and the agents on this host write each partition's rows at its row offset (Task.result), returning
only that they did (PartialHeader.written). Partials that come as bytes anyway (agents on other
hosts, or a writer found the partition busy) are written here, the same way. The job's aggregation
tree then only tracks which ranges are done; exactly-once holds twice over: the tree takes each
range once, and each partition's rows are written once (the claim bytes, `ResultFile.claim_write`),
so a late speculative copy or a retry writes nothing over rows already there. When the tree is whole,
`finish` checks every non-empty partition's claim and seals the memfd: from then on no process can
write it (a straggler's pwrite fails), and the client maps it.

Whenever that cannot be done (no offer, a client elsewhere, an agent that refused, a writer holding
a claim it never finished, a seal refused), the result is what it always was, streamed: either
nothing is written here at all, or `finish` copies the rows out into an array.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np

from lepton import sharedmem, wire
from lepton.contract import TensorMeta
from lepton.errors import LeptonError
from lepton.logs import event

log = logging.getLogger("lepton.coordinator")

MIN_BYTES = 1 << 20  # smaller results stream: a memfd and its mapping cost more than they save
BUSY_WAIT = 2.0  # seconds `finish` waits for a claim another writer holds (a write takes milliseconds)


def offer(op, metas: dict[str, TensorMeta], params: dict, plan, buffer, early: bool) -> "SharedResult | None":
    """The job's SharedResult if its result can be written in place into `buffer` (the client's
    SharedBuffer, or None), else None: the result streams. Never raises for a buffer it cannot use."""
    if buffer is None or early or not sharedmem.enabled() or plan.scheme.value != "row_blocks":
        return None
    layout = op.row_result(metas, params)
    if layout is None or layout[1].nbytes < MIN_BYTES:
        return None
    try:
        return SharedResult(buffer, *layout, plan.row_splits)
    except (LeptonError, OSError) as exc:
        event(log, "result.streamed", level=logging.DEBUG, reason=getattr(exc, "details", None) or repr(exc))
        return None


class SharedResult:
    """The result memfd of one job, as the coordinator holds it (one descriptor, never a mapping)."""

    def __init__(self, buffer, name: str, meta: TensorMeta, row_splits: np.ndarray):
        self.file = sharedmem.ResultFile(buffer.host_id, buffer.pid, buffer.fd, buffer.name, fresh=True)
        self.client_buffer, self.name, self.meta = buffer, name, meta
        self.row_splits = np.asarray(row_splits, dtype=np.int64)
        self.partitions = len(self.row_splits) - 1
        self.row_bytes = meta.nbytes // meta.shape[0] if meta.shape and meta.shape[0] else 0
        self.offset = sharedmem.aligned(self.partitions)  # the claims first, then the rows
        self.loose: dict[int, np.ndarray] = {}  # partition -> rows that arrived as bytes, not yet written
        self._lock = threading.Lock()
        try:
            self.file.resize(self.offset + meta.nbytes)
        except OSError as exc:
            self.file.close()
            raise LeptonError(f"cannot size the result memfd: {exc.strerror}") from None

    def header(self):
        return wire.tensor_pb2.TensorHeader(name=self.name, dtype=wire.dtype_enum(self.meta.dtype),
                                            shape=self.meta.shape, total_bytes=self.meta.nbytes)

    def for_agents(self) -> dict:
        """Task.result's fields: the coordinator's own descriptor of the memfd (an agent opens it
        through /proc, as it opens the coordinator's input memfds), where the rows start, the claims."""
        return {"buffer": {"host_id": sharedmem.host_id(), "pid": os.getpid(), "fd": self.file.fd,
                           "name": self.file.name, "offset": self.offset},
                "tensor": self.header(), "claims_offset": 0}

    def for_client(self) -> dict:
        """SubmitJobResponse.result_shared's fields: the client's own buffer, at the rows."""
        b = self.client_buffer
        return {"tensor": self.header(), "buffer": {"host_id": b.host_id, "pid": b.pid, "fd": b.fd, "name": b.name,
                                                    "offset": self.offset}}

    def _write(self, p: int, rows: np.ndarray) -> bool | None:
        return self.file.claim_write(p, self.offset + int(self.row_splits[p]) * self.row_bytes, rows)

    def write(self, lo: int, hi: int, partial: dict) -> None:
        """Partitions [lo, hi) arrived as bytes (their partial): write each partition's rows unless
        someone did; rows whose claim another writer holds now wait for `finish`."""
        if partial is sharedmem.WRITTEN or not partial:
            return
        rows = partial.get(self.name)
        splits = self.row_splits
        if (rows is None or len(partial) != 1 or rows.dtype != self.meta.dtype
                or tuple(rows.shape) != (int(splits[hi] - splits[lo]), *self.meta.shape[1:])):
            raise LeptonError(f"the partial of partitions [{lo}, {hi}) does not fit the result {self.name!r} "
                              f"{self.meta.dtype}{list(self.meta.shape)}")
        for p in range(lo, hi):
            start, stop = int(splits[p] - splits[lo]), int(splits[p + 1] - splits[lo])
            if stop > start and self._write(p, rows[start:stop]) is None:
                with self._lock:
                    self.loose[p] = rows[start:stop]

    def finish(self) -> dict[str, np.ndarray] | None:
        """Every range is in: None if the result is whole in the memfd, which is sealed now (the
        client maps it); else the result as an array, to stream (a claim stayed busy, or the seal was
        refused). Raises if a partition said written has no claim (a bug)."""
        deadline = time.monotonic() + BUSY_WAIT
        with self._lock:
            loose = dict(self.loose)
        pause = 0.001
        while loose and time.monotonic() < deadline:
            loose = {p: rows for p, rows in loose.items() if self._write(p, rows) is None}
            if loose:
                time.sleep(pause)  # another writer is between its lock and its claim: milliseconds
                pause = min(pause * 2, 0.1)
        claims = np.frombuffer(self.file.read(0, self.partitions), dtype=np.uint8)
        empty = self.row_splits[1:] == self.row_splits[:-1]
        missing = np.flatnonzero((claims != 1) & ~empty)
        missing = [int(p) for p in missing if int(p) not in loose]
        if missing:
            raise LeptonError(f"partitions {missing[:8]} of the result were reported written but are not")
        if not loose and self.file.seal():
            return None
        event(log, "result.copied", level=logging.WARNING, busy=len(loose),
              note="a claim stayed busy or the seal was refused: the result streams")
        out = np.empty(self.meta.shape, self.meta.dtype)
        for p in range(self.partitions):
            start, stop = int(self.row_splits[p]), int(self.row_splits[p + 1])
            if stop == start:
                continue
            if p in loose:
                out[start:stop] = loose[p]
            else:
                self.file.read_into(out[start:stop], self.offset + start * self.row_bytes)
        return {self.name: out}

    def close(self) -> None:
        self.file.close()
        with self._lock:
            self.loose = {}
