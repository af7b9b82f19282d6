"""`lepton demo`: a local cluster, a few jobs on generated data, every result checked against NumPy."""
from __future__ import annotations

import sys
import time

import numpy as np

from lepton.cli import run_with_progress, table
from lepton.local import LocalCluster

# The demo's own check (the tests hold results to the fold's error bound, tests/references.py):
# float sums within 1e-5 (float32) or 1e-12 (float64) of sum(|x|), means of mean(|x|), variances
# relative; everything else exact.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def numpy_answer(op: str, x: np.ndarray, **params) -> np.ndarray:
    """NumPy's result, float sums, means and variances computed in float64."""
    if op == "histogram":
        bins, range_ = params.get("edges", params.get("bins")), params.get("range")
        counts = [np.histogram(c, bins=bins, range=range_)[0] for c in ([x] if x.ndim == 1 else x.T)]
        return counts[0] if x.ndim == 1 else np.stack(counts)
    if op == "count":
        return np.count_nonzero(~np.isnan(x) if x.dtype.kind == "f" else np.ones_like(x, bool), axis=0)
    if op == "var":
        return np.var(x.astype(np.float64), axis=0, ddof=params.get("ddof", 0))
    if op in ("sum", "mean") and (x.dtype.kind == "f" or op == "mean"):
        return getattr(np, op)(x.astype(np.float64), axis=0)
    return getattr(np, op)(x, axis=0)


def mismatch(op: str, x: np.ndarray, result: dict[str, np.ndarray], **params) -> str | None:
    """None if the result matches NumPy within the tolerances above, else what differs."""
    got = np.asarray(result["counts" if op == "histogram" else op])
    want = numpy_answer(op, x, **params)
    if op in ("sum", "mean", "var") and np.asarray(want).dtype.kind == "f":
        wide = np.abs(x.astype(np.float64))
        scale = {"sum": np.sum(wide, axis=0), "mean": np.mean(wide, axis=0), "var": np.abs(want)}[op]
        ok = np.abs(got.astype(np.float64) - want) <= RTOL.get(x.dtype, 1e-12) * scale
    else:
        ok = np.shape(got) == np.shape(want) and np.array_equal(got, want)
    return None if np.all(ok) else f"got {got}, NumPy says {want}"


def jobs(rows: int):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(rows, dtype=np.float32)
    wide = rng.uniform(-1, 1, size=(rows // 16, 4))
    counts = rng.integers(-1000, 1000, size=rows // 4, dtype=np.int32)
    yield "sum", x, {}, {}
    yield "mean", x, {}, {}
    yield "var", x, {}, {}
    yield "min", x, {}, {}
    yield "max", x, {}, {}
    yield "histogram", x, {"bins": 32, "range": [-4.0, 4.0]}, {}
    yield "var", wide, {"ddof": 1}, {"partitioning": "hash", "partitions": 16}
    yield "histogram", wide, {"edges": [-1.0, -0.5, 0.0, 0.25, 1.0]}, {"partitioning": "round_robin", "partitions": 12}
    yield "sum", counts, {}, {}
    yield "count", counts, {}, {}


def close_to(got: np.ndarray, want: np.ndarray, scale: np.ndarray, rtol: float = 1e-10) -> str | None:
    """None if every entry is within rtol of `scale` (the summed magnitudes behind it), else how far."""
    error = np.max(np.abs(got - want) / np.maximum(scale, np.finfo(np.float64).tiny))
    return None if error <= rtol else f"off by {error:.2e} of the summed magnitudes (allowed {rtol:g})"


def catalog(client, rows: int):
    """The op catalog beyond reductions: (label, input, partitions, seconds, problem, result shown)."""
    from scipy import sparse  # a base dependency: the NumPy device's SpMM is SciPy's

    rng = np.random.default_rng(11)
    n = max(2_000, min(rows // 500, 4_000))
    # float64 products: each entry is one dot product, BLAS-blocked; held to 1e-10 of |a| @ |b|.
    a, b = rng.standard_normal((n, 512)), rng.standard_normal((512, 256))
    t0 = time.perf_counter()
    job = client.submit("matmul", {"a": a, "b": b}, label="demo matmul", partitions=8)
    c = run_with_progress(job, f"matmul {n}x512 @ 512x256")["c"]
    yield ("matmul", f"{n}x512 @ 512x256", job.status.partitions_total, time.perf_counter() - t0,
           close_to(c, a @ b, np.abs(a) @ np.abs(b)), f"c {c.shape}")
    # k-means on a resident dataset: put once, ten rounds run where the partitions live. Well-separated
    # blobs from near their centres converge to the blob means (1e-9 of their spread).
    centres = rng.uniform(-50, 50, size=(8, 4))
    points = np.concatenate([centre + rng.standard_normal((25_000, 4)) for centre in centres])
    t0 = time.perf_counter()
    dataset = client.put("demo-points", points, partitions=8, replace=True)
    job = client.submit("kmeans", {"x": dataset, "centroids": centres + 0.3}, k=8, max_iter=10, label="demo kmeans")
    found = run_with_progress(job, "kmeans 200000x4 k=8, resident")
    labels = np.argmin(((points[:, None, :] - found["centroids"][None]) ** 2).sum(-1), axis=1)
    means = np.stack([points[labels == j].mean(axis=0) for j in range(8)])
    yield ("kmeans", "200000x4 dataset, k=8", job.status.partitions_total, time.perf_counter() - t0,
           close_to(found["centroids"], means, np.full_like(means, 50.0), 1e-9),
           f"inertia {float(found['inertia']):.4g}, {int(found['iterations'])} rounds")
    client.drop("demo-points")
    # SpMM of a random sparse matrix: each row sums its non-zeros in index order, as SciPy does.
    nnz = 500_000
    matrix = sparse.csr_matrix((rng.standard_normal(nnz), (rng.integers(0, 50_000, nnz), rng.integers(0, 50_000, nnz))),
                               shape=(50_000, 50_000))
    matrix.sum_duplicates()  # sorted column indices in each row, as CSR inputs must have
    x = rng.standard_normal((50_000, 16))
    t0 = time.perf_counter()
    job = client.submit("spmm", {"a_indptr": matrix.indptr.astype(np.int64), "a_indices": matrix.indices,
                                 "a_data": matrix.data, "x": x}, a_cols=50_000, label="demo spmm")
    y = run_with_progress(job, f"spmm 50000x50000 ({matrix.nnz} non-zeros) @ 50000x16")["y"]
    yield ("spmm", f"50000^2 with {matrix.nnz} nnz @ 50000x16", job.status.partitions_total,
           time.perf_counter() - t0, close_to(y, matrix @ x, abs(matrix) @ np.abs(x)), f"y {y.shape}")


def run(args) -> int:
    start = time.perf_counter()
    print(f"starting a local cluster: 1 coordinator, {args.agents} agent(s) with device {args.device!r}", flush=True)
    rows, failures = [], 0
    with LocalCluster(agents=args.agents, devices=args.device) as cluster:
        client = cluster.client()
        print(f"coordinator at {cluster.address}; agents joined", flush=True)
        print(f"dashboard: {cluster.dashboard_url or 'off'}  (open it to watch the jobs run)", flush=True)
        for op, x, params, options in jobs(args.rows):
            shape = "x".join(map(str, x.shape))
            t0 = time.perf_counter()
            job = client.submit(op, x, label=f"demo {op}", **options, **params)
            result = run_with_progress(job, f"{op} {shape} {x.dtype}")
            seconds = time.perf_counter() - t0
            problem = mismatch(op, x, result, **params)
            failures += problem is not None
            shown = ", ".join(f"{k}={np.array2string(np.asarray(v), precision=6, threshold=6)}"
                              for k, v in result.items() if k != "edges").replace("\n", "")
            rows.append([op, f"{shape} {x.dtype}", options.get("partitioning", "row_blocks"),
                         job.status.partitions_total, f"{x.nbytes / 1e6:.0f}", f"{seconds:.2f}",
                         "OK" if problem is None else "MISMATCH", shown[:60]])
            print(f"  {op:<9} {shape:>12} {x.dtype}: {seconds:.2f}s  {'matches NumPy' if problem is None else problem}",
                  flush=True)
        for op, shape, partitions, seconds, problem, shown in catalog(client, args.rows):
            failures += problem is not None
            rows.append([op, shape, "row_blocks", partitions, "", f"{seconds:.2f}",
                         "OK" if problem is None else "MISMATCH", shown])
            print(f"  {op:<9} {shape}: {seconds:.2f}s  {'matches NumPy' if problem is None else problem}", flush=True)
    print()
    print(table(["OP", "INPUT", "PARTITIONING", "PARTS", "MB", "SECONDS", "CHECK", "RESULT"], rows))
    print(f"\n{len(rows) - failures}/{len(rows)} results match NumPy within the stated tolerances "
          f"({time.perf_counter() - start:.1f}s in all)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run(__import__("lepton.cli", fromlist=["build_parser"]).build_parser().parse_args(["demo"])))
