"""Cut a job's split inputs into partitions along axis 0.

Every scheme ends as row blocks over a row order: row blocks keep the input's order; hash and
round-robin permute the rows once (stable, grouped by partition) so each partition is again a
contiguous slice. The partition count depends only on the input and the spec, never on the
cluster, so a job gives bitwise the same result on any number of agents.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.ops import Op, TensorMeta

MAX_PARTITIONS = 1 << 16


class Scheme(enum.Enum):
    ROW_BLOCKS = "row_blocks"
    HASH = "hash"
    ROUND_ROBIN = "round_robin"


@dataclass
class Plan:
    scheme: Scheme
    count: int
    rows: int
    key_column: int = 0
    #: Row offsets of the partitions (count + 1 values) in the ordered rows; None until the rows'
    #: order is known (hash needs the data).
    row_splits: np.ndarray | None = None

    balanced: bool = False  # row splits follow per-row weights, known once every row is in

    @property
    def needs_whole_input(self) -> bool:
        """Row blocks can start while the input still streams; permuting or balanced plans cannot."""
        return self.scheme is not Scheme.ROW_BLOCKS or self.balanced

    def balance(self, weights: np.ndarray) -> None:
        """Row blocks of about equal total weight (e.g. non-zeros per row of a sparse matrix)."""
        cumulative = np.concatenate([[0], np.cumsum(weights, dtype=np.float64)])
        targets = cumulative[-1] * np.arange(1, self.count) / self.count
        inner = np.searchsorted(cumulative, targets, side="left")
        self.row_splits = np.concatenate([[0], np.maximum.accumulate(inner), [self.rows]]).astype(np.int64)

    def order(self, split: list[np.ndarray]) -> np.ndarray | None:
        """The row permutation of a permuting scheme (and set `row_splits`); None for row blocks."""
        if self.scheme is Scheme.ROW_BLOCKS:
            return None
        if self.scheme is Scheme.ROUND_ROBIN:
            part = np.arange(self.rows, dtype=np.int64) % self.count
        else:
            part = hash_keys(_key(split[0], self.key_column)) % np.uint64(self.count)
        order = np.argsort(part, kind="stable")
        self.row_splits = np.concatenate([[0], np.cumsum(np.bincount(part.astype(np.int64),
                                                                     minlength=self.count))])
        return order


def _key(x: np.ndarray, column: int) -> np.ndarray:
    return x if x.ndim == 1 else x[:, column]


def hash_keys(keys: np.ndarray) -> np.ndarray:
    """SplitMix64 of each key's bits (vectorized): stable across runs, machines and processes."""
    keys = np.ascontiguousarray(keys)
    if keys.dtype.kind == "f":
        keys = keys + 0.0  # one bit pattern for 0.0 and -0.0
    bits = keys.view(f"u{keys.dtype.itemsize}").astype(np.uint64)
    with np.errstate(over="ignore"):
        z = bits + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _Rows(Op):
    """Stands for "any op over one split input" when planning a dataset."""

    name = "dataset"


ROWS = _Rows()


def plan(op: Op, metas: dict[str, TensorMeta], scheme: Scheme, count: int, target_bytes: int,
         key_column: int = 0) -> Plan:
    split = [metas[name] for name in op.split_inputs if name in metas]  # some are optional
    rows = op.rows(metas)
    if op.order_sensitive and scheme is not Scheme.ROW_BLOCKS:
        raise InvalidInput(f"op {op.name!r} concatenates rows in order: use row-block partitioning, not {scheme.value}")
    if scheme is Scheme.HASH:
        x = split[0]
        if len(x.shape) == 2 and not 0 <= key_column < x.shape[1]:
            raise InvalidInput(f"partitioning.key_column {key_column} is out of range for {x.shape[1]} columns")
        if len(x.shape) > 2:
            raise InvalidInput("hash partitioning needs a 1-D input or a 2-D input with a key_column")
    if count < 0 or count > MAX_PARTITIONS:
        raise InvalidInput(f"partitioning.count must be in [0, {MAX_PARTITIONS}] (0 = derive from target_bytes); "
                           f"got {count}")
    if target_bytes <= 0:
        raise InvalidInput(f"partitioning.target_bytes must be positive; got {target_bytes}")
    if count == 0:
        split_bytes = sum(m.nbytes for m in split)
        count = min(MAX_PARTITIONS, -(-split_bytes // target_bytes))
    # Row blocks never leave a partition empty; hash may (the empty partial is every op's identity).
    count = max(1, min(count, rows) if scheme is not Scheme.HASH else count)
    p = Plan(scheme, count, rows, key_column, balanced=op.balanced)
    if scheme is Scheme.ROW_BLOCKS:
        p.row_splits = np.arange(count + 1, dtype=np.int64) * rows // count
    return p
