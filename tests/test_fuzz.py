"""Fuzz a live coordinator and a live agent with malformed and adversarial streams (tests/fuzz_inputs.py).

Every call must end with a status before its deadline, never UNKNOWN (an unhandled exception in a
servicer) nor INTERNAL; the servers must stay healthy and keep computing right answers, and once
the fuzzing stops their resident memory must come back to within 20% of its starting value. The starting value
is taken after the servers have started, served a warm-up of well-formed calls (jobs, a dataset put
and dropped, status calls) and trimmed their heaps once while idle; the final one after the same
well-formed calls again and two idle trims (lepton_heap_trims_total), so both are measured alike.

Each server is fuzzed for LEPTON_FUZZ_SECONDS (default 20: under a minute in all, for CI), and
longer if MIN_INPUTS have not run by then (a loaded machine), up to twice that time; at least
MIN_INPUTS must have run. LEPTON_FUZZ_SEED replays a run.
"""
from __future__ import annotations

import collections
import os
import random
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import fuzz_inputs
import lepton
from references import assert_matches
from waits import wait_for

SECONDS = float(os.environ.get("LEPTON_FUZZ_SECONDS", 20))
MIN_INPUTS = 500  # per server: 15 s gave 2,600 (agent) and 5,000 (coordinator) at a load of 6 on 2 cores
GROWTH = 1.2  # the bound: resident memory back within 20% of its starting value
SEED = int(os.environ.get("LEPTON_FUZZ_SEED", 20261201))
# UNKNOWN: an exception no servicer mapped; INTERNAL: gRPC's "Exception deserializing request!" (a
# request that does not parse is the caller's error: lepton.decoding makes it INVALID_ARGUMENT).
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)
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


def fuzz(address: str, services: set[str], seconds: float, metadata, rng: random.Random) -> collections.Counter:
    """Send inputs for `seconds`, or until MIN_INPUTS have run if that is later (at most twice
    `seconds`); the statuses they ended with."""
    seen: collections.Counter = collections.Counter()
    bad: list[str] = []
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        start = time.monotonic()
        for n, (service, method, requests) in enumerate(fuzz_inputs.inputs(rng, services)):
            spent = time.monotonic() - start
            if spent > 2 * seconds or (spent > seconds and n >= MIN_INPUTS):
                break
            code, details = call(channel, service, method, requests, metadata)
            seen[code.name] += 1
            if code in NEVER:
                bad.append(f"{method.name} input {n}: {code.name} {details[:300]}")
            if n % 50 == 0:
                assert serving(channel), f"{address} stopped serving after input {n}"
    assert not bad, f"seed {SEED}: {len(bad)} calls ended UNKNOWN, INTERNAL or past their deadline:\n" + "\n".join(bad[:20])
    return seen


def trims(metrics_address: str) -> float:
    """The server's count of idle heap trims (lepton.tuning.IdleTrim)."""
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith("lepton_heap_trims_total "))


def settled_rss(pids: dict[str, int], metrics: dict[str, str]) -> dict[str, int]:
    """Each server's RSS once it has trimmed its heap twice from now: the first trim may have begun
    before now, the second began after."""
    goals = {name: trims(address) + 2 for name, address in metrics.items()}
    for name, address in metrics.items():
        wait_for(lambda: trims(address) >= goals[name], f"two idle heap trims of the {name}", timeout=60)
    return {name: rss(pid) for name, pid in pids.items()}


def well_formed_calls(client) -> None:
    """What the servers serve before and after the fuzzing, alike: jobs checked against NumPy (rtol
    1e-12 on float64 sums and variances), a dataset put, used and dropped, status calls."""
    x = np.random.default_rng(9).standard_normal((20_000, 3))
    assert_matches("sum", x, {"sum": client.sum(x, partitions=4)})
    assert_matches("var", x, {"var": client.var(x, partitions=4)})
    client.put("fuzz-warm", x, partitions=4, replace=True)
    assert_matches("sum", x, {"sum": client.sum("fuzz-warm")})
    client.drop("fuzz-warm")
    client.cluster_status(), client.jobs(), client.datasets()


@pytest.fixture(scope="module")
def cluster():
    # No tokens: the fuzzed inputs must reach the servicers, not stop at the gate (test_security.py
    # walks every RPC against the gate itself).
    with lepton.LocalCluster(agents=1, token="") as cluster:
        yield cluster


def test_fuzzed_servers_answer_with_statuses_stay_healthy_and_give_their_memory_back(cluster, capsys):
    client = cluster.client(timeout=60)
    well_formed_calls(client)  # warm: imports, thread pools, first buffers
    status = client.cluster_status()
    pids = {"coordinator": cluster.coordinator.pid, "agent": cluster.agents[0].pid}
    metrics = {"coordinator": status.metrics_address, "agent": status.agents[0].metrics_address}
    targets = {"coordinator": (cluster.address, {"lepton.v1.CoordinatorService", "lepton.v1.AgentRegistryService"}),
               "agent": (status.agents[0].address, {"lepton.v1.AgentService"})}
    before = settled_rss(pids, metrics)
    counts, spent = {}, {}
    for name, (address, services) in targets.items():
        start = time.monotonic()
        counts[name] = fuzz(address, services, SECONDS, (), random.Random(f"{SEED}-{name}"))
        spent[name] = time.monotonic() - start
    well_formed_calls(client)  # still right after the fuzzing
    for dataset in client.datasets():  # what the fuzzer managed to put is state it asked for: drop it
        client.drop(dataset.name)
    after = settled_rss(pids, metrics)
    with capsys.disabled():
        for name in pids:
            print(f"\nfuzz {name}: {sum(counts[name].values())} inputs in {spent[name]:.0f} s {dict(counts[name])}; "
                  f"RSS {before[name] >> 20} -> {after[name] >> 20} MiB")
    for name in pids:
        assert after[name] <= GROWTH * before[name], (f"{name}'s RSS went from {before[name] >> 20} to "
                                                     f"{after[name] >> 20} MiB")
    assert all(sum(c.values()) >= MIN_INPUTS for c in counts.values()), counts


def test_requests_that_do_not_parse_end_invalid_argument_and_leave_no_call_behind():
    """lepton.decoding on a real gRPC server in this process, where its calls can be counted: gRPC's
    own path ends such calls INTERNAL and keeps each one alive for good (grpcio 1.85)."""
    import gc
    from concurrent import futures

    from lepton.decoding import ParseInHandler
    from lepton.serving import add_standard_services

    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[ParseInHandler()])
    add_standard_services(server, [])  # health (unary) and reflection (a stream each way, no error mapping)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    garbage = b"\xff\xff\xff"  # a field tag with no end: no message parses from it
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")

            def calls() -> int:
                gc.collect()
                return sum(type(o).__name__ == "Call" and type(o).__module__ == "grpc._cython.cygrpc"
                           for o in gc.get_objects())

            before = calls()
            for _ in range(100):
                for send in (lambda: check(garbage, timeout=10), lambda: list(reflect(iter([garbage]), timeout=10))):
                    with pytest.raises(grpc.RpcError) as error:
                        send()
                    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
                    assert "does not parse" in error.value.details() and "/grpc." in error.value.details()
            assert wait_for(lambda: calls() <= before + 2, "the failed calls to be freed", timeout=10)
    finally:
        server.stop(0)  # (no wait: with calls leaked, as without lepton.decoding, it would never end)
