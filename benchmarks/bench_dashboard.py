"""What the dashboard costs the coordinator: its threads' CPU time against the coordinator's, during
the Locust mix, with 0, 1 and 4 pages watching (each page = one event stream following a job).

    python benchmarks/bench_dashboard.py [--time 20s] [--users 8]

The dashboard counts the CPU time of its own threads (sampling once a second and sending each
page its update; `dashboard_cpu_seconds` in /api/snapshot); the coordinator's whole CPU time comes
from /proc. Both are CPU time, not wall time, so other load on the machine does not inflate them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import lepton

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch(url: str, stop: threading.Event) -> None:
    """One page: an event stream, read until told to stop."""
    with urllib.request.urlopen(url, timeout=30) as stream:
        while not stop.is_set():
            if not stream.readline():
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", default="20s")
    parser.add_argument("--users", type=int, default=8)
    args = parser.parse_args()
    with lepton.LocalCluster(agents=2) as cluster:
        base = cluster.dashboard_url
        token = base.partition("?token=")[2]
        snapshot_url = base.split("?")[0] + "api/snapshot" + (f"?token={token}" if token else "")
        pid = cluster.coordinator.pid
        print(f"dashboard at {base}; Locust mix, {args.users} users, {args.time} per row")
        print(f"{'pages':>5}  {'coordinator CPU s':>17}  {'dashboard CPU s':>15}  {'dashboard share':>15}")
        for pages in (0, 1, 4):
            stop = threading.Event()
            jobs = cluster.client().jobs(limit=1)
            job = f"&job={jobs[0].job_id}" if jobs else ""
            events = base.split("?")[0] + "events?" + (f"token={token}" if token else "") + job
            watchers = [threading.Thread(target=watch, args=(events, stop), daemon=True) for _ in range(pages)]
            for w in watchers:
                w.start()
            before = cpu_seconds(pid), json.load(urllib.request.urlopen(snapshot_url))["dashboard_cpu_seconds"]
            subprocess.run([sys.executable, str(ROOT / "loadtests" / "run"), "--address", cluster.address,
                            "--users", str(args.users), "--time", args.time, "--scenario", "mix"],
                           check=True, capture_output=True, env=cluster_env(cluster))
            after = cpu_seconds(pid), json.load(urllib.request.urlopen(snapshot_url))["dashboard_cpu_seconds"]
            stop.set()
            total, board = after[0] - before[0], after[1] - before[1]
            print(f"{pages:>5}  {total:>17.2f}  {board:>15.3f}  {100 * board / total:>14.2f}%", flush=True)


def cluster_env(cluster) -> dict:
    import os

    token = getattr(cluster, "token", "")
    return {**os.environ, **({"LEPTON_TOKEN": token} if token else {})}


if __name__ == "__main__":
    main()
