"""What security costs: small-job latency and a 1 GiB ingest, open vs token vs TLS vs mutual TLS.

    python benchmarks/bench_security.py [--jobs 400] [--ingest-gib 1] [--repeat 3] [--configs open,token,tls,mtls]

Each configuration is a two-agent LocalCluster on loopback, all started at once and measured in
interleaved rounds (so the machine's other load falls on each alike):
  open   no tokens, plaintext (token="")
  token  the default: a random per-cluster token on every call, plaintext
  tls    TLS on every port, tokens; agents obey the coordinator's certificate
  mtls   as tls, and the coordinator requires client certificates too
Small jobs: sums of 1,024 float32, one after another (p50, p90 and min of --jobs, after 20 warm-ups).
Ingest: client.put of --ingest-gib GiB of float32 (median and min of --repeat, dropped after each).
Every result is checked against NumPy.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np

import lepton

CONFIGS = {"open": dict(token=""), "token": dict(), "tls": dict(tls=True, mtls=False), "mtls": dict(tls=True, mtls=True)}


X = np.arange(1024, dtype=np.float32)
EXPECTED = float(X.sum(dtype=np.float64))  # integers below 2^24: exact in float32


def small_jobs(client, jobs: int) -> list[float]:
    times = []
    for _ in range(jobs):
        start = time.perf_counter()
        total = client.sum(X)
        times.append(time.perf_counter() - start)
        assert float(total) == EXPECTED
    return times


def ingest(client, array: np.ndarray) -> float:
    start = time.perf_counter()
    dataset = client.put("bench-ingest", array, replace=True)
    seconds = time.perf_counter() - start
    assert dataset.info.total_bytes == array.nbytes
    total = client.sum(dataset)
    assert abs(float(total) - array.sum(dtype=np.float64)) <= 1e-5 * np.abs(array).sum(dtype=np.float64)
    client.drop("bench-ingest")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--ingest-gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configs", default="open,token,tls,mtls")
    args = parser.parse_args()
    names = args.configs.split(",")
    array = np.random.default_rng(0).random(int(args.ingest_gib * (1 << 30)) // 4, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        # All clusters at once, measured in interleaved rounds: the machine's other load falls on each alike.
        clients = {name: stack.enter_context(lepton.LocalCluster(agents=2, **CONFIGS[name])).client(timeout=600)
                   for name in names}
        small = {name: [] for name in names}
        put = {name: [] for name in names}
        for client in clients.values():
            small_jobs(client, 20)  # warm-up
        rounds = 8
        for _ in range(rounds):
            for name in names:
                small[name] += small_jobs(clients[name], max(1, args.jobs // rounds))
        for _ in range(args.repeat if args.ingest_gib > 0 else 0):
            for name in names:
                put[name].append(ingest(clients[name], array))
    print(f"{'config':<7} {'small p50 ms':>12} {'p90 ms':>7} {'min ms':>7}   "
          f"{'ingest median s':>15} {'min s':>6} {'GB/s':>6}")
    for name in names:
        ms = [t * 1000 for t in small[name]]
        deciles = statistics.quantiles(ms, n=10)
        seconds = put[name] or [float("nan")]
        print(f"{name:<7} {statistics.median(ms):>12.2f} {deciles[8]:>7.2f} {min(ms):>7.2f}   "
              f"{statistics.median(seconds):>15.2f} {min(seconds):>6.2f} "
              f"{array.nbytes / 1e9 / statistics.median(seconds):>6.2f}")


if __name__ == "__main__":
    main()
