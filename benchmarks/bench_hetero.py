"""Heterogeneous clusters: makespan under guided self-scheduling (--placement credits), under
placement by measured speed (--placement speed), and the ideal, in one run.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_hetero.py [--repeats 5] [--gpu]
        [--cases throttled,kinds] [--inputs streamed,resident] [--plot DIR]

Cases (all on this machine):
  throttled  three NumPy agents throttled 1x, 2x and 4x (`lepton agent --throttle`: each waits
             FACTOR-1 times its measured compute after every partition, a deliberate, named slowdown)
  kinds      one agent per kind of device: NumPy, OpenCL (opencl:0, PoCL on the CPU) and an MPI pool of
             two ranks; with --gpu, an OpenCL GPU agent too (benchmarks/gpu_check.sh passes it)
Jobs: a sum of float32 rows and a rows-plan matmul (a: rows x 512 float32, b: 512 x 2048), each cut
into a fixed number of partitions (the same under both policies: only who runs them changes, and
the results are checked bitwise equal between the two where no OpenCL device takes part (its kernels
round their own way), and always against NumPy: the sum within 1e-5 relative (float32 data, float64
accumulators), the matmul within 1e-4 of |a| @ |b|).
Inputs: `streamed` sends the split input with every job (through shared memory where client and
coordinator share the host); `resident` puts it once as a dataset (`client.put`, after the streamed
jobs: in contiguous blocks sized by the agents' measured speeds for the job's op under the speed
policy, even blocks under credits) and each job names it: no input bytes move unless the placement moves a partition.

Per case, job, input and policy: one warm-up (it measures the agents), then --repeats timed runs;
makespan is the job's own submitted -> finished time (coordinator clock).

The ideal is the issue's: the job's bytes over the cluster's total measured speed, with no
transfer or overhead. Two measures of the total, both printed:
  together  each agent's bytes over its busy kernel seconds in the timed runs of both policies,
            the agents running at once: what the cluster can do with the machine shared as it is
            (the main figure: three CPU-bound agents on 2 cores cannot all run at their solo speed)
  solo      each agent alone in a cluster of its own (same device, throttle and BLAS threads),
            the same job: the sum of these overstates a shared machine's capacity.
Where the makespan beyond the ideal goes, for the speed policy (medians): the first kernel's start,
the last kernel's end, the job's end (the coordinator's last aggregation and finalize after the last
partial), and each device's idle time between its kernels.
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
    """name -> (op, inputs, params, partitions, input bytes). Two sums: of 64 MiB, whose ideal (about
    10 ms) is below a job's own fixed cost (its calls, a run's dispatch: milliseconds each), so it
    shows that cost; and of 1 GiB, where the placement is what counts."""
    x = rng.random(64 << 20 >> 2, dtype=np.float32).reshape(-1, 256)  # 64 MiB
    big = rng.random(1 << 28, dtype=np.float32).reshape(-1, 256)  # 1 GiB
    a = rng.standard_normal((128 * 128, 512), dtype=np.float32)  # 32 MiB of rows
    b = rng.standard_normal((512, 2048), dtype=np.float32)
    return {"sum": ("sum", {"x": x}, {}, 64, x.nbytes),
            "sum1g": ("sum", {"x": big}, {}, 128, big.nbytes),
            "matmul": ("matmul", {"a": a, "b": b}, {"plan": "rows"}, 128, a.nbytes)}


def check(op: str, inputs: dict, result: dict) -> None:
    if op == "sum":
        want = inputs["x"].astype(np.float64).sum(axis=0)
        assert np.allclose(result["sum"], want, rtol=1e-5), "sum differs from NumPy"
    else:
        a, b = inputs["a"], inputs["b"]
        bound = 1e-4 * (np.abs(a) @ np.abs(b))
        assert np.all(np.abs(result["c"] - a @ b) <= bound), "matmul differs from NumPy"


def speeds(client, job_ids: list[str], nbytes: int, partitions: int) -> tuple[dict, dict]:
    """Input bytes computed and busy kernel seconds per agent (all its devices), over the given jobs."""
    done, busy = defaultdict(float), defaultdict(float)
    for job_id in job_ids:
        for (agent, device), lane in traces.shares(client.trace(job_id)).items():
            done[agent] += lane["partitions"] * nbytes / partitions
            busy[agent] += lane["busy"]
    return done, busy


def submit_inputs(client, name: str, op: str, inputs: dict, partitions: int, resident: bool) -> dict:
    """The job's inputs: as given, or with its split input put once as a dataset."""
    if not resident:
        return inputs
    key = "x" if op == "sum" else "a"
    # durable: returns once the coordinator's copy is on disk (writing it would compete with the jobs);
    # for_op: its blocks sized by the agents' speeds for the job's op (measured by the streamed jobs)
    return {**inputs, key: client.put(f"bench-{name}", inputs[key], partitions=partitions, replace=True,
                                      durable=True, for_op=op)}


def run_case(case: str, devices: list[str], throttles: list[float], policy: str, work: dict, repeats: int,
             plot_dir: Path | None, inputs_modes: list[str], env: dict) -> dict:
    out = {}
    with lepton.LocalCluster(agents=len(devices), devices=devices, throttle=throttles, env=env,
                             coordinator_args=["--placement", policy]) as cluster:
        client = cluster.client(timeout=600)
        labels = traces.device_labels(client.cluster_status())
        # Agents by their first device and throttle ("numpy:0 [throttled 4x]"): the same under both
        # policies' clusters, whose agent ids differ.
        labels = {key: label.split(" ", 1)[1] for key, label in labels.items()}
        names = {a.agent_id: labels.get((a.agent_id, a.devices[0].name), a.agent_id)
                 for a in client.cluster_status().agents}
        for mode in inputs_modes:
            for name, (op, inputs, params, partitions, nbytes) in work.items():
                job_inputs = submit_inputs(client, name, op, inputs, partitions, mode == "resident")
                spans, ids, result = [], [], None
                for i in range(repeats + 1):
                    job = client.submit(op, job_inputs, partitions=partitions, **params)
                    result = job.result(timeout=600)
                    status = client.job(job.job_id)
                    if i:  # the first run is the warm-up: it measures the agents
                        spans.append(status.finished_at - status.submitted_at)
                        ids.append(job.job_id)
                check(op, inputs, result)
                shares, idle, times = defaultdict(int), defaultdict(list), defaultdict(list)
                for job_id in ids:
                    trace = client.trace(job_id)
                    for (agent, device), lane in traces.shares(trace).items():
                        label = labels.get((agent, device), f"{agent} {device}")
                        shares[label] += lane["partitions"]
                        idle[label].append(lane["idle"])
                    for k, v in traces.phases(trace).items():
                        times[k].append(v)
                done, busy = speeds(client, ids, nbytes, partitions)
                out[(mode, name)] = {
                    "spans": spans, "done": {names.get(a, a): v for a, v in done.items()},
                    "busy": {names.get(a, a): v for a, v in busy.items()}, "shares": dict(shares),
                    "idle": {k: statistics.median(v) for k, v in idle.items()},
                    "phases": {k: statistics.median(v) for k, v in times.items()}, "result": result, "nbytes": nbytes}
                if plot_dir is not None:
                    path = plot_dir / f"hetero-{case}-{name}-{mode}-{policy}.png"
                    traces.plot(client.trace(ids[-1]), str(path), labels)
    return out


def solo_speeds(devices: list[str], throttles: list[float], work: dict, env: dict) -> dict[tuple, list[float]]:
    """Each agent alone in a cluster of its own, the same jobs (streamed): bytes per busy kernel
    second, one warm-up and two timed runs."""
    out = defaultdict(list)
    for device, throttle in zip(devices, throttles):
        with lepton.LocalCluster(agents=1, devices=[device], throttle=[throttle], env=env) as cluster:
            client = cluster.client(timeout=600)
            for name, (op, inputs, params, partitions, nbytes) in work.items():
                ids = []
                for i in range(3):
                    job = client.submit(op, inputs, partitions=partitions, **params)
                    job.result(timeout=600)
                    if i:
                        ids.append(job.job_id)
                done, busy = speeds(client, ids, nbytes, partitions)
                out[name].append(sum(done.values()) / sum(busy.values()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="throttled,kinds")
    parser.add_argument("--inputs", default="streamed,resident", help="streamed, resident or both")
    parser.add_argument("--policies", default="credits,speed")
    parser.add_argument("--gpu", action="store_true", help="add an OpenCL GPU agent to the kinds case")
    parser.add_argument("--plot", metavar="DIR", help="write a `lepton trace --plot` timeline of each last run here")
    args = parser.parse_args()
    if args.gpu:
        CASES["kinds"] = (CASES["kinds"][0] + ["opencl:gpu"], CASES["kinds"][1] + [1])
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir:
        plot_dir.mkdir(parents=True, exist_ok=True)
    modes, policies = args.inputs.split(","), args.policies.split(",")
    work = jobs(np.random.default_rng(15))
    print(f"heterogeneous placement, {os.cpu_count()} cores, median/min of {args.repeats} runs after a warm-up; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<10} {'input':<9} {'job':<7} {'credits med/min s':>18} {'speed med/min s':>16} "
          f"{'ideal tog/solo s':>17} {'speed/ideal':>11} {'credits/speed':>13}")
    notes = []
    for case in args.cases.split(","):
        devices, throttles = CASES[case]
        # The BLAS threads LocalCluster gives each of the case's agents, for the solo runs too.
        threads = str(max(1, (os.cpu_count() or 1) // len(devices)))
        env = {v: threads for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        results = {policy: run_case(case, devices, throttles, policy, work, args.repeats, plot_dir, modes, env)
                   for policy in policies}
        solo = solo_speeds(devices, throttles, work, env)
        for mode in modes:
            for name in work:
                runs = {policy: results[policy][(mode, name)] for policy in policies}
                if len(policies) == 2:
                    old, new = runs["credits"], runs["speed"]
                    # NumPy and MPI devices fold the same canonical blocks, so placement cannot change a
                    # bit; an OpenCL kernel rounds its own way, so there who ran what shows in the last bits.
                    same = all(np.array_equal(old["result"][k], new["result"][k]) for k in new["result"])
                    assert same or any(d.startswith("opencl") for d in devices), \
                        f"{case} {mode} {name}: the two policies' results differ in their bits"
                # Together: bytes over busy seconds per agent, both policies' timed runs pooled.
                done, busy = defaultdict(float), defaultdict(float)
                for r in runs.values():
                    for agent in r["done"]:
                        done[agent] += r["done"][agent]
                        busy[agent] += r["busy"][agent]
                together = {agent: done[agent] / busy[agent] for agent in done if busy[agent]}
                nbytes = next(iter(runs.values()))["nbytes"]
                ideal, ideal_solo = nbytes / sum(together.values()), nbytes / sum(solo[name])
                med = {p: statistics.median(r["spans"]) for p, r in runs.items()}
                low = {p: min(r["spans"]) for p, r in runs.items()}
                fmt = lambda p: f"{med[p]:.3f}/{low[p]:.3f}" if p in med else "-"
                ratio = f"{med['credits'] / med['speed']:.2f}" if len(med) == 2 else "-"
                head = "speed" if "speed" in med else policies[0]
                print(f"{case:<10} {mode:<9} {name:<7} {fmt('credits'):>18} {fmt('speed'):>16} "
                      f"{ideal:>8.3f}/{ideal_solo:<8.3f} {med[head] / ideal:>11.2f} {ratio:>13}")
                for policy, r in runs.items():
                    ph = r["phases"]
                    notes.append(f"  {case} {mode} {name} {policy}: first kernel {ph['first_kernel']:.3f}s, last kernel "
                                 f"{ph['last_kernel']:.3f}s, job done {ph['finished']:.3f}s (medians); partitions and "
                                 f"median idle s per device: " + ", ".join(
                                     f"{lane} {count} ({r['idle'][lane]:.3f})" for lane, count in sorted(r["shares"].items())))
                notes.append(f"  {case} {mode} {name} speeds MB/s of input, together: " + ", ".join(
                    f"{agent} {rate / 1e6:.0f}" for agent, rate in sorted(together.items()))
                    + "; solo: " + ", ".join(f"{d}{f' /{t:g}' if t != 1 else ''} {rate / 1e6:.0f}"
                                             for d, t, rate in zip(devices, throttles, solo[name])))
    print("\n".join(notes))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
