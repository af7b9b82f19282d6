"""The flags of `lepton coordinator`, apart from the server so that the CLI can list them cheaply."""
from __future__ import annotations

import argparse
import os

from lepton import credentials, lifecycle


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
    parser.add_argument("--max-agents", type=int, default=int(env("LEPTON_MAX_AGENTS", 1024)),
                        help="agents registered at once [LEPTON_MAX_AGENTS]")
    parser.add_argument("--max-client-jobs", type=int, default=int(env("LEPTON_MAX_CLIENT_JOBS", 64)),
                        help="jobs one client (token or certificate) may run at once [LEPTON_MAX_CLIENT_JOBS]")
    parser.add_argument("--etcd", default=env("LEPTON_ETCD", ""),
                        help="high availability: http(s)://HOST:PORT of etcd (several, comma-separated: members "
                             "of one etcd cluster, tried in order), where the coordinators elect a leader and "
                             "keep the metadata; run two or more, sharing --data-dir (default: none, one "
                             "coordinator with its metadata in memory) [LEPTON_ETCD]")
    parser.add_argument("--etcd-ca", default=env("LEPTON_ETCD_CA", ""),
                        help="https etcd endpoints: check etcd's certificate against this CA (PEM; default: the "
                             "system's roots) [LEPTON_ETCD_CA]")
    parser.add_argument("--etcd-cert", default=env("LEPTON_ETCD_CERT", ""),
                        help="a client certificate to present to etcd (PEM; etcd's --client-cert-auth), with "
                             "--etcd-key [LEPTON_ETCD_CERT]")
    parser.add_argument("--etcd-key", default=env("LEPTON_ETCD_KEY", ""),
                        help="the private key of --etcd-cert [LEPTON_ETCD_KEY]")
    parser.add_argument("--etcd-prefix", default=env("LEPTON_ETCD_PREFIX", "/lepton/"),
                        help="the cluster's keys in etcd: one prefix per cluster [LEPTON_ETCD_PREFIX]")
    parser.add_argument("--lease-ttl", type=int, default=int(env("LEPTON_LEASE_TTL", 2)),
                        help="seconds a dead leader keeps the lead before a standby takes over, and that a "
                             "leader unable to renew its lease waits before it steps down to standby (at least "
                             "2, etcd's minimum; with several etcd members, more than etcd's election timeout) "
                             "[LEPTON_LEASE_TTL]")
    parser.add_argument("--advertise", default=env("LEPTON_COORDINATOR_ADVERTISE", ""),
                        help="host:port that standbys name to clients and agents (default: the listen address) "
                             "[LEPTON_COORDINATOR_ADVERTISE]")
    parser.add_argument("--placement", choices=("speed", "credits"), default=env("LEPTON_PLACEMENT", "speed"),
                        help="how runs are sized and placed: speed (by each device's measured throughput) or "
                             "credits (guided self-scheduling, blind to speed) [LEPTON_PLACEMENT]")
    parser.add_argument("--inline-kib", type=float, default=float(env("LEPTON_INLINE_KIB", 64)),
                        help="a reduction of one partition with at most this many KiB of input, which NumPy agents "
                             "would run, is computed by the coordinator itself, saving the hop to an agent "
                             "(its trace says agent 'coordinator'); 0: every job goes to an agent [LEPTON_INLINE_KIB]")
    credentials.add_server_arguments(parser, "coordinator")
    lifecycle.add_arguments(parser)
    # Tests: seconds the writer of a dataset's copy waits, its bytes in a temporary file, before it
    # flushes and renames the file (a crash in the middle of writing the copy).
    parser.add_argument("--test-slow-disk", type=float, default=0.0, help=argparse.SUPPRESS)
