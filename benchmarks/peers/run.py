"""Lepton beside its peers on the workloads of issue 20, in one process tree and one run.

    pip install -e '.[bench]'
    flock /tmp/lepton-bench.lock python benchmarks/peers/run.py [--quick] [--workloads W1,W3]
        [--systems numpy,mpi,dask,lepton] [--runs 3] [--json peers.json]

Systems: NumPy in this process; pure mpi4py on 2 ranks (the mpich wheel's mpiexec); Dask's
LocalCluster(n_workers=2, threads_per_worker=1); Lepton's LocalCluster(agents=2) of NumPy devices.
Dask and Lepton run resident (data loaded before the clock starts) and end-to-end (from a NumPy
array the client holds). Each figure is 1 warm-up and --runs timed runs: min and median seconds.
Every result is checked against NumPy (workloads.py states the tolerances); a failed check is
printed and recorded, and the figure is marked with "!". The table then gives Lepton's ratio
against each target of the issue, and the JSON file holds every time.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

ALL = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
COLUMNS = [("numpy", "NumPy"), ("mpi", "MPI 2 ranks"), ("dask/resident", "Dask resident"),
           ("dask/end-to-end", "Dask end-to-end"), ("lepton/resident", "Lepton resident"),
           ("lepton/end-to-end", "Lepton end-to-end")]


def timed(run, check, runs: int) -> dict:
    """1 warm-up, then `runs` timed calls, each result checked."""
    errors = []
    result = run()
    if (error := check(result)) is not None:
        errors.append(error)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
        if (error := check(result)) is not None:
            errors.append(error)
    return {"min_s": min(times), "median_s": statistics.median(times), "times_s": times,
            "checked": not errors, "errors": errors[:3]}


def run_mpi(names: list[str], sizes: dict, runs: int) -> dict:
    """Every workload on 2 MPI ranks, in one mpiexec: {name: {"times": [...], "result": ...}}."""
    from lepton.backends.mpi.launch import find_mpiexec

    with tempfile.TemporaryDirectory(prefix="lepton-peers-") as tmp:
        spec, out = Path(tmp, "spec.json"), Path(tmp, "out.pkl")
        spec.write_text(json.dumps({"workloads": names, "sizes": sizes, "runs": runs}))
        subprocess.run([find_mpiexec(), "-n", "2", sys.executable, str(HERE / "mpi_peer.py"), str(spec), str(out)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
        return pickle.loads(out.read_bytes())


def machine() -> dict:
    facts = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
             "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "load_average_at_start": os.getloadavg()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        facts["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                             if line.startswith("Model name")), "")
    except OSError:
        pass
    return facts


def fmt(cell: dict | None) -> str:
    if not cell:
        return ""
    mark = "" if cell.get("checked", True) else " !"
    if "p50_s" in cell:
        return f"{cell['p50_s'] * 1e3:.2f} ms, {cell['jobs_per_s']:,.0f}/s{mark}"
    if "gb_per_s" in cell:
        return ", ".join(f"{g:.2f} GB/s ({a} agent{'s' if a > 1 else ''})" for a, g in cell["gb_per_s"].items())
    return f"{cell['min_s']:.3f} / {cell['median_s']:.3f}{mark}"


def targets(results: dict) -> list[tuple[str, str, str, bool]]:
    """(workload, target, measured ratio or figure, met) for each target of the issue."""
    rows = []

    def ratio(name, ours, theirs):
        a, b = results[name].get(ours), results[name].get(theirs)
        return a["min_s"] / b["min_s"] if a and b and "min_s" in a and "min_s" in b else None

    for name in ("W1", "W2", "W3", "W4", "W5"):
        if name not in results:
            continue
        for ours, theirs, bound, what in [
                ("lepton/resident", "dask/resident", 1.0, "resident < Dask resident"),
                ("lepton/resident", "mpi", 1.25, "resident <= 1.25x MPI"),
                ("lepton/end-to-end", "dask/end-to-end", 0.5 if name in ("W1", "W3", "W5") else 1.0,
                 "end-to-end <= 0.5x Dask e2e" if name in ("W1", "W3", "W5") else "end-to-end < Dask e2e")]:
            r = ratio(name, ours, theirs)
            if r is not None:
                rows.append((name, what, f"{r:.2f}x", r <= bound if bound != 1.0 else r < bound))
    if (w6 := results.get("W6", {}).get("lepton/end-to-end")):
        rows.append(("W6", "p50 < 1.5 ms", f"{w6['p50_s'] * 1e3:.2f} ms", w6["p50_s"] < 1.5e-3))
        rows.append(("W6", ">= 1,000 jobs/s, 16 callers", f"{w6['jobs_per_s']:,.0f}/s", w6["jobs_per_s"] >= 1000))
    if (w7 := results.get("W7", {}).get("lepton/end-to-end")):
        rates = w7["gb_per_s"]
        best = rates[max(rates)]
        rows.append(("W7", ">= 1 GB/s into the cluster", f"{best:.2f} GB/s", best >= 1.0))
        if len(rates) > 1:
            grows = rates[max(rates)] > rates[min(rates)]
            rows.append(("W7", "grows with agents", " -> ".join(f"{rates[a]:.2f}" for a in sorted(rates)), grows))
    return rows


def print_tables(results: dict, sizes: dict) -> None:
    print("\n| workload | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for name, cells in results.items():
        print(f"| {workloads.title(name, sizes[name])} | " + " | ".join(fmt(cells.get(k)) for k, _ in COLUMNS) + " |")
    print("\nseconds, min / median; W6: p50 latency and jobs/s with 16 callers; ! = failed its check")
    print("\n| workload | target | Lepton | |\n| --- | --- | --- | --- |")
    for name, what, value, met in targets(results):
        print(f"| {name} | {what} | {value} | {'met' if met else '**miss**'} |")
    failed = [(n, k, c["errors"]) for n, cells in results.items() for k, c in cells.items() if not c.get("checked", True)]
    for n, k, errors in failed:
        print(f"CHECK FAILED: {n} {k}: {errors}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of well under a minute")
    parser.add_argument("--workloads", default=",".join(ALL))
    parser.add_argument("--systems", default="numpy,mpi,dask,lepton")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default="peers.json", help="where to write every figure (default peers.json)")
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.workloads.split(",") if n.strip()]
    systems = set(args.systems.split(","))
    if unknown := set(names) - set(ALL):
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(ALL)}")
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    sizes = workloads.SIZES["quick" if args.quick else "full"]
    sizes = {n: sizes[n] for n in names}
    report = {"command": " ".join(sys.argv), "machine": machine(), "sizes": sizes, "runs": args.runs, "results": {}}
    results = report["results"]

    mpi = run_mpi([n for n in names if n != "W7"], sizes, args.runs) if "mpi" in systems else {}
    peers = {}
    try:
        if "dask" in systems:
            from systems import Dask
            peers["dask"] = Dask()
        if "lepton" in systems:
            from systems import Lepton
            peers["lepton"] = Lepton()
        for name in names:
            print(f"{workloads.title(name, sizes[name])} ...", flush=True)
            results[name] = cells = {}
            if name == "W7":
                if "lepton" in peers:
                    cells["lepton/end-to-end"] = ingest(peers["lepton"], sizes[name], args.runs)
                continue
            data = workloads.make(name, sizes[name])
            check = workloads.Checker(name, data)
            if name == "W6":
                small_jobs(cells, data, check, mpi, systems, peers)
                continue
            if "numpy" in systems:
                cells["numpy"] = timed(lambda: workloads.numpy_run(name, data), check, args.runs)
            if name in mpi:
                times = mpi[name]["times"]
                error = check(mpi[name]["result"])
                cells["mpi"] = {"min_s": min(times), "median_s": statistics.median(times), "times_s": times,
                                "checked": error is None, "errors": [error] if error else []}
            for system, peer in peers.items():
                for mode in ("resident", "end-to-end"):
                    run, cleanup = peer.prepare(name, data, mode)
                    try:
                        cells[f"{system}/{mode}"] = timed(run, check, args.runs)
                    finally:
                        cleanup()
            del data, check
    finally:
        for peer in peers.values():
            peer.close()
    print_tables(results, sizes)
    Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    print(f"\nwrote {args.json}")
    return 0 if all(c.get("checked", True) for cells in results.values() for c in cells.values()) else 1


def small_jobs(cells, data, check, mpi, systems, peers) -> None:
    x = data["x"]
    if "numpy" in systems:
        latencies = []
        for _ in range(1000):
            start = time.perf_counter()
            np.sum(x)
            latencies.append(time.perf_counter() - start)
        p50 = statistics.median(latencies)
        cells["numpy"] = {"p50_s": p50, "jobs_per_s": 1 / p50, "checked": True}
    if "W6" in mpi:
        p50 = statistics.median(mpi["W6"]["times"])
        error = check(mpi["W6"]["result"])
        cells["mpi"] = {"p50_s": p50, "jobs_per_s": 1 / p50, "checked": error is None, "errors": [error] if error else []}
    for system, peer in peers.items():
        figures, result = peer.small_jobs(x)
        error = check(result)
        key = "dask/resident" if system == "dask" else "lepton/end-to-end"  # Dask: a scattered array
        cells[key] = {**figures, "checked": error is None, "errors": [error] if error else []}


def ingest(lepton_peer, size: int, runs: int) -> dict:
    """put() GB/s into the 2-agent cluster and into a 1-agent one (min time of `runs`)."""
    from systems import Lepton

    x = np.random.default_rng(7).standard_normal(size, dtype=np.float32)
    rates, streamed = {}, {}
    for agents in (1, 2):
        peer = lepton_peer if agents == 2 else Lepton(agents=1)
        try:
            for rate, stream in ((rates, False), (streamed, True)):
                peer.ingest(x, stream)  # warm-up
                rate[agents] = x.nbytes / min(peer.ingest(x, stream) for _ in range(runs)) / 1e9
        finally:
            if peer is not lepton_peer:
                peer.close()
    # gb_per_s: the client's put (shared memory here: one host); streamed_gb_per_s: bytes over gRPC,
    # as from a client on another host.
    print("W7 streamed over gRPC (shared_memory=False): " + ", ".join(
        f"{g:.2f} GB/s ({a} agent{'s' if a > 1 else ''})" for a, g in streamed.items()), flush=True)
    return {"gb_per_s": rates, "streamed_gb_per_s": streamed, "checked": True}


if __name__ == "__main__":
    sys.exit(main())
