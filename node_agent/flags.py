"""The flags of `lepton agent`, apart from the server so that the CLI can list them cheaply."""
from __future__ import annotations

import argparse
import os
import socket

from lepton import credentials, lifecycle


def _delay(text: str) -> tuple[float, float]:
    low, _, high = text.rpartition(":")
    return float(low or 0), float(high)


def check_throttle(factor: float) -> float:
    if not 1 <= factor <= 1000:
        raise ValueError(f"--throttle is a slowdown factor from 1 (full speed) to 1000; got {factor:g}")
    return factor


def _throttle_after(text: str) -> tuple[int, float]:
    count, _, factor = text.partition(":")
    return int(count), check_throttle(float(factor))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--coordinator", default=env("LEPTON_COORDINATOR", "127.0.0.1:50051"),
                        help="coordinator host:port; of a highly available cluster, every coordinator's, "
                             "comma-separated: the agent follows the leader [LEPTON_COORDINATOR]")
    parser.add_argument("--device", action="append", default=None,
                        help="device spec: numpy[:N], opencl[:I|:NAME], mpi (under mpiexec), mpi:N[@HOSTFILE] "
                             "(launches N ranks; LEPTON_MPI_HOSTFILE); repeatable or comma-separated "
                             "[LEPTON_DEVICE, default numpy]")
    parser.add_argument("--listen", default=env("LEPTON_AGENT_LISTEN"),
                        help="host:port to serve on (port 0 picks one; default: this host's address towards the "
                             "coordinator, port 0) [LEPTON_AGENT_LISTEN]")
    parser.add_argument("--advertise", default=env("LEPTON_ADVERTISE"),
                        help="host:port the coordinator should dial (default: the listen address; for a wildcard "
                             "listen address, this host's address towards the coordinator) [LEPTON_ADVERTISE]")
    parser.add_argument("--name", default=env("LEPTON_AGENT_NAME", f"{socket.gethostname()}-{os.getpid()}"),
                        help="name shown by `lepton status` [LEPTON_AGENT_NAME]")
    parser.add_argument("--credits", type=int, default=int(env("LEPTON_CREDITS", 0)),
                        help="work accepted at once, in partitions of the coordinator's target size; a run whose rows are "
                             "on this host already (resident, or in a client's shared memory) counts as one "
                             "(0: two per device) [LEPTON_CREDITS]")
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
    parser.add_argument("--throttle", type=float, default=float(env("LEPTON_THROTTLE", 1)),
                        help="run every device FACTOR times slower (it waits FACTOR-1 times each partition's "
                             "compute time): a named, honest slowdown to build a heterogeneous cluster on one "
                             "machine; `lepton status` shows it [LEPTON_THROTTLE]")
    lifecycle.add_arguments(parser)
    credentials.add_server_arguments(parser, "agent")
    # Tests: sleep before each partition, uniformly in [0, MAX] or [MIN, MAX] ("MIN:MAX"), counted in
    # its device time (the trace, the coordinator's speed estimate), as a straggler's would be.
    parser.add_argument("--test-delay", type=_delay, default=_delay(env("LEPTON_TEST_DELAY", "0")),
                        help=argparse.SUPPRESS)
    # Tests: after N partitions on this agent, change the throttle to FACTOR ("N:FACTOR"): a device
    # that slows down mid-job.
    parser.add_argument("--test-throttle-after", type=_throttle_after,
                        default=_throttle_after(env("LEPTON_TEST_THROTTLE_AFTER", "0:1")), help=argparse.SUPPRESS)
    # Tests: every partition runs out of device memory, so the split into halves gives up.
    parser.add_argument("--test-out-of-memory", action="store_true",
                        default=env("LEPTON_TEST_OUT_OF_MEMORY", "") not in ("", "0"), help=argparse.SUPPRESS)
