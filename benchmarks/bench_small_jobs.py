"""Small jobs (issue #20, W6): the latency and throughput of a sum of 1,024 float32.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_small_jobs.py [--jobs 400] [--callers 16] [--ha]
        [--inline both|on|off] [--rounds 1]

On a LocalCluster (2 NumPy agents) it prints, for `client.sum(x)` on 1,024 float32, the p50, p90
and minimum latency of sequential jobs and the jobs/s of 16 callers sharing one client; beside it, in
the same run, a bare gRPC unary call on loopback (the coordinator's own health check, which does no
work) measured the same two ways: the floor that any round trip through Python gRPC pays. Every
result is checked against NumPy (rtol 1e-5: float32 values summed with float64 accumulators).
The same job is measured twice, on two clusters started one after the other in this run: as it runs
by default, computed by the coordinator itself (tiny reductions where NumPy agents would run them:
coordinator/inline.py), and sent to an agent (`--inline-kib 0`), each checked to have run where it
says (its trace). With --ha the cluster is an HA pair (LocalCluster(ha=True): etcd, a leader and a standby), and the
figures are the leader's: what writing each job's record to etcd costs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import lepton


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(call, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def throughput(call, count: int, callers: int) -> float:
    """Calls per second with `callers` threads making `count` calls in all."""
    share = [count // callers + (i < count % callers) for i in range(callers)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(n):
                call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in share]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return count / elapsed


def report(name: str, lat: list[float], seq_rate: float, rate: float, cpu: list[float]) -> None:
    lat = sorted(lat)
    SEEN.setdefault(name, []).append((statistics.median(lat), rate))
    print(f"{name:<28} {1e3 * statistics.median(lat):>8.3f} {1e3 * lat[int(0.9 * len(lat))]:>8.3f} "
          f"{1e3 * lat[0]:>8.3f} {seq_rate:>10.0f} {rate:>14.0f} {1e3 * cpu[0]:>11.3f} {1e3 * cpu[1]:>11.3f} "
          f"{1e3 * cpu[2]:>11.3f}", flush=True)


SEEN: dict[str, list[tuple[float, float]]] = {}  # name -> (p50 s, jobs/s with the callers) per round


def measure(args, x, want, inline: bool, bare_too: bool) -> None:
    coordinator_args = [] if inline else ["--inline-kib", "0"]
    with lepton.LocalCluster(agents=args.agents, ha=args.ha, coordinator_args=coordinator_args) as cluster:
        client = cluster.client(timeout=60)
        client.cluster_status()  # (with --ha, once a leader is elected)
        leader = next(i for i, a in enumerate(cluster.addresses)
                      if lepton.Client(a, **cluster.credentials()).health() == "SERVING")
        channel = cluster.channel(cluster.addresses[leader])  # with the cluster's token
        health = health_pb2_grpc.HealthStub(channel)

        def bare():
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)

        def job():
            got = client.sum(x)
            if not np.isclose(got, want, rtol=1e-5):
                raise AssertionError(f"sum {got} != {want}")

        probe = client.submit("sum", x)
        probe.result()
        where = {a.agent_id for a in client.trace(probe.job_id).partitions}
        if (where == {"coordinator"}) != inline:
            raise AssertionError(f"the job ran on {where}, expected {'the coordinator' if inline else 'an agent'}")
        name = "lepton sum, inline" if inline else "lepton sum, on an agent"
        pids = [cluster.coordinators[leader].pid, *(a.pid for a in cluster.agents)]
        for name, call in ((("bare gRPC unary (health)", bare),) if bare_too else ()) + ((name, job),):
            latencies(call, args.jobs // 10)
            before, client_before = [cpu_seconds(p) for p in pids], time.process_time()
            lat = latencies(call, args.jobs)
            rate = throughput(call, args.jobs, args.callers)
            used = [cpu_seconds(p) - b for p, b in zip(pids, before)]
            cpu = [used[0] / (2 * args.jobs), sum(used[1:]) / (2 * args.jobs),
                   (time.process_time() - client_before) / (2 * args.jobs)]
            report(name, lat, len(lat) / sum(lat), rate, cpu)
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per measurement")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--ha", action="store_true", help="an HA pair with its metadata in etcd")
    parser.add_argument("--inline", choices=("both", "on", "off"), default="both",
                        help="the coordinator computes the job itself (on), an agent does (off), or each in turn")
    parser.add_argument("--rounds", type=int, default=1, help="measure each mode this many times, alternating")
    args = parser.parse_args()
    x = np.random.default_rng(6).random(1024, dtype=np.float32)
    want = x.astype(np.float64).sum()
    print(f"sum of 1,024 float32 on {args.agents} NumPy agents{', HA pair with etcd' if args.ha else ''}; "
          f"{args.jobs} calls per figure, after {args.jobs // 10} warm-up calls")
    print("CPU ms per call, over both measurements: of the coordinator, of all agents, of this "
          "client process (the machine's load does not inflate these much; wall times it does)")
    print(f"{'':<28} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} {'seq /s':>10} "
          f"{f'{args.callers} callers /s':>14} {'coord CPU':>11} {'agents CPU':>11} {'client CPU':>11}")
    modes = (False, True) if args.inline == "both" else (args.inline == "on",)
    for _ in range(args.rounds):  # rounds alternate the modes: the machine's load drifts alike for both
        for i, inline in enumerate(modes):
            measure(args, x, want, inline, bare_too=i == 0)
    if args.rounds > 1:
        print(f"over {args.rounds} rounds: p50 ms min / median, {args.callers} callers /s min / median")
        for name, seen in SEEN.items():
            p50s, rates = sorted(p for p, _ in seen), sorted(r for _, r in seen)
            print(f"{name:<28} {1e3 * p50s[0]:>8.3f} {1e3 * statistics.median(p50s):>8.3f} "
                  f"{rates[0]:>10.0f} {statistics.median(rates):>10.0f}")


if __name__ == "__main__":
    main()
