"""Fuzz a live coordinator and a live agent with malformed and adversarial streams (tests/fuzz_inputs.py).

Every call must end with a status before its deadline, never UNKNOWN (an unhandled exception in a
servicer); the servers must stay healthy and keep computing right answers, and their memory must not
grow without bound: a second round of fuzzing may add at most 10% to what the first left. (Resident
memory does not come back to its value before the first round: tracemalloc shows the Python heap
unchanged; the growth is native, gRPC's and the allocator's, retained after the first round.) LEPTON_FUZZ_SECONDS sets the time
per server (default 30: about a minute in all, for CI); LEPTON_FUZZ_SEED replays a run.
"""
from __future__ import annotations

import collections
import os
import random
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import fuzz_inputs
import lepton
from references import assert_matches

SECONDS = float(os.environ.get("LEPTON_FUZZ_SECONDS", 30))
SEED = int(os.environ.get("LEPTON_FUZZ_SEED", 20261201))
DEADLINE = 15.0  # per call: far above any honest answer's time, so a hang shows as DEADLINE_EXCEEDED


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def call(channel: grpc.Channel, service: str, method, requests: list[bytes], metadata) -> tuple[grpc.StatusCode, str]:
    """Send one input; the status it ended with (OK included) and its details."""
    path, same = f"/{service}/{method.name}", (lambda b: b)
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    stub = kinds[(method.client_streaming, method.server_streaming)](path, request_serializer=same,
                                                                      response_deserializer=same)
    request = iter(requests) if method.client_streaming else requests[0]
    try:
        reply = stub(request, timeout=DEADLINE, metadata=metadata)
        if method.server_streaming:
            for _ in reply:
                pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def fuzz(address: str, services: set[str], seconds: float, metadata, rng: random.Random,
         limit: int | None = None) -> collections.Counter:
    """Send inputs for `seconds` (or the first `limit` of them); the statuses they ended with."""
    seen: collections.Counter = collections.Counter()
    bad: list[str] = []
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        end = time.monotonic() + seconds
        for n, (service, method, requests) in enumerate(fuzz_inputs.inputs(rng, services)):
            if (limit is None and time.monotonic() > end) or (limit is not None and n >= limit):
                break
            code, details = call(channel, service, method, requests, metadata)
            seen[code.name] += 1
            if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED):
                bad.append(f"{method.name} input {n}: {code.name} {details[:300]}")
            if n % 50 == 0:
                assert serving(channel), f"{address} stopped serving after input {n}"
    assert not bad, f"seed {SEED}: {len(bad)} calls ended UNKNOWN or past their deadline:\n" + "\n".join(bad[:20])
    return seen


def jobs_still_right(client) -> None:
    x = np.random.default_rng(9).standard_normal((20_000, 3))
    assert_matches("sum", x, {"sum": client.sum(x, partitions=4)})
    assert_matches("var", x, {"var": client.var(x, partitions=4)})


@pytest.fixture(scope="module")
def cluster():
    # No tokens: the fuzzed inputs must reach the servicers, not stop at the gate (test_security.py
    # walks every RPC against the gate itself).
    with lepton.LocalCluster(agents=1, token="") as cluster:
        yield cluster


def test_fuzzed_servers_answer_with_statuses_stay_healthy_and_do_not_grow(cluster, capsys):
    client = cluster.client(timeout=60)
    jobs_still_right(client)  # warm: imports, thread pools, first buffers
    agent_address = client.cluster_status().agents[0].address
    pids = {"coordinator": cluster.coordinator.pid, "agent": cluster.agents[0].pid}
    targets = {"coordinator": (cluster.address, {"lepton.v1.CoordinatorService", "lepton.v1.AgentRegistryService"}),
               "agent": (agent_address, {"lepton.v1.AgentService"})}
    counts = {name: collections.Counter() for name in pids}
    memory = {name: [rss(pid)] for name, pid in pids.items()}
    # Round 1 fuzzes for the time given; round 2 replays exactly the same inputs (same seed and count),
    # so a server that keeps nothing of them allocates the same again and its memory stays put.
    for round in range(2):
        for name, (address, services) in targets.items():
            limit = None if round == 0 else sum(counts[name].values())
            seen = fuzz(address, services, SECONDS / 2, (), random.Random(f"{SEED}-{name}"), limit)
            if round == 0:
                counts[name] = seen
        jobs_still_right(client)
        for dataset in client.datasets():  # what the fuzzer managed to put is state it asked for: drop it
            client.drop(dataset.name)
        time.sleep(6)  # past the servers' idle heap trim (lepton.tuning.IdleTrim)
        for name, pid in pids.items():
            memory[name].append(rss(pid))
    with capsys.disabled():
        for name in pids:
            print(f"\nfuzz {name}: {sum(counts[name].values())} inputs, twice {dict(counts[name])}; RSS before, "
                  f"after round 1, after the replay: {' -> '.join(str(m >> 20) for m in memory[name])} MiB")
    for name, (start, first, second) in memory.items():
        # Nothing kept per input: the replay adds at most 10% (and 8 MiB of slack) to what round 1 left.
        assert second <= 1.1 * first + (8 << 20), (name, start >> 20, first >> 20, second >> 20)
    assert all(sum(c.values()) >= 100 for c in counts.values()), counts
