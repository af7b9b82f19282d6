"""Early answers (issue #15): what they cost, and how soon the first bounded estimate comes.

    flock /tmp/lepton-bench.lock .venv/bin/python benchmarks/bench_early.py [--mib 128] [--repeats 5]

On a LocalCluster (2 NumPy agents), a sum of float32 values (1 + standard normal noise), streamed
from the client and resident as a dataset, each with and without early answers (an estimate per
partition). It prints, per case, the median and minimum of: the time to the exact result, and with
early answers the time to the first estimate with a finite bound, its fraction of the rows and its
bound relative to the sum. Every early result is
checked bitwise against the plain job's, and the plain one against NumPy (rtol 1e-6: float32
values, float64 accumulators).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lepton


def timed_plain(client, x) -> tuple[float, object]:
    start = time.perf_counter()
    value = client.sum(x)
    return time.perf_counter() - start, value


def timed_early(client, x) -> tuple[float, float, float, float, object]:
    """(seconds to the first finite bound, its fraction of the rows, its bound relative to the value,
    seconds to the end, the result)."""
    start, first, fraction, relative = time.perf_counter(), None, float("nan"), float("nan")
    for estimate in client.sum(x, early=lepton.Early(every=0.0, interval=0.0)):
        if first is None and not estimate.final and np.isfinite(estimate.bound):
            first, fraction = time.perf_counter() - start, estimate.fraction
            relative = float(estimate.bound / abs(estimate.value))
    return first or float("nan"), fraction, relative, time.perf_counter() - start, estimate.value


def row(name: str, values: list[float], unit: str = "s") -> str:
    return f"  {name:<34} median {statistics.median(values):8.3f} {unit}   min {min(values):8.3f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.mib << 18  # float32
    x = 1 + np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    reference = float(np.sum(x, dtype=np.float64))
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client(timeout=600)
        dataset = client.put("bench-early", x)
        partitions = dataset.info.partitions
        print(f"sum of {args.mib} MiB float32 ({partitions} partitions of 8 MiB), 2 NumPy agents, "
              f"{args.repeats} runs each; other work shared the machine, so figures are noisy")
        for label, source in (("streamed from the client", x), ("resident dataset", dataset)):
            plain, first, fraction, bound, final = [], [], [], [], []
            for _ in range(args.repeats):
                seconds, value = timed_plain(client, source)
                plain.append(seconds)
                assert np.isclose(float(value), reference, rtol=1e-6), (value, reference)
                seconds_first, rows, relative, seconds, early_value = timed_early(client, source)
                assert np.asarray(early_value).tobytes() == np.asarray(value).tobytes(), "early result differs"
                first.append(seconds_first)
                fraction.append(rows * 100)
                bound.append(relative * 100)
                final.append(seconds)
            print(label)
            print(row("plain: exact result", plain))
            print(row("early: first finite bound", first))
            print(row("early: its fraction of the rows", fraction, "%"))
            print(row("early: its bound / |sum|", bound, "%"))
            print(row("early: exact result", final))
        client.drop("bench-early")


if __name__ == "__main__":
    main()
