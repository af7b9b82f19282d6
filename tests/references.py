"""NumPy references and the one checker of the tests (reductions, the op catalog, other clients).

Reductions (`mismatch`, `assert_matches`): min, max, count, histogram and integer sums are exact.
Float sums, means and variances are held to the error bound of the fold that computes them, not to
a guessed constant. The analysis, for a sum computed as a tree of additions (Higham, Accuracy and
Stability of Numerical Algorithms, ch. 4): to first order the error is sum_k delta_k S_k over the
additions k, S_k the subtotal addition k produces and |delta_k| <= u, the unit roundoff of the type it
adds in. Two bounds follow, and a result is held to the smaller:
- worst case: |error| <= sum over stages of u * depth * sum(|x|) (each value passes `depth`
  additions of the stage);
- probabilistic: the rounding errors of random data behave as independent, mean-zero variables
  (the model of Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019), so by Hoeffding's inequality
  |error| <= LAMBDA * sqrt(sum_k u^2 S_k^2) but with probability 2 exp(-LAMBDA^2 / 2) < 1e-10 per
  column; and sum_k S_k^2 <= max|S_k| * sum_k |S_k| <= W(span) * depth * sum(|x|) per stage, W(span)
  the largest sum(|x|) over `span` consecutive rows (what one subtotal of the stage can cover). Deep
  float32 stages gain the most: a block's row-after-row float32 sum is held to about sqrt(rows)
  roundings, not rows. (The model needs data whose roundings do not line up, such as one value
  summed a million times in float32; the tests' data are random.)

The folds (FOLDS, `stages`): Lepton computes each ~4 MiB block of a partition with NumPy (NumPy and
MPI devices): along axis 0 of a 1-D array pairwise (NumPy's pairwise_sum: 8 accumulators of 16
values, 3 levels joining them, up to 7 leftovers, then halving levels up to the block's rows), of an
N-D array row after row (depth: the block's rows; describe's one-pass kernel, backends/ops/fused.py,
adds a 1-D block's chunks up this same tree and gives these bits: tests/test_fused.py); sums add in
the input's type, means and variances
in float64 (plus one addition per 8192 values where NumPy buffers a cast to float64). OpenCL
devices (`opencl_stages`) add BLOCK=256 loads per lane in the inner accumulator (float32 for float32
data), then the blocks in the outer one (float64, or float32 without fp64), and the host adds the
lanes in float64. Blocks are folded in a binary tree and partitions in left folds of at most 7 per
level of the arity-8 tree, in float64 (worst case: the U64 terms are tiny). The reference adds
pairwise in float64 along each column (depth 19 + log2 n), counted in. Rounding both results to
their dtype costs at most one ulp between them. Variances: the partials centre on their mean in
float64 (NumPy) or on the mean rounded to the kernel's type (OpenCL, whose float32 sums of d and d^2
are then bounded as sums of d^2); Chan's combine turns errors in the partials' means into errors of
var * (1 + |mean| / std), the condition number. A sum with one partition missing, or a plain float32
running sum of a 1-D array, exceed these bounds (tests/test_references.py).
"""
from __future__ import annotations

import math

import numpy as np

U64 = 2.0 ** -53  # unit roundoff of float64
U32 = 2.0 ** -24
UNIT = {np.dtype(np.float32): U32, np.dtype(np.float64): U64}
BLOCK_BYTES = 4 << 20  # the reductions' op.block_bytes
LAMBDA = 7.0  # 2 exp(-49 / 2) = 5e-11: the chance that random data's roundings exceed the bound

Stage = tuple  # (unit roundoff, depth, span, values): additions nesting `depth` deep, each subtotal
# covering at most `span` consecutive rows and (optionally) at most `values` values


def block_rows(x: np.ndarray) -> int:
    """Rows per canonical block of x (backends/blocks.py), whatever the partitioning."""
    row_bytes = max(1, x.dtype.itemsize * math.prod(x.shape[1:]))
    return max(1, min(len(x), BLOCK_BYTES // row_bytes))


def pairwise_stages(u: float, m: int) -> list[Stage]:
    """NumPy's pairwise_sum of m values: halving levels down to blocks of <= 128 (a half has at most
    m / 2^t + 16 rows at level t), then 15 accumulator additions, 3 joins and up to 7 leftovers."""
    levels, span = [], m
    while span > 128:
        levels.append((u, 1, span))
        span = span // 2 + 16
    return levels + [(u, 25, min(m, 128))]


def numpy_stages(op: str, x: np.ndarray, rows: int | None = None) -> list[Stage]:
    """Within a canonical block, as NumPy adds (see above); sums add in the input's float type.
    `rows`: the most rows a partition has, where a test knows its partitioning (row blocks of P
    partitions: ceil(n / P)); a block is never longer than its partition."""
    m, in_input_type = min(block_rows(x), rows or len(x) or 1), op == "sum"
    u = UNIT.get(x.dtype, U64) if in_input_type else U64
    if x.ndim > 1:
        return [(u, m, m)]
    if u == U64 and x.dtype != np.float64:  # a cast to float64, buffered 8192 values at a time
        return pairwise_stages(U64, min(m, 8192)) + [(U64, -(-m // 8192), m)]
    return pairwise_stages(u, m)


def opencl_stages(op: str, x: np.ndarray, vec: int = 16, fp64: bool = True, gpu: bool = False,
                  per: int | None = None) -> list[Stage]:
    """An OpenCL device's reduce kernels (backends/opencl/reduce.cl): per lane, BLOCK=256 loads in the
    inner accumulator (float32 data: float32), the blocks in the outer one (float64; float32 without
    fp64), then the host's float64 folds of items and lanes. `per`: loads per work-item (its chunk; all
    of them when not given); on the GPU layout a lane's loads stride over the whole input."""
    n, cols = len(x), max(1, math.prod(x.shape[1:]))
    flat = vec % cols == 0
    rows_per_load = vec // cols if flat else 1
    per = per or -(-n // rows_per_load)
    inner = U32 if x.dtype == np.float32 else U64
    outer = U64 if (fp64 or x.dtype != np.float32) else U32
    inner_span = n if gpu else min(n, 256 * rows_per_load)
    host = (U64, -(-n // 256) + 8 + int(math.log2(vec)) + 64, n)  # items, lanes, WG tree, head and tail merges
    return [(inner, 256, inner_span, 256), (outer, -(-per // 256) + 1, n), host]


def within_bound(terms: np.ndarray, stages: list[Stage]) -> np.ndarray:
    """Per column, the bound above on the error of adding |terms| (rows along axis 0) in `stages`."""
    columns = terms.shape[1:]
    if len(terms) == 0:
        return np.zeros(columns)
    terms = np.abs(terms.astype(np.float64)).reshape(len(terms), math.prod(columns))
    total = terms.sum(axis=0)
    cumulative = np.concatenate([np.zeros((1, terms.shape[1])), np.cumsum(terms, axis=0)])

    def window(span: int) -> np.ndarray:  # the largest sum of |terms| over `span` consecutive rows
        span = min(len(terms), max(1, span))
        return np.max(cumulative[span:] - cumulative[:-span], axis=0)

    largest = np.max(terms, axis=0)

    def covered(span: int, values: int | None = None) -> np.ndarray:  # the largest subtotal's |terms|
        return window(span) if values is None else np.minimum(window(span), values * largest)

    worst = sum(u * depth * total for u, depth, *_ in stages)
    variance = sum(u * u * depth * covered(*rest) * total for u, depth, *rest in stages)
    return np.minimum(worst, LAMBDA * np.sqrt(variance)).reshape(columns)


def reference_depth(x: np.ndarray) -> int:
    """Additions in float64 outside the blocks: the block tree, the partition tree (left folds of up
    to 7 per level), and the reference's own pairwise sum."""
    levels = math.ceil(math.log2(len(x) + 1))
    return levels + 7 * math.ceil(levels / 3) + 19 + levels


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


def tolerance(op: str, x: np.ndarray, want: np.ndarray, got: np.ndarray, stages=None, **params) -> np.ndarray:
    """Per column, the largest |got - want| the fold's error analysis allows (0: exact). `stages`:
    a function (op, x) -> stages of the fold within a block; Lepton's NumPy blocks unless given."""
    describe = op.startswith("describe.")
    op = op.removeprefix("describe.")
    if op not in ("sum", "mean", "var") or (op == "sum" and x.dtype.kind != "f"):
        return np.zeros(np.shape(want))
    if describe:  # describe's results, each held to its op's bound; on 1-D float input its mean and
        # var partials add in the input's type, as its sum does
        stages = stages or (lambda _, a: numpy_stages("sum" if a.ndim == 1 else op, a))
    stages = (stages or numpy_stages)(op, x)
    wide = x.astype(np.float64)
    across = reference_depth(x) * U64
    ulp = np.maximum(np.spacing(np.abs(want)), np.spacing(np.abs(got).astype(want.dtype))).astype(np.float64)
    magnitude = np.sum(np.abs(wide), axis=0)
    if op in ("sum", "mean"):
        bound = within_bound(wide, stages) + across * magnitude
        return ulp + (bound if op == "sum" else bound / len(x))
    var = np.var(wide, axis=0, ddof=params.get("ddof", 0))
    condition = 1 + np.abs(np.mean(wide, axis=0)) / np.sqrt(np.maximum(var, np.finfo(np.float64).tiny))
    n, m2 = len(x), var * (len(x) - params.get("ddof", 0))
    u_shift = max(u for u, *_ in stages)  # the type d = x - shift is formed and squared in
    centred = within_bound((wide - np.mean(wide, axis=0)) ** 2, stages + [(u_shift, 2, 1)])  # sums of d^2
    # A shift off the mean (by the first pass's error, and its rounding) adds n * offset^2 to the sum of
    # d^2 (NumPy's partials keep it; OpenCL's subtract S1^2 / n) and scales the bound on its rounding.
    offset = within_bound(wide, stages) / n + u_shift * np.abs(np.mean(wide, axis=0))
    spread = n * offset ** 2
    centred = centred * (1 + 2 * spread / np.maximum(m2, np.finfo(np.float64).tiny)) + spread
    return ulp + (centred + 4 * (reference_depth(x) + 64) * U64 * condition * m2) / (n - params.get("ddof", 0))


def mismatch(op: str, x: np.ndarray, got: dict[str, np.ndarray], stages=None, **params) -> str | None:
    """None if `got` matches the reference within the bound above, else what differs. `stages`: as
    tolerance's (OpenCL devices: lambda op, x: opencl_stages(op, x, ...))."""
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
        limit = tolerance(f"describe.{name}" if op == "describe" else op, x, expected, value, stages, **params)
        error = np.atleast_1d(np.abs(value.astype(np.float64) - expected.astype(np.float64)))
        limit = np.broadcast_to(limit, error.shape)
        bad = ~((error <= limit) | (np.isnan(value) & np.isnan(expected)) | (value == expected))
        if np.any(bad):
            return (f"{name}: error {np.max(error[bad]):.3g} exceeds the fold's bound {np.min(limit[bad]):.3g} "
                    f"(got {value}, expected {expected})")
    return None


def assert_matches(op: str, x: np.ndarray, got: dict[str, np.ndarray], stages=None, **params) -> None:
    problem = mismatch(op, x, got, stages, **params)
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
