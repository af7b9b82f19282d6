"""Heterogeneous clusters: makespan under guided self-scheduling (--placement credits), under
placement by measured speed (--placement speed), and the ideal, in one run.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_hetero.py [--repeats 3] [--gpu]
        [--cases throttled,kinds] [--plot DIR]

Cases (all on this machine):
  throttled  three NumPy agents throttled 1x, 2x and 4x (`lepton agent --throttle`: each waits
             FACTOR-1 times its measured compute after every partition, a deliberate, named slowdown)
  kinds      one agent per kind of device: NumPy, OpenCL (opencl:0, PoCL on the CPU) and an MPI pool of
             two ranks; with --gpu, an OpenCL GPU agent too (benchmarks/gpu_check.sh passes it)
Jobs: a sum of float32 rows and a rows-plan matmul (a: rows x 512 float32, b: 512 x 2048), each cut
into a fixed number of partitions (the same under both policies: only who runs them changes, and
the results are checked bitwise equal between the two where no OpenCL device takes part (its kernels
round their own way), and always against NumPy: the sum within 1e-5
relative (float32 data, float64 accumulators), the matmul within 1e-4 of |a| @ |b|).

Per case, job and policy: one warm-up (it measures the agents), then --repeats timed runs; makespan
is the job's own submitted -> finished time (coordinator clock). The ideal is the job's bytes over
the cluster's total measured speed, each agent's speed being the bytes it computed over its busy
kernel seconds in the timed runs (from `lepton trace`): what a perfect split of the compute would
take, with no transfer or overhead. A sum on loopback is bound by the coordinator's data path, not by
compute, so its ideal is out of reach by construction; the matmul is compute-bound.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import lepton
from lepton import trace as traces

CASES = {
    "throttled": (["numpy", "numpy", "numpy"], [1, 2, 4]),
    "kinds": (["numpy", "opencl:0", "mpi:2"], [1, 1, 1]),
}


def jobs(rng) -> dict[str, tuple]:
    x = rng.random(64 << 20 >> 2, dtype=np.float32).reshape(-1, 256)  # 64 MiB
    a = rng.standard_normal((128 * 128, 512), dtype=np.float32)  # 32 MiB of rows
    b = rng.standard_normal((512, 2048), dtype=np.float32)
    return {"sum": ("sum", {"x": x}, {}, 64, x.nbytes),
            "matmul": ("matmul", {"a": a, "b": b}, {"plan": "rows"}, 128, a.nbytes)}


def check(name: str, inputs: dict, result: dict) -> None:
    if name == "sum":
        want = inputs["x"].astype(np.float64).sum(axis=0)
        assert np.allclose(result["sum"], want, rtol=1e-5), "sum differs from NumPy"
    else:
        a, b = inputs["a"], inputs["b"]
        bound = 1e-4 * (np.abs(a) @ np.abs(b))
        assert np.all(np.abs(result["c"] - a @ b) <= bound), "matmul differs from NumPy"


def speeds(client, job_ids: list[str], nbytes: int, partitions: int, labels) -> dict[str, float]:
    """Bytes per busy kernel second of each agent (all its devices), over the given jobs."""
    done, busy = defaultdict(float), defaultdict(float)
    for job_id in job_ids:
        for (agent, device), lane in traces.shares(client.trace(job_id)).items():
            done[agent] += lane["partitions"] * nbytes / partitions
            busy[agent] += lane["busy"]
    return {agent: done[agent] / busy[agent] for agent in done if busy[agent]}


def run_case(case: str, devices: list[str], throttles: list[float], policy: str, work: dict, repeats: int,
             plot_dir: Path | None) -> dict:
    out = {}
    with lepton.LocalCluster(agents=len(devices), devices=devices, throttle=throttles,
                             coordinator_args=["--placement", policy]) as cluster:
        client = cluster.client(timeout=600)
        labels = traces.device_labels(client.cluster_status())
        for name, (op, inputs, params, partitions, nbytes) in work.items():
            spans, ids, result = [], [], None
            for i in range(repeats + 1):
                job = client.submit(op, inputs, partitions=partitions, **params)
                result = job.result(timeout=600)
                status = client.job(job.job_id)
                if i:  # the first run is the warm-up: it measures the agents
                    spans.append(status.finished_at - status.submitted_at)
                    ids.append(job.job_id)
            check(name, inputs, result)
            shares = defaultdict(int)
            for job_id in ids:
                for (agent, device), lane in traces.shares(client.trace(job_id)).items():
                    shares[labels.get((agent, device), f"{agent} {device}")] += lane["partitions"]
            out[name] = {"spans": spans, "speeds": speeds(client, ids, nbytes, partitions, labels),
                         "shares": dict(shares), "result": result, "nbytes": nbytes}
            if plot_dir is not None:
                path = plot_dir / f"hetero-{case}-{name}-{policy}.png"
                traces.plot(client.trace(ids[-1]), str(path), labels)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="throttled,kinds")
    parser.add_argument("--gpu", action="store_true", help="add an OpenCL GPU agent to the kinds case")
    parser.add_argument("--plot", metavar="DIR", help="write a `lepton trace --plot` timeline of each last run here")
    args = parser.parse_args()
    if args.gpu:
        CASES["kinds"] = (CASES["kinds"][0] + ["opencl:gpu"], CASES["kinds"][1] + [1])
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir:
        plot_dir.mkdir(parents=True, exist_ok=True)
    work = jobs(np.random.default_rng(15))
    print(f"heterogeneous placement, {os.cpu_count()} cores, median/min of {args.repeats} runs after a warm-up; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'case':<10} {'job':<7} {'credits med/min s':>18} {'speed med/min s':>16} {'ideal s':>8} "
          f"{'speed/ideal':>11} {'credits/speed':>13}")
    shares_lines = []
    for case in args.cases.split(","):
        devices, throttles = CASES[case]
        results = {policy: run_case(case, devices, throttles, policy, work, args.repeats, plot_dir)
                   for policy in ("credits", "speed")}
        for name in work:
            old, new = results["credits"][name], results["speed"][name]
            # NumPy and MPI devices fold the same canonical blocks, so placement cannot change a bit;
            # an OpenCL kernel rounds its own way, so there who ran what shows in the last bits.
            same = all(np.array_equal(old["result"][k], new["result"][k]) for k in new["result"])
            assert same or any(d.startswith("opencl") for d in devices), \
                f"{case} {name}: the two policies' results differ in their bits"
            # The agents' speeds as measured in the speed policy's timed runs.
            ideal = new["nbytes"] / sum(new["speeds"].values())
            med_old, med_new = statistics.median(old["spans"]), statistics.median(new["spans"])
            print(f"{case:<10} {name:<7} {med_old:>9.3f}/{min(old['spans']):<8.3f} {med_new:>7.3f}/"
                  f"{min(new['spans']):<8.3f} {ideal:>8.3f} {med_new / ideal:>11.2f} {med_old / med_new:>13.2f}")
            for policy in ("credits", "speed"):
                shares = results[policy][name]["shares"]
                shares_lines.append(f"  {case} {name} {policy}: " + ", ".join(
                    f"{lane} {count}" for lane, count in sorted(shares.items())))
            shares_lines.append(f"  {case} {name} measured speeds (MB/s of input): " + ", ".join(
                f"{agent} {rate / 1e6:.0f}" for agent, rate in sorted(new["speeds"].items())))
    print("partitions computed per device over the timed runs (throttles named as [throttled Nx]):")
    print("\n".join(shares_lines))


if __name__ == "__main__":
    main()
