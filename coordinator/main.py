"""`lepton coordinator`: serve the coordinator until SIGTERM or Ctrl-C."""
from __future__ import annotations

import argparse
import logging
import os

from lepton.coordinator.coordinator import Config, Coordinator
from lepton.coordinator import dashboard, metrics
from lepton.coordinator.server import serve
from lepton.logs import configure, event
from lepton.serving import NOT_SERVING, start_metrics, wait_for_stop_signal
from lepton.tuning import keep_large_buffers_in_heap

log = logging.getLogger("lepton.coordinator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--listen", default=env("LEPTON_LISTEN", "127.0.0.1:50051"),
                        help="host:port to serve on (port 0 picks a free one) [LEPTON_LISTEN]")
    parser.add_argument("--ready-file", default=env("LEPTON_READY_FILE"),
                        help="write the bound address here once serving (for scripts) [LEPTON_READY_FILE]")
    parser.add_argument("--tree-arity", type=int, default=int(env("LEPTON_TREE_ARITY", 8)),
                        help="fan-in of the aggregation tree [LEPTON_TREE_ARITY]")
    parser.add_argument("--target-partition-mib", type=float, default=float(env("LEPTON_TARGET_PARTITION_MIB", 8)),
                        help="default partition size in MiB [LEPTON_TARGET_PARTITION_MIB]")
    parser.add_argument("--heartbeat-timeout", type=float, default=float(env("LEPTON_HEARTBEAT_TIMEOUT", 3)),
                        help="seconds of agent silence before it is dropped [LEPTON_HEARTBEAT_TIMEOUT]")
    parser.add_argument("--max-job-mib", type=float, default=float(env("LEPTON_MAX_JOB_MIB", 16384)),
                        help="largest job input accepted, in MiB [LEPTON_MAX_JOB_MIB]")
    parser.add_argument("--metrics-listen", default=env("LEPTON_METRICS", "127.0.0.1:0"),
                        help="host:port of the Prometheus endpoint (port 0 picks one; 'off' disables) "
                             "[LEPTON_METRICS]")
    parser.add_argument("--dashboard-listen", default=env("LEPTON_DASHBOARD", "127.0.0.1:0"),
                        help="host:port of the live dashboard (HTTP; port 0 picks one; 'off' disables) "
                             "[LEPTON_DASHBOARD]")
    parser.add_argument("--data-dir", default=env("LEPTON_DATA_DIR", ""),
                        help="where the coordinator keeps dataset copies (default: a temporary folder) "
                             "[LEPTON_DATA_DIR]")
    parser.add_argument("--max-active-mib", type=float, default=float(env("LEPTON_MAX_ACTIVE_MIB", 0)),
                        help="input MiB of all unfinished jobs together (0: half the memory) [LEPTON_MAX_ACTIVE_MIB]")
    parser.add_argument("--agent-wait", type=float, default=float(env("LEPTON_AGENT_WAIT", 30)),
                        help="seconds a job waits for a capable agent before failing [LEPTON_AGENT_WAIT]")


def run(args: argparse.Namespace) -> int:
    configure("coordinator")
    keep_large_buffers_in_heap()
    config = Config(tree_arity=args.tree_arity, target_partition_bytes=int(args.target_partition_mib * (1 << 20)),
                    heartbeat_timeout=args.heartbeat_timeout, max_job_bytes=int(args.max_job_mib * (1 << 20)),
                    agent_wait=args.agent_wait, data_dir=args.data_dir,
                    max_active_bytes=int(args.max_active_mib * (1 << 20)))
    coordinator = Coordinator(config)
    metrics.register(coordinator)
    metrics_address = start_metrics(args.metrics_listen)
    board = dashboard.start(coordinator, args.dashboard_listen)
    server, port, health = serve(coordinator, args.listen, metrics_address,
                                 dashboard_address=board.address if board else "")
    address = f"{args.listen.rsplit(':', 1)[0]}:{port}"
    event(log, "coordinator.serving", address=address, metrics=metrics_address or "off",
          dashboard=board.address if board else "off")
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(address)
        os.replace(tmp, args.ready_file)
    wait_for_stop_signal()
    event(log, "coordinator.stopping")
    health.set_all(NOT_SERVING)
    coordinator.stop()
    if board is not None:
        board.stop()
    server.stop(grace=3).wait()
    return 0
