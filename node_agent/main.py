"""`lepton agent`: open the devices, serve AgentService, join the coordinator; stop on SIGTERM."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

from lepton.backends.discovery import open_devices
from lepton.logs import configure, event
from lepton.tuning import keep_large_buffers_in_heap
from lepton.serving import NOT_SERVING, start_metrics, wait_for_stop_signal
from lepton.agent import addresses, metrics
from lepton.agent.agent import Agent
from lepton.agent.membership import MembershipClient
from lepton.agent.server import serve

log = logging.getLogger("lepton.agent")


def _delay(text: str) -> tuple[float, float]:
    low, _, high = text.rpartition(":")
    return float(low or 0), float(high)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--coordinator", default=env("LEPTON_COORDINATOR", "127.0.0.1:50051"),
                        help="coordinator host:port [LEPTON_COORDINATOR]")
    parser.add_argument("--device", action="append", default=None,
                        help="device spec: numpy[:N], opencl[:I|:NAME], mpi (under mpiexec), mpi:N[@HOSTFILE] "
                             "(launches N ranks; LEPTON_MPI_HOSTFILE); repeatable or comma-separated "
                             "[LEPTON_DEVICE, default numpy]")
    parser.add_argument("--listen", default=env("LEPTON_AGENT_LISTEN"),
                        help="host:port to serve on (port 0 picks one; default: this host's address towards the "
                             "coordinator, port 0) [LEPTON_AGENT_LISTEN]")
    parser.add_argument("--advertise", default=env("LEPTON_ADVERTISE"),
                        help="host:port the coordinator should dial (default: the listen address; for a wildcard listen "
                             "address, this host's address towards the coordinator) [LEPTON_ADVERTISE]")
    parser.add_argument("--name", default=env("LEPTON_AGENT_NAME", f"{socket.gethostname()}-{os.getpid()}"),
                        help="name shown by `lepton status` [LEPTON_AGENT_NAME]")
    parser.add_argument("--credits", type=int, default=int(env("LEPTON_CREDITS", 0)),
                        help="partitions accepted at once (0: two per device) [LEPTON_CREDITS]")
    parser.add_argument("--cache-mib", type=float, default=float(env("LEPTON_CACHE_MIB", 2048)),
                        help="memory for tensors kept between tasks: dataset partitions, weights "
                             "[LEPTON_CACHE_MIB]")
    parser.add_argument("--metrics-listen", default=env("LEPTON_AGENT_METRICS", "127.0.0.1:0"),
                        help="host:port of the Prometheus endpoint (port 0 picks one; 'off' disables) "
                             "[LEPTON_AGENT_METRICS]")
    # Tests: sleep before each partition, uniformly in [0, MAX] or [MIN, MAX] ("MIN:MAX").
    parser.add_argument("--test-delay", type=_delay, default=_delay(env("LEPTON_TEST_DELAY", "0")),
                        help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    configure("agent")
    keep_large_buffers_in_heap()
    # Devices first: an MPI device may re-exec this process under mpiexec, before any thread exists.
    devices = open_devices(args.device or [os.environ.get("LEPTON_DEVICE", "numpy")])
    agent = Agent(devices, args.credits, args.test_delay, int(args.cache_mib * (1 << 20)))
    listen = addresses.listen_address(args.listen, args.coordinator)
    server, port, health = serve(agent, listen)
    address = addresses.advertise_address(args.advertise, listen, port, args.coordinator)
    metrics.register(agent)
    metrics_address = start_metrics(args.metrics_listen)
    event(log, "agent.serving", address=address, devices=",".join(d.name for d in devices),
          credits=agent.credits, metrics=metrics_address or "off")
    membership = MembershipClient(agent, args.coordinator, args.name, address, metrics_address)
    membership.start()
    broken: list[str] = []
    stop = threading.Event()
    for device in devices:
        device.on_failure = lambda reason, name=device.name: (broken.append(f"{name}: {reason}"), stop.set())
    wait_for_stop_signal(stop)
    if broken:
        event(log, "agent.device_failed", level=logging.ERROR, reasons="; ".join(broken))
    event(log, "agent.stopping", agent=membership.agent_id)
    health.set_all(NOT_SERVING)
    membership.stop()
    server.stop(grace=3).wait()
    agent.stop()
    return 1 if broken else 0
