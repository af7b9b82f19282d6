"""Small jobs (issue #20, W6): the latency and throughput of a sum of 1,024 float32.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_small_jobs.py [--jobs 400] [--callers 16] [--ha]

On a LocalCluster (2 NumPy agents) it prints, for `client.sum(x)` on 1,024 float32, the p50, p90,
p99 and minimum latency of sequential jobs, the jobs/s of 1 caller and of 16 callers sharing one
client, and the CPU per job of each process in both; beside it, in
the same run, a bare gRPC unary call on loopback (the coordinator's own health check, which does no
work) measured the same two ways: the floor that any round trip through Python gRPC pays. Every
result is checked against NumPy (rtol 1e-5: float32 values summed with float64 accumulators).
With --ha the cluster is an HA pair (LocalCluster(ha=True): etcd, a leader and a standby), and the
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


def report(name: str, lat: list[float], seq_rate: float, rate: float, cpu: list[list[float]]) -> None:
    """One row; cpu holds the CPU per call of (coordinator, agents, client) while sequential, then
    with many callers."""
    lat = sorted(lat)
    cpus = " ".join(f"{1e3 * one:>5.2f}/{1e3 * many:<5.2f}" for one, many in zip(*cpu))
    print(f"{name:<26} {1e3 * statistics.median(lat):>7.3f} {1e3 * lat[int(0.9 * len(lat))]:>7.3f} "
          f"{1e3 * lat[int(0.99 * len(lat))]:>7.3f} {1e3 * lat[0]:>7.3f} {seq_rate:>7.0f} {rate:>8.0f}   {cpus}",
          flush=True)


def cpu_used(pids: list[int], call, *args) -> tuple[object, list[float]]:
    """call(*args), and the CPU seconds it took the coordinator, all agents and this process."""
    before, client_before = [cpu_seconds(p) for p in pids], time.process_time()
    out = call(*args)
    used = [cpu_seconds(p) - b for p, b in zip(pids, before)]
    return out, [used[0], sum(used[1:]), time.process_time() - client_before]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per measurement")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--ha", action="store_true", help="an HA pair with its metadata in etcd")
    args = parser.parse_args()
    x = np.random.default_rng(6).random(1024, dtype=np.float32)
    want = x.astype(np.float64).sum()
    with lepton.LocalCluster(agents=args.agents, ha=args.ha) as cluster:
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

        print(f"sum of 1,024 float32 on {args.agents} NumPy agents{', HA pair with etcd' if args.ha else ''}; "
              f"{args.jobs} calls per figure, "
              f"after {args.jobs // 10} warm-up calls")
        print("Latency of sequential calls (ms); calls/s of 1 caller and of many; CPU ms per call of the "
              "coordinator, of all agents and of this client process, sequential / many callers (the "
              "machine's load does not inflate these much; wall times it does)")
        print(f"{'':<26} {'p50':>7} {'p90':>7} {'p99':>7} {'min':>7} {'1 /s':>7} {f'{args.callers} /s':>8}   "
              f"{'coordinator':<11} {'agents':<11} {'client':<11}")
        pids = [cluster.coordinators[leader].pid, *(a.pid for a in cluster.agents)]
        for name, call in (("bare gRPC unary (health)", bare), ("lepton sum of 1,024 f32", job)):
            latencies(call, args.jobs // 10)
            lat, one = cpu_used(pids, latencies, call, args.jobs)
            rate, many = cpu_used(pids, throughput, call, args.jobs, args.callers)
            report(name, lat, len(lat) / sum(lat), rate, [[c / args.jobs for c in one], [c / args.jobs for c in many]])
        channel.close()


if __name__ == "__main__":
    main()
