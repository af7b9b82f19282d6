"""`lepton agent`: open the devices, serve AgentService, join the coordinator; stop on SIGTERM."""
from __future__ import annotations

import argparse
import logging
import os
import socket

from lepton.backends.discovery import open_devices
from lepton.logs import configure, event
from lepton.tuning import keep_large_buffers_in_heap
from lepton import lifecycle
from lepton.serving import NOT_SERVING, start_metrics
from lepton.agent import metrics
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
    parser.add_argument("--listen", default=env("LEPTON_AGENT_LISTEN", "127.0.0.1:0"),
                        help="host:port to serve on (port 0 picks one) [LEPTON_AGENT_LISTEN]")
    parser.add_argument("--advertise", default=env("LEPTON_ADVERTISE"),
                        help="host:port the coordinator should dial (default: the listen address) [LEPTON_ADVERTISE]")
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
    parser.add_argument("--coordinator-timeout", type=float,
                        default=float(env("LEPTON_COORDINATOR_TIMEOUT", 600)),
                        help="seconds without reaching the coordinator before the agent gives up and exits "
                             "non-zero (0: retry forever) [LEPTON_COORDINATOR_TIMEOUT]")
    lifecycle.add_arguments(parser)
    # Tests: sleep before each partition, uniformly in [0, MAX] or [MIN, MAX] ("MIN:MAX").
    parser.add_argument("--test-delay", type=_delay, default=_delay(env("LEPTON_TEST_DELAY", "0")),
                        help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    configure("agent")
    keep_large_buffers_in_heap()
    parent = lifecycle.ParentGuard.from_env()  # before open_devices: mpi:N execs mpiexec, which keeps PDEATHSIG
    # Devices first: an MPI device may re-exec this process under mpiexec, before any thread exists.
    devices = open_devices(args.device or [os.environ.get("LEPTON_DEVICE", "numpy")])
    agent = Agent(devices, args.credits, args.test_delay, int(args.cache_mib * (1 << 20)))
    server, port, health = serve(agent, args.listen)
    address = args.advertise or f"{args.listen.rsplit(':', 1)[0]}:{port}"
    metrics.register(agent)
    metrics_address = start_metrics(args.metrics_listen)
    event(log, "agent.serving", address=address, devices=",".join(d.name for d in devices),
          credits=agent.credits, metrics=metrics_address or "off")
    shutdown = lifecycle.Shutdown(args.shutdown_timeout)
    membership = MembershipClient(agent, args.coordinator, args.name, address, metrics_address,
                                  coordinator_timeout=args.coordinator_timeout, on_give_up=shutdown.request)
    membership.start()
    parent.watch(shutdown.request)
    broken: list[str] = []
    for device in devices:
        device.on_failure = lambda reason, name=device.name: (broken.append(f"{name}: {reason}"),
                                                              shutdown.request("device failed"))
    reason = shutdown.wait()
    if broken:
        event(log, "agent.device_failed", level=logging.ERROR, reasons="; ".join(broken))
    event(log, "agent.stopping", agent=membership.agent_id, reason=reason, bound=shutdown.bound)
    health.set_all(NOT_SERVING)
    shutdown.step("leaving the cluster")
    membership.stop()
    shutdown.stop_server(server)
    shutdown.step("stopping devices")
    agent.stop()
    return 1 if broken or membership.gave_up else 0
