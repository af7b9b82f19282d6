"""Ingest (issue #20, W7): `client.put` of 1 GiB float32 into a LocalCluster, and the floor beside it.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_ingest.py [--mib 1024] [--runs 3]

For 1 and 2 NumPy agents it times `put` two ways: over shared memory (the client on the
coordinator's host, the default) and streamed over gRPC (`Client(..., shared_memory=False)`: what a
client on another host gets). In the same run, the floor any streamed put pays: one bare Python
gRPC stream (a stream-unary call of raw bytes to a server process that only counts them) moving the
same bytes in FRAME_BYTES messages. Each figure is 1 warm-up and `--runs` timed puts, min and median
in GB/s (1e9 bytes), with the CPU seconds the client, the coordinator and the agents spent per put.
Every put's partitions are checked: the cluster's sum of the dataset equals NumPy's (rtol 1e-5), and
the dataset's shape, dtype and partitions are those of the array.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np

import lepton
from lepton import wire

SERVER = r"""
import sys, threading
from concurrent import futures
import grpc

def count(requests, context):
    total = 0
    for message in requests:
        total += len(message)
    return str(total).encode()

server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 << 20)])
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
    "bench.Sink", {"Count": grpc.stream_unary_rpc_method_handler(count)})])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
threading.Event().wait()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(call, runs: int, pids: list[int]) -> tuple[list[float], list[float]]:
    """1 warm-up, then `runs` timed calls: their seconds, and CPU seconds per call of this process
    and of each of `pids`."""
    call()
    before, own = [cpu_seconds(p) for p in pids], time.process_time()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    cpu = [(time.process_time() - own) / runs] + [(cpu_seconds(p) - b) / runs for p, b in zip(pids, before)]
    return seconds, cpu


def report(label: str, nbytes: int, seconds: list[float], cpu: list[float], names: list[str]) -> None:
    rates = [nbytes / s / 1e9 for s in seconds]
    cpu_text = "  ".join(f"{n} {c:.2f}" for n, c in zip(names, cpu))
    print(f"{label:<34} max {max(rates):5.2f}  median {statistics.median(rates):5.2f} GB/s"
          f"   (min {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s)   CPU s/put: {cpu_text}",
          flush=True)


def bare_stream(x: np.ndarray, runs: int, frame: int) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        send = channel.stream_unary("/bench.Sink/Count")
        data = memoryview(x.reshape(-1).view(np.uint8))

        def call():
            # (one copy per message, as wire.framed_chunks makes; grpcio takes bytes, not views)
            got = int(send(bytes(data[o:o + frame]) for o in range(0, len(data), frame)))
            assert got == x.nbytes, (got, x.nbytes)

        seconds, cpu = timed(call, runs, [server.pid])
        report(f"bare gRPC stream, {frame >> 20} MiB messages", x.nbytes, seconds, cpu, ["client", "server"])
        channel.close()
    finally:
        server.kill()
        server.wait()


def puts(x: np.ndarray, agents: int, runs: int) -> None:
    want = float(np.sum(x, dtype=np.float64))
    with lepton.LocalCluster(agents=agents) as cluster:
        pids = [cluster.coordinator.pid, *(a.pid for a in cluster.agents)]
        names = ["client", "coord", *(f"agent{i}" for i in range(agents))]
        for label, client in (("shared memory", cluster.client(timeout=600)),
                              ("streamed", cluster.client(timeout=600, shared_memory=False))):
            # Time the put alone: the check runs after each put, outside the clock.
            timings: list[float] = []

            def put():
                start = time.perf_counter()
                dataset = client.put("w7", x, replace=True)
                timings.append(time.perf_counter() - start)
                assert sum(dataset.info.placement.values()) == dataset.info.partitions, dataset.info
                got = client.sum(dataset)
                assert np.isclose(got, want, rtol=1e-5), (got, want)
                client.drop("w7")

            _, cpu = timed(put, runs, pids)
            report(f"put {label}, {agents} agent{'s' if agents > 1 else ''}", x.nbytes, timings[1:], cpu, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="the array's size (float32)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", default="1,2", help="agent counts, comma-separated")
    parser.add_argument("--only", choices=("bare", "puts", "all"), default="all")
    args = parser.parse_args()
    x = np.random.default_rng(7).standard_normal((args.mib << 20) // 4, dtype=np.float32)
    print(f"put of {x.nbytes / 2**30:.2f} GiB float32; {args.runs} timed runs after 1 warm-up; "
          f"GB/s = 1e9 bytes/s (CPU s/put includes each put's check, a sum job, for puts)", flush=True)
    if args.only in ("bare", "all"):
        for frame in sorted({wire.FRAME_BYTES, 4 << 20}):
            bare_stream(x, args.runs, frame)
    if args.only in ("puts", "all"):
        for agents in (int(a) for a in args.agents.split(",")):
            puts(x, agents, args.runs)


if __name__ == "__main__":
    main()
