"""The `lepton` command: run a coordinator or an agent, a local cluster, jobs, status, the demo."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time

from lepton import lifecycle


def _lazy(module: str, name: str):
    """`module.name`, imported when first called: `lepton --help` needs neither gRPC nor NumPy, and only
    the command that runs a server loads that server's stack."""
    return lambda *args, **kwargs: getattr(importlib.import_module(module), name)(*args, **kwargs)


Client = _lazy("lepton.client", "Client")
state_name = _lazy("lepton.client", "state_name")

DEFAULT_ADDRESS = os.environ.get("LEPTON_ADDRESS", "127.0.0.1:50051")


def connect(args, timeout: float | None = None) -> Client:
    """A client with the command's --token, --token-file and --tls-* (each defaults to its LEPTON_* variable)."""
    from lepton.credentials import read_token

    token = read_token(args.token, args.token_file) if (args.token or args.token_file) else None
    # A person waits for the answer: retry an UNAVAILABLE coordinator briefly (a restart), not for long.
    return Client(args.coordinator, timeout, token=token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, tls=True if args.tls else None, retry_for=5)


CELL_WIDTH = 64  # characters; wider cells end in "…" (--json has everything)


def _cell(value, width: int) -> str:
    """One line of at most `width` printable characters: names and descriptions come from agents."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= width else text[:width - 1] + "…"


def table(headers: list[str], rows: list[list], limits: dict[str, int] | None = None) -> str:
    """Aligned columns, each cell capped at CELL_WIDTH characters, or at limits[header]."""
    caps = [(limits or {}).get(h, CELL_WIDTH) for h in headers]
    cells = [headers] + [[_cell(c, cap) for c, cap in zip(row, caps)] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rate(bytes_per_second: float) -> str:
    return f"{bytes_per_second / 1e9:.1f} GB/s" if bytes_per_second >= 1e8 else f"{bytes_per_second / 1e6:.0f} MB/s"


def as_json(*messages) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps([MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2)


def cmd_status(args) -> int:
    with connect(args, timeout=10) as client:
        status = client.cluster_status()
        jobs = client.jobs(limit=args.jobs)
    if args.json:
        print(json.dumps({"cluster": json.loads(as_json(status))[0], "jobs": json.loads(as_json(*jobs))}, indent=2))
        return 0
    rows = []
    for agent in status.agents:
        for i, d in enumerate(agent.devices):
            speed = ", ".join(f"{op} {_rate(v)}" for op, v in sorted(d.throughput.items())) or "-"
            head = [agent.agent_id, agent.name, agent.address, f"{agent.in_flight}/{agent.credits}",
                    f"{agent.last_heartbeat_age_seconds:.1f}s"] if i == 0 else [""] * 5
            rows.append(head + [d.name, d.description, ",".join(d.ops), speed])
    print(f"coordinator {args.coordinator}: {len(status.agents)} agent(s), "
          f"{status.jobs_running} job(s) running, {status.jobs_total} known; "
          f"metrics at http://{status.metrics_address or '-'}/metrics; "
          f"dashboard at {'http://' + status.dashboard_address + '/' if status.dashboard_address else 'off'}")
    if rows:
        print(table(["AGENT", "NAME", "ADDRESS", "IN FLIGHT", "HEARTBEAT", "DEVICE", "MODEL", "OPS", "MEASURED"], rows,
                    limits={"OPS": 4 * CELL_WIDTH, "MEASURED": 4 * CELL_WIDTH}))  # every op, as a rule
    else:
        print("no agents: start one with `lepton agent --coordinator ADDRESS`")
    if jobs:
        print()
        print(jobs_table(jobs))
    return 0


def jobs_table(jobs) -> str:
    return table(["JOB", "OP", "LABEL", "STATE", "PARTITIONS", "MB", "SECONDS", "ERROR"],
                 [[j.job_id, j.op, j.label, state_name(j), f"{j.partitions_done}/{j.partitions_total}",
                   f"{j.bytes_total / 1e6:.1f}", f"{(j.finished_at or time.time()) - j.submitted_at:.2f}",
                   f"{j.error_code} {j.error_message}".strip()] for j in jobs], limits={"ERROR": 4 * CELL_WIDTH})


def cmd_jobs(args) -> int:
    with connect(args, timeout=10) as client:
        jobs = client.jobs(limit=args.limit)
    print(as_json(*jobs) if args.json else jobs_table(jobs) if jobs else "no jobs yet")
    return 0


def _parse_value(text: str):
    parts = text.split(",")
    values = []
    for part in parts:
        for cast in (int, float):
            try:
                values.append(cast(part))
                break
            except ValueError:
                continue
        else:
            values.append({"true": True, "false": False}.get(part.lower(), part))
    return values if len(parts) > 1 else values[0]


def run_with_progress(job, description: str, quiet: bool = False) -> dict:
    """Wait for a job, drawing a progress bar on a terminal (tqdm hides itself elsewhere)."""
    from tqdm import tqdm

    with tqdm(total=0, desc=description, unit="part", disable=None if not quiet else True, leave=False) as bar:
        for status in job:
            bar.total = status.partitions_total
            bar.n = status.partitions_done
            bar.set_postfix_str(f"{status.bytes_received / 1e6:.0f}/{status.bytes_total / 1e6:.0f} MB in")
            bar.refresh()
    return job.result()


def cmd_run(args) -> int:
    import numpy as np

    inputs = {"x": args.file} if args.file else {}
    for item in args.input:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"lepton run: --input takes NAME=FILE.npy or NAME=@DATASET; got {item!r}")
        inputs[name] = path
    if not inputs:
        raise SystemExit("lepton run: give a .npy file, or --input NAME=FILE.npy (NAME=@DATASET for a dataset)")
    arrays = {n: p[1:] if p.startswith("@") else np.asarray(np.load(p, mmap_mode="r")) for n, p in inputs.items()}
    params = {}
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = _parse_value(value)
    with connect(args) as client:
        job = client.submit(args.op, arrays, partitioning=args.partitioning, partitions=args.partitions,
                            label=" ".join(os.path.basename(p) for p in inputs.values()), **params)
        start = time.perf_counter()
        result = run_with_progress(job, f"{args.op} {' '.join(inputs.values())}")
        seconds = time.perf_counter() - start
    if args.output:
        np.savez(args.output, **result)
    if args.json:
        print(json.dumps({k: np.asarray(v).tolist() for k, v in result.items()}))
    else:
        np.set_printoptions(threshold=20, edgeitems=4)
        for name, value in result.items():
            print(f"{name} = {value}")
    print(f"{job.status.job_id}: {job.status.bytes_total / 1e6:.1f} MB in {seconds:.2f}s, "
          f"{job.status.partitions_total} partitions", file=sys.stderr)
    return 0


def cmd_up(args) -> int:
    from lepton.local import LocalCluster

    # The children stop within most of our bound, so that we can still SIGKILL a straggler in it.
    children = max(0.5, 0.8 * args.shutdown_timeout)
    devices = args.device or ["numpy"]
    throttle = [float(t) for t in args.throttle.split(",")]
    try:
        cluster = LocalCluster(agents=args.agents, devices=devices * args.agents if len(devices) == 1 else devices,
                               detach=args.detach, env={"LEPTON_SHUTDOWN_TIMEOUT": f"{children:g}"},
                               throttle=throttle * args.agents if len(throttle) == 1 else throttle, ha=args.ha)
    except ValueError as exc:
        print(f"lepton up: {exc} (give --device and --throttle once for every agent, or once per agent)",
              file=sys.stderr)
        return 2
    args.device = ";".join(devices) + (f" (throttled {args.throttle}x: a deliberate slowdown)"
                                       if set(throttle) != {1.0} else "")
    if args.detach:
        cluster.start()
        cluster.close_clients()
        pids = " ".join(str(p.pid) for p in [*cluster.coordinators, *cluster.agents,
                                             *([cluster.etcd.process] if cluster.etcd else [])])
        print(f"lepton cluster up, detached: coordinator {cluster.address}, {args.agents} agent(s) with "
              f"{args.device}; logs in {cluster.log_dir}")
        print(f"its client token: --token-file {cluster.token_file}")
        print(f"stop it with: kill {pids}", flush=True)
        return 0
    shutdown = lifecycle.Shutdown(args.shutdown_timeout)  # before start: a SIGTERM while starting is bounded too
    with cluster:
        print(f"lepton cluster up: coordinator {cluster.address}, {args.agents} agent(s) with {args.device}")
        if cluster.etcd:
            print(f"high availability: etcd at {cluster.etcd.url}; kill one coordinator and the other leads "
                  f"(pids {' '.join(str(p.pid) for p in cluster.coordinators)})")
        print(f"dashboard: {cluster.dashboard_url or 'off'}")
        print(f"try: lepton status --coordinator {cluster.address} --token-file {cluster.token_file}"
              f"    (Ctrl-C stops the cluster)", flush=True)
        # With --ha one coordinator may go (that is the point); the cluster is down when both are.
        processes = [*cluster.agents, *([] if args.ha else [cluster.coordinator])]
        while not shutdown.stop.wait(0.5):
            if any(p.poll() is not None for p in processes) or all(p.poll() is not None for p in cluster.coordinators):
                print("a cluster process exited:\n" + cluster.logs(), file=sys.stderr)
                return 1
        shutdown.step("stopping the cluster")
        cluster.close(timeout=children)
    return 0


def cmd_trace(args) -> int:
    from lepton import trace

    with connect(args, timeout=10) as client:
        result = client.trace(args.job_id)
        labels = trace.device_labels(client.cluster_status())  # names throttled devices as such
    if args.json:
        print(as_json(result))
        return 0
    job = result.job
    print(f"{job.job_id} {job.op} {state_name(job)}: {job.partitions_done}/{job.partitions_total} partitions, "
          f"{(job.finished_at or time.time()) - job.submitted_at:.3f}s")
    print(table(trace.HEADERS, trace.rows(result)))
    print("\n".join(trace.summary(result, labels)))
    if args.plot:
        trace.plot(result, args.plot, labels)
        print(f"timeline written to {args.plot}")
    return 0


def cmd_devices(args) -> int:
    """What `lepton agent --device` can open on this machine."""
    rows = [["numpy", "NumPy reference", "-", "always"]]
    try:
        from lepton.backends.opencl import describe_devices

        # fresh: re-probe each device, so a repaired driver is seen (and its cached verdict replaced).
        described = describe_devices(fresh=True)
        rows += [[f"opencl:{d['index']}", f"{d['name']} ({d['platform']})", d["type"],
                  f"{d['compute_units']} CUs, {d['global_memory_bytes'] >> 20} MiB, driver {d['driver_version']}"
                  if d["usable"] else f"unusable (driver {d['driver_version']}): {d['reason']}"]
                 for d in described]
        if not any(d["usable"] for d in described):
            rows.append(["opencl", "no usable OpenCL device", "-",
                         "apt-get install pocl-opencl-icd (CPUs), or your GPU's OpenCL driver"])
    except ImportError as exc:
        rows.append(["opencl", f"unavailable: {exc}", "-", "-"])
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    rows.append(["mpi:N", "MPI pool of N ranks", "cpu", mpiexec or "no mpiexec found"])
    # Wider cells than status tables: an unusable device's reason is the compiler's whole error line.
    print(table(["SPEC", "DEVICE", "TYPE", "DETAILS"], rows, limits={"DEVICE": 128, "DETAILS": 256}))
    return 0


def cmd_put(args) -> int:
    import numpy as np

    array = np.asarray(np.load(args.file, mmap_mode="r"))
    with connect(args) as client:
        dataset = client.put(args.name, array, partitioning=args.partitioning, partitions=args.partitions,
                             key_column=args.key_column, replace=args.replace, durable=args.durable)
    placement = ", ".join(f"{agent}: {n}" for agent, n in sorted(dataset.info.placement.items()))
    saved = ", saved to disk" if args.durable else ""
    print(f"{dataset.name}: {array.nbytes / 1e6:.1f} MB in {dataset.info.partitions} partitions ({placement}{saved}); "
          f"use it as `lepton run OP -i x=@{dataset.name}`")
    return 0


def cmd_datasets(args) -> int:
    with connect(args, timeout=10) as client:
        datasets = client.datasets()
    if args.json:
        print(as_json(*(d.info for d in datasets)))
    elif not datasets:
        print("no datasets: load one with `lepton put NAME FILE.npy`")
    else:
        print(table(["NAME", "SHAPE", "MB", "PARTITIONS", "RESIDENT ON"],
                    [[d.name, "x".join(map(str, d.shape)), f"{d.info.total_bytes / 1e6:.1f}", d.info.partitions,
                      ", ".join(f"{a}: {n}" for a, n in sorted(d.info.placement.items())) or "-"] for d in datasets]))
    return 0


def cmd_drop(args) -> int:
    with connect(args, timeout=30) as client:
        client.drop(args.name)
    print(f"dropped {args.name}")
    return 0


def cmd_cancel(args) -> int:
    with connect(args, timeout=10) as client:
        status = client.cancel(args.job_id)
    print(f"{status.job_id}: {state_name(status)}")
    return 0


def connect_to(args, address: str, timeout: float | None = None, retry_for: float = 5) -> Client:
    """connect(args), to one address (of several in --coordinator), not following the leader."""
    from lepton.credentials import read_token

    token = read_token(args.token, args.token_file) if (args.token or args.token_file) else None
    return Client(address, timeout, token=token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                  tls=True if args.tls else None, retry_for=retry_for, failover_timeout=0)


# `lepton health` with several addresses (a highly available group): what its exit status says.
HEALTH_OK, HEALTH_NO_LEADER, HEALTH_DEGRADED, HEALTH_SEVERAL_LEADERS = 0, 1, 2, 3


def cmd_health(args) -> int:
    """One address: exit 0 when the server answers grpc.health.v1 SERVING (probes: Kubernetes exec,
    scripts). Several (every coordinator of a highly available group): each is asked, a line each,
    and the exit status says what a supervisor needs to know (HEALTH_*): 0, one leads and every other
    answers as a standby naming it; 1, none leads (no job can run); 2, one leads but another address
    is unreachable, or names another leader (the group could not survive the next failure); 3, more
    than one says it leads (a deposed leader that has not noticed yet: ask again)."""
    from lepton import failover
    from lepton.errors import LeptonError

    addresses = failover.parse(args.coordinator)
    if len(addresses) == 1:
        with connect(args, timeout=args.timeout) as client:
            status = client.health(args.service)
        print(status)
        return 0 if status == "SERVING" else 1
    rows, named, serving = [], {}, set()
    for address in addresses:
        with connect_to(args, address, timeout=args.timeout, retry_for=0) as client:
            try:
                status = client.health(args.service)
            except LeptonError as exc:  # no answer at all, or a refusal (a wrong token): named as such
                answered = exc.code.name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
                rows.append([address, exc.code.name if answered else "UNREACHABLE", f"{exc.code.name}: {exc.details}"])
                continue
            try:
                leader = named[address] = client.leader()
            except LeptonError as exc:  # it answers, but not whom it follows (a wrong token, say)
                rows.append([address, status, f"unknown ({exc.code.name}: {exc.details})"])
                continue
        if status == "SERVING":
            serving.add(address)
        role = ("leader" if leader == address and status == "SERVING" else
                f"standby (leader {leader})" if leader else "standby (no leader known)")
        rows.append([address, status, role])
    print(table(["ADDRESS", "HEALTH", "ROLE"], rows))
    leaders = [a for a, leader in named.items() if leader == a and a in serving]
    if len(leaders) > 1:
        print(f"several coordinators say they lead: {', '.join(leaders)}")
        return HEALTH_SEVERAL_LEADERS
    if not leaders:
        print("no coordinator leads")
        return HEALTH_NO_LEADER
    if len(named) < len(addresses) or any(leader != leaders[0] for leader in named.values()):
        print(f"leader: {leaders[0]}; degraded: not every other coordinator stands by for it")
        return HEALTH_DEGRADED
    print(f"leader: {leaders[0]}")
    return HEALTH_OK


def build_parser() -> argparse.ArgumentParser:
    # The servers' flags live apart from their code (flags.py): listing them loads no server.
    from lepton.agent import flags as agent_flags
    from lepton.coordinator import flags as coordinator_flags

    parser = argparse.ArgumentParser(prog="lepton", description="Lepton compute fabric")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("coordinator", help="serve a coordinator")
    coordinator_flags.add_arguments(p)
    p.set_defaults(func=_lazy("lepton.coordinator.main", "run"))

    p = sub.add_parser("agent", help="serve a node agent and join a coordinator")
    agent_flags.add_arguments(p)
    p.set_defaults(func=_lazy("lepton.agent.main", "run"))

    p = sub.add_parser("up", help="run a local cluster in the foreground until Ctrl-C")
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--device", action="append",
                   help="device spec: once for every agent, or repeated once per agent (default numpy)")
    p.add_argument("--throttle", default="1",
                   help="slowdown factors, one for all agents or comma-separated per agent, e.g. 1,2,4 "
                        "(`lepton agent --throttle`)")
    p.add_argument("--detach", action="store_true",
                   help="start the cluster and return, leaving it running after this command ends "
                        "(without it, the cluster ends with this command, however it ends)")
    p.add_argument("--ha", action="store_true",
                   help="high availability: a private etcd and two coordinators, one leading; kill the "
                        "leader and the standby takes over (needs etcd: Debian's etcd-server)")
    lifecycle.add_arguments(p)
    p.set_defaults(func=cmd_up)

    def with_address(p):
        p.add_argument("--coordinator", default=DEFAULT_ADDRESS, help="coordinator host:port (several, comma-separated: follow the leader) [LEPTON_ADDRESS]")
        p.add_argument("--token", help="the coordinator's client token [LEPTON_TOKEN]")
        p.add_argument("--token-file", help="read the token from this file [LEPTON_TOKEN_FILE]")
        p.add_argument("--tls", action="store_true", help="TLS, checking the server against the system's roots "
                                                          "[LEPTON_TLS=1]")
        p.add_argument("--tls-ca", help="TLS, checking the server against this CA [LEPTON_TLS_CA]")
        p.add_argument("--tls-cert", help="client certificate, for --mtls coordinators [LEPTON_TLS_CERT]")
        p.add_argument("--tls-key", help="its private key [LEPTON_TLS_KEY]")
        return p

    p = with_address(sub.add_parser("status", help="agents, devices, ops and recent jobs"))
    p.add_argument("--jobs", type=int, default=10, help="recent jobs to list")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = with_address(sub.add_parser("jobs", help="recent jobs, newest first"))
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs)

    p = with_address(sub.add_parser("trace", help="per-partition timings of a job"))
    p.add_argument("job_id")
    p.add_argument("--plot", metavar="FILE.png", help="draw a timeline, one row per device")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_trace)

    p = with_address(sub.add_parser("run", help="run an op on .npy files or datasets"))
    p.add_argument("op")
    p.add_argument("file", nargs="?", help="the input x (a .npy file)")
    p.add_argument("-i", "--input", action="append", default=[],
                   help="a named input NAME=FILE.npy, or NAME=@DATASET for a loaded dataset (repeatable)")
    p.add_argument("-p", "--param", action="append", default=[], help="op parameter KEY=VALUE (lists: a,b)")
    p.add_argument("-o", "--output", help="save the results to this .npz file")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--partitioning", default="row_blocks", choices=["row_blocks", "hash", "round_robin"])
    p.add_argument("--partitions", type=int, default=0, help="partition count (0: by size)")
    p.set_defaults(func=cmd_run)

    p = with_address(sub.add_parser("put", help="load a .npy file into the cluster as a dataset"))
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--partitioning", default="row_blocks", choices=["row_blocks", "hash", "round_robin"])
    p.add_argument("--partitions", type=int, default=0, help="partition count (0: by size)")
    p.add_argument("--key-column", type=int, default=0, help="column hashed by --partitioning hash")
    p.add_argument("--replace", action="store_true", help="replace a dataset of the same name")
    p.add_argument("--durable", action="store_true",
                   help="return only once the coordinator's copy is on disk (survives its crash)")
    p.set_defaults(func=cmd_put)

    p = with_address(sub.add_parser("datasets", help="datasets resident in the cluster"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_datasets)

    p = with_address(sub.add_parser("drop", help="drop a dataset"))
    p.add_argument("name")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("certs", help="a development CA, certificates and tokens for a secure cluster")
    p.add_argument("directory", help="where to write the files (created if missing)")
    p.add_argument("--agents", type=int, default=2, help="agent certificates to issue (agent-1 ...)")
    p.add_argument("--host", action="append", default=[],
                   help="a host name or IP the servers are reached at (repeatable; localhost is always in)")
    p.set_defaults(func=lambda a: __import__("lepton.certs", fromlist=["run"]).run(a))  # cryptography: only here

    p = sub.add_parser("devices", help="the devices an agent on this machine can open")
    p.set_defaults(func=cmd_devices)

    p = with_address(sub.add_parser("health", help="exit 0 if the coordinator (or agent) serves (grpc.health.v1)"))
    p.add_argument("--service", default="", help="one service's health, e.g. lepton.v1.CoordinatorService")
    p.add_argument("--timeout", type=float, default=5, help="seconds to wait for the answer")
    p.set_defaults(func=cmd_health)

    p = with_address(sub.add_parser("cancel", help="cancel a job"))
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    from lepton import slurm

    p = sub.add_parser("slurm", help="write a Slurm batch script that runs a Lepton cluster and a command")
    slurm.add_arguments(p)
    p.set_defaults(func=slurm.run)

    p = sub.add_parser("demo", help="start a local cluster, run verified jobs, print a summary")
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--device", default="numpy", help="device spec for every agent")
    p.add_argument("--rows", type=int, default=50_000_000, help="values in the main demo array")
    p.set_defaults(func=_lazy("lepton.demo", "run"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        from lepton.errors import LeptonError  # here, not at the top: `lepton --help` needs no gRPC

        if not isinstance(exc, LeptonError):
            raise
        hint = ""
        if exc.code.name == "UNAVAILABLE" and "connect" in exc.details.lower():
            hint = " (is a coordinator running there? start one with `lepton up` or `lepton coordinator`)"
        print(f"lepton: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
