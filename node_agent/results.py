"""The agent's side of results written in place (ARCHITECTURE.md §7, coordinator/results.py): a task
whose Task.result names the coordinator's descriptor of its client's memfd writes each partition's
rows there, claimed once per partition, instead of sending them back."""
from __future__ import annotations

import numpy as np

from lepton import sharedmem, wire
from lepton.errors import LeptonError, NotCached
from lepton.agent import metrics


class ResultWriter:
    """Writes a task's partitions into the result memfd; `write` says whether the rows are there."""

    def __init__(self, result):
        b = result.buffer
        try:
            self.file = sharedmem.ResultFile(b.host_id, b.pid, b.fd, b.name)
        except LeptonError as exc:
            raise NotCached(exc.details) from None  # NOT_FOUND: the coordinator sends tasks without it
        self.name, self.meta = result.tensor.name, wire.meta(result.tensor)
        self.offset, self.claims = b.offset, result.claims_offset
        rows = self.meta.shape[0] if self.meta.shape else 0
        self.row_bytes = self.meta.nbytes // rows if rows else 0

    def write(self, partition: int, first_row: int, rows: int, partial: dict) -> bool:
        """Write the partition's rows unless another writer did (True either way: they are there); False
        if they must go as bytes (another writer holds the partition right now, or the partial is not
        the result's rows: then the coordinator says what is wrong with it)."""
        array = partial.get(self.name) if len(partial) == 1 else None
        if (not isinstance(array, np.ndarray) or array.dtype != self.meta.dtype
                or array.shape != (rows, *self.meta.shape[1:]) or first_row + rows > self.meta.shape[0]):
            return False
        done = self.file.claim_write(self.claims + partition, self.offset + first_row * self.row_bytes, array)
        if done:
            metrics.BYTES_WRITTEN.inc(array.nbytes)
        return done is not None

    def close(self) -> None:
        self.file.close()


def writer(task) -> ResultWriter | None:
    """The task's ResultWriter if it asks for its result in shared memory, else None."""
    return ResultWriter(task.result) if task.HasField("result") else None
