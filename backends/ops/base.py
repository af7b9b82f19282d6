"""The contract every op implements (ARCHITECTURE.md §5).

An op is validated once at the coordinator, its split inputs are cut into partitions along axis 0,
each partition becomes a *partial* on some device, partials are combined pairwise by an associative
`combine` in a fixed tree, and `finalize` turns the root partial into named result arrays.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lepton.contract import TensorMeta  # noqa: F401 - ops take and re-export it

# A partial result: named arrays. The empty dict is the identity of every combine
# (an empty partition produces it), so ops never special-case empty partitions.
Partial = dict[str, np.ndarray]
Params = dict[str, Any]


class Op:
    """Base class. Subclasses set `name` and the input names and override the hooks."""

    name: str = ""
    #: Inputs cut into partitions along `split_axis` (they must agree on its length).
    split_inputs: tuple[str, ...] = ("x",)
    #: Inputs sent whole to every agent (cached there by content, so shipped once).
    whole_inputs: tuple[str, ...] = ()
    split_axis: int = 0
    #: True when combine depends on row order (concatenation): only row blocks keep it.
    order_sensitive: bool = False
    #: Kernels get params["row_offset"]: the index of the partition's first row in the input.
    needs_row_offset: bool = False
    #: The job repeats over the same partitions until `next_round` says it is done (k-means).
    iterative: bool = False
    #: Partitions are balanced by `row_weights`, so they wait for every row to arrive.
    balanced: bool = False
    #: Only resolves to other ops (see `resolve`): no kernel runs it.
    abstract: bool = False
    #: Ops whose merge is not exact (float sums) compute a partition as a fixed fold of blocks of
    #: about this many bytes, whatever a device's split (backends/blocks.py). None: merge is exact.
    block_bytes: int | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.split_inputs + self.whole_inputs

    def check_inputs(self, names: list[str]) -> None:
        """Raise InvalidInput unless `names` are the inputs this op takes."""
        if set(names) != set(self.inputs):
            from lepton.errors import InvalidInput

            raise InvalidInput(f"op {self.name!r} takes inputs {list(self.inputs)}; got {names}")

    def resolve(self, inputs: dict[str, TensorMeta], params: Params) -> "Op":
        """The op that actually runs (matmul picks a row or an inner-dimension plan by shape)."""
        return self

    def rows(self, inputs: dict[str, TensorMeta]) -> int:
        """Length of the split dimension."""
        return inputs[self.split_inputs[0]].shape[self.split_axis]

    def params_at_row(self, params: Params, start: int) -> Params:
        """The params for rows [start, ...) of what `params` cover: row_offset moves on by `start` for
        ops whose kernels read it (needs_row_offset); the others get `params` unchanged."""
        return {**params, "row_offset": params["row_offset"] + start} if self.needs_row_offset else params

    def take(self, source: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """One partition's share of the split inputs: rows [start, stop) along the split axis."""
        index = (slice(None),) * self.split_axis + (slice(start, stop),)
        return {n: source[n][index] for n in self.split_inputs}

    def check_data(self, arrays: dict[str, np.ndarray], params: Params) -> None:
        """Reject bad values once the streamed inputs are in (raise InvalidInput); shapes were
        checked by `validate` already. Only split inputs' values may be checked here: a job whose
        split inputs are all sparse datasets skips it, their put having checked them (Job.data_checked)."""

    def row_weights(self, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
        """Per-row cost, when rows differ (sparse rows): partitions are then balanced by it, which
        needs every row to have arrived first. None: rows cost the same."""
        return None

    def prepare(self, arrays: dict[str, np.ndarray], params: Params) -> dict[str, np.ndarray]:
        """The whole inputs the kernels get, computed once per job at the coordinator from all the
        inputs (quantized weights, degree normalisation). Default: the whole inputs as given."""
        return {n: a for n, a in arrays.items() if n not in self.split_inputs}

    def next_round(self, params: Params, whole: dict[str, np.ndarray], partial: Partial, round: int):
        """Iterative ops: after round `round`, return (params, whole) for the next round, or
        (None, result) when done."""
        raise NotImplementedError

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

    def row_result(self, inputs: dict[str, TensorMeta], params: Params) -> tuple[str, TensorMeta] | None:
        """The op's one result when it is the concatenation, in order, of its partitions' partials,
        each of which is that one array's rows (so they can be written in place: coordinator/results.py):
        its name and meta, from the inputs' metas and the validated params. None: any other result."""
        return None

    def estimators(self, params: Params) -> dict:
        """Early answers: fresh estimators (lepton.backends.estimates) of the results that a random
        sample of partitions can estimate, by result name. {}: the op has none."""
        return {}

    def combine(self, left: Partial, right: Partial) -> Partial:
        """`merge` with the empty partial as identity."""
        if not left:
            return right
        if not right:
            return left
        return self.merge(left, right)
