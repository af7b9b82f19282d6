"""The workloads W1-W7 of issue 20: seeded data, the NumPy result every system is checked against,
and the check with its tolerance.

Every system gets the same float32 data (fixed seeds). Results are held to NumPy's own result in
one process, with the tolerances the README states and why:
- sums reassociated over partitions: |got - want| <= 1e-5 x sum(|x|) (float32 has 24 bits; an
  n-term sum in another order may lose log2(n) of them); min and max exact;
- products (matmul, SpMM, Gram): 1e-4 x the product of magnitudes (|a| @ |b|), as the test suite;
- k-means: float32 distances may flip a near-tie, so at most 0.1% of the points may change cluster
  and centroids stay within 1e-3 of the data's spread, inertia within 1e-4 relative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse

SIZES = {  # full: the sizes; quick: a smoke run of a few seconds per system
    "full": {"W1": 1 << 28, "W2": 4096, "W3": (1 << 20, 16 << 20, 64), "W4": (4 << 20, 16, 64, 10),
             "W5": (8 << 20, 32), "W6": 1024, "W7": 1 << 28},
    "quick": {"W1": 1 << 22, "W2": 512, "W3": (1 << 15, 1 << 19, 64), "W4": (1 << 16, 16, 16, 10),
              "W5": (1 << 17, 32), "W6": 1024, "W7": 1 << 23},
}

TITLES = {
    "W1": "sum, min, max of {:,} f32",
    "W2": "matmul {0}x{0} @ {0}x{0} f32",
    "W3": "SpMM: {0:,} nodes, {1:,} power-law edges x {2}",
    "W4": "k-means {0:,}x{1}, k={2}, {3} iterations",
    "W5": "Gram X^T X of {0:,}x{1}",
    "W6": "sum of {:,} f32: p50 latency, jobs/s with 16 callers",
    "W7": "ingest {:,} f32 (put)",
}


def title(name: str, size) -> str:
    return f"{name} " + TITLES[name].format(*(size if isinstance(size, tuple) else (size,)))


# -- data -------------------------------------------------------------------------------------------

def power_law_graph(nodes: int, edges: int, seed: int = 3) -> scipy.sparse.csr_array:
    """A directed graph whose out-degrees follow a power law (a few hubs hold most edges), CSR."""
    rng = np.random.default_rng(seed)
    weight = rng.permutation(np.arange(1, nodes + 1, dtype=np.float64) ** -0.9)
    src = np.searchsorted(np.cumsum(weight / weight.sum()), rng.random(edges))
    src = np.minimum(src, nodes - 1)
    dst = rng.integers(0, nodes, edges)
    a = scipy.sparse.csr_array((rng.random(edges, dtype=np.float32), (src, dst)), shape=(nodes, nodes))
    a.sum_duplicates()
    a.sort_indices()
    a.indices = a.indices.astype(np.int32)
    a.indptr = a.indptr.astype(np.int64)
    return a


def make(name: str, size) -> dict:
    rng = np.random.default_rng(20)
    if name in ("W1", "W6", "W7"):
        return {"x": rng.standard_normal(size, dtype=np.float32)}
    if name == "W2":
        return {"a": rng.standard_normal((size, size), dtype=np.float32),
                "b": rng.standard_normal((size, size), dtype=np.float32)}
    if name == "W3":
        nodes, edges, features = size
        return {"a": power_law_graph(nodes, edges), "x": rng.standard_normal((nodes, features), dtype=np.float32)}
    if name == "W4":
        n, d, k, _ = size
        centres = rng.uniform(-10, 10, size=(k, d)).astype(np.float32)
        x = centres[rng.integers(0, k, n)] + rng.standard_normal((n, d), dtype=np.float32)
        return {"x": x, "start": x[:k].astype(np.float64), "iterations": size[3]}
    if name == "W5":
        return {"x": rng.standard_normal(size, dtype=np.float32)}
    raise KeyError(name)


# -- NumPy in one process: the reference and the NumPy column ---------------------------------------

def kmeans_step(x: np.ndarray, centroids: np.ndarray, rows: int = 1 << 16):
    """One Lloyd round in float32 BLAS, sums and counts in float64, in blocks of rows (bounded
    memory): (sums, counts, inertia). Every peer adapter computes a round this way."""
    k, d = centroids.shape
    c = centroids.astype(x.dtype)
    cc = np.sum(c * c, axis=1)
    sums, counts, inertia = np.zeros((k, d)), np.zeros(k, dtype=np.int64), 0.0
    for lo in range(0, len(x), rows):
        block = x[lo:lo + rows]
        labels = np.argmin(cc - 2 * (block @ c.T), axis=1)
        diff = block - c[labels]
        inertia += float(np.einsum("ij,ij->i", diff, diff).sum(dtype=np.float64))
        counts += np.bincount(labels, minlength=k)
        sums += np.stack([np.bincount(labels, weights=col, minlength=k) for col in block.T], axis=1)
    return sums, counts, inertia


def lloyd(step: Callable, start: np.ndarray, iterations: int):
    """`iterations` Lloyd rounds from `start`; `step(centroids)` -> (sums, counts, inertia)."""
    centroids = start
    for _ in range(iterations):
        sums, counts, inertia = step(centroids)
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
    return {"centroids": centroids, "counts": counts, "inertia": inertia}


def numpy_run(name: str, data: dict):
    if name == "W1":
        x = data["x"]
        return {"sum": np.sum(x), "min": np.min(x), "max": np.max(x)}  # pairwise in float32, as users write it
    if name == "W2":
        return data["a"] @ data["b"]
    if name == "W3":
        return data["a"] @ data["x"]
    if name == "W4":
        return lloyd(lambda c: kmeans_step(data["x"], c), data["start"], data["iterations"])
    if name == "W5":
        return data["x"].T @ data["x"]
    if name == "W6":
        return np.sum(data["x"])
    raise KeyError(name)


# -- checks -----------------------------------------------------------------------------------------

@dataclass
class Checker:
    """Holds the NumPy result and the scales the tolerances are relative to (computed once)."""

    name: str
    data: dict
    want: object = None

    def __post_init__(self):
        self.want = numpy_run(self.name, self.data)
        d = self.data
        if self.name == "W1":
            self.scale = float(np.sum(np.abs(d["x"]), dtype=np.float64))
        elif self.name == "W2":
            self.scale = np.abs(d["a"]) @ np.abs(d["b"])
        elif self.name == "W3":
            self.scale = abs(d["a"]) @ np.abs(d["x"])
        elif self.name == "W5":
            self.scale = np.abs(d["x"]).T @ np.abs(d["x"])
        elif self.name == "W6":
            self.scale = float(np.sum(np.abs(d["x"]), dtype=np.float64))

    def __call__(self, got) -> str | None:
        """None if `got` matches NumPy within the stated tolerance, else what differs."""
        want = self.want
        if self.name in ("W1", "W6"):
            if self.name == "W6":
                got, want = {"sum": got}, {"sum": want}
            if abs(float(got["sum"]) - float(want["sum"])) > 1e-5 * self.scale:
                return f"sum {got['sum']} vs {want['sum']}"
            for k in ("min", "max"):
                if k in want and float(got[k]) != float(want[k]):
                    return f"{k} {got[k]} vs {want[k]}"
            return None
        if self.name in ("W2", "W3", "W5"):
            got = np.asarray(got)
            if got.shape != want.shape:
                return f"shape {got.shape} vs {want.shape}"
            error = np.abs(got.astype(np.float64) - want)
            bad = error > 1e-4 * self.scale + 1e-30
            return f"{int(bad.sum())} entries off, worst {float(error.max()):.3g}" if np.any(bad) else None
        if self.name == "W4":
            moved = int(np.abs(np.asarray(got["counts"]) - want["counts"]).sum()) // 2
            if moved > 1e-3 * len(self.data["x"]):
                return f"{moved} points changed cluster"
            spread = float(np.std(self.data["x"]))
            shift = float(np.max(np.abs(np.asarray(got["centroids"]) - want["centroids"])))
            if shift > 1e-3 * spread:
                return f"centroids off by {shift:.3g} (spread {spread:.3g})"
            if abs(float(got["inertia"]) - want["inertia"]) > 1e-4 * want["inertia"]:
                return f"inertia {float(got['inertia'])} vs {want['inertia']}"
            return None
        return None
