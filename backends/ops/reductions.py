"""Reductions along axis 0: sum, min, max, mean, var, count, histogram.

Inputs are 1-D, or N-D reduced along axis 0 (histogram: 1-D or 2-D, one histogram per column).
Partials are small (one value per column), so combine cost is negligible beside the kernels.
"""
from __future__ import annotations

import math

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.estimates import Running, Scaled, Spread, Total
from lepton.backends.ops import fused
from lepton.backends.ops.base import Op, Params, TensorMeta
from lepton.backends.ops.common import chan_merge, check_params

DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int32", "int64"))


def _check_input(op: Op, inputs: dict[str, TensorMeta], params: Params, allowed: tuple[str, ...],
                 needs_rows: bool, max_ndim: int = 32) -> TensorMeta:
    check_params(op, params, allowed)
    x = inputs["x"]
    if x.dtype not in DTYPES:
        raise InvalidInput(f"input 'x' has dtype {x.dtype}; op {op.name!r} supports "
                           f"{', '.join(str(d) for d in DTYPES)}")
    if not 1 <= len(x.shape) <= max_ndim:
        raise InvalidInput(f"input 'x' has shape {list(x.shape)}; op {op.name!r} needs 1 to {max_ndim} "
                           f"dimensions (it reduces along axis 0)")
    if needs_rows and x.shape[0] == 0:
        raise InvalidInput(f"input 'x' is empty (shape {list(x.shape)}); op {op.name!r} needs at least one row")
    return x


class _Reduction(Op):
    params: tuple[str, ...] = ()
    needs_rows = True

    def validate(self, inputs, params):
        x = _check_input(self, inputs, params, self.params, self.needs_rows)
        return {**params, "dtype": x.dtype.str, "columns": list(x.shape[1:])}


class Sum(_Reduction):
    name = "sum"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)
    needs_rows = False

    def validate(self, inputs, params):
        p = super().validate(inputs, params)
        # The dtype np.sum returns: floats keep theirs, integers widen to int64.
        p["out_dtype"] = np.dtype(p["dtype"]).str if np.dtype(p["dtype"]).kind == "f" else "<i8"
        return p

    def reference(self, inputs, params):
        x = inputs["x"]
        if x.dtype.kind == "f":
            # Pairwise summation in the input's type per partition (fast), combined in float64.
            return {"sum": np.asarray(np.sum(x, axis=0), dtype=np.float64)}
        return {"sum": np.asarray(np.sum(x, axis=0, dtype=np.int64))}

    def merge(self, left, right):
        return {"sum": left["sum"] + right["sum"]}

    def estimators(self, params):
        return {"sum": Total("sum", params["columns"], params["out_dtype"])}

    def finalize(self, partial, params):
        total = partial["sum"] if partial else np.zeros(params["columns"])
        return {"sum": np.asarray(total).astype(params["out_dtype"])}


class _Extreme(_Reduction):
    def reference(self, inputs, params):
        return {self.name: np.asarray(self.reduce(inputs["x"], axis=0))}

    def merge(self, left, right):
        # NaN propagates exactly as np.min / np.max do.
        return {self.name: self.elementwise(left[self.name], right[self.name])}

    def finalize(self, partial, params):
        return {self.name: partial[self.name]}

    def estimators(self, params):
        return {self.name: Running(self.name, params["columns"], self.elementwise)}


class Min(_Extreme):
    name = "min"
    reduce = staticmethod(np.min)
    elementwise = staticmethod(np.minimum)


class Max(_Extreme):
    name = "max"
    reduce = staticmethod(np.max)
    elementwise = staticmethod(np.maximum)


class Count(_Reduction):
    """Number of non-NaN values per column (integers have no NaN: the row count)."""

    name = "count"
    needs_rows = False

    def reference(self, inputs, params):
        x = inputs["x"]
        if x.dtype.kind == "f":
            return {"count": np.asarray(np.count_nonzero(~np.isnan(x), axis=0), dtype=np.int64)}
        return {"count": np.full(x.shape[1:], x.shape[0], dtype=np.int64)}

    def merge(self, left, right):
        return {"count": left["count"] + right["count"]}

    def finalize(self, partial, params):
        return {"count": partial["count"] if partial else np.zeros(params["columns"], dtype=np.int64)}

    def estimators(self, params):
        return {"count": Total("count", params["columns"], "<i8")}


def _result_float(params: Params) -> np.dtype:
    """np.mean / np.var keep float32 and float64; integers give float64."""
    dtype = np.dtype(params["dtype"])
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


class Mean(_Reduction):
    name = "mean"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)

    def reference(self, inputs, params):
        x = inputs["x"]
        return {"n": np.int64(x.shape[0]), "sum": np.asarray(np.sum(x, axis=0, dtype=np.float64))}

    def merge(self, left, right):
        return {"n": left["n"] + right["n"], "sum": left["sum"] + right["sum"]}

    def finalize(self, partial, params):
        return {"mean": (partial["sum"] / partial["n"]).astype(_result_float(params))}

    def estimators(self, params):
        return {"mean": Total("sum", params["columns"], _result_float(params), mean=True)}


class Var(_Reduction):
    """Variance with Chan et al.'s pairwise update: stable where sum-of-squares cancels."""

    name = "var"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)
    params = ("ddof",)

    def validate(self, inputs, params):
        p = super().validate(inputs, params)
        ddof = p.setdefault("ddof", 0)
        if not isinstance(ddof, int) or not 0 <= ddof < inputs["x"].shape[0]:
            raise InvalidInput(f"parameter 'ddof' must be an integer in [0, rows) = [0, {inputs['x'].shape[0]}); "
                               f"got {ddof!r}")
        return p

    def reference(self, inputs, params):
        x = inputs["x"]
        mean = np.mean(x, axis=0, dtype=np.float64)
        m2 = np.sum(np.square(x - mean), axis=0)
        return {"n": np.int64(x.shape[0]), "mean": np.asarray(mean), "m2": np.asarray(m2)}

    def merge(self, left, right):
        return chan_merge(left, right)

    def finalize(self, partial, params):
        return {"var": (partial["m2"] / (partial["n"] - params["ddof"])).astype(_result_float(params))}

    def estimators(self, params):
        return {"var": Spread(params["columns"], _result_float(params), params["ddof"])}


STATS = ("sum", "min", "max", "mean", "var", "count")  # describe's results, in this order
# The partial's keys each result needs (mean also keeps the sum: its early estimate is one).
_KEYS = {"sum": ("sum",), "min": ("min",), "max": ("max",), "count": ("count",),
         "mean": ("n", "mean", "m2", "sum"), "var": ("n", "mean", "m2")}


def _stats(params: Params) -> list[str]:
    """describe's validated `stats`, as a list."""
    return params["stats"].split(",") if "stats" in params else list(STATS)


class Describe(Var):
    """sum, min, max, mean, var (ddof) and count in one pass over the data: one job where the six ops
    would be six; `stats` asks for some of them only (the centred pass of mean and var is then
    skipped unless asked for). A 1-D float block is computed in L2-sized chunks, every reduction
    while its chunk is in cache (backends/ops/fused.py). Results equal the single ops' within their
    tolerances; the sum is bitwise Sum's (the same fold of the same blocks); min, max and count are
    exact. Mean and var are not bitwise Mean's and Var's: the centring runs in the input's type here."""

    name = "describe"
    params = ("ddof", "stats")

    def validate(self, inputs, params):
        p = super().validate(inputs, params)
        # Params travel as numbers, strings or lists of numbers: the names go as one string.
        stats = p.get("stats", ",".join(STATS))
        names = [s.strip() for s in stats.split(",")] if isinstance(stats, str) else None
        if not names or not all(s in STATS for s in names):
            raise InvalidInput(f"describe: parameter 'stats' must name some of {', '.join(STATS)}, "
                               f"separated by commas; got {stats!r}")
        dtype = np.dtype(p["dtype"])
        return {**p, "stats": ",".join(s for s in STATS if s in names),
                "out_dtype": dtype.str if dtype.kind == "f" else "<i8"}  # as Sum's

    def reference(self, inputs, params):
        x = inputs["x"]
        n = x.shape[0]
        stats = _stats(params)
        extremes, centred = "min" in stats or "max" in stats, "mean" in stats or "var" in stats
        count = np.full(x.shape[1:], n, dtype=np.int64)
        if x.dtype.kind == "f":
            # Pairwise in x's type, as Sum (np.sum of the block, bitwise, either way).
            m = (fused.moments if fused.fits(x) else fused.plain_moments)(x, extremes, centred)
            total = np.asarray(m["sum"], dtype=np.float64)
            # NaN anywhere makes the sum NaN, so a finite sum proves every value is counted.
            if "count" in stats and not np.all(np.isfinite(total)):
                count = np.asarray(np.count_nonzero(~np.isnan(x), axis=0), dtype=np.int64)
            if centred:
                # Centred on the block's approximate mean (`shift`), then corrected by the residual
                # sum: m2 = sum(d^2) - sum(d)^2 / n is the spread about the true mean.
                residual = np.asarray(m["residual"], dtype=np.float64)
                m2 = np.asarray(m["squares"], dtype=np.float64) - residual * residual / n
                mean = np.asarray(m["shift"], dtype=np.float64) + residual / n
        else:
            m = {"min": np.min(x, axis=0), "max": np.max(x, axis=0)} if extremes else {}
            total = np.asarray(np.sum(x, axis=0, dtype=np.int64))
            if centred:
                mean = np.asarray(total / n, dtype=np.float64)
                m2 = np.asarray(np.sum(np.square(x - mean), axis=0))
        values = {"sum": total, "count": count}
        if extremes:
            values.update(min=np.asarray(m["min"]), max=np.asarray(m["max"]))
        if centred:
            values.update(n=np.int64(n), mean=np.asarray(mean), m2=np.asarray(np.maximum(m2, 0)))
        return {k: values[k] for s in stats for k in _KEYS[s]}

    def merge(self, left, right):
        out = {k: left[k] + right[k] for k in ("sum", "count") if k in left}
        if "min" in left:
            out["min"] = np.minimum(left["min"], right["min"])
        if "max" in left:
            out["max"] = np.maximum(left["max"], right["max"])
        if "n" in left:
            out.update(super().merge(left, right))
        return out

    def finalize(self, partial, params):
        stats = _stats(params)
        out = {"sum": lambda: partial["sum"].astype(params["out_dtype"]), "min": lambda: partial["min"],
               "max": lambda: partial["max"], "count": lambda: partial["count"],
               "mean": lambda: partial["mean"].astype(_result_float(params)),
               "var": lambda: super(Describe, self).finalize(partial, params)["var"]}
        return {s: out[s]() for s in stats}

    def estimators(self, params):
        columns, out = params["columns"], _result_float(params)
        every = {"sum": lambda: Total("sum", columns, params["out_dtype"]),
                 "mean": lambda: Total("sum", columns, out, mean=True),
                 "min": lambda: Running("min", columns, np.minimum),
                 "max": lambda: Running("max", columns, np.maximum),
                 "count": lambda: Total("count", columns, "<i8"),
                 "var": lambda: super(Describe, self).estimators(params)["var"]}
        return {s: every[s]() for s in _stats(params)}


class Histogram(Op):
    """Counts per bin: `bins` with `range` (uniform bins, as np.histogram), or explicit `edges`.

    A 2-D input gives one histogram per column: counts of shape (columns, bins).
    """

    name = "histogram"

    def validate(self, inputs, params):
        x = _check_input(self, inputs, params, ("bins", "range", "edges"), needs_rows=False, max_ndim=2)
        p = {"dtype": x.dtype.str, "columns": list(x.shape[1:])}
        if "edges" in params:
            if "bins" in params or "range" in params:
                raise InvalidInput("histogram takes either 'edges' or 'bins' with 'range', not both")
            edges = np.asarray(params["edges"], dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
                raise InvalidInput("parameter 'edges' must be at least 2 finite, strictly increasing values")
            p["edges"] = edges.tolist()
            return p
        bins, rng = params.get("bins"), params.get("range")
        if bins is None:
            raise InvalidInput("histogram needs 'bins' (a positive integer, with 'range': [low, high]) "
                               "or 'edges' (increasing bin edges)")
        if not isinstance(bins, int) or not 1 <= bins <= 1 << 24:
            raise InvalidInput(f"parameter 'bins' must be an integer in [1, {1 << 24}]; got {bins!r}")
        if rng is None:
            raise InvalidInput("histogram with 'bins' needs 'range': [low, high] (every partition must "
                               "use the same bin edges)")
        if (len(rng) != 2 or not all(math.isfinite(v) for v in rng) or not rng[0] < rng[1]):
            raise InvalidInput(f"parameter 'range' must be [low, high], finite, with low < high; got {list(rng)}")
        p.update(bins=bins, range=[float(rng[0]), float(rng[1])])
        return p

    def _bins(self, params):
        if "edges" in params:
            return np.asarray(params["edges"]), None
        return params["bins"], tuple(params["range"])

    def reference(self, inputs, params):
        bins, rng = self._bins(params)
        x = inputs["x"]
        columns = [x] if x.ndim == 1 else x.T
        counts = [np.histogram(c, bins=bins, range=rng)[0] for c in columns]
        return {"counts": np.asarray(counts[0] if x.ndim == 1 else np.stack(counts), dtype=np.int64)}

    def merge(self, left, right):
        return {"counts": left["counts"] + right["counts"]}

    def edges(self, params) -> np.ndarray:
        # The edges np.histogram itself returns for this dtype, bins and range.
        bins, rng = self._bins(params)
        return np.histogram(np.empty(0, dtype=params["dtype"]), bins=bins, range=rng)[1]

    def estimators(self, params):
        bins = params["bins"] if "bins" in params else len(params["edges"]) - 1
        return {"counts": Scaled("counts", [*params["columns"], bins])}

    def finalize(self, partial, params):
        edges = self.edges(params)
        if partial:
            counts = partial["counts"]
        else:
            counts = np.zeros(params["columns"] + [len(edges) - 1], dtype=np.int64)
        return {"counts": counts, "edges": edges}


OPS = (Sum(), Min(), Max(), Count(), Mean(), Var(), Describe(), Histogram())
