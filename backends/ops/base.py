"""The contract every op implements (DESIGN.md §3).

An op is validated once at the coordinator, its split inputs are cut into partitions along axis 0,
each partition becomes a *partial* on some device, partials are combined pairwise by an associative
`combine` in a fixed tree, and `finalize` turns the root partial into named result arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A partial result: named arrays. The empty dict is the identity of every combine
# (an empty partition produces it), so ops never special-case empty partitions.
Partial = dict[str, np.ndarray]
Params = dict[str, Any]

empty_partial: Partial = {}


@dataclass(frozen=True)
class TensorMeta:
    """What is known of an input before its bytes arrive."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class Op:
    """Base class. Subclasses set `name` and the input names and override the hooks."""

    name: str = ""
    #: Inputs cut by rows into partitions (they must share axis 0); other inputs go whole.
    split_inputs: tuple[str, ...] = ("x",)
    #: Inputs sent whole to every agent.
    whole_inputs: tuple[str, ...] = ()
    #: True when combine depends on row order (concatenation): only row blocks keep it.
    order_sensitive: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.split_inputs + self.whole_inputs

    def validate(self, inputs: dict[str, TensorMeta], params: Params) -> Params:
        """Reject bad input (raise InvalidInput naming the field); return normalized params.

        The normalized params travel to agents with every task, so derived values computed
        here (output dtype, bin edges) are computed once.
        """
        raise NotImplementedError

    def reference(self, inputs: dict[str, np.ndarray], params: Params) -> Partial:
        """The NumPy kernel of one non-empty partition: it defines correctness."""
        raise NotImplementedError

    def merge(self, left: Partial, right: Partial) -> Partial:
        """Associative combine of two non-empty partials of adjacent row ranges (left first)."""
        raise NotImplementedError

    def finalize(self, partial: Partial, params: Params) -> dict[str, np.ndarray]:
        """Root partial (possibly empty) to named results."""
        raise NotImplementedError

    def combine(self, left: Partial, right: Partial) -> Partial:
        """`merge` with the empty partial as identity."""
        if not left:
            return right
        if not right:
            return left
        return self.merge(left, right)
