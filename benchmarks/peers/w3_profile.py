"""Where W3's time goes: SpMM of the 1M-node, 16M-edge power-law graph x 1M x 64 f32 on LocalCluster(agents=2).

    flock /tmp/lepton-bench.lock python benchmarks/peers/w3_profile.py [--mode resident|end-to-end]
        [--jobs 5] [--py-spy DIR] [--quick]

Resident: puts the graph once (durable: its copy is on disk before the clock starts), then runs
--jobs jobs of `client.spmm(dataset, x)`; end-to-end: `client.spmm(a, x)` from the client's arrays.
Prints the wall time (min / median), the CPU seconds per job of the coordinator, each agent and
this client (median), and the last job's trace (each device's busy time over the job's span, the
runs it took). Every result is checked against SciPy as in run.py. With --py-spy DIR, py-spy
records the coordinator and both agents over the timed jobs into DIR/{coordinator,agent-0,agent-1}.txt
(collapsed stacks: `sort -t' ' -k2 -nr` or flamegraph.pl read them).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402
from resident import timed_jobs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("resident", "end-to-end"), default="resident")
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--py-spy", metavar="DIR", help="record the servers with py-spy into DIR")
    parser.add_argument("--quick", action="store_true", help="run.py's quick size")
    parser.add_argument("--partitions-table", action="store_true", help="print the last job's partitions")
    args = parser.parse_args()

    import lepton
    from lepton import trace

    data = workloads.make("W3", workloads.SIZES["quick" if args.quick else "full"]["W3"])
    check = workloads.Checker("W3", data)
    print(f"load average at the start: {os.getloadavg()}")
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client(timeout=600)
        pids = {"coordinator": cluster.coordinator.pid, **{f"agent-{i}": a.pid for i, a in enumerate(cluster.agents)}}
        a = client.put("w3", data["a"], replace=True, durable=True) if args.mode == "resident" else data["a"]
        client.spmm(a, data["x"])  # warm-up
        spies = []
        if args.py_spy:
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                                       "--threads", "--output", f"{args.py_spy}/{name}.txt"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name, pid in pids.items()]
            time.sleep(1.0)  # (py-spy attaches; not a correctness wait)
        walls, cpu = timed_jobs(lambda: client.spmm(a, data["x"]), check, pids, args.jobs)
        if walls is None:
            return 1
        for s in spies:
            s.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for s in spies:
            s.wait(timeout=60)
        print(f"spmm {args.mode}, {args.jobs} jobs: wall min {min(walls):.3f} s, median {statistics.median(walls):.3f} s "
              f"(checked against SciPy)")
        print("CPU seconds per job (median): " + ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in cpu.items()))
        last = client.trace(client.jobs(limit=1)[0].job_id)
        print("\n".join(trace.summary(last)))
        ran = sorted(p.finished_at - p.started_at for p in last.partitions if p.finished_at)
        print(f"{len(ran)} partitions: kernel min {1e3 * ran[0]:.1f} ms, median {1e3 * statistics.median(ran):.1f} ms, "
              f"max {1e3 * ran[-1]:.1f} ms; {len({(p.agent_id, p.sent_at) for p in last.partitions})} runs sent")
        t0 = last.job.submitted_at
        print("first sent at {:.3f}s".format(min(p.sent_at for p in last.partitions) - t0))
        if args.partitions_table:
            for p in sorted(last.partitions, key=lambda p: (p.agent_id, p.started_at)):
                print(f"  partition {p.partition:3d} on {p.agent_id}: {p.rows:8,} rows, sent {p.sent_at - t0:.3f}s, "
                      f"started {p.started_at - t0:.3f}s, ran {p.finished_at - p.started_at:.3f}s")
    print(f"load average at the end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
