"""`lepton slurm` scripts under a real (single-node) Slurm: sbatch runs a cluster job to a result
checked against NumPy, and scancel mid-job leaves no process behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import slurm_cluster
from waits import wait_for

why = slurm_cluster.unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=f"no Slurm here: {why}")

CHECK = f"""
import json, os, sys
import numpy as np
import lepton
sys.path.insert(0, {str(Path(__file__).parent)!r})  # tests/: the one checker
from references import mismatch
x = np.random.default_rng(5).standard_normal(1_000_000)
with lepton.Client(os.environ["LEPTON_ADDRESS"], timeout=120) as client:
    agents = len(client.cluster_status().agents)
    total = client.sum(x, partitions=8)
problem = mismatch("sum", x, {{"sum": np.asarray(total)}})  # the fold's bound (tests/references.py)
json.dump({{"agents": agents, "sum": float(total), "expected": float(np.sum(x)), "ok": problem is None,
           "problem": problem}}, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def slurm():
    cluster = slurm_cluster.SlurmCluster().start()
    yield cluster
    cluster.stop()


def write_script(tmp_path: Path, command: list[str], agents_per_node: int = 2) -> Path:
    script = tmp_path / "job.sh"
    subprocess.run([sys.executable, "-m", "lepton", "slurm", "--agents-per-node", str(agents_per_node),
                    "--output", str(tmp_path / "job.out"), "--write", str(script), "--", *command], check=True)
    return script



def test_sbatch_runs_a_cluster_job_to_a_checked_result(slurm, tmp_path):
    import json

    (tmp_path / "check.py").write_text(CHECK)
    script = write_script(tmp_path, [sys.executable, str(tmp_path / "check.py"), str(tmp_path / "result.json")])
    job = slurm.sbatch(script, tmp_path)
    wait_for(lambda: slurm.state(job) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"), f"job {job}",
             timeout=120)
    output = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert slurm.state(job) in ("COMPLETED", "GONE"), output + slurm.logs()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["agents"] == 2 and result["ok"], result
    assert "cluster up" in output
    wait_for(lambda: not slurm_cluster.processes_with_env("LEPTON_SLURM_JOB", job), "the cluster to go", timeout=120)


def test_scancel_mid_job_leaves_no_process(slurm, tmp_path):
    script = write_script(tmp_path, [sys.executable, "-c", "import time; time.sleep(600)"])
    job = slurm.sbatch(script, tmp_path)
    ready = tmp_path / f"lepton-{job}" / "ready"
    wait_for(ready.exists, "the cluster to start", timeout=120)
    assert len(slurm_cluster.processes_with_env("LEPTON_SLURM_JOB", job)) >= 4  # coordinator, 2 agents, command
    slurm.cmd(["scancel", job], check=True)
    wait_for(lambda: not slurm_cluster.processes_with_env("LEPTON_SLURM_JOB", job), "every process of the job to end",
             timeout=60)
    wait_for(lambda: slurm.state(job) in ("CANCELLED", "GONE"), f"job {job} to end as cancelled", timeout=120)
