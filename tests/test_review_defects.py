"""Defects found by reading the code (issue 11, section 5), each pinned by the test that found it."""
from __future__ import annotations

import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

import lepton
from lepton.cli import table
from lepton.client import state_name
from lepton.v1 import agent_service_pb2 as agent_pb, agent_service_pb2_grpc as agent_grpc
from lepton.v1 import coordinator_service_pb2 as pb


def lepton_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lepton", *args], capture_output=True, text=True, timeout=timeout)


# -- 6: client-side errors are lepton.LeptonError, so the CLI reports them instead of a traceback ---------

def test_a_bad_parameter_on_the_command_line_is_a_message_not_a_traceback(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(10))
    # The parameter is rejected while the request is built, before any connection: no cluster needed.
    out = lepton_cli("run", "sum", str(tmp_path / "x.npy"), "-p", "k=a,b", "--coordinator", "127.0.0.1:1")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "INVALID_ARGUMENT" in out.stderr and "parameter 'k'" in out.stderr


def test_client_side_errors_are_lepton_errors():
    from lepton import wire

    with pytest.raises(lepton.LeptonError) as info:
        wire.encode_params({"k": ["a", "b"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(lepton.InvalidInput):
        wire.header("x", np.array(["text"]))  # a dtype the wire cannot carry


# -- 7: iterating a Job twice ends both times ---------------------------------------------------------------

def iterate_within(job, seconds: float) -> list:
    """The statuses one more iteration of `job` yields; fails instead of hanging past `seconds`."""
    seen, done = [], threading.Event()

    def read():
        seen.extend(job)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(seconds), "iterating the job did not end"
    return seen


def test_iterating_a_job_twice_ends_both_times(client):
    job = client.submit("sum", np.arange(1000.0))
    first = iterate_within(job, 60)
    assert state_name(first[-1]) == "SUCCEEDED"
    assert iterate_within(job, 60) == []  # nothing new: the job is over
    assert job.result()["sum"] == np.arange(1000.0).sum()


def test_two_threads_iterating_one_job_both_end(client):
    job = client.submit("sum", np.arange(1000.0))
    readers = [threading.Thread(target=lambda: list(job), daemon=True) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert not any(reader.is_alive() for reader in readers)


# -- 11: JoinCluster validates names and addresses; `lepton status` keeps its cells narrow ----------------

@pytest.fixture(scope="module")
def empty_cluster():
    """A coordinator with no agents of its own: fake agents join it without stealing anyone's jobs."""
    with lepton.LocalCluster(agents=0) as cluster:
        yield cluster


def join(cluster, **fields) -> agent_pb.JoinClusterResponse:
    request = {"name": "agent", "address": "127.0.0.1:1", "credits": 1, **fields}
    with cluster.channel(peer=True) as channel:  # with the cluster's join token
        return agent_grpc.AgentRegistryServiceStub(channel).JoinCluster(agent_pb.JoinClusterRequest(**request),
                                                                        timeout=30)


def leave(cluster, agent_id: str) -> None:
    with cluster.channel(peer=True) as channel:
        agent_grpc.AgentRegistryServiceStub(channel).LeaveCluster(agent_pb.LeaveClusterRequest(agent_id=agent_id),
                                                                  timeout=30)


@pytest.mark.parametrize("fields, message", [
    ({"name": ""}, "name"),
    ({"name": "x" * 5000}, "name"),
    ({"name": "line\nbreak"}, "name"),
    ({"name": "\x00\x01\x7f"}, "name"),
    ({"address": ""}, "address"),
    ({"address": "no-port"}, "address"),
    ({"address": "host:port"}, "address"),
    ({"address": "host:99999"}, "address"),
    ({"address": "host:0"}, "address"),
    ({"address": "a b:80"}, "address"),
    ({"address": "\xff\xfe:80"}, "address"),
    ({"address": "h" * 300 + ":80"}, "address"),
    ({"metrics_address": "nonsense"}, "metrics_address"),
])
def test_join_rejects_garbage_names_and_addresses(empty_cluster, fields, message):
    with pytest.raises(grpc.RpcError) as info:
        join(empty_cluster, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert empty_cluster.client().cluster_status().agents == []


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "node-7.example.org:9000", "[::1]:8080", "localhost:1"])
def test_join_accepts_real_addresses(empty_cluster, address):
    reply = join(empty_cluster, name="host-1234", address=address, metrics_address="127.0.0.1:9100")
    leave(empty_cluster, reply.agent_id)


def test_status_of_an_agent_with_huge_device_fields_stays_a_few_lines(empty_cluster):
    """Device fields come from the agent and are not validated: the table must bound them itself."""
    device = pb.DeviceInfo(name="d\n" * 500, kind="numpy", description="x" * 10_000 + "\n" * 2000,
                           ops=[f"op{i}" for i in range(2000)])
    reply = join(empty_cluster, name="big", devices=[device])
    try:
        out = lepton_cli("status", "--coordinator", empty_cluster.address, "--token-file", str(empty_cluster.token_file))
    finally:
        leave(empty_cluster, reply.agent_id)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 10, len(lines)
    assert max(map(len, lines)) < 1000


def test_table_cells_are_one_line_and_capped():
    text = table(["A", "B"], [["x" * 10_000, "a\nb\x00c"], ["short", "ok"]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert max(map(len, lines)) <= 2 * 64 + 2
    assert "a?b?c" in text and "…" in lines[2]
    wide = table(["OPS"], [["y" * 150]], limits={"OPS": 200})
    assert "y" * 150 in wide
