"""Where a resident workload's time goes, on LocalCluster(agents=2): W1 (a `describe` of 2^28 float32,
1 GiB), W2, W3 or W5 of run.py, its data put once.

    flock /tmp/lepton-bench.lock python benchmarks/peers/resident.py [--workload W1] [--jobs 7]
        [--stats sum,min,max|all] [--partitions P]

Puts the dataset once and waits until the coordinator's copy is written, then runs --jobs jobs and
prints the wall time (min / median), the CPU seconds per job of the coordinator, each agent and this
client (median), and the last job's trace: each device's busy time over the job's span, the
per-partition kernel times and how many runs (calls to an agent) the job took. Results are checked
against NumPy as in run.py. --stats and --partitions are W1's (the others put as run.py does).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))

import systems  # noqa: E402
import workloads  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed_jobs(job, check, pids: dict[str, int], jobs: int):
    """Run `job()` `jobs` times: the wall seconds of each, and the CPU seconds per job of each process
    in `pids` and of this client; (None, None) once a result fails `check` (it says why)."""
    walls, cpu = [], {k: [] for k in [*pids, "client"]}
    for _ in range(jobs):
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        client_before, start = time.process_time(), time.perf_counter()
        result = job()
        walls.append(time.perf_counter() - start)
        cpu["client"].append(time.process_time() - client_before)
        for k, p in pids.items():
            cpu[k].append(cpu_seconds(p) - before[k])
        if (error := check(result)) is not None:
            print(f"CHECK FAILED: {error}")
            return None, None
        del result
    return walls, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W1", choices=["W1", "W2", "W3", "W5"])
    parser.add_argument("--stats", default="sum,min,max", help="describe's stats, or 'all' (default: W1's)")
    parser.add_argument("--jobs", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=0,
                        help="the put's partition count (default: the client's choice, as run.py puts it)")
    args = parser.parse_args()

    import lepton
    from lepton import trace

    data = workloads.make(args.workload, workloads.SIZES["full"][args.workload])
    check = workloads.Checker(args.workload, data)
    put_options = {"partitions": args.partitions} if args.partitions else {}
    print(f"load average at the start: {os.getloadavg()}")
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client(timeout=600)
        pids = {"coordinator": cluster.coordinator.pid, **{f"agent {i}": a.pid for i, a in enumerate(cluster.agents)}}
        # put durably: returns once the coordinator's copy is on disk (writing it would compete with the jobs)
        job, _ = systems.lepton_job(client, args.workload, data, resident=True, stats=args.stats, **put_options)
        job()  # warm-up
        walls, cpu = timed_jobs(job, check, pids, args.jobs)
        if walls is None:
            return 1
        what = f"describe(stats={args.stats!r}) of 1 GiB" if args.workload == "W1" else f"resident {args.workload}"
        print(f"{what}, {args.jobs} jobs: wall min {min(walls):.3f} s, "
              f"median {statistics.median(walls):.3f} s (checked against NumPy)")
        print("CPU seconds per job (median): " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in cpu.items()))
        last = client.trace(client.jobs(limit=1)[0].job_id)
        print("\n".join(trace.summary(last)[:2]))
        ran = [p.finished_at - p.started_at for p in last.partitions]
        print(f"{len(ran)} partitions of {last.partitions[0].rows:,} rows: kernel min {1e3 * min(ran):.2f} ms, "
              f"median {1e3 * statistics.median(ran):.2f} ms; {len({p.sent_at for p in last.partitions})} runs sent")
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
