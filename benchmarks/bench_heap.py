"""The servers' one malloc arena against glibc's default arenas: does the arena lock cost anything?

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_heap.py [--repeats 7] [--mib 128]

Two LocalClusters (a coordinator and 2 NumPy agents each) run side by side, one with the servers'
default of one arena (lepton.tuning.keep_large_buffers_in_heap) and one with LEPTON_MALLOC_ARENAS=0
(glibc's default, 8 per core); their runs alternate, so both see the same machine. Two workloads:
a sum of --mib MiB of float64 streamed through the coordinator to the agents (the data path, 1 MiB
chunks; shared memory off), and 8 callers sharing one client running sums of 1,024 float32 (many small calls: gRPC's
per-call allocations from many threads at once). Prints min and median of each, the ratio, and each
server's RSS at the end; every result is checked against NumPy (rtol 1e-9 for the float64 sum,
1e-5 for float32 values summed in float64).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import lepton

SETTINGS = {"one arena": "1", "glibc default": "0"}


def rss_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) >> 10
    return -1


def stream(client, x: np.ndarray) -> float:
    start = time.perf_counter()
    total = client.sum(x, partitions=8)
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(total, x.sum(axis=0), rtol=1e-9)
    return elapsed


def small(client, callers: int = 8, jobs: int = 40) -> float:
    y = np.arange(1024, dtype=np.float32)
    errors = []

    def caller():
        try:
            for _ in range(jobs):
                np.testing.assert_allclose(client.sum(y), y.sum(dtype=np.float64), rtol=1e-5)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return callers * jobs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mib", type=int, default=128)
    args = parser.parse_args()
    x = np.random.default_rng(3).standard_normal((args.mib << 17, 1))
    # Shared memory off (LEPTON_SHARED_MEMORY=0): the bytes go through gRPC, the path measured.
    clusters = {name: lepton.LocalCluster(agents=2, env={"LEPTON_MALLOC_ARENAS": value,
                                                         "LEPTON_SHARED_MEMORY": "0"}).__enter__()
                for name, value in SETTINGS.items()}
    try:
        clients = {name: c.client(timeout=300, shared_memory=False) for name, c in clusters.items()}
        for client in clients.values():  # warm
            stream(client, x), small(client, 2, 5)
        seconds = {name: [] for name in clusters}
        rates = {name: [] for name in clusters}
        for _ in range(args.repeats):
            for name, client in clients.items():
                seconds[name].append(stream(client, x))
                rates[name].append(small(client))
        for name in clusters:
            s, r = seconds[name], rates[name]
            pids = [clusters[name].coordinator.pid, *(a.pid for a in clusters[name].agents)]
            print(f"{name:14s} sum of {args.mib} MiB: min {min(s):.3f} s median {statistics.median(s):.3f} s "
                  f"({args.mib / 1024 / statistics.median(s):.2f} GiB/s); small sums: max {max(r):.0f} "
                  f"median {statistics.median(r):.0f} jobs/s; RSS coordinator, agents "
                  f"{', '.join(str(rss_mib(p)) for p in pids)} MiB")
        one, default = SETTINGS
        print(f"one arena / glibc default: stream median time {statistics.median(seconds[one]) / statistics.median(seconds[default]):.2f}x, "
              f"small-job median rate {statistics.median(rates[one]) / statistics.median(rates[default]):.2f}x")
    finally:
        for c in clusters.values():
            c.close()


if __name__ == "__main__":
    main()
