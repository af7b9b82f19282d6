"""NumPy references and the one checker of the tests (reductions, the op catalog, other clients).

Reductions (`mismatch`, `assert_matches`): min, max, count, histogram and integer sums are exact.
Float sums, means and variances are held to the error bound of the fold that computes them, not to
a guessed constant. The reference adds pairwise in float64 along each column (depth 19 + log2 n,
so it errs by at most that many float64 roundings of sum(|x|), counted in). A sum whose
additions nest at most d deep errs by at most d * u * sum(|x|), u the unit roundoff of the type it
adds in. Lepton computes each ~4 MiB block of a partition with NumPy: along axis 0 of a 1-D array
pairwise (depth 19 + log2 m for m rows, plus m / 8192 where NumPy buffers a cast to float64), of an
N-D array row after row (depth m); sums add in the input's type, means and variances in float64.
It folds the blocks in a binary tree and the partitions in left folds of at most 7 per level of the
arity-8 tree, in float64. Rounding both results to their dtype costs at most one ulp between them. Variances: Chan's combine turns errors in the partials' means into errors of
var * (1 + |mean| / std), the condition number. A sum with one partition missing, or a plain float32
running sum of a 1-D array, exceed these bounds (tests/test_references.py).
"""
from __future__ import annotations

import math

import numpy as np

U64 = 2.0 ** -53  # unit roundoff of float64
UNIT = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): U64}
BLOCK_BYTES = 4 << 20  # the reductions' op.block_bytes


def fold_depth(x: np.ndarray) -> tuple[int, int]:
    """(nesting depth of the additions within a block; of those in float64 across blocks and
    partitions, plus the reference's) of Lepton's fold of x along axis 0, whatever the partitioning."""
    n = len(x)
    row_bytes = max(1, x.dtype.itemsize * math.prod(x.shape[1:]))
    m = max(1, min(n, BLOCK_BYTES // row_bytes))
    within = 19 + math.ceil(math.log2(m + 1)) + m // 8192 if x.ndim == 1 else m
    levels = math.ceil(math.log2(n + 1))
    reference = 19 + levels
    return within, levels + 7 * math.ceil(levels / 3) + reference


def reference(op: str, x: np.ndarray, **params) -> dict[str, np.ndarray]:
    """What NumPy says, in the result names and dtypes Lepton uses; float sums, means and variances
    added pairwise in float64, then rounded to NumPy's result dtype."""
    if op == "describe":
        return {k: v for part in ("sum", "min", "max", "mean", "count") for k, v in reference(part, x).items()} | \
            reference("var", x, ddof=params.get("ddof", 0))
    if op == "histogram":
        columns = [x] if x.ndim == 1 else x.T
        bins = params.get("edges", params.get("bins"))
        results = [np.histogram(c, bins=bins, range=params.get("range")) for c in columns]
        counts = results[0][0] if x.ndim == 1 else np.stack([r[0] for r in results])
        return {"counts": counts, "edges": results[0][1]}
    if op == "count":
        valid = ~np.isnan(x) if x.dtype.kind == "f" else np.ones_like(x, dtype=bool)
        return {"count": np.count_nonzero(valid, axis=0)}
    if op in ("mean", "var") or (op == "sum" and x.dtype.kind == "f"):
        out, n = (x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)), len(x)
        columns = np.ascontiguousarray(x.astype(np.float64).reshape(n, math.prod(x.shape[1:])).T)  # pairwise
        sums = np.sum(columns, axis=1)
        if op == "sum":
            return {"sum": sums.reshape(x.shape[1:]).astype(out)}
        if op == "mean":
            return {"mean": (sums / n).reshape(x.shape[1:]).astype(out)}
        m2 = np.sum((columns - (sums / n)[:, None]) ** 2, axis=1)
        return {"var": (m2 / (n - params.get("ddof", 0))).reshape(x.shape[1:]).astype(out)}
    return {op: getattr(np, op)(x, axis=0)}


def tolerance(op: str, x: np.ndarray, want: np.ndarray, got: np.ndarray, **params) -> np.ndarray:
    """Per column, the largest |got - want| the fold's error analysis allows (0: exact)."""
    if op.startswith("describe."):  # describe's results, each held to its op's bound; on 1-D float
        op = op.removeprefix("describe.")  # input its mean and var partials add in the input's type
        in_input_type = x.ndim == 1 or op == "sum"
    else:
        in_input_type = op == "sum"
    if op not in ("sum", "mean", "var") or (op == "sum" and x.dtype.kind != "f"):
        return np.zeros(np.shape(want))
    wide = x.astype(np.float64)
    within, across = fold_depth(x)
    u_within = UNIT.get(x.dtype, U64) if in_input_type else U64  # mean and var partials: float64 sums
    ulp = np.maximum(np.spacing(np.abs(want)), np.spacing(np.abs(got).astype(want.dtype))).astype(np.float64)
    if op in ("sum", "mean"):
        bound = (within * u_within + across * U64) * np.sum(np.abs(wide), axis=0)
        return ulp + (bound if op == "sum" else bound / len(x))
    var = np.var(wide, axis=0, ddof=params.get("ddof", 0))
    condition = 1 + np.abs(np.mean(wide, axis=0)) / np.sqrt(np.maximum(var, np.finfo(np.float64).tiny))
    return ulp + 4 * (within * u_within + across * U64) * condition * var


def mismatch(op: str, x: np.ndarray, got: dict[str, np.ndarray], **params) -> str | None:
    """None if `got` matches the reference within the bound above, else what differs."""
    for name, expected in reference(op, x, **params).items():
        value, expected = np.asarray(got[name]), np.asarray(expected)
        if value.shape != expected.shape:
            return f"{name}: shape {value.shape}, expected {expected.shape}"
        if value.dtype != expected.dtype:
            return f"{name}: dtype {value.dtype}, expected {expected.dtype}"
        if name == "edges" or expected.dtype.kind != "f":
            if not np.array_equal(value, expected):
                return f"{name}: {value}, expected exactly {expected}"
            continue
        limit = tolerance(f"describe.{name}" if op == "describe" else op, x, expected, value, **params)
        error = np.abs(value.astype(np.float64) - expected.astype(np.float64))
        bad = ~((error <= limit) | (np.isnan(value) & np.isnan(expected)) | (value == expected))
        if np.any(bad):
            return (f"{name}: error {np.max(error[bad]):.3g} exceeds the fold's bound {np.min(limit[bad]):.3g} "
                    f"(got {value}, expected {expected})")
    return None


def assert_matches(op: str, x: np.ndarray, got: dict[str, np.ndarray], **params) -> None:
    problem = mismatch(op, x, got, **params)
    assert problem is None, f"{op} of {x.dtype}{list(x.shape)}: {problem}"


def close(got, want, scale=None, rtol=1e-10):
    """|got - want| <= rtol * scale elementwise (scale: |want| unless given, e.g. |a| @ |b|)."""
    scale = np.abs(want) if scale is None else scale
    assert np.shape(got) == np.shape(want), (np.shape(got), np.shape(want))
    assert np.all(np.abs(got - want) <= rtol * (scale + 1e-300) + 1e-300), np.max(np.abs(got - want))


def csr(dense, index=np.int32):
    """(indptr, indices, data, shape) of a dense matrix, as the sparse ops take it."""
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))]).astype(np.int64)
    return indptr, cols.astype(index), dense[rows, cols], dense.shape


def gcn_reference(adjacency, x, w, activation="relu"):
    """One GCN layer as the service defines it: act(D^-1/2 (A + I) D^-1/2 @ x @ w), A symmetric dense."""
    a_hat = adjacency + np.eye(len(adjacency))
    d = 1 / np.sqrt(a_hat.sum(axis=1))
    z = (d[:, None] * a_hat * d[None, :]) @ x @ w
    return {"relu": lambda v: np.maximum(v, 0), "none": lambda v: v}[activation](z)


def inertia(x, centroids):
    """Sum of squared distances from each point to its nearest centroid."""
    return ((x[:, None, :] - centroids[None]) ** 2).sum(-1).min(axis=1).sum()


def lloyd(x, centroids, max_iter, tol):
    """Plain Lloyd iterations: (centroids, iterations), stopping when no centroid moves more than tol."""
    for i in range(1, max_iter + 1):
        labels = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[labels == j].mean(axis=0) if np.any(labels == j) else centroids[j]
                        for j in range(len(centroids))])
        shift = np.max(np.linalg.norm(new - centroids, axis=1))
        centroids = new
        if shift <= tol:
            break
    return centroids, i


# -- whole-op checks, run by the catalog tests of every device kind on data sized for that device --------

def check_pca(client, x, **kw):
    """PCA of x + 100 (an offset mean: centring must not cancel) against the eigenvectors of NumPy's
    covariance; components are equal up to sign."""
    pca = client.pca(x + 100, k=4, **kw)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    close(pca["explained_variance"], values[::-1][:4], rtol=1e-9)
    close(pca["explained_variance_ratio"], values[::-1][:4] / values.sum(), rtol=1e-9)
    for got, want in zip(pca["components"], vectors[:, ::-1].T):
        assert min(np.abs(got - want).max(), np.abs(got + want).max()) < 1e-8
    close(pca["mean"], x.mean(axis=0) + 100)


def check_topk(client, x, **kw):
    """topk of an int64 matrix with many ties (k=7, largest) and of its first column as float32 (k=4,
    smallest): exact values, indices into the whole input, ties broken by the lower row."""
    values, indices = client.topk(x, k=7, **kw)
    assert np.array_equal(values, -np.sort(-x, axis=0, kind="stable")[:7])
    assert np.array_equal(np.take_along_axis(x, indices, axis=0), values)
    order = np.lexsort((np.arange(len(x))[:, None].repeat(x.shape[1], 1), -x), axis=0)[:7]
    assert np.array_equal(indices, order)
    values, indices = client.topk(x[:, 0].astype(np.float32), k=4, largest=False, **kw)
    assert np.array_equal(values, np.sort(x[:, 0])[:4].astype(np.float32))
    assert np.array_equal(indices, np.argsort(x[:, 0], kind="stable")[:4])  # ties: the lower row first


def check_kmeans(client, x, start, max_iter, **kw):
    """k-means from `start` equals plain Lloyd iterations (1e-9 of |centroid| + 1: the same arithmetic up
    to summation order), and its counts and inertia those of the last round (the assignment to the
    centroids that round started from); k-means++ seeding on a sample gets within 20% of that inertia."""
    got = client.kmeans(x, centroids=start, max_iter=max_iter, tol=1e-9, **kw)
    want, iterations = lloyd(x, start, max_iter, 1e-9)
    close(got["centroids"], want, np.abs(want) + 1, 1e-9)
    assert got["iterations"] == iterations
    last = lloyd(x, start, iterations - 1, 0.0)[0] if iterations > 1 else start
    labels = np.argmin(((x[:, None, :] - last[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(got["counts"], np.bincount(labels, minlength=len(start)))
    close(got["inertia"], inertia(x, last), rtol=1e-9)
    seeded = client.kmeans(x, k=len(start), seed=3, max_iter=max_iter, **kw)
    assert seeded["inertia"] <= 1.2 * got["inertia"]
