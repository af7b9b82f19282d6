"""A cluster across hosts: coordinator, two agents and the client each in a network namespace of
their own (tests/netns.py), joined by routable addresses, never 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import netns
from waits import wait_for
from lepton import certs

HERE = Path(__file__).parent
why = netns.unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=f"no network namespaces here: {why}")



@pytest.fixture
def cluster(tmp_path):
    """(hosts, coordinator address, agent logs): a coordinator host, two agent hosts, a client host."""
    with netns.Hosts() as hosts:
        for host in ("coordinator", "agent1", "agent2", "client"):
            hosts.add(host)
        ready = tmp_path / "coordinator.address"
        listen = f"{hosts.addresses['coordinator']}:0"
        logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("coordinator", "agent1", "agent2")}
        coordinator = hosts.python("coordinator", ["-m", "lepton", "coordinator", "--listen", listen,
                                                   "--ready-file", str(ready), *security_args(tmp_path, "coordinator", hosts)],
                                   stdout=logs["coordinator"], stderr=subprocess.STDOUT)
        wait_for(ready.exists, "the coordinator", processes=[coordinator])
        address = ready.read_text()
        agents = [hosts.python(name, ["-m", "lepton", "agent", "--coordinator", address, "--device", "numpy",
                                      *security_args(tmp_path, name, hosts)], stdout=logs[name], stderr=subprocess.STDOUT)
                  for name in ("agent1", "agent2")]
        yield hosts, address, logs, [coordinator, *agents], client_args(tmp_path)


def security_args(tmp_path: Path, role: str, hosts) -> list[str]:
    """What a server on a routable address needs to start (see the README's security section): TLS
    certificates naming every host, the client token and the join token, from `lepton certs`."""
    c = tmp_path / "certs"
    if not (c / "ca.pem").exists():
        certs.create(c, agents=2, hosts=list(hosts.addresses.values()))
    pair = {"coordinator": "coordinator", "agent1": "agent-1", "agent2": "agent-2"}[role]
    args = ["--tls-cert", f"{c}/{pair}.pem", "--tls-key", f"{c}/{pair}.key", "--tls-ca", f"{c}/ca.pem",
            "--join-token-file", f"{c}/join-token"]
    return args + (["--token-file", f"{c}/token"] if role == "coordinator" else [])


def client_args(tmp_path: Path) -> list[str]:
    c = tmp_path / "certs"
    return [f"tls_ca={c}/ca.pem", f"token={(c / 'token').read_text().strip()}"]


def read(log) -> str:
    log.seek(0)
    return log.read()


def test_jobs_across_three_hosts_match_numpy(cluster):
    hosts, address, logs, processes, client = cluster
    # Each agent advertised its own host's address: the coordinator logs what it will dial.
    for name in ("agent1", "agent2"):
        wait_for(lambda: f"address={hosts.addresses[name]}:" in read(logs["coordinator"]),
                 f"{name} to join from {hosts.addresses[name]}", processes=processes)
    joins = [line for line in read(logs["coordinator"]).splitlines() if "event=agent.joined" in line]
    assert len(joins) == 2 and not any("127.0.0.1" in line for line in joins), joins
    done = hosts.run("client", [sys.executable, str(HERE / "multihost_client.py"), address, *client],
                     capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + "\n".join(read(log)[-2000:] for log in logs.values())
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {r["op"] for r in results} >= {"sum", "mean", "var", "min", "max", "histogram", "count", "matmul", "kmeans"}
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert len(results) == 12
