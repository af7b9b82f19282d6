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


def run(args) -> int:
    start = time.perf_counter()
    print(f"starting a local cluster: 1 coordinator, {args.agents} agent(s) with device {args.device!r}", flush=True)
    rows, failures = [], 0
    with LocalCluster(agents=args.agents, devices=args.device) as cluster:
        client = cluster.client()
        print(f"coordinator at {cluster.address}; agents joined", flush=True)
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
    print()
    print(table(["OP", "INPUT", "PARTITIONING", "PARTS", "MB", "SECONDS", "CHECK", "RESULT"], rows))
    print(f"\n{len(rows) - failures}/{len(rows)} results match NumPy within the stated tolerances "
          f"({time.perf_counter() - start:.1f}s in all)")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run(__import__("lepton.cli", fromlist=["build_parser"]).build_parser().parse_args(["demo"])))
