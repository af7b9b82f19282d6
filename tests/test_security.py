"""Strangers get nothing: real coordinators and agents, real TLS on loopback, every RPC of every service.

The RPC walks find their methods from the service descriptors of what each server lists by reflection,
so a new RPC (or service) is covered without touching this file. A call that must be refused sends
an empty request: a refusal is decided before the request is read.
"""
from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2  # noqa: F401 - registers grpc.health.v1 in the descriptor pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import lepton
from lepton import certs, errors, security, wire
from lepton.local import _SECURITY_ENV
from lepton.v1 import agent_service_pb2 as agent_pb, agent_service_pb2_grpc as agent_grpc
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc, job_pb2
from test_other_languages import check, cpp_example, node_example, run_example  # noqa: F401 - fixtures
from waits import wait_for

UNAUTHENTICATED, UNAVAILABLE = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def tls_cluster():
    """TLS everywhere, a client token and a join token; agents obey only the coordinator's certificate."""
    with lepton.LocalCluster(agents=2, tls=True, mtls=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mtls_cluster():
    """As tls_cluster, and the coordinator requires a client certificate from every caller."""
    with lepton.LocalCluster(agents=2, tls=True, mtls=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def plain_cluster():
    """Plaintext on loopback with the random per-cluster tokens (what LocalCluster does by default)."""
    with lepton.LocalCluster(agents=1) as cluster:
        yield cluster


# -- walking the services ----------------------------------------------------------------------
def served_services(channel) -> list[str]:
    """The services a server lists by reflection (asked with valid credentials)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return [s.name for s in next(replies).list_services_response.service]


def methods(channel) -> list[tuple[str, object]]:
    """(path, method descriptor) of every RPC of every service the server offers."""
    pool = descriptor_pool.Default()
    found = []
    for name in served_services(channel):
        service = pool.FindServiceByName(name)
        found += [(f"/{service.full_name}/{m.name}", m) for m in service.methods]
    assert found
    return found


def call(channel, path: str, method, timeout: float = 10) -> None:
    """Invoke any RPC with one empty request and read the whole answer (raises grpc.RpcError)."""
    same = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    request = iter([b""]) if method.client_streaming else b""
    answer = kind(path, **same)(request, timeout=timeout)
    if method.server_streaming:
        list(answer)


def refused(channel, path, method) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, path, method)
    return info.value.code()


def agent_addresses(cluster) -> list[str]:
    return [a.address for a in cluster.client(timeout=30).cluster_status().agents]


def ca_file(cluster) -> str:
    return str(cluster.certs / "ca.pem")


# -- the coordinator ---------------------------------------------------------------------------
def test_every_coordinator_rpc_refuses_missing_and_wrong_tokens_over_tls(tls_cluster):
    cluster = tls_cluster
    rpcs = methods(cluster.channel())
    assert {"/lepton.v1.CoordinatorService/SubmitJob", "/lepton.v1.AgentRegistryService/JoinCluster",
            "/grpc.health.v1.Health/Check"} <= {path for path, _ in rpcs}
    no_token = security.channel(cluster.address, tls_ca=ca_file(cluster))
    wrong = security.channel(cluster.address, token="not-" + cluster.token, tls_ca=ca_file(cluster))
    plaintext = security.channel(cluster.address, token=cluster.token)
    for path, method in rpcs:
        assert refused(no_token, path, method) == UNAUTHENTICATED, path
        assert refused(wrong, path, method) == UNAUTHENTICATED, path
        assert refused(plaintext, path, method) == UNAVAILABLE, path
    # Each secret opens only its own door: the join token is no client token, and the other way round.
    client_as_agent = security.channel(cluster.address, token=cluster.token, tls_ca=ca_file(cluster))
    agent_as_client = security.channel(cluster.address, token=cluster.join_token, tls_ca=ca_file(cluster))
    for path, method in rpcs:
        if path.startswith("/lepton.v1.AgentRegistryService/"):
            assert refused(client_as_agent, path, method) == UNAUTHENTICATED, path
        if path.startswith("/lepton.v1.CoordinatorService/"):
            assert refused(agent_as_client, path, method) == UNAUTHENTICATED, path
    # The right token gets in (so the refusals above are about the token, not the call).
    assert len(cluster.client(timeout=30).cluster_status().agents) == 2


def test_a_tls_server_does_not_answer_a_client_that_does_not_trust_its_ca(tls_cluster):
    other = certs.create(tls_cluster.log_dir / "other-ca", agents=0)
    with lepton.Client(tls_cluster.address, timeout=5, token=tls_cluster.token, tls_ca=other / "ca.pem") as client:
        with pytest.raises(lepton.LeptonError) as info:
            client.cluster_status()
    assert info.value.code == UNAVAILABLE


def test_mtls_coordinator_refuses_callers_without_a_certificate(mtls_cluster):
    cluster = mtls_cluster
    rpcs = methods(cluster.channel())
    no_cert = security.channel(cluster.address, token=cluster.token, tls_ca=ca_file(cluster))
    cert_no_token = security.channel(cluster.address, tls_ca=ca_file(cluster), tls_cert=cluster.certs / "client.pem",
                                     tls_key=cluster.certs / "client.key")
    for path, method in rpcs:
        assert refused(no_cert, path, method) == UNAVAILABLE, path
        assert refused(cert_no_token, path, method) == UNAUTHENTICATED, path


def test_a_read_only_token_reads_and_changes_nothing():
    read = "read-only-" + "x" * 20
    with lepton.LocalCluster(agents=1, coordinator_args=["--read-token", read]) as cluster:
        channel = security.channel(cluster.address, token=read)
        for path, method in methods(cluster.channel()):
            if not path.startswith("/lepton.v1.CoordinatorService/"):
                continue
            if path.rsplit("/", 1)[1] in security.READ_METHODS:
                try:
                    call(channel, path, method)
                except grpc.RpcError as exc:  # an empty GetJob is NOT_FOUND: past the gate
                    assert exc.code() != UNAUTHENTICATED, path
            else:
                assert refused(channel, path, method) == UNAUTHENTICATED, path
        with lepton.Client(cluster.address, timeout=30, token=read) as client:
            assert len(client.cluster_status().agents) == 1
            with pytest.raises(errors.Unauthenticated):
                client.sum(np.ones(4, np.float32))


# -- the agents --------------------------------------------------------------------------------
def test_every_agent_rpc_refuses_missing_and_wrong_credentials(plain_cluster):
    cluster = plain_cluster
    (address,) = agent_addresses(cluster)
    rpcs = methods(cluster.channel(address, peer=True))
    assert {"/lepton.v1.AgentService/RunTask", "/lepton.v1.AgentService/CacheTensors",
            "/lepton.v1.AgentService/DropCached"} <= {path for path, _ in rpcs}
    for token in ["", "not-" + cluster.join_token, cluster.token]:  # the client token is no agent credential
        stranger = security.channel(address, token=token)
        for path, method in rpcs:
            assert refused(stranger, path, method) == UNAUTHENTICATED, (path, token == cluster.token)
    # The coordinator's secret gets in.
    agent_grpc.AgentServiceStub(cluster.channel(address, peer=True)).DropCached(
        agent_pb.DropCachedRequest(prefix="nothing/"), timeout=10)


def test_tls_agents_obey_only_their_coordinators_certificate(tls_cluster):
    cluster = tls_cluster
    address = agent_addresses(cluster)[0]
    rpcs = methods(cluster.channel(address, peer=True))
    agent_rpcs = [(p, m) for p, m in rpcs if p.startswith("/lepton.v1.AgentService/")]
    ca = ca_file(cluster)
    # No certificate, or plaintext: no connection at all.
    for channel in [security.channel(address, token=cluster.join_token, tls_ca=ca),
                    security.channel(address, token=cluster.join_token)]:
        for path, method in rpcs:
            assert refused(channel, path, method) == UNAVAILABLE, path
    # A fellow agent's certificate, even with the join token, is not the coordinator's.
    fellow = security.channel(address, token=cluster.join_token, tls_ca=ca, tls_cert=cluster.certs / "agent-2.pem",
                              tls_key=cluster.certs / "agent-2.key")
    for path, method in agent_rpcs:
        assert refused(fellow, path, method) == UNAUTHENTICATED, path
    # A certificate named lepton-coordinator, from another CA: refused in the handshake.
    other = certs.create(cluster.log_dir / "impostor", agents=0)
    impostor = security.channel(address, token=cluster.join_token, tls_ca=ca, tls_cert=other / "coordinator.pem",
                                tls_key=other / "coordinator.key")
    for path, method in agent_rpcs:
        assert refused(impostor, path, method) == UNAVAILABLE, path
    agent_grpc.AgentServiceStub(cluster.channel(address, peer=True)).DropCached(
        agent_pb.DropCachedRequest(prefix="nothing/"), timeout=10)


def test_a_strangers_cached_tensor_never_lands(plain_cluster):
    """CacheTensors and RunTask with real payloads, from a caller holding only the client token."""
    cluster = plain_cluster
    (address,) = agent_addresses(cluster)
    stub = agent_grpc.AgentServiceStub(security.channel(address, token=cluster.token))
    weights = np.full(1024, 7, np.float32)
    header = agent_pb.CacheTensorsHeader(tensors=[agent_pb.TaskInput(tensor=wire.header("w", weights),
                                                                      cache_key="planted")])
    requests = [agent_pb.CacheTensorsRequest(header=header)] + [agent_pb.CacheTensorsRequest(chunk=c)
                                                                for c in wire.chunks([weights])]
    with pytest.raises(grpc.RpcError) as info:
        stub.CacheTensors(iter(requests), timeout=10)
    assert info.value.code() == UNAUTHENTICATED
    task = agent_pb.Task(job_id="stranger", op="sum", first_partition=0, partition_count=1, tree_arity=2,
                         partitions=[agent_pb.TaskPartition(inputs=[agent_pb.TaskInput(
                             tensor=wire.header("x", weights), cache_key="planted", by_reference=True)])])
    with pytest.raises(grpc.RpcError) as info:
        list(stub.RunTask(iter([agent_pb.RunTaskRequest(task=task)]), timeout=10))
    assert info.value.code() == UNAUTHENTICATED
    # The coordinator itself may ask: the key was never planted.
    coordinator = agent_grpc.AgentServiceStub(cluster.channel(address, peer=True))
    with pytest.raises(grpc.RpcError) as info:
        list(coordinator.RunTask(iter([agent_pb.RunTaskRequest(task=task)]), timeout=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- joining -----------------------------------------------------------------------------------
def lepton_env(**extra) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _SECURITY_ENV}, **extra}


def spawn(args: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lepton", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("credential", ["no join token", "wrong join token", "client token as join token"])
def test_an_agent_without_the_join_credential_cannot_register(plain_cluster, credential, tmp_path):
    cluster = plain_cluster
    token = {"no join token": "", "wrong join token": "not-" + cluster.join_token,
             "client token as join token": cluster.token}[credential]
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = spawn(["agent", "--coordinator", cluster.address], lepton_env(LEPTON_JOIN_TOKEN=token), log)
    try:
        wait_for(lambda: "code=UNAUTHENTICATED" in log_path.read_text(errors="replace"), "a refused JoinCluster")
        assert len(cluster.client(timeout=30).cluster_status().agents) == 1
    finally:
        stop(agent)


def test_under_mtls_agents_join_by_certificate_and_clients_cannot(mtls_cluster, tmp_path):
    cluster = mtls_cluster
    ca = ca_file(cluster)
    request = agent_pb.JoinClusterRequest(name="stranger", address="127.0.0.1:1", credits=1)
    client_cert = security.channel(cluster.address, token=cluster.token, tls_ca=ca,
                                   tls_cert=cluster.certs / "client.pem", tls_key=cluster.certs / "client.key")
    with pytest.raises(grpc.RpcError) as info:
        agent_grpc.AgentRegistryServiceStub(client_cert).JoinCluster(request, timeout=10)
    assert info.value.code() == UNAUTHENTICATED
    # An agent with a certificate of the cluster and no join token at all joins.
    pem, key = certs.write_pair(cluster.certs, "agent-9", f"{security.AGENT_CN_PREFIX}-9", cluster._ca)
    env = lepton_env(LEPTON_TLS_CA=ca, LEPTON_TLS_CERT=str(pem), LEPTON_TLS_KEY=str(key))
    with open(tmp_path / "agent.log", "wb") as log:
        agent = spawn(["agent", "--coordinator", cluster.address], env, log)
    try:
        status = cluster.client(timeout=30)
        wait_for(lambda: len(status.cluster_status().agents) == 3, "the certified agent to join")
        np.testing.assert_array_equal(status.sum(np.arange(100_000, dtype=np.int64)), np.arange(100_000).sum())
    finally:
        stop(agent)


# -- one cluster, secure or not ----------------------------------------------------------------
def test_a_secure_cluster_gives_the_plaintext_clusters_results(mtls_cluster):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(3_000_000).astype(np.float32)
    a, b = rng.standard_normal((512, 64)).astype(np.float32), rng.standard_normal((64, 32)).astype(np.float32)
    with lepton.LocalCluster(agents=2, token="") as plain:
        results = []
        for cluster in (plain, mtls_cluster):
            client = cluster.client(timeout=120)
            results.append({"sum": client.sum(x, partitions=8), "mean": client.mean(x, partitions=8),
                            "counts": client.histogram(x, bins=32, range=[-4, 4], partitions=8)[0],
                            "matmul": client.matmul(a, b)})
    for name in results[0]:  # the same partitions and tree on both: bitwise the same
        np.testing.assert_array_equal(results[1][name], results[0][name], err_msg=name)
    # and right: float32 sums of 3M values to 1e-5 relative of the sum of |x|, counts exactly
    assert abs(float(results[1]["sum"]) - np.sum(x, dtype=np.float64)) <= 1e-5 * np.sum(np.abs(x), dtype=np.float64)
    np.testing.assert_array_equal(results[1]["counts"], np.histogram(x, bins=32, range=(-4, 4))[0])
    np.testing.assert_allclose(results[1]["matmul"], a @ b, rtol=1e-4, atol=1e-4)  # float32, inner dimension 64


def test_metrics_endpoints_serve_tls_only(mtls_cluster):
    cluster = mtls_cluster
    status = cluster.client(timeout=30).cluster_status()
    context = ssl.create_default_context(cafile=ca_file(cluster))
    context.load_cert_chain(cluster.certs / "client.pem", cluster.certs / "client.key")
    for address in [status.metrics_address, *(a.metrics_address for a in status.agents)]:
        with urllib.request.urlopen(f"https://{address}/metrics", context=context, timeout=10) as reply:
            assert b"lepton_" in reply.read()
        with pytest.raises(Exception):  # plaintext HTTP gets no metrics
            urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read()
        no_cert = ssl.create_default_context(cafile=ca_file(cluster))
        with pytest.raises((ssl.SSLError, OSError)):  # mutual TLS: no client certificate, no metrics
            urllib.request.urlopen(f"https://{address}/metrics", context=no_cert, timeout=10).read()


# -- secure by default -------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["coordinator", "agent"])
def test_serving_beyond_loopback_without_tls_refuses_to_start_and_says_how(role):
    done = subprocess.run([sys.executable, "-m", "lepton", role, "--listen", "0.0.0.0:0"], env=lepton_env(),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0:0 without TLS" in done.stderr
    assert "lepton certs" in done.stderr and "--insecure" in done.stderr


def test_insecure_starts_beyond_loopback_and_warns(tmp_path):
    ready = tmp_path / "address"
    log_path = tmp_path / "coordinator.log"
    with open(log_path, "wb") as log:
        process = spawn(["coordinator", "--listen", "0.0.0.0:0", "--insecure", "--ready-file", str(ready)],
                        lepton_env(), log)
    try:
        wait_for(lambda: ready.exists() or process.poll() is not None, "the coordinator to serve")
        assert process.poll() is None, log_path.read_text()
        text = log_path.read_text()
        assert "WARNING" in text and "event=security.insecure" in text and "anyone who can reach" in text
        with lepton.Client("127.0.0.1:" + ready.read_text().rsplit(":", 1)[1], timeout=10, token="") as client:
            assert list(client.cluster_status().agents) == []
    finally:
        stop(process)
    assert process.returncode == 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readmes_two_machine_setup_on_one_machine(tmp_path):
    """The README's commands, with both machines being this one: every port beyond loopback, no --insecure."""
    certs_dir = tmp_path / "certs"
    env = lepton_env()
    done = subprocess.run([sys.executable, "-m", "lepton", "certs", str(certs_dir), "--agents", "1", "--host",
                           "127.0.0.1"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert oct((certs_dir / "token").stat().st_mode & 0o777) == "0o600"
    c = certs_dir
    port, agent_port = free_port(), free_port()
    with open(tmp_path / "coordinator.log", "wb") as log:
        coordinator = spawn(["coordinator", "--listen", f"0.0.0.0:{port}", "--tls-cert", f"{c}/coordinator.pem",
                             "--tls-key", f"{c}/coordinator.key", "--tls-ca", f"{c}/ca.pem", "--token-file",
                             f"{c}/token", "--join-token-file", f"{c}/join-token"], env, log)
    with open(tmp_path / "agent.log", "wb") as log:
        agent = spawn(["agent", "--coordinator", f"127.0.0.1:{port}", "--listen", f"0.0.0.0:{agent_port}",
                       "--advertise", f"127.0.0.1:{agent_port}", "--tls-cert", f"{c}/agent-1.pem", "--tls-key",
                       f"{c}/agent-1.key", "--tls-ca", f"{c}/ca.pem", "--join-token-file", f"{c}/join-token"],
                      env, log)
    try:
        def joined() -> bool:
            for process in (coordinator, agent):
                assert process.poll() is None, "".join(p.read_text() for p in tmp_path.glob("*.log"))
            out = subprocess.run([sys.executable, "-m", "lepton", "status", "--coordinator", f"127.0.0.1:{port}",
                                  "--tls-ca", f"{c}/ca.pem", "--token-file", f"{c}/token"], env=env,
                                 capture_output=True, text=True, timeout=60)
            return out.returncode == 0 and "1 agent(s)" in out.stdout
        wait_for(joined, "the agent to join over TLS")
        with lepton.Client(f"127.0.0.1:{port}", timeout=60, token=(c / "token").read_text().strip(),
                           tls_ca=c / "ca.pem") as client:
            x = np.arange(10_000, dtype=np.float64)
            assert float(client.sum(x)) == float(x.sum())  # integers: exact
        assert "security.insecure" not in (tmp_path / "coordinator.log").read_text()
    finally:
        stop(agent)
        stop(coordinator)


# -- limits ------------------------------------------------------------------------------------
def test_the_agent_cap_refuses_one_more(tmp_path):
    with lepton.LocalCluster(agents=1, coordinator_args=["--max-agents", "1"]) as cluster:
        stub = agent_grpc.AgentRegistryServiceStub(cluster.channel(peer=True))
        with pytest.raises(grpc.RpcError) as info:
            stub.JoinCluster(agent_pb.JoinClusterRequest(name="one-too-many", address="127.0.0.1:1", credits=1),
                             timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-agents" in info.value.details()


def test_one_client_runs_at_most_its_share_of_jobs_and_gets_it_back():
    with lepton.LocalCluster(agents=1, coordinator_args=["--max-client-jobs", "1"],
                             agent_args=["--test-delay", "0.5:0.5"]) as cluster:
        client = cluster.client(timeout=120)
        x = np.arange(1024, dtype=np.float32)
        slow = client.submit("sum", x, partitions=4)  # four partitions of 0.5 s each on one agent
        next(iter(slow))  # accepted: it is running
        with pytest.raises(errors.ResourceExhausted):
            client.run("sum", x)
        assert float(slow.result()["sum"]) == float(x.sum())
        for _ in range(3):  # its share came back, every time
            assert float(client.run("sum", x)["sum"]) == float(x.sum())


def test_a_message_over_the_size_limit_is_refused(plain_cluster):
    stub = pb_grpc.CoordinatorServiceStub(plain_cluster.channel())

    def submit(label_bytes: int):
        spec = pb.SubmitJobRequest(spec=job_pb2.JobSpec(op="no-such-op", label="x" * label_bytes))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.SubmitJob(iter([spec]), timeout=30))
        return info.value.code()

    assert submit(7 << 20) == grpc.StatusCode.INVALID_ARGUMENT  # past gRPC's 4 MiB default, within Lepton's limit
    assert submit(security.MAX_MESSAGE_BYTES + 1) == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- other languages ---------------------------------------------------------------------------
def tls_flags(cluster, client_cert: bool) -> list[str]:
    flags = ["--tls-ca", ca_file(cluster), "--token-file", str(cluster.token_file)]
    if client_cert:
        flags += ["--tls-cert", str(cluster.certs / "client.pem"), "--tls-key", str(cluster.certs / "client.key")]
    return flags


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_node_client_connects_with_tls_and_a_token(request, node_example, mtls):
    cluster = request.getfixturevalue("mtls_cluster" if mtls else "tls_cluster")
    out = run_example(node_example, cluster, tls_flags(cluster, mtls))
    assert out["client"] == "node"
    check(out, cluster)
    without = subprocess.run([*node_example, cluster.address, "--tls-ca", ca_file(cluster)], capture_output=True,
                             text=True, timeout=150, stdin=subprocess.DEVNULL, env=lepton_env())
    assert without.returncode != 0 and ("UNAUTHENTICATED" in without.stderr or "UNAVAILABLE" in without.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_cpp_client_connects_with_tls_and_a_token(request, cpp_example, mtls):
    cluster = request.getfixturevalue("mtls_cluster" if mtls else "tls_cluster")
    out = run_example(cpp_example, cluster, tls_flags(cluster, mtls))
    assert out["client"] == "cpp"
    check(out, cluster)
    without = subprocess.run([*cpp_example, cluster.address, "--tls-ca", ca_file(cluster)], capture_output=True,
                             text=True, timeout=150, stdin=subprocess.DEVNULL, env=lepton_env())
    assert without.returncode != 0 and ("status 16" in without.stderr or "status 14" in without.stderr)


# -- secrets stay secret -----------------------------------------------------------------------
def test_no_token_appears_in_any_log(tls_cluster, mtls_cluster, plain_cluster):
    for cluster in (tls_cluster, mtls_cluster, plain_cluster):
        cluster.client(timeout=30).sum(np.ones(8, np.float32))
        text = "".join(p.read_text(errors="replace") for p in cluster.log_dir.glob("*.log"))
        assert "event=agent.joined" in text
        for secret in (cluster.token, cluster.join_token):
            assert secret not in text


def test_the_dashboard_needs_the_token_serves_plotly_itself_and_can_be_off():
    """The Dashboard section: every request needs the cluster's token, plotly.js comes from the
    coordinator (no address beyond it in the page), and `--dashboard-listen off` serves none."""
    import re
    import urllib.error

    def get(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, b""

    with lepton.LocalCluster(agents=1) as cluster:
        url = cluster.dashboard_url
        base, token = url.split("?token=")
        assert token and get(base)[0] == 401 and get(f"{base}?token=wrong{token}")[0] == 401
        status, page = get(url)
        assert status == 200 and b"static/plotly.min.js" in page
        assert not re.search(rb"""(src|href)\s*=\s*["']?https?://""", page)  # nothing fetched from elsewhere
        assert get(f"{base}static/plotly.min.js")[0] == 401
        status, script = get(f"{base}static/plotly.min.js?token={token}")
        assert status == 200 and b"plotly" in script[:4096].lower() and len(script) > 1 << 20
    with lepton.LocalCluster(agents=1, coordinator_args=["--dashboard-listen", "off"]) as cluster:
        assert cluster.dashboard_url == ""


def test_credentials_are_compared_in_constant_time(monkeypatch):
    """'in constant time': a timing test would flake on a loaded machine, so this checks (white-box)
    that the interceptor's comparison is hmac.compare_digest's, and that it still tells tokens apart."""
    import hmac

    compared, compare = [], hmac.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", recording)
    assert security._matches("s3cret", "s3cret") and not security._matches("s3cres", "s3cret")
    assert not security._matches("", "")  # no token configured matches nothing
    assert compared[:2] == [(b"s3cret", b"s3cret"), (b"s3cres", b"s3cret")]
