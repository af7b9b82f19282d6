"""The Kubernetes manifests and the images, checked offline: every overlay renders with
`kubectl kustomize`, validates strictly against a stated Kubernetes version, and agrees with the
CLI it runs (flags, environment variables, ports, probes); the Dockerfiles install with the same
script the docs use."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lepton.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir())
KUBERNETES = "1.32.0"  # the oldest release still supported upstream when these were written


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / request.param)],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def containers(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def test_both_overlays_exist():
    assert OVERLAYS == ["cpu", "gpu"]


def test_renders_and_validates_strictly(rendered):
    import kubernetes_validate

    for doc in rendered:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = sorted(doc["kind"] for doc in rendered)
    assert kinds == sorted(["Secret", "Deployment", "Service", "Service", "StatefulSet", "NetworkPolicy",
                            "NetworkPolicy", "PodDisruptionBudget", "PodDisruptionBudget"])


def test_every_container_runs_a_command_the_cli_accepts(rendered):
    parser = build_parser()
    for _, container in containers(rendered):
        args = parser.parse_args(container["args"])  # SystemExit (a failure) on an unknown flag
        assert args.command == container["args"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in container:
                command = container[probe]["exec"]["command"]
                assert command[0] == "lepton"
                parser.parse_args(command[1:])


def test_environment_variables_are_ones_lepton_reads(rendered):
    sources = "\n".join(p.read_text() for folder in ("clients/python/lepton", "coordinator", "node_agent", "backends")
                        for p in (ROOT / folder).rglob("*.py"))
    read = set(re.findall(r'"(LEPTON_[A-Z0-9_]+)"', sources))
    for _, container in containers(rendered):
        names = {e["name"] for e in container.get("env", []) if e["name"].startswith("LEPTON_")}
        assert names <= read, f"{container['name']} sets {sorted(names - read)}, which no Lepton code reads"
        assert names, container["name"]


def test_ports_probes_and_services_agree(rendered):
    parser = build_parser()
    named: dict[str, dict[str, int]] = {}
    for workload, container in containers(rendered):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        named[workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]] = ports
        args = parser.parse_args(container["args"])
        assert int(args.listen.rpartition(":")[2]) == ports["grpc"], container["name"]
        assert int(args.metrics_listen.rpartition(":")[2]) == ports["metrics"], container["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in container:
                target = parser.parse_args(container[probe]["exec"]["command"][1:]).coordinator
                assert int(target.rpartition(":")[2]) == ports["grpc"]
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        if "LEPTON_ADVERTISE" in env:  # what the coordinator dials back: the agent's own gRPC port
            assert env["LEPTON_ADVERTISE"].endswith(f":{ports['grpc']}")
    for doc in rendered:
        if doc["kind"] == "Service":
            component = doc["spec"]["selector"]["app.kubernetes.io/component"]
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in named[component], (doc["metadata"]["name"], port)
        if doc["kind"] == "NetworkPolicy":
            component = doc["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in doc["spec"]["ingress"]:
                for port in rule["ports"]:
                    assert port["port"] in named[component]
    agent = next(c for _, c in containers(rendered) if c["name"] == "agent")
    coordinator_address = parser.parse_args(agent["args"]).coordinator
    service = next(d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == "lepton-coordinator")
    assert coordinator_address == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_gpu_overlay_asks_for_gpus_and_every_pod_for_resources(rendered):
    gpu = any(e.get("value") == "opencl:gpu" for _, c in containers(rendered) for e in c.get("env", []))
    for _, container in containers(rendered):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        if gpu and container["name"] == "agent":
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_images_install_with_the_script_the_docs_use():
    for dockerfile in sorted((DEPLOY / "docker").glob("Dockerfile*")):
        assert "/src/deploy/install.sh" in dockerfile.read_text(), dockerfile
    assert "deploy/install.sh" in (ROOT / "docs" / "cluster.md").read_text()
    assert subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")]).returncode == 0


def test_the_probe_command_answers_for_a_live_coordinator_and_fails_for_a_dead_one(clusters):
    import sys

    probe = [sys.executable, "-m", "lepton", "health", "--timeout", "5", "--coordinator"]
    live = subprocess.run([*probe, clusters[1].address, "--token-file", str(clusters[1].token_file)],
                          capture_output=True, text=True, timeout=60)
    assert (live.returncode, live.stdout.strip()) == (0, "SERVING"), live.stderr
    dead = subprocess.run([*probe, "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1 and "Traceback" not in dead.stderr
