"""A 64 MiB partition's round trip through an MPI pool (scatter, compute, gather/combine), beside NumPy.

    python benchmarks/bench_mpi.py [--ranks 2] [--mib 64] [--runs 9] [--no-cluster]

First (unless --no-cluster) the same partition as a whole job through a LocalCluster with one
'mpi:N' agent, for the pool's share of the job time. Then the script re-execs itself under mpiexec
(device 'mpi:N') and rank 0 times the pool directly. The NumPy figure is the NumPy device on the same
partition in one process (for ops with inexact merges, such as sum, that is the canonical fold of
~4 MiB blocks, which the pool reproduces bit for bit: backends/blocks.py).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from lepton.backends.discovery import open_devices
from lepton.backends.mpi.launch import under_mpiexec
from lepton.backends.numpy_device import NumpyDevice
from lepton.backends.ops import REGISTRY, TensorMeta

JOB_MS = "LEPTON_BENCH_JOB_MS"  # carries the cluster figure across the re-exec


def median_ms(fn, runs: int) -> float:
    fn()  # warm: first-touch page faults, MPI and gRPC connection set-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def data(mib: int) -> np.ndarray:
    return np.random.default_rng(0).random((mib << 20) // 4, dtype=np.float32)


def cluster_job_ms(args) -> float:
    """A one-partition sum job of the whole array through a cluster whose only agent is the pool."""
    import lepton

    x = data(args.mib)
    with lepton.LocalCluster(agents=1, devices=f"mpi:{args.ranks}") as cluster:
        client = cluster.client()
        return median_ms(lambda: client.run("sum", x, partitions=1), args.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args()
    if not under_mpiexec() and not args.no_cluster:
        os.environ[JOB_MS] = str(cluster_job_ms(args))
    [device] = open_devices([f"mpi:{args.ranks}"])  # re-execs under mpiexec; workers never return

    x = data(args.mib)
    print(f"{device.description}\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, partition: "
          f"{x.nbytes / 2**20:.0f} MiB float32, median of {args.runs} runs")
    for name, raw in [("sum", {}), ("histogram", {"bins": 256, "range": [0.0, 1.0]})]:
        op = REGISTRY[name]
        params = op.validate({"x": TensorMeta(x.dtype, x.shape)}, raw)
        numpy_ms = median_ms(lambda: NumpyDevice().run(op, {"x": x}, params), args.runs)
        phases: dict[str, list[float]] = {}

        def pool_run():
            device.run(op, {"x": x}, params)
            for phase, seconds in device.last_timings.items():
                phases.setdefault(phase, []).append(seconds * 1e3)

        pool_ms = median_ms(pool_run, args.runs)
        split = ", ".join(f"{p} {statistics.median(v[1:]):.2f}" for p, v in phases.items())
        print(f"{name:9s} NumPy {numpy_ms:7.2f} ms ({x.nbytes / numpy_ms / 1e6:5.2f} GB/s) | "
              f"MPI pool of {args.ranks} {pool_ms:7.2f} ms ({x.nbytes / pool_ms / 1e6:5.2f} GB/s) | "
              f"phases (ms): {split}")
        if name == "sum" and JOB_MS in os.environ:
            job_ms = float(os.environ[JOB_MS])
            print(f"{'':9s} the same sum as a one-partition job through a LocalCluster with this pool as its "
                  f"agent: {job_ms:.1f} ms; the pool round trip is {100 * pool_ms / job_ms:.0f}% of it")
    device.close()


if __name__ == "__main__":
    main()
