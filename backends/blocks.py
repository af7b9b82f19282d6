"""Canonical blocking: a partition's partial does not depend on how a device splits it.

For ops whose merge is not exact (float sums: sum, mean, var, gram, ...), a partition's partial is
*defined* as the fold, in a fixed binary tree, of the partials of its blocks of rows (about
`op.block_bytes` of split input each). A device that splits a partition (an MPI pool over its ranks)
cuts on block boundaries and folds the same tree, so every device that computes blocks with the
NumPy reference gives bitwise the same partial, and mixed clusters give the same bits run to run.
Ops with exact merges (min, max, counts, concatenation) set no `block_bytes` and run unblocked.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from lepton.backends.ops import Op, Partial
from lepton.backends.tree import Range, Tree, TreeAggregator

Compute = Callable[[dict[str, np.ndarray], dict], Partial]


def block_rows(op: Op, inputs: dict[str, np.ndarray]) -> int:
    """Rows per block: about op.block_bytes of the split inputs (at least one row)."""
    rows = op.rows(inputs)
    split_bytes = sum(inputs[n].nbytes for n in op.split_inputs if n in inputs)
    return max(1, int(op.block_bytes * rows // split_bytes) if split_bytes else rows or 1)


def layout(op: Op, inputs: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """(rows, rows per block, blocks) of a partition."""
    rows, per_block = op.rows(inputs), block_rows(op, inputs)
    return rows, per_block, max(1, -(-rows // per_block))


def fold_blocks(op: Op, compute: Compute, inputs: dict[str, np.ndarray], params: dict, first: int, last: int,
                blocks: int, per_block: int, rows: int, row_shift: int = 0) -> dict[Range, Partial]:
    """Blocks [first, last) of a partition folded into the maximal nodes of its block tree.

    `inputs` hold rows [row_shift, ...) of the partition (a device's share of it); `compute` is the
    kernel of one block.
    """
    aggregator = TreeAggregator(Tree(blocks, 2), op.combine, first, last)
    for b in range(first, last):
        start, stop = b * per_block, min((b + 1) * per_block, rows)
        block = {**inputs, **op.take(inputs, start - row_shift, stop - row_shift)}
        aggregator.add(b, b + 1, compute(block, op.params_at_row(params, start)) if stop > start else {})
    return aggregator.done


def run_blocked(op: Op, compute: Compute, inputs: dict[str, np.ndarray], params: dict) -> Partial:
    """The canonical partial of a whole partition."""
    rows, per_block, blocks = layout(op, inputs)
    return fold_blocks(op, compute, inputs, params, 0, blocks, blocks, per_block, rows)[(0, blocks)]
