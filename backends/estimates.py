"""Estimates of a reduction's result from a random sample of its partitions (early answers).

The population is a job's P partitions, cut into strata (`Strata`: the agent each partition was
resident on when the job started; one stratum for streamed input). Within each stratum the
partitions are handed out in a seeded random order (coordinator/early.py), so the partitions done
at any moment are a simple random sample of it without replacement, provided how soon a partition
finishes does not depend on its values (true of equal row blocks; it is the assumption we state).

Totals (sum, count) use the separate ratio estimator over each stratum's row counts, which are
known for every partition: T = sum_h M_h * (sum of y / sum of m over the sample of stratum h), with
the linearized variance N_h^2 (1 - n_h/N_h) s_h^2 / n_h of the residuals y - R_h m (Cochran,
"Sampling Techniques", 6.11 and 5A.13). The interval is Student's t with Satterthwaite's degrees of
freedom; it is infinite while a stratum has fewer than two partitions in (no spread is known) and
widens by the rounding the exact answer itself may differ by. A mean is a total over M; a variance is the
total of each partition's squared deviations about the estimated mean, over M - ddof (first order
in the mean's error). Min and max are running values and histogram counts scaled totals, unbounded.

Each estimator keeps what it needs per stratum, from partials only: never the data.
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


@dataclass
class _Total:
    value: np.ndarray
    variance: np.ndarray  # inf where a stratum lacks the two partitions a spread needs
    df: np.ndarray
    used: int  # partitions behind it


def ratio_total(strata: Strata, ys: dict[int, list], ms: dict[int, list], shape) -> _Total:
    """The stratified ratio estimate of a population total from per-partition values `ys[h]` and
    row counts `ms[h]` (see the module docstring)."""
    value, variance = np.zeros(shape), np.zeros(shape)
    df_denominator, used = np.zeros(shape), 0
    for h, y in ys.items():
        y = np.stack(y).astype(np.float64).reshape((len(y), *shape))
        m = np.asarray(ms[h], dtype=np.float64).reshape((-1,) + (1,) * len(shape))
        n, big_n, big_m, seen = len(y), int(strata.partitions[h]), float(strata.rows[h]), float(m.sum())
        used += n
        ratio = y.sum(axis=0) / seen if seen else np.zeros(shape)
        value += big_m * ratio
        if n >= big_n:  # the whole stratum is in: exact
            continue
        if n < 2:
            variance += np.inf
            continue
        residual = y - ratio * m
        a = big_n * big_n * (1 - n / big_n) / n * (residual * residual).sum(axis=0) / (n - 1)
        variance += a
        df_denominator += a * a / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(df_denominator > 0, variance * variance / df_denominator, np.inf)
    return _Total(value, variance, np.nan_to_num(df, nan=np.inf), used)


def half_width(total: _Total, confidence: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(total.variance), np.inf,
                        t_quantile(confidence, np.maximum(total.df, 1.0)) * np.sqrt(total.variance))


class Total(Estimator):
    """The total of partial key `key` (sum, count); divided by the rows with `mean=True`."""

    def __init__(self, key: str, shape, result_dtype, mean: bool = False):
        super().__init__(tuple(shape))
        self.key, self.mean, self.u = key, mean, roundoff(result_dtype)
        self.ys: dict[int, list] = {}
        self.ms: dict[int, list] = {}

    def add(self, h, rows, partial):
        y = partial.get(self.key)
        self.ys.setdefault(h, []).append(np.zeros(self.shape) if y is None else np.asarray(y, dtype=np.float64))
        self.ms.setdefault(h, []).append(rows)

    def estimate(self, strata, confidence):
        total = ratio_total(strata, self.ys, self.ms, self.shape)
        scale = 1.0 / strata.total_rows if self.mean and strata.total_rows else 1.0
        value = total.value * scale
        # The exact answer differs from the true value by its own rounding: the result's dtype, and
        # the float64 adds of the fold (the estimate's are of the same order).
        slack = np.abs(value) * (self.u + (total.used + 4) * U64)
        return value, half_width(total, confidence) * scale + slack


class Spread(Estimator):
    """The variance (ddof) from (n, mean, m2) partials: sum of squared deviations over M - ddof."""

    def __init__(self, shape, result_dtype, ddof: int):
        super().__init__(tuple(shape))
        self.u, self.ddof = roundoff(result_dtype), ddof
        self.means: dict[int, list] = {}
        self.m2s: dict[int, list] = {}
        self.ms: dict[int, list] = {}

    def add(self, h, rows, partial):
        zero = np.zeros(self.shape)
        self.means.setdefault(h, []).append(np.asarray(partial.get("mean", zero), dtype=np.float64))
        self.m2s.setdefault(h, []).append(np.asarray(partial.get("m2", zero), dtype=np.float64))
        self.ms.setdefault(h, []).append(rows)

    def estimate(self, strata, confidence):
        rows = strata.total_rows
        sums = {h: [mean * m for mean, m in zip(means, self.ms[h])] for h, means in self.means.items()}
        mean = ratio_total(strata, sums, self.ms, self.shape).value / rows
        # Each partition's squared deviations about the estimated mean: its own m2 plus its offset.
        deviations = {h: [m2 + m * np.square(part_mean - mean)
                          for m2, part_mean, m in zip(self.m2s[h], self.means[h], self.ms[h])]
                      for h in self.means}
        total = ratio_total(strata, deviations, self.ms, self.shape)
        scale = 1.0 / max(1, rows - self.ddof)
        value = total.value * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            condition = 1 + np.nan_to_num(np.abs(mean) / np.sqrt(value), nan=0.0, posinf=0.0)
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

