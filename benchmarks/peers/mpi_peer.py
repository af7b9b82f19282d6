"""Pure mpi4py, no middleware: the bound Lepton is held to. Run by run.py as

    mpiexec -n 2 python mpi_peer.py SPEC.json OUT.pkl

Rank 0 makes each workload's data (workloads.make, the same seeds as every system) and hands each
rank its row block before the clock starts (the data is resident, as in any MPI program). The
clock covers the compute and the combine at rank 0 (Reduce, or Gatherv of row blocks), between
barriers. Rank 0 writes the times and its last result for run.py to check.
"""
from __future__ import annotations

import json
import pickle
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import workloads

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()


def row_block(x: np.ndarray | None, cuts=None) -> np.ndarray:
    """Rank 0's array cut into row blocks (at `cuts`, else evenly); each rank gets its own."""
    meta = comm.bcast((x.shape, x.dtype.str) if rank == 0 else None)
    shape, dtype = meta
    rows = np.array(cuts if cuts is not None else np.linspace(0, shape[0], ranks + 1).astype(int)) if rank == 0 else None
    rows = comm.bcast(rows)
    row_items = int(np.prod(shape[1:], dtype=np.int64))
    counts = [int(rows[i + 1] - rows[i]) * row_items for i in range(ranks)]
    mine = np.empty((rows[rank + 1] - rows[rank],) + tuple(shape[1:]), dtype=dtype)
    comm.Scatterv([x, counts] if rank == 0 else None, mine, root=0)
    return mine


def whole(x: np.ndarray | None) -> np.ndarray:
    shape, dtype = comm.bcast((x.shape, x.dtype.str) if rank == 0 else None)
    out = x if rank == 0 else np.empty(shape, dtype)
    comm.Bcast(out, root=0)
    return out


def gather_rows(block: np.ndarray) -> np.ndarray | None:
    counts = comm.gather(block.size)
    out = np.empty((sum(counts) // int(np.prod(block.shape[1:])),) + block.shape[1:], block.dtype) if rank == 0 else None
    comm.Gatherv(block, [out, counts] if rank == 0 else None, root=0)
    return out


def reduce_sum(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64, order="C")  # (ascontiguousarray makes 0-d 1-d)
    out = np.empty_like(a) if rank == 0 else None
    comm.Reduce(a, out, op=MPI.SUM, root=0)
    return out


def prepare(name: str, size):
    data = workloads.make(name, size) if rank == 0 else None
    if name == "W1":
        x = row_block(data and data["x"])

        def run():
            s = reduce_sum(np.sum(x))  # pairwise in float32, combined in float64
            lo = comm.reduce(np.min(x), op=MPI.MIN)
            hi = comm.reduce(np.max(x), op=MPI.MAX)
            return {"sum": s, "min": lo, "max": hi} if rank == 0 else None
    elif name == "W2":
        a, b = row_block(data and data["a"]), whole(data and data["b"])
        run = lambda: gather_rows(a @ b)  # noqa: E731
    elif name == "W3":
        if rank == 0:
            csr = data["a"]
            cut = int(np.searchsorted(csr.indptr, csr.nnz // 2))
            blocks = [csr[:cut], csr[cut:]]
            comm.send(blocks[1], dest=1)
            mine = blocks[0]
        else:
            mine = comm.recv(source=0)
        x = whole(data and data["x"])
        run = lambda: gather_rows(mine @ x)  # noqa: E731
    elif name == "W4":
        x = row_block(data and data["x"])
        start = whole(data and data["start"])
        iterations = comm.bcast(data and data["iterations"])

        def step(centroids):
            sums, counts, inertia = workloads.kmeans_step(x, centroids)
            sums, counts = sums.copy(), counts.astype(np.float64)
            comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
            comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
            return sums, counts.astype(np.int64), comm.allreduce(inertia, op=MPI.SUM)
        run = lambda: workloads.lloyd(step, start, iterations)  # noqa: E731
    elif name == "W5":
        x = row_block(data and data["x"])
        run = lambda: reduce_sum(x.T @ x)  # noqa: E731
    elif name == "W6":
        x = row_block(data and data["x"])
        run = lambda: comm.allreduce(float(np.sum(x)), op=MPI.SUM)  # noqa: E731
    else:
        raise KeyError(name)
    return run


def main(spec_path: str, out_path: str) -> None:
    spec = json.load(open(spec_path))
    results = {}
    for name in spec["workloads"]:
        run = prepare(name, spec["sizes"][name])
        repeat = 200 if name == "W6" else 1  # a small job is timed over many calls
        times, result = [], None
        for i in range(1 + spec["runs"]):
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(repeat):
                result = run()
            comm.Barrier()
            if i:
                times.append((time.perf_counter() - start) / repeat)
        if rank == 0:
            results[name] = {"times": times, "result": result}
        del run
    if rank == 0:
        with open(out_path, "wb") as f:
            pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
