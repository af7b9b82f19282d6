"""Scaling of the control plane: job time and coordinator CPU against partitions and agents.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_scaling.py \
        [--agents 1,2,4,8,16,32] [--partitions 2,8,32,128,512,1024,4096] [--plot benchmarks/scaling.png]

One coordinator; light NumPy agents are added one by one up to the largest count (all on this
machine, so more agents share the same cores: the figure shows what the coordinator costs, not how
compute scales). For each (agents, P) it runs a `sum` of 2^20 float32 cut into P partitions: one
warm-up, then --repeats timed runs; it prints the median and minimum job time and the coordinator
process's CPU time per job and per partition (a mean over the timed runs: /proc counts in 10 ms ticks), checks every result against NumPy (rtol 1e-5:
float32 values, float64 accumulators), writes JSON next to the plot, and draws the plot.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

import lepton


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for agents in sorted({r["agents"] for r in rows}):
        mine = sorted((r for r in rows if r["agents"] == agents), key=lambda r: r["partitions"])
        ps = [r["partitions"] for r in mine]
        left.plot(ps, [1e3 * r["job_median_s"] for r in mine], marker="o", label=f"{agents} agents")
        right.plot(ps, [r["coordinator_us_per_partition"] for r in mine], marker="o", label=f"{agents} agents")
    left.set(xscale="log", yscale="log", xlabel="partitions", ylabel="job time, median (ms)",
             title="sum of 2^20 float32")
    right.set(xscale="log", yscale="log", xlabel="partitions", ylabel="coordinator CPU per partition (µs)",
              title="the coordinator's cost per partition")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="1,2,4,8,16,32")
    parser.add_argument("--partitions", default="2,8,32,128,512,1024,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default=str(Path(__file__).with_name("scaling.png")))
    args = parser.parse_args()
    agent_counts = sorted(int(a) for a in args.agents.split(","))
    partition_counts = [int(p) for p in args.partitions.split(",")]
    x = np.random.default_rng(20).random(1 << 20, dtype=np.float32)
    want = x.astype(np.float64).sum()
    rows = []
    print(f"sum of 2^20 float32, {os.cpu_count()} cores, median/min of {args.repeats} runs after a warm-up; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'agents':>6} {'P':>6} {'job med ms':>11} {'job min ms':>11} {'coord CPU ms':>13} {'coord us/part':>14}")
    with lepton.LocalCluster(agents=agent_counts[0]) as cluster:
        client = cluster.client(timeout=600)
        pid = cluster.coordinator.pid
        for agents in agent_counts:
            while len(cluster.agents) < agents:
                cluster.add_agent(wait=False)
            cluster.wait_for_agents(agents)
            for p in partition_counts:
                walls, cpus = [], []
                for i in range(args.repeats + 1):
                    cpu, start = cpu_seconds(pid), time.perf_counter()
                    got = client.sum(x, partitions=p)
                    wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
                    np.testing.assert_allclose(got, want, rtol=1e-5)
                    if i:
                        walls.append(wall)
                        cpus.append(cpu)
                row = {"agents": agents, "partitions": p, "job_median_s": statistics.median(walls),
                       "job_min_s": min(walls), "coordinator_cpu_s": statistics.mean(cpus),
                       "coordinator_us_per_partition": 1e6 * statistics.mean(cpus) / p}
                rows.append(row)
                print(f"{agents:>6} {p:>6} {1e3 * row['job_median_s']:>11.1f} {1e3 * row['job_min_s']:>11.1f} "
                      f"{1e3 * row['coordinator_cpu_s']:>13.1f} {row['coordinator_us_per_partition']:>14.1f}",
                      flush=True)
    path = Path(args.plot)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    plot(rows, path)
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
