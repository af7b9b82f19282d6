"""Early answers: running estimates of a reduction's result while its partials arrive.

A job asks for them with `JobSpec.early`. For the estimates' bounds to be honest, the partitions
done at any moment must be a random sample of all of them, so an early job differs from others in
the order of its work only, never in what is computed (the final result is bitwise the same):

- its partitions are released in a seeded random order (`order`), all at once: a streamed input
  is waited for in full first, since the rows arriving first are not a random sample;
- each run holds one partition (`Job.max_run`), so every partial that arrives covers one;
- the strata are the agents the partitions were resident on when the job started (one stratum for
  streamed input): an agent takes its own partitions first, so the sample is random within each
  stratum, whatever the agents' speeds (lepton.backends.estimates says how the strata combine).

What is assumed: how soon a partition finishes does not depend on its values (true of row blocks
of a dense input, whose partitions differ in size by a row at most).

The coordinator's cost: each partial goes into its op's estimators' running sums per stratum (a few
dozen numbers per column, whatever the number of partitions), never the data; an estimate is
computed only when the fraction of rows covered has grown by `every` since the last one and
`interval` seconds have passed, so a job gets at most 1/every of them, each costing O(strata x columns).
"""
from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.estimates import Strata
from lepton.backends.ops import REGISTRY, Op

MAX_ESTIMATE_BYTES = 1 << 20  # of the values of one estimate: one message, far below gRPC's 4 MiB


@dataclass(frozen=True)
class EarlyOptions:
    confidence: float = 0.95  # of the error bounds
    every: float = 0.05  # fraction of the rows between two estimates, at least
    interval: float = 0.1  # seconds between two estimates, at least
    seed: int = 0  # of the random order; 0: the coordinator picks one

    def checked(self) -> "EarlyOptions":
        """These options with a seed, or InvalidInput naming the bad field."""
        if not (isinstance(self.confidence, float) and 0 < self.confidence < 1):
            raise InvalidInput(f"early.confidence must be in (0, 1), e.g. 0.95; got {self.confidence!r}")
        if not 0 <= self.every <= 1:
            raise InvalidInput(f"early.min_fraction_step must be in [0, 1]; got {self.every!r}")
        if not (0 <= self.interval < math.inf):
            raise InvalidInput(f"early.min_interval_seconds must be a finite number >= 0; got {self.interval!r}")
        if not 0 <= self.seed < 1 << 64:
            raise InvalidInput(f"early.seed must be in [0, 2^64); got {self.seed!r}")
        seed = self.seed or secrets.randbits(63) or 1
        return EarlyOptions(self.confidence, self.every, self.interval, seed)


@dataclass
class Estimate:
    """One running estimate: values (and bounds, None where a value has none) by result name."""

    fraction: float  # rows of the partitions used, over all rows
    partitions_used: int
    partitions_total: int
    confidence: float
    seed: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    bounds: dict[str, np.ndarray | None] = field(default_factory=dict)


class EarlyAnswers:
    """One job's early answers: its random order, strata and estimators, and the throttle. Safe to
    call from every run's thread (its own lock; never held while taking another)."""

    def __init__(self, op: Op, params: dict, options: EarlyOptions, partitions: int, requested: str | None = None):
        """Raises InvalidInput if the op has no early answers (`requested`: the op name asked for)."""
        self.estimators = op.estimators(params)
        name = requested or op.name
        if not self.estimators:
            estimable = sorted(n for n, o in REGISTRY.items() if type(o).estimators is not Op.estimators)
            raise InvalidInput(f"op {name!r} has no early answers (early estimates are for "
                               f"{', '.join(estimable)}): submit it without early")
        size = sum(8 * math.prod(e.shape) for e in self.estimators.values())
        if size > MAX_ESTIMATE_BYTES:
            raise InvalidInput(f"op {name!r}: each early estimate of this job would carry {size} bytes, over "
                               f"{MAX_ESTIMATE_BYTES >> 20} MiB: submit it without early, or on fewer columns or bins")
        self.options = options
        self.emit: Callable[[Estimate], None] = lambda estimate: None  # the job's: onto its submit stream
        self.order = np.random.default_rng(options.seed).permutation(partitions)
        self.strata: Strata | None = None
        self._stratum: list[int] = []
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()
        self._seen = 0  # partitions in the estimators
        self._per_stratum: np.ndarray | None = None
        self._rows_seen = 0
        self._last = (0.0, -math.inf)  # fraction and monotonic time of the last estimate

    def begin(self, homes: list, row_splits: np.ndarray) -> None:
        """The partitions were just released: `homes[p]` is where partition p is resident (None for
        streamed input); its stratum is that agent."""
        labels = {home: h for h, home in enumerate(dict.fromkeys(homes))}
        stratum = [labels[home] for home in homes]
        rows = np.diff(np.asarray(row_splits, dtype=np.int64))
        with self._lock:
            self._stratum, self._rows = stratum, rows
            self.strata = Strata(np.bincount(stratum, minlength=len(labels)),
                                 np.bincount(stratum, weights=rows, minlength=len(labels)).astype(np.int64))
            self._per_stratum = np.zeros(len(labels), dtype=np.int64)

    def add(self, lo: int, hi: int, partial) -> None:
        """A partial was aggregated; maybe send an estimate. Runs of an early job hold one partition;
        a wider partial (none is expected) would be one unit of another size, so it is left out of
        the estimates (it still counts for the result), and the sample stays random."""
        with self._lock:
            if self.strata is None or hi - lo != 1:
                return
            h, rows = self._stratum[lo], int(self._rows[lo])
            for estimator in self.estimators.values():
                estimator.add(h, rows, partial)
            self._seen += 1
            self._per_stratum[h] += 1
            self._rows_seen += rows
            total = self.strata.total_rows
            fraction = self._rows_seen / total if total else self._seen / len(self._rows)
            last_fraction, last_time = self._last
            now = time.monotonic()
            if (fraction >= 1 or fraction - last_fraction < self.options.every or now - last_time < self.options.interval
                    or not self._per_stratum.all()):
                return  # the final result follows at 1; a stratum with nothing in cannot be estimated
            self._last = (fraction, now)
            estimate = Estimate(fraction, self._seen, len(self._rows), self.options.confidence, self.options.seed)
            for name, estimator in self.estimators.items():
                estimate.values[name], estimate.bounds[name] = estimator.estimate(self.strata,
                                                                                  self.options.confidence)
            self.emit(estimate)  # under the lock: estimates go out in the order of their fractions

