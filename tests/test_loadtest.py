"""CI smoke of the Locust load tests: the mix for 20 s against a fresh local cluster, zero failures.

Locust runs as a subprocess (through loadtests/run, which also starts the cluster): importing it
here would monkey-patch this process for gevent under pytest and every other test.
"""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "loadtests" / "run"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None,
                                reason="locust is not installed: pip install -e '.[dev]'")


def _rows(prefix: Path) -> dict[str, dict[str, str]]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_mix_smoke_has_no_failures(tmp_path):
    prefix = tmp_path / "mix"
    proc = subprocess.run([sys.executable, str(RUN), "--scenario", "mix", "--users", "4", "--time", "20s",
                           "--csv", str(prefix)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    output = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, output
    rows = _rows(prefix)
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, output
    assert int(total["Request Count"]) >= 100, output
    # Every scenario ran, and both the streaming SubmitJob calls and the unary call were reported.
    for label in ("sum 1K f32", "mean 4 MiB f32", "var 4 MiB f32", "mean dataset 16 MiB f32", "GetClusterStatus"):
        assert int(rows[label]["Request Count"]) > 0, (label, output)
    assert not any(row["Type"] == "verify" for row in rows.values()), output
    assert "OK:" in proc.stdout


def test_run_help_names_the_scenarios():
    proc = subprocess.run([sys.executable, str(RUN), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for scenario in ("mix", "small", "medium", "dataset"):
        assert scenario in proc.stdout


@pytest.mark.slow
def test_run_exits_nonzero_when_requests_fail(tmp_path):
    # Nothing listens on port 1: every call fails with UNAVAILABLE, and must be reported as a failure.
    prefix = tmp_path / "down"
    proc = subprocess.run([sys.executable, str(RUN), "--scenario", "small", "--users", "2", "--time", "3s",
                           "--address", "127.0.0.1:1", "--csv", str(prefix)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout[-4000:]
    total = _rows(prefix)["Aggregated"]
    assert int(total["Failure Count"]) > 0
    assert int(total["Failure Count"]) == int(total["Request Count"])
    assert "UNAVAILABLE" in proc.stdout


WRONG_ANSWERS = '''
"""The scenarios, with NumPy's expected values shifted: every result now looks wrong."""
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "loadtests"))
import locustfile
from locustfile import *  # noqa: F401,F403 - the User classes

_check = locustfile.check
locustfile.check = lambda user, label, result, key, expected, rtol=1e-5: _check(
    user, label, result, key, expected + 1.0 + abs(expected), rtol)
'''


@pytest.mark.slow
def test_a_wrong_result_counts_as_a_failure(tmp_path):
    wrapper = tmp_path / "wrong_answers.py"
    wrapper.write_text(WRONG_ANSWERS)
    prefix = tmp_path / "wrong"
    proc = subprocess.run([sys.executable, str(RUN), "--scenario", "small", "--users", "1", "--time", "3s",
                           "--csv", str(prefix), "--", "-f", str(wrapper)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    output = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode != 0, output
    rows = _rows(prefix)
    verify = [row for row in rows.values() if row["Type"] == "verify"]
    assert verify and int(verify[0]["Failure Count"]) > 0, output  # reported as failures of type verify
    assert int(rows["Aggregated"]["Failure Count"]) > 0, output


TASK_RAISES = '''
"""A scenario whose task raises before it sends anything: no request is ever made."""
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "loadtests"))
from locustfile import LeptonUser


def broken(user):
    raise RuntimeError("this task raises before it sends anything")


class SmallJobs(LeptonUser):
    tasks = [broken]
'''


def run_scenario_file(tmp_path, source: str, name: str):
    """loadtests/run for 3 s with one user of the locustfile `source`: (process, its output's tails)."""
    wrapper = tmp_path / f"{name}.py"
    wrapper.write_text(source)
    proc = subprocess.run([sys.executable, str(RUN), "--scenario", "small", "--users", "1", "--time", "3s",
                           "--csv", str(tmp_path / name), "--", "-f", str(wrapper)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    return proc, proc.stdout[-6000:] + proc.stderr[-6000:]


@pytest.mark.slow
def test_run_exits_nonzero_when_a_task_raises(tmp_path):
    proc, output = run_scenario_file(tmp_path, TASK_RAISES, "task_raises")
    assert proc.returncode != 0, output
    assert "FAILED: locust exited with" in proc.stderr, output  # Locust's own verdict on the exception
    assert "OK:" not in proc.stdout, output


IDLE = '''
"""A scenario whose task returns without sending anything: no request is made, and none fails."""
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "loadtests"))
from locustfile import LeptonUser


def idle(user):
    return None


class SmallJobs(LeptonUser):
    tasks = [idle]
'''


@pytest.mark.slow
def test_run_exits_nonzero_when_no_request_was_made(tmp_path):
    proc, output = run_scenario_file(tmp_path, IDLE, "idle")
    assert proc.returncode != 0, output
    assert "no request was made" in output, output
