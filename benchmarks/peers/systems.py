"""The systems measured: Lepton and Dask, each resident (data loaded before the clock starts) and
end-to-end (from a NumPy array the client holds). `prepare(name, data, mode)` loads what resident
mode keeps loaded and returns (run, cleanup): `run()` is what the clock times, and returns the
result for the checker. Both run on 2 workers of one core each: Lepton's LocalCluster(agents=2) of
NumPy devices, Dask's LocalCluster(n_workers=2, threads_per_worker=1) of processes.

The Dask adapter is written for Dask as its users would: row blocks scattered to the workers (the
futures are a persisted array), the same per-block kernel as NumPy's (workloads.py), partials
gathered and combined on the client. Every task is submitted with pure=False: Dask would otherwise
hand back the warm-up's results from memory (same function, same inputs, same key).
"""
from __future__ import annotations

import statistics
import threading
import time

import numpy as np

import workloads

MODES = ("resident", "end-to-end")


def small_job_figures(call, callers: int = 16, sequential: int = 200, per_caller: int = 40) -> dict:
    """p50 latency of `call` one at a time, and calls/s with `callers` threads calling at once."""
    latencies = []
    for _ in range(sequential):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)

    def caller():
        for _ in range(per_caller):
            call()

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"p50_s": statistics.median(latencies), "jobs_per_s": callers * per_caller / (time.perf_counter() - start)}


def lepton_job(c, name: str, data: dict, resident: bool, stats: str = "sum,min,max", **put_options):
    """The workload as a call on client `c` and a cleanup; `resident`: its data put first (with
    put_options); `stats`: W1's describe (what MPI computes; "all": describe's every statistic)."""
    names = []

    def put(key, array):
        names.append(key)
        # durable: the put returns once the coordinator's copy is on its disk; writing 1 GiB in
        # the background took its CPU and the disk during the first timed runs.
        return c.put(key, array, replace=True, durable=True, **put_options) if resident else array

    if name == "W1":
        x = put("w1", data["x"])
        kw = {} if stats == "all" else {"stats": stats}
        run = lambda: c.describe(x, **kw)  # noqa: E731 - one job, one pass
    elif name == "W2":
        a, b = put("w2", data["a"]), data["b"]  # b goes whole to each agent (cached there)
        run = lambda: c.matmul(a, b)  # noqa: E731
    elif name == "W3":
        a, x = put("w3", data["a"]), data["x"]
        run = lambda: c.spmm(a, x)  # noqa: E731
    elif name == "W4":
        x = put("w4", data["x"])
        run = lambda: c.kmeans(x, centroids=data["start"], max_iter=data["iterations"], tol=0.0)  # noqa: E731
    elif name == "W5":
        x = put("w5", data["x"])
        run = lambda: c.gram(x)["xtx"]  # noqa: E731
    else:
        raise KeyError(name)

    def cleanup():
        for n in names if resident else ():
            c.drop(n)
    return run, cleanup


class Lepton:
    label = "Lepton"

    def __init__(self, agents: int = 2):
        import lepton

        self.cluster = lepton.LocalCluster(agents=agents)
        self.cluster.start()
        self.client = self.cluster.client(timeout=3600)  # shared memory: the cluster is on this host
        self.streamed = self.cluster.client(timeout=3600, shared_memory=False)  # bytes over gRPC

    def close(self):
        self.cluster.close()

    def prepare(self, name: str, data: dict, mode: str):
        return lepton_job(self.client, name, data, resident=mode == "resident")

    def small_jobs(self, x: np.ndarray) -> tuple[dict, object]:
        return small_job_figures(lambda: self.client.sum(x)), self.client.sum(x)

    def ingest(self, x: np.ndarray, streamed: bool = False) -> float:
        """Seconds to put x (dropped again after); `streamed`: as bytes over gRPC, not shared memory."""
        client = self.streamed if streamed else self.client
        start = time.perf_counter()
        client.put("w7", x, replace=True)
        seconds = time.perf_counter() - start
        client.drop("w7")
        return seconds


# -- Dask -------------------------------------------------------------------------------------------

def _w1_block(block):
    return np.float64(np.sum(block)), np.min(block), np.max(block)


def _matmul_block(block, b):
    return block @ b


def _gram_block(block):
    return (block.T @ block).astype(np.float64)


class Dask:
    label = "Dask"
    BLOCK_BYTES = 128 << 20  # dask.array's "auto" chunk size

    def __init__(self):
        import cloudpickle
        from dask.distributed import Client, LocalCluster

        cloudpickle.register_pickle_by_value(workloads)  # the workers need not import this folder
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)

    def close(self):
        self.client.close()
        self.cluster.close()

    def blocks(self, x) -> list:
        nbytes = x.data.nbytes + x.indices.nbytes if hasattr(x, "indptr") else x.nbytes
        count = max(2, 2 * -(-nbytes // (2 * self.BLOCK_BYTES)))  # an even count: both workers busy
        if hasattr(x, "indptr"):  # CSR: row blocks of equal non-zeros
            cuts = np.searchsorted(x.indptr, np.linspace(0, x.nnz, count + 1)[1:-1])
        else:
            cuts = np.linspace(0, len(x), count + 1).astype(int)[1:-1]
        edges = [0, *cuts.tolist(), x.shape[0]]
        return [x[lo:hi] for lo, hi in zip(edges, edges[1:])]

    def prepare(self, name: str, data: dict, mode: str):
        c = self.client
        split = {"W1": "x", "W2": "a", "W3": "a", "W4": "x", "W5": "x"}[name]
        whole = {"W2": "b", "W3": "x"}.get(name)
        pieces = self.blocks(data[split])

        def load():
            futures = c.scatter(pieces, hash=False)  # round-robin over the workers (fresh keys: no reuse)
            shared = c.scatter(data[whole], broadcast=True, hash=False) if whole else None
            return futures, shared

        loaded = load() if mode == "resident" else None

        def run():
            futures, shared = loaded or load()
            if name == "W1":
                parts = c.gather(c.map(_w1_block, futures, pure=False))
                return {"sum": sum(p[0] for p in parts), "min": min(p[1] for p in parts),
                        "max": max(p[2] for p in parts)}
            if name in ("W2", "W3"):
                return np.concatenate(c.gather(c.map(_matmul_block, futures, b=shared, pure=False)))
            if name == "W5":
                return sum(c.gather(c.map(_gram_block, futures, pure=False)))

            def step(centroids):
                parts = c.gather(c.map(workloads.kmeans_step, futures, centroids=centroids, pure=False))
                return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))
            return workloads.lloyd(step, data["start"], data["iterations"])

        return run, lambda: None

    def small_jobs(self, x: np.ndarray) -> tuple[dict, object]:
        future = self.client.scatter(x, hash=False)

        def call():
            return self.client.submit(np.sum, future, pure=False).result()
        return small_job_figures(call), call()
