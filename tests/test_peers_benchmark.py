"""The peers benchmark (benchmarks/peers/run.py) in its quick mode, on NumPy and Lepton only (no
Dask or MPI needed), so the harness cannot rot: it runs, checks every result against NumPy and
writes its JSON. It asserts no timing."""
import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py"


def test_quick_mode_runs_and_checks_every_result(tmp_path):
    out = tmp_path / "peers.json"
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--workloads", "W1,W5", "--systems", "numpy,lepton",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    for name in ("W1", "W5"):
        cells = report["results"][name]
        assert set(cells) == {"numpy", "lepton/resident", "lepton/end-to-end"}
        for cell in cells.values():
            assert cell["checked"] and len(cell["times_s"]) == 3 and cell["min_s"] <= cell["median_s"]
    assert "| W1 sum, min, max" in done.stdout and "resident < Dask resident" not in done.stdout
