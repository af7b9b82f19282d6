"""`lepton slurm`: a batch script that runs a Lepton cluster inside one Slurm allocation.

The script starts the coordinator on the allocation's first node and agents on every node with
`srun`, waits until they have joined, runs the user's command with LEPTON_ADDRESS pointing at the
coordinator, and tears the cluster down when the command ends, fails, or the job is cancelled
(`scancel` signals the batch shell, whose trap stops the job steps; Slurm kills what is left).
Every process of the cluster carries LEPTON_SLURM_JOB in its environment, so leftovers are easy to
find. Agents per node can share its cores as an MPI pool (`--device mpi:N`): the allocation's hosts
each run a pool of their own.

    lepton slurm --nodes 2 --device numpy -- python my_analysis.py > job.sh && sbatch job.sh
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={agents_per_node}
#SBATCH --output={output}
{extra_sbatch}
# Written by `lepton slurm`: a Lepton cluster for the length of this job (see lepton/slurm.py).
set -uo pipefail
export LEPTON_SLURM_JOB="$SLURM_JOB_ID"
PYTHON={python}
RUN_DIR="${{SLURM_SUBMIT_DIR:-$PWD}}/lepton-$SLURM_JOB_ID"
mkdir -p "$RUN_DIR"
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
STEPS=()

stop_cluster() {{
    trap - TERM INT EXIT
    for pid in "${{STEPS[@]}}"; do kill -TERM "$pid" 2>/dev/null; done
    wait
}}
trap 'stop_cluster; exit 143' TERM INT
trap stop_cluster EXIT

# Throw-away TLS certificates naming every node, and tokens, for this job only (lepton certs); the
# CA and token files reach the coordinator, the agents and the command through LEPTON_* variables.
CERTS="$RUN_DIR/certs"
NAMES=$(scontrol show hostnames "$SLURM_JOB_NODELIST")  # agents advertise addresses: name those too
"$PYTHON" -m lepton certs "$CERTS" --agents 1 $(for n in $NAMES; do echo "--host $n"; getent ahosts "$n" \
    | awk '{{print "--host " $1}}' | sort -u; done) > /dev/null || {{ echo "lepton: could not write certificates to $CERTS" >&2; exit 1; }}
export LEPTON_TLS_CA="$CERTS/ca.pem" LEPTON_TOKEN_FILE="$CERTS/token" LEPTON_JOIN_TOKEN_FILE="$CERTS/join-token"

# The coordinator, on the first node; its bound address lands in the ready file.
srun --nodes=1 --ntasks=1 --nodelist="$HEAD" --overlap --kill-on-bad-exit=0 \\
    "$PYTHON" -m lepton coordinator --listen "0.0.0.0:{port}" --ready-file "$RUN_DIR/coordinator.address" \\
    {coordinator_args}> "$RUN_DIR/coordinator.log" 2>&1 &
STEPS+=($!)
for _ in $(seq 600); do [ -s "$RUN_DIR/coordinator.address" ] && break; sleep 0.1; done
PORT=$(sed 's/.*://' "$RUN_DIR/coordinator.address")
export LEPTON_ADDRESS="$HEAD:$PORT"

# Agents: {agents_per_node} per node, each dialled back at its own node's address.
srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node={agents_per_node} --overlap --kill-on-bad-exit=0 {agent_srun_args}\\
    "$PYTHON" -m lepton agent --coordinator "$LEPTON_ADDRESS" --device {device} --coordinator-timeout 60 \\
    {agent_args}> "$RUN_DIR/agents.log" 2>&1 &
STEPS+=($!)
"$PYTHON" -m lepton.slurm wait "$LEPTON_ADDRESS" $((SLURM_JOB_NUM_NODES * {agents_per_node})) {startup_timeout} \\
    || {{ echo "lepton: the cluster did not start; logs in $RUN_DIR" >&2; exit 1; }}
echo "lepton: cluster up at $LEPTON_ADDRESS with $((SLURM_JOB_NUM_NODES * {agents_per_node})) agent(s)"
touch "$RUN_DIR/ready"

{command} &
COMMAND=$!
wait "$COMMAND"
STATUS=$?
stop_cluster
exit "$STATUS"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="nodes in the allocation")
    parser.add_argument("--agents-per-node", type=int, default=1, help="agents on each node (e.g. one per GPU)")
    parser.add_argument("--device", default="numpy", help="device spec of every agent (numpy, opencl:gpu, mpi:N ...)")
    parser.add_argument("--gpus-per-agent", type=int, default=0,
                        help="GPUs bound to each agent (srun --gpus-per-task); use with --device opencl:gpu")
    parser.add_argument("--time", help="#SBATCH --time")
    parser.add_argument("--partition", help="#SBATCH --partition")
    parser.add_argument("--job-name", default="lepton")
    parser.add_argument("--output", default="lepton-%j.out", help="#SBATCH --output")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 picks a free one)")
    parser.add_argument("--startup-timeout", type=float, default=300, help="seconds to wait for the agents")
    parser.add_argument("--python", default=sys.executable, help="the Python with Lepton installed, on every node")
    parser.add_argument("-o", "--write", metavar="FILE", help="write the script here instead of printing it")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="what to run against the cluster, after `--` (default: `lepton status`)")


def script(args: argparse.Namespace) -> str:
    command = [c for c in args.command if c != "--"] if args.command else []
    if args.nodes < 1 or args.agents_per_node < 1:
        raise SystemExit("lepton slurm: --nodes and --agents-per-node must be at least 1")
    extra = [f"#SBATCH --time={args.time}"] if args.time else []
    extra += [f"#SBATCH --partition={args.partition}"] if args.partition else []
    extra += [f"#SBATCH --gpus-per-task={args.gpus_per_agent}"] if args.gpus_per_agent else []
    return TEMPLATE.format(
        job_name=args.job_name, nodes=args.nodes, agents_per_node=args.agents_per_node, output=args.output,
        extra_sbatch="\n".join(extra), python=shlex.quote(args.python), port=args.port,
        coordinator_args='--tls-cert "$CERTS/coordinator.pem" --tls-key "$CERTS/coordinator.key" ',
        agent_args='--tls-cert "$CERTS/agent-1.pem" --tls-key "$CERTS/agent-1.key" ', device=shlex.quote(args.device),
        agent_srun_args=f"--gpus-per-task={args.gpus_per_agent} " if args.gpus_per_agent else "",
        startup_timeout=int(args.startup_timeout),
        command=shlex.join(command) if command else '"$PYTHON" -m lepton status --coordinator "$LEPTON_ADDRESS"')


def run(args: argparse.Namespace) -> int:
    text = script(args)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def wait(address: str, agents: int, timeout: float) -> int:
    """Exit 0 once `agents` agents have joined the coordinator at `address`, 1 after `timeout` seconds."""
    from lepton.client import Client
    from lepton.errors import LeptonError

    end = time.monotonic() + timeout
    with Client(address, timeout=5) as client:
        while time.monotonic() < end:
            try:
                if len(client.cluster_status().agents) >= agents:
                    return 0
            except LeptonError:
                pass  # not serving yet
            time.sleep(0.2)
    return 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "wait":
        sys.exit(wait(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    sys.exit("usage: python -m lepton.slurm wait ADDRESS AGENTS TIMEOUT")
