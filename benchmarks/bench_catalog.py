"""Op catalog benchmark: each op through a local cluster beside NumPy on the same data, same run.

    python benchmarks/bench_catalog.py [--agents 2] [--device numpy] [--repeat 3] [--small]

Prints the median of --repeat runs and the ratio to NumPy (>1: Lepton is slower). On one machine
the cluster shares the cores NumPy uses alone and adds the gRPC transfer, so ratios near or above 1
are expected here; the point of the cluster is data larger than one machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lepton


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def power_law_csr(nodes, edges, rng):
    """A CSR adjacency whose out-degrees follow Zipf's law (a few rows hold most edges)."""
    degree = rng.zipf(2.0, nodes).astype(np.float64)
    degree = np.maximum(1, np.round(degree * edges / degree.sum())).astype(np.int64)
    row = np.repeat(np.arange(nodes, dtype=np.int64), degree)
    key = np.unique(row * nodes + rng.integers(0, nodes, len(row)))  # sorted by row, then column
    row, col = key // nodes, key % nodes
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=nodes))]).astype(np.int64)
    return indptr, col.astype(np.int32), np.ones(len(col), dtype=np.float32)


def reference_spmm(indptr, indices, data, x, nodes):
    """SciPy's CSR product when SciPy is installed, else our NumPy CSR kernel."""
    try:
        import scipy.sparse

        a = scipy.sparse.csr_matrix((data, indices, indptr), shape=(nodes, nodes))
        return "scipy", lambda: a @ x
    except ImportError:
        from lepton.backends.ops.sparse import csr_times_dense

        return "numpy", lambda: csr_times_dense(indptr, indices, data, x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--device", default="numpy")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a quick run at a tenth of the sizes")
    args = parser.parse_args()
    s = 0.1 if args.small else 1.0
    rng = np.random.default_rng(0)
    rows = []
    with lepton.LocalCluster(agents=args.agents, devices=args.device) as cluster:
        client = cluster.client(timeout=3600)

        n = int(4096 * s ** 0.5) // 64 * 64
        a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        rows.append((f"matmul {n}^3 f32", timed(lambda: client.matmul(a, b), args.repeat),
                     timed(lambda: a @ b, args.repeat), 2 * n ** 3 / 1e9, "GFLOP"))

        nodes, edges = int(1_000_000 * s), int(16_000_000 * s)
        indptr, indices, data = power_law_csr(nodes, edges, rng)
        x = rng.standard_normal((nodes, 64), dtype=np.float32)
        csr = (indptr, indices, data, (nodes, nodes))
        which, reference = reference_spmm(indptr, indices, data, x, nodes)
        rows.append((f"spmm {nodes} nodes {len(indices)} edges x64 (vs {which})",
                     timed(lambda: client.spmm(csr, x), args.repeat), timed(reference, args.repeat), None, ""))

        points = rng.standard_normal((int(4_000_000 * s), 16), dtype=np.float32)
        centroids = points[:64].astype(np.float64)
        ds = client.put("bench-points", points, replace=True)

        def numpy_kmeans_step():  # one Lloyd step, the way the kernel does it
            from lepton.backends.ops.kmeans import assign

            labels, _ = assign(points, centroids)
            onehot = np.zeros((len(points), 64))
            onehot[np.arange(len(points)), labels] = 1
            return onehot.T @ points, np.bincount(labels, minlength=64)

        rows.append((f"kmeans {len(points)}x16 k=64, 1 iteration (resident)",
                     timed(lambda: client.kmeans(ds, centroids=centroids, max_iter=1), args.repeat),
                     timed(numpy_kmeans_step, args.repeat), None, ""))
        client.drop("bench-points")

        g = rng.standard_normal((int(8_000_000 * s), 32), dtype=np.float32)
        rows.append((f"gram {len(g)}x32 f32", timed(lambda: client.gram(g), args.repeat),
                     timed(lambda: g.T @ g, args.repeat), None, ""))

    print(f"\n{'benchmark':<52} {'lepton s':>9} {'numpy s':>9} {'ratio':>7}")
    for name, ours, theirs, work, unit in rows:
        extra = f"  ({work / ours:.1f} {unit}/s vs {work / theirs:.1f})" if work else ""
        print(f"{name:<52} {ours:9.3f} {theirs:9.3f} {ours / theirs:7.2f}{extra}")
    print(f"\nmedians of {args.repeat} runs; {args.agents} agent(s) with device {args.device!r}")


if __name__ == "__main__":
    main()
