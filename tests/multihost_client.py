"""Runs on the client "host" of tests/test_multihost.py: every op of `lepton demo`, a matmul and a
k-means against the coordinator at argv[1], each checked against NumPy here; prints one JSON line
per job ({"op", "ok", "problem"}). Extra arguments are passed to lepton.Client (key=value)."""
from __future__ import annotations

import json
import sys

import numpy as np

import lepton
from lepton.demo import jobs
from references import mismatch  # tests/ is this script's folder, so on its path


def report(op: str, problem: str | None) -> None:
    print(json.dumps({"op": op, "ok": problem is None, "problem": problem}), flush=True)


def main(address: str, options: dict) -> None:
    with lepton.Client(address, timeout=120, **options) as client:
        for op, x, params, partitioning in jobs(400_000):
            report(op, mismatch(op, x, client.submit(op, x, **partitioning, **params).result(), **params))
        rng = np.random.default_rng(3)
        a, b = rng.standard_normal((300, 64)), rng.standard_normal((64, 40))
        c = client.submit("matmul", {"a": a, "b": b}, partitions=4).result()["c"]
        # float64 BLAS over row blocks: each row is one dot product per column, as NumPy's.
        report("matmul", None if np.allclose(c, a @ b, rtol=1e-12, atol=1e-12) else "matmul differs")
        centers = rng.uniform(-20, 20, size=(4, 3))
        points = np.concatenate([center + rng.standard_normal((500, 3)) for center in centers])
        dataset = client.put("points", points, partitions=4)
        found = client.submit("kmeans", {"x": dataset, "centroids": centers + 0.5}, k=4, max_iter=20).result()
        # Well-separated blobs: Lloyd from near the true centres converges to the blob means.
        labels = np.argmin(((points[:, None, :] - found["centroids"][None]) ** 2).sum(-1), axis=1)
        means = np.stack([points[labels == j].mean(axis=0) for j in range(4)])
        report("kmeans", None if np.allclose(found["centroids"], means, rtol=1e-9, atol=1e-9) else
               f"centroids {found['centroids']} are not the cluster means {means}")


if __name__ == "__main__":
    main(sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:]))
