"""Estimates of a reduction's result from a random sample of its partitions (early answers).

The population is a job's P partitions, cut into strata (`Strata`: the agent each partition was
resident on when the job started; one stratum for streamed input). Within each stratum the
partitions are handed out in a seeded random order (coordinator/early.py), so the partitions done
at any moment are a simple random sample of it without replacement, provided how soon a partition
finishes does not depend on its values (true of equal row blocks; it is the assumption we state).

Totals (sum, count) use the separate ratio estimator over each stratum's row counts, which are
known for every partition: T = sum_h M_h * (sum of y / sum of m over the sample of stratum h), with
the linearized variance N_h^2 (1 - n_h/N_h) s_h^2 / n_h of the residuals y - R_h m (Cochran,
"Sampling Techniques", chapters 5 and 6). The interval is Student's t with the degrees of freedom
of the stratum with the fewest partitions in (conservative); it is infinite while a stratum has
fewer than two partitions in (no spread is known), and widens by the rounding the exact answer
itself may differ by. A mean is a total over M; a variance is the total of each partition's squared
deviations about the estimated mean, over M - ddof (first order in the mean's error). Min and max are running values and histogram counts scaled totals, unbounded.

Each estimator keeps running sums per stratum (`Moments`), from partials only: never the data, and
nothing per partition, so neither its memory nor the cost of an estimate grows with the partitions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Partial = dict[str, np.ndarray]  # as lepton.backends.ops.Partial (the ops import this module)

U64 = 2.0 ** -53  # unit roundoff of float64


@dataclass(frozen=True)
class Strata:
    """The population: partitions and rows per stratum (index h)."""

    partitions: np.ndarray  # N_h
    rows: np.ndarray  # M_h

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())


def roundoff(dtype: str | np.dtype) -> float:
    """Unit roundoff of a result dtype (0 for integers, which the exact answer holds exactly)."""
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) / 2 if dtype.kind == "f" else 0.0


def t_quantile(confidence: float, df: np.ndarray) -> np.ndarray:
    """The two-sided Student's t quantile for `confidence` at `df` degrees of freedom (inf: normal)."""
    from scipy import stats  # here: only the coordinator of an early job pays for importing it

    return np.asarray(stats.t.ppf(0.5 + confidence / 2, df))


class Estimator:
    """Keeps what it needs from each partial; `estimate` gives (value, bound or None)."""

    bounded = True

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape  # of the estimated value (what an estimate message carries)

    def add(self, h: int, rows: int, partial: Partial) -> None:
        raise NotImplementedError

    def estimate(self, strata: Strata, confidence: float) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


class Moments:
    """Running sums of k features per partition in one stratum: their sums and cross-products, per
    column. Feature 0 is the partition's rows. A ratio estimate of any linear combination of the
    features then needs no per-partition memory: its residuals' sum of squares is a quadratic form
    in the cross-products. The features are shifted by the stratum's first partition (by its ratio
    or its mean), so that form does not cancel catastrophically."""

    def __init__(self, k: int, shape: tuple[int, ...]):
        self.n = 0
        self.sums = np.zeros((k, *shape))
        self.products = np.zeros((k, k, *shape))

    def add(self, features: np.ndarray) -> None:
        self.n += 1
        self.sums += features
        self.products += features[:, None] * features[None, :]

    def ratio(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For z = weights . features: sum z / sum rows, and the residuals' sum of squares,
        sum (z - ratio * rows)^2 (clipped at 0 against rounding)."""
        rows = self.sums[0]
        ratio = (weights * self.sums).sum(axis=0) / rows if rows.all() else np.zeros(rows.shape)
        u = weights.copy()
        u[0] = u[0] - ratio
        squares = (u[:, None] * u[None, :] * self.products).sum(axis=(0, 1))
        return ratio, np.maximum(squares, 0.0)


@dataclass
class _Total:
    value: np.ndarray
    variance: np.ndarray  # inf where a stratum lacks the two partitions a spread needs
    df: np.ndarray
    used: int  # partitions behind it


def ratio_total(strata: Strata, moments: dict[int, Moments], weights: dict[int, np.ndarray], shape) -> _Total:
    """The stratified ratio estimate of a population total of z = weights[h] . features (see the
    module docstring), with its variance and degrees of freedom."""
    value, variance = np.zeros(shape), np.zeros(shape)
    df, used = np.inf, 0
    for h, m in moments.items():
        n, big_n = m.n, int(strata.partitions[h])
        used += n
        ratio, squares = m.ratio(weights[h])
        value += float(strata.rows[h]) * ratio
        if n >= big_n:  # the whole stratum is in: exact
            continue
        if n < 2:
            variance += np.inf
            continue
        variance += big_n * big_n * (1 - n / big_n) / n * squares / (n - 1)
        # The smallest stratum's degrees of freedom: conservative. Satterthwaite's (between that and
        # their sum) covered 0.91-0.93 instead of 0.95 when one agent had done far fewer partitions.
        df = min(df, n - 1)
    return _Total(value, variance, np.full(shape, float(df)), used)


def half_width(total: _Total, confidence: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(total.variance), np.inf,
                        t_quantile(confidence, np.maximum(total.df, 1.0)) * np.sqrt(total.variance))


def _value(partial: Partial, key: str, shape) -> np.ndarray:
    value = partial.get(key)
    return np.zeros(shape) if value is None else np.asarray(value, dtype=np.float64)


class Total(Estimator):
    """The total of partial key `key` (sum, count); divided by the rows with `mean=True`.
    Features: rows, and y - r0 * rows with r0 the ratio of the stratum's first partition."""

    def __init__(self, key: str, shape, result_dtype, mean: bool = False):
        super().__init__(tuple(shape))
        self.key, self.mean, self.u = key, mean, roundoff(result_dtype)
        self.moments: dict[int, Moments] = {}
        self.shift: dict[int, np.ndarray] = {}

    def add(self, h, rows, partial):
        y = _value(partial, self.key, self.shape)
        if h not in self.moments:
            self.moments[h] = Moments(2, self.shape)
            self.shift[h] = y / rows if rows else np.zeros(self.shape)
        self.moments[h].add(np.stack([np.full(self.shape, float(rows)), y - self.shift[h] * rows]))

    def estimate(self, strata, confidence):
        weights = {h: np.stack([r0, np.ones(self.shape)]) for h, r0 in self.shift.items()}
        total = ratio_total(strata, self.moments, weights, self.shape)
        scale = 1.0 / strata.total_rows if self.mean and strata.total_rows else 1.0
        value = total.value * scale
        # The exact answer differs from the true value by its own rounding: the result's dtype, and
        # the float64 adds of the fold (the estimate's are of the same order).
        slack = np.abs(value) * (self.u + (total.used + 4) * U64)
        return value, half_width(total, confidence) * scale + slack


class Spread(Estimator):
    """The variance (ddof) from (n, mean, m2) partials: the total of each partition's squared
    deviations about the estimated mean, m2 + rows * (mean - mu)^2, over M - ddof.

    With c the stratum's first mean, e = mean - c and eps = mu - c, a partition's deviations are
    a - 2 eps b + eps^2 rows for the features a = m2 + rows e^2 (shifted by a0 * rows, a0 the
    first partition's m2 / rows) and b = rows e: linear in them, whatever mu turns out to be."""

    def __init__(self, shape, result_dtype, ddof: int):
        super().__init__(tuple(shape))
        self.u, self.ddof = roundoff(result_dtype), ddof
        self.moments: dict[int, Moments] = {}
        self.centre: dict[int, np.ndarray] = {}  # c
        self.base: dict[int, np.ndarray] = {}  # a0

    def add(self, h, rows, partial):
        mean, m2 = _value(partial, "mean", self.shape), _value(partial, "m2", self.shape)
        if h not in self.moments:
            self.moments[h] = Moments(3, self.shape)
            self.centre[h] = mean
            self.base[h] = m2 / rows if rows else np.zeros(self.shape)
        e = mean - self.centre[h]
        a = m2 + rows * e * e - self.base[h] * rows
        self.moments[h].add(np.stack([np.full(self.shape, float(rows)), a, rows * e]))

    def estimate(self, strata, confidence):
        rows, one, zero = strata.total_rows, np.ones(self.shape), np.zeros(self.shape)
        # mu: the ratio estimate of the total of rows * mean (= rows * c + b), over M
        sums = {h: np.stack([c, zero, one]) for h, c in self.centre.items()}
        mu = ratio_total(strata, self.moments, sums, self.shape).value / rows
        weights = {}
        for h, c in self.centre.items():
            eps = mu - c
            weights[h] = np.stack([self.base[h] + eps * eps, one, -2 * eps])
        total = ratio_total(strata, self.moments, weights, self.shape)
        scale = 1.0 / max(1, rows - self.ddof)
        value = total.value * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            condition = 1 + np.nan_to_num(np.abs(mu) / np.sqrt(value), nan=0.0, posinf=0.0)
        slack = np.abs(value) * (self.u + 2 * (total.used + 4) * U64 * condition)
        return value, half_width(total, confidence) * scale + slack


class Running(Estimator):
    """The exact combine of every partial seen so far (min, max): a running value, no bound."""

    bounded = False

    def __init__(self, key: str, shape, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        super().__init__(tuple(shape))
        self.key, self.combine, self.value = key, combine, None

    def add(self, h, rows, partial):
        if self.key in partial:
            v = np.asarray(partial[self.key])
            self.value = v if self.value is None else self.combine(self.value, v)

    def estimate(self, strata, confidence):
        return self.value, None


class Scaled(Estimator):
    """Counts (a histogram's) scaled up by each stratum's rows over the rows seen: no bound."""

    bounded = False

    def __init__(self, key: str, shape):
        super().__init__(tuple(shape))
        self.key = key
        self.counts: dict[int, np.ndarray] = {}
        self.rows: dict[int, int] = {}

    def add(self, h, rows, partial):
        if self.key in partial:
            self.counts[h] = self.counts.get(h, 0) + partial[self.key]
        self.rows[h] = self.rows.get(h, 0) + rows

    def estimate(self, strata, confidence):
        value = np.zeros(self.shape)
        for h, seen in self.rows.items():
            if seen and h in self.counts:
                value += self.counts[h] * (float(strata.rows[h]) / seen)
        return value, None

