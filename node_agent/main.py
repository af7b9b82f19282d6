"""`lepton agent`: open the devices, serve AgentService, join the coordinator; stop on SIGTERM (flags: flags.py)."""
from __future__ import annotations

import argparse
import logging
import os
import threading

from lepton.backends.discovery import open_devices
from lepton.logs import configure, event
from lepton.tuning import keep_large_buffers_in_heap
from lepton.serving import NOT_SERVING, start_metrics, wait_for_stop_signal
from lepton.agent import metrics
from lepton.agent.agent import Agent
from lepton.agent.membership import MembershipClient
from lepton.agent.server import serve

log = logging.getLogger("lepton.agent")


def run(args: argparse.Namespace) -> int:
    configure("agent")
    keep_large_buffers_in_heap()
    # Devices first: an MPI device may re-exec this process under mpiexec, before any thread exists.
    devices = open_devices(args.device or [os.environ.get("LEPTON_DEVICE", "numpy")])
    agent = Agent(devices, args.credits, args.test_delay, int(args.cache_mib * (1 << 20)))
    server, port, health = serve(agent, args.listen)
    address = args.advertise or f"{args.listen.rsplit(':', 1)[0]}:{port}"
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
