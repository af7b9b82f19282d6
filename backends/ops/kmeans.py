"""k-means (Lloyd's algorithm) as an iterative op: every round is one pass over the partitions.

With no `centroids` input, round 0 draws a sample of rows (the same rows for the same seed,
whatever the partitioning) and k-means++ on that sample picks the initial centroids; each later
round sends the current centroids to every partition (a few KB: the data stays where it is) and
adds up per-cluster sums and counts. It stops when no centroid moves more than `tol`, or after
`max_iter` rounds. `inertia` is the sum of squared distances to the centroids of the last round.
"""
from __future__ import annotations

import numpy as np

from lepton.errors import InvalidInput
from lepton.backends.ops.base import Op
from lepton.backends.ops.common import check_params, matrix, positive_int

SAMPLE_PER_CLUSTER = 64


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


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and the squared distance to it (float64)."""
    x = x.astype(np.float64, copy=False)
    d = np.sum(x * x, axis=1)[:, None] - 2 * x @ centroids.T + np.sum(centroids * centroids, axis=1)[None, :]
    labels = np.argmin(d, axis=1)
    return labels, np.maximum(d[np.arange(len(x)), labels], 0)


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
        check_params(self, params, ("k", "max_iter", "tol", "seed"))
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
        return {"k": k, "max_iter": positive_int(self, params, "max_iter", 50, upper=10_000), "tol": float(tol),
                "seed": int(params.get("seed", 0)), "rows": n,
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
            # Each row is kept with the same probability, decided by a generator seeded by its
            # partition's first row: the sample does not depend on where partitions run.
            want = min(params["rows"], SAMPLE_PER_CLUSTER * params["k"])
            keep = np.random.default_rng([params["seed"], params["row_offset"]]).random(len(x)) < want / params["rows"]
            return {"sample": x[keep].astype(np.float64)}
        centroids = inputs["centroids"]
        labels, distance = assign(x, centroids)
        k = len(centroids)
        onehot = np.zeros((len(x), k))
        onehot[np.arange(len(x)), labels] = 1
        return {"sums": onehot.T @ x.astype(np.float64), "counts": np.bincount(labels, minlength=k),
                "inertia": np.sum(distance)}

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
