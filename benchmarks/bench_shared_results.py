"""Row-block results written in place (ARCHITECTURE.md §7) against the same results streamed.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_shared_results.py [--runs 5] [--workloads W2,W3]

On one LocalCluster (2 NumPy agents), the resident W2 (matmul 4096³ f32: a 64 MiB result) and W3
(SpMM of 1M nodes, 16M edges × 64: 256 MiB) of benchmarks/peers, each job run alternately by a client
that offers a memfd for the result (the default on the coordinator's host) and by one that does not
(`Client.offer_result_memory = False`: the result streams through the coordinator, as to a client on
another host; inputs go in shared memory for both). Interleaved, so that load from elsewhere falls on
both alike. It prints min / median wall seconds, and the coordinator's and agents' CPU seconds per
job; every result is checked bitwise against the other path and against NumPy (peers' check).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import lepton  # noqa: E402
import workloads  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workloads", default="W2,W3")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    print(f"load average at the start: {os.getloadavg()}")
    with lepton.LocalCluster(agents=2) as cluster:
        shared = cluster.client(timeout=3600)
        streamed = cluster.client(timeout=3600)
        streamed.offer_result_memory = False
        pids = {"coordinator": cluster.coordinator.pid, "agents": [a.pid for a in cluster.agents]}
        for name in args.workloads.split(","):
            data = workloads.make(name, workloads.SIZES[size][name])
            check = workloads.Checker(name, data)
            if name == "W2":
                ds = shared.put("results-w2", data["a"], replace=True)
                run = lambda c: c.matmul(ds, data["b"])  # noqa: E731
            else:
                ds = shared.put("results-w3", data["a"], replace=True)
                run = lambda c: c.spmm(ds, data["x"])  # noqa: E731
            figures = {"in place": [], "streamed": []}
            cpu = {k: {"coordinator": 0.0, "agents": 0.0} for k in figures}
            results = {}
            for i in range(args.runs + 1):  # the first of each is a warm-up
                for label, client in (("in place", shared), ("streamed", streamed)):
                    before = cpu_seconds(pids["coordinator"]), sum(map(cpu_seconds, pids["agents"]))
                    start = time.perf_counter()
                    results[label] = run(client)
                    seconds = time.perf_counter() - start
                    if i:
                        figures[label].append(seconds)
                        cpu[label]["coordinator"] += cpu_seconds(pids["coordinator"]) - before[0]
                        cpu[label]["agents"] += sum(map(cpu_seconds, pids["agents"])) - before[1]
                assert (results["in place"] == results["streamed"]).all(), f"{name}: the two paths differ"
                problem = check(results["in place"])
                assert problem is None, f"{name}: {problem}"
                results = {}
            shared.drop(ds.name)
            print(f"{workloads.title(name, workloads.SIZES[size][name])}:")
            for label, times in figures.items():
                print(f"  result {label:9s} min {min(times):.3f} s, median {statistics.median(times):.3f} s; CPU per job: "
                      f"coordinator {cpu[label]['coordinator'] / args.runs:.3f} s, agents {cpu[label]['agents'] / args.runs:.3f} s")
            print(f"  in place / streamed (min): {min(figures['in place']) / min(figures['streamed']):.2f}x")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
