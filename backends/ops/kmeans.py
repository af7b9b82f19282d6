"""k-means (Lloyd's algorithm) as an iterative op: every round is one pass over the partitions.

With no `centroids` input, round 0 draws a sample of rows (the same rows for the same seed,
whatever the partitioning) and k-means++ on that sample picks the initial centroids; each later
round sends the current centroids to every partition (a few KB: the data stays where it is) and
adds up per-cluster sums and counts. It stops when no centroid moves more than `tol`, or after
`max_iter` rounds. `inertia` is the sum of squared distances to the centroids of the last round.

Distances run in the input's own type (float32 BLAS for float32 points, as the peers do), sums,
counts and inertia accumulate in float64; `precision="float64"` computes the distances in float64
too (the slower path, for points whose nearest centroids nearly tie at float32 resolution).
"""
from __future__ import annotations

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.ops.base import Op
from lepton.backends.ops.common import check_params, matrix, positive_int

SAMPLE_PER_CLUSTER = 64
PRECISIONS = ("auto", "float64")
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def row_uniforms(seed: int, start: int, count: int) -> np.ndarray:
    """One uniform in [0, 1) per row start .. start + count - 1, a function of (seed, row) alone
    (SplitMix64 of the row's global index): the sample is the same however rows are cut into
    partitions and blocks, on any device."""
    with np.errstate(over="ignore"):
        z = (np.arange(start, start + count, dtype=np.uint64) + np.uint64(seed & (2**64 - 1)) * _MIX1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def kmeans_plus_plus(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii) on a sample, in NumPy."""
    rng = np.random.default_rng(seed)
    centroids = [points[rng.integers(len(points))]]
    distance = np.sum((points - centroids[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = distance.sum()
        pick = rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))
        centroids.append(points[pick])
        distance = np.minimum(distance, np.sum((points - points[pick]) ** 2, axis=1))
    return np.array(centroids)


def assign(x: np.ndarray, centroids: np.ndarray, precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and the squared distance to it.

    The nearest centroid minimises |c|^2 - 2 x.c (|x|^2 is the same for every centroid), one GEMM in
    x's type (float64 with precision="float64"); the distance to it is then computed directly,
    (x - c)^2 summed, so it does not cancel.
    """
    work = np.float64 if precision == "float64" else x.dtype
    x = x.astype(work, copy=False)
    c = centroids.astype(work)
    d = x @ c.T
    d *= -2
    d += np.sum(c * c, axis=1)[None, :]
    labels = np.argmin(d, axis=1)
    diff = x - c[labels]
    return labels, np.einsum("ij,ij->i", diff, diff)


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows, accumulated in float64 (bincount: one pass per column)."""
    return np.stack([np.bincount(labels, weights=column, minlength=k) for column in x.T], axis=1) \
        if x.shape[1] else np.zeros((k, 0))


class Kmeans(Op):
    name = "kmeans"
    block_bytes = 4 << 20  # float sums: fold fixed blocks (backends/blocks.py)
    iterative = True
    needs_row_offset = True

    def check_inputs(self, names):
        if set(names) not in ({"x"}, {"x", "centroids"}):
            raise InvalidInput(f"kmeans takes x, and optionally initial centroids; got {sorted(names)}")

    def take(self, source, start, stop):
        return {"x": source["x"][start:stop]}

    def validate(self, inputs, params):
        check_params(self, params, ("k", "max_iter", "tol", "seed", "precision"))
        x = matrix(self, inputs, "x")
        n, d = x.shape
        given = matrix(self, inputs, "centroids") if "centroids" in inputs else None
        k = positive_int(self, params, "k", None if given is None else given.shape[0])
        if given is not None and given.shape != (k, d):
            raise InvalidInput(f"kmeans: initial centroids must be k x d = {k}x{d}; got {list(given.shape)}")
        if k > n:
            raise InvalidInput(f"kmeans: k={k} is larger than the number of points ({n})")
        tol = params.get("tol", 1e-4)
        if not isinstance(tol, (int, float)) or tol < 0:
            raise InvalidInput(f"kmeans: parameter 'tol' must be a number >= 0; got {tol!r}")
        precision = params.get("precision", "auto")
        if precision not in PRECISIONS:
            raise InvalidInput(f"kmeans: parameter 'precision' must be one of {list(PRECISIONS)}; got {precision!r}")
        return {"k": k, "max_iter": positive_int(self, params, "max_iter", 50, upper=10_000), "tol": float(tol),
                "seed": int(params.get("seed", 0)), "rows": n, "precision": precision,
                "phase": "step" if "centroids" in inputs else "sample", "iterations": 0}

    def prepare(self, arrays, params):
        if "centroids" not in arrays:
            return {}
        centroids = np.asarray(arrays["centroids"], dtype=np.float64)
        if not np.all(np.isfinite(centroids)):
            raise InvalidInput("kmeans: the initial centroids contain NaN or infinity")
        return {"centroids": centroids}

    def reference(self, inputs, params):
        x = inputs["x"]
        if not np.all(np.isfinite(x)):
            bad = params["row_offset"] + int(np.argmax(~np.all(np.isfinite(x), axis=1)))
            raise InvalidInput(f"kmeans: x has NaN or infinity (row {bad}); clean or drop those rows")
        if params["phase"] == "sample":
            # Each row is kept with the same probability, decided by its global index and the seed
            # alone: the sample does not depend on the partitioning, the blocks or the device.
            want = min(params["rows"], SAMPLE_PER_CLUSTER * params["k"])
            keep = row_uniforms(params["seed"], params["row_offset"], len(x)) < want / params["rows"]
            return {"sample": x[keep].astype(np.float64)}
        centroids = inputs["centroids"]
        labels, distance = assign(x, centroids, params.get("precision", "auto"))
        k = len(centroids)
        return {"sums": cluster_sums(x, labels, k), "counts": np.bincount(labels, minlength=k),
                "inertia": np.sum(distance, dtype=np.float64)}

    def merge(self, left, right):
        if "sample" in left:
            return {"sample": np.concatenate([left["sample"], right["sample"]])}
        return {k: left[k] + right[k] for k in left}

    def next_round(self, params, whole, partial, round):
        if params["phase"] == "sample":
            sample = partial.get("sample", np.empty((0, 0)))
            if len(sample) < params["k"]:
                raise InvalidInput(f"kmeans: the sample of {len(sample)} rows is smaller than k={params['k']}; "
                                   f"give initial centroids")
            return {**params, "phase": "step"}, {"centroids": kmeans_plus_plus(sample, params["k"], params["seed"])}
        old = whole["centroids"]
        counts = partial["counts"]
        new = np.where(counts[:, None] > 0, partial["sums"] / np.maximum(counts, 1)[:, None], old)
        iterations = params["iterations"] + 1
        shift = np.max(np.sqrt(np.sum((new - old) ** 2, axis=1)))
        if shift <= params["tol"] or iterations >= params["max_iter"]:
            return None, {"centroids": new, "inertia": np.float64(partial["inertia"]),
                          "iterations": np.int64(iterations), "counts": counts.astype(np.int64)}
        return {**params, "iterations": iterations}, {"centroids": new}


OPS = (Kmeans(),)
