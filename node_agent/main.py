"""`lepton agent`: open the devices, serve AgentService, join the coordinator; stop on SIGTERM (flags: flags.py)."""
from __future__ import annotations

import argparse
import logging
import os

from lepton.backends.discovery import open_devices
from lepton import failover, security
from lepton.errors import ResourceExhausted
from lepton.logs import configure, event
from lepton.tuning import keep_large_buffers_in_heap
from lepton import lifecycle
from lepton.serving import NOT_SERVING, start_metrics
from lepton.agent import addresses, flags, metrics
from lepton.agent.agent import Agent
from lepton.agent.membership import MembershipClient
from lepton.agent.server import serve

log = logging.getLogger("lepton.agent")


def _out_of_memory(op, inputs, params):
    raise ResourceExhausted(f"test hook: {op.name} on {sum(a.nbytes for a in inputs.values())} bytes is out of "
                            f"device memory (--test-out-of-memory)")


def run(args: argparse.Namespace) -> int:
    configure("agent")
    try:
        flags.check_throttle(args.throttle)
    except ValueError as exc:
        raise SystemExit(f"lepton agent: {exc}") from None
    creds = security.credentials_from_args(args, "agent")
    towards = failover.parse(args.coordinator)[0]  # of several (a highly available cluster), the first
    security.check_exposure("agent", creds, addresses.listen_address(args.listen, towards), args.metrics_listen)
    keep_large_buffers_in_heap(server=True)
    parent = lifecycle.ParentGuard.from_env()  # before open_devices: mpi:N execs mpiexec, which keeps PDEATHSIG
    # Devices first: an MPI device may re-exec this process under mpiexec, before any thread exists.
    devices = open_devices(args.device or [os.environ.get("LEPTON_DEVICE", "numpy")])
    if args.test_out_of_memory:
        for device in devices:
            device.run = _out_of_memory
    # Said in the description: the coordinator then leaves even tiny jobs to us (contract.SLOWED_MARKS).
    # (--test-throttle-after needs no mark: the device says "[throttled" once it slows down.)
    hooks = [flag for flag, on in (("--test-delay", args.test_delay[1]), ("--test-out-of-memory", args.test_out_of_memory))
             if on]
    if hooks:
        for device in devices:
            device.description += f" [test hooks: {' '.join(hooks)}]"
    agent = Agent(devices, args.credits, args.test_delay, int(args.cache_mib * (1 << 20)), args.throttle,
                  args.test_throttle_after)
    listen = addresses.listen_address(args.listen, towards)
    server, port, health = serve(agent, listen, creds=creds)
    address = addresses.advertise_address(args.advertise, listen, port, towards)
    metrics.register(agent)
    metrics_address = start_metrics(args.metrics_listen, **security.metrics_tls(creds))
    event(log, "agent.serving", address=address, devices=",".join(d.name for d in devices),
          credits=agent.credits, metrics=metrics_address or "off",
          **({"throttle": f"{args.throttle:g}x (a deliberate slowdown)"} if args.throttle != 1 else {}))
    shutdown = lifecycle.Shutdown(args.shutdown_timeout)
    membership = MembershipClient(agent, args.coordinator, args.name, address, metrics_address,
                                  coordinator_timeout=args.coordinator_timeout, on_give_up=shutdown.request,
                                  dial=creds.channel)
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
