"""The coordinator's cost per partition: a fast op over many tiny partitions.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_partitions.py [--partitions 64,1024,16384,65536]

A `sum` over P partitions of 4 float32 each on a LocalCluster (2 NumPy agents): the kernels take
nanoseconds, so the job's time is the control plane's. For each P it prints the job's wall time
(minimum and median of --repeats runs, after one warm-up) and the coordinator process's CPU time,
each divided by P, in microseconds. Every result is checked against NumPy's float64 sum of the
same float32 values (rtol 1e-5: the tree sums float32 partials in float64 accumulators).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import lepton


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(client, pid: int, partitions: int, rows_per_partition: int, repeats: int) -> dict:
    x = np.random.default_rng(partitions).random(partitions * rows_per_partition, dtype=np.float32)
    want = x.astype(np.float64).sum()
    walls, cpus = [], []
    for i in range(repeats + 1):
        cpu, start = cpu_seconds(pid), time.perf_counter()
        got = client.sum(x, partitions=partitions)
        wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
        np.testing.assert_allclose(got, want, rtol=1e-5)
        if i:  # the first run warms up
            walls.append(wall)
            cpus.append(cpu)
    return {"P": partitions, "wall_min": min(walls), "wall_med": statistics.median(walls),
            "cpu_mean": statistics.mean(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", default="64,1024,16384,65536")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4, help="float32 values per partition")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with lepton.LocalCluster(agents=args.agents) as cluster:
        client = cluster.client(timeout=600)
        pid = cluster.coordinator.pid
        print(f"sum over P partitions of {args.rows} float32, {args.agents} NumPy agents, "
              f"{os.cpu_count()} cores; min/median of {args.repeats} runs after a warm-up")
        print(f"{'P':>7} {'job min s':>10} {'job med s':>10} {'wall us/part (min)':>19} "
              f"{'coord CPU us/part (mean)':>25}")
        for p in (int(v) for v in args.partitions.split(",")):
            r = measure(client, pid, p, args.rows, args.repeats)
            print(f"{p:>7} {r['wall_min']:>10.3f} {r['wall_med']:>10.3f} {1e6 * r['wall_min'] / p:>19.1f} "
                  f"{1e6 * r['cpu_mean'] / p:>25.1f}", flush=True)


if __name__ == "__main__":
    main()
