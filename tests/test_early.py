"""Early answers: running estimates while partials arrive, on a real cluster (coordinator/early.py).

The bounds are CLT intervals (Student's t over the partitions, stratified by the agent a partition
lives on), so their coverage is the stated confidence only approximately: on the data below, with
the two strata sampled evenly to unevenly (one agent done with 15% of what the other did), it was
0.93-0.95 (sum, var) at 0.95 and 0.78-0.81 at 0.8, simulated over 2,000 random orders each (the
estimators alone). The binomial checks therefore allow 0.03 either side of the confidence; each
fails by chance with probability at most 1e-3 when the coverage is inside that band.
"""
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from scipy import stats

import lepton
from lepton.backends.estimates import Spread, Strata, Total
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc

EVERY_PARTITION = lepton.Early(every=0.0, interval=0.0)


def structured(rows: int, seed: int = 7) -> np.ndarray:
    """Rows whose partitions differ: a curved trend, and noise that grows along the rows. A prefix of
    the partitions is no sample of them, so only a random order gives honest bounds."""
    t = np.linspace(0, 2, rows)
    noise = np.random.default_rng(seed).standard_normal(rows)
    return np.sin(3 * t) + t * t + noise * (0.2 + t)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


OPS = [("sum", {}, "sum"), ("mean", {}, "mean"), ("var", {"ddof": 1}, "var"), ("count", {}, "count"),
       ("min", {}, "min"), ("max", {}, "max"), ("histogram", {"bins": 16, "range": [-2.0, 8.0]}, "counts"),
       ("describe", {"ddof": 0}, "var")]
BOUNDED = {"sum", "mean", "var", "count"}


@pytest.mark.parametrize("op,params,name", OPS, ids=[o[0] for o in OPS])
def test_fractions_rise_to_one_and_the_last_estimate_is_the_exact_result(client, op, params, name):
    x = structured(200_000).astype(np.float32)
    exact = client.run(op, x, partitions=24, **params)
    estimates = list(client.submit(op, x, partitions=24, early=EVERY_PARTITION, **params).estimates())
    *running, last = estimates
    assert len(running) >= 20  # one per partition but the last (0 s, 0 rows apart), once a partition is in
    fractions = [e.fraction for e in estimates]
    assert all(a < b for a, b in zip(fractions, fractions[1:])) and running[-1].fraction < 1
    assert last.final and last.fraction == 1.0 and not any(e.final for e in running)
    assert last.values.keys() == exact.keys()
    assert all(same_bits(last.values[k], exact[k]) for k in exact)  # the exact answer, bitwise
    assert all(e.partitions_total == 24 and e.seed == last.seed != 0 for e in estimates)
    for e in running:
        if name in BOUNDED:
            assert e.bounds[name].dtype == np.float64 and e.values[name].shape == exact[name].shape
        else:
            assert name not in e.bounds and e.bound is None
    if op in ("min", "max"):  # running values: each the exact combine of the partitions in so far
        step = np.minimum if op == "min" else np.maximum
        assert all(step(e.value, last.value) == last.value for e in running)
    if name in BOUNDED:  # no spread is known from one partition; the exact result has none
        assert np.isinf(running[0].bound) and np.isfinite(running[-1].bound) and last.bound == 0


def test_early_on_a_resident_dataset_is_bitwise_the_plain_job(client):
    x = structured(300_000)
    ds = client.put("early-resident", x, partitions=32, replace=True)
    try:
        plain = client.describe(ds, ddof=1)
        seen = []
        estimates = list(client.submit("describe", ds, ddof=1, early=EVERY_PARTITION, on_estimate=seen.append)
                         .estimates())
        assert seen == estimates  # the callback saw each one, in order, the final one too
        assert all(same_bits(estimates[-1].values[k], plain[k]) for k in plain)
        # Two agents, two strata: no estimate until each has a partition in, no bound until two.
        *running, last = estimates
        assert running and running[0].partitions_used >= 2 and np.isinf(running[0].bounds["sum"])
        assert np.isfinite(running[-1].bounds["sum"]) and last.final
        defaults = list(client.sum(ds, early=True))  # estimates at least 5% of the rows and 0.1 s apart
        fractions = [e.fraction for e in defaults]
        assert all(b - a >= 0.05 for a, b in zip(fractions, fractions[1:-1]))
        assert defaults[-1].final and same_bits(defaults[-1].value, client.sum(ds))
    finally:
        client.drop("early-resident")


def test_partitions_go_out_in_the_seeded_random_order(client):
    x = structured(100_000)
    job = client.submit("sum", x, partitions=20, early=lepton.Early(seed=12345))
    job.result()
    sent = [p.partition for p in client.trace(job.job_id).partitions]
    assert sent == np.random.default_rng(12345).permutation(20).tolist()  # one partition per run, in order


def test_estimates_are_throttled_by_rows_and_by_time(client):
    x = structured(160_000)
    by_rows = list(client.sum(x, partitions=64, early=lepton.Early(every=0.25, interval=0.0)))
    fractions = [e.fraction for e in by_rows]
    assert len(by_rows) <= 5 and all(b - a >= 0.25 for a, b in zip(fractions, fractions[1:-1]))
    by_time = list(client.sum(x, partitions=64, early=lepton.Early(every=0.0, interval=3600.0)))
    assert len(by_time) == 2 and by_time[0].partitions_used == 1 and by_time[1].final  # one, then none for an hour


def test_a_job_without_early_yields_only_its_result(client):
    x = structured(10_000)
    (only,) = client.submit("sum", x, partitions=4).estimates()
    assert only.final and same_bits(only.value, client.sum(x))


def _coverage(client, ds, exact, confidence: float, seeds) -> dict[str, int]:
    """For each seed, one early describe job, and the estimate at a fraction of the rows drawn from
    the seed (15% to 85%): is each exact value inside its interval? (One estimate per job: the
    estimates of one job share partitions, so only different jobs are independent trials.)"""
    def one(seed):
        target = np.random.default_rng((seed, 1)).uniform(0.15, 0.85)  # not the order's stream
        early = lepton.Early(confidence=confidence, every=0.0, interval=0.0, seed=seed)
        job = client.submit("describe", ds, early=early)
        chosen = next(e for e in job.estimates() if e.fraction >= target)
        job.result()
        assert not chosen.final and chosen.confidence == confidence
        return {k: bool(abs(chosen.values[k] - exact[k]) <= chosen.bounds[k]) for k in ("sum", "mean", "var")}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, seeds))
    return {k: sum(r[k] for r in results) for k in ("sum", "mean", "var")}


def test_the_exact_result_lies_inside_the_bounds_at_the_stated_confidence(client):
    # 64 partitions over two agents: 2 strata of 32; estimates use 10 to 54 partitions.
    x = structured(64 * 2000)
    ds = client.put("early-coverage", x, partitions=64, replace=True)
    try:
        exact = {k: float(v) for k, v in client.describe(ds).items()}
        runs = 200
        covered = _coverage(client, ds, exact, 0.95, range(1, runs + 1))
        for name, hits in covered.items():
            # Too narrow: fewer hits than 0.92 coverage gives but once in a thousand.
            assert stats.binom.cdf(hits, runs, 0.92) >= 1e-3, f"{name}: {hits}/{runs} inside the 95% intervals"
        runs = 100
        covered = _coverage(client, ds, exact, 0.8, range(1001, 1001 + runs))
        for name, hits in covered.items():
            assert stats.binom.cdf(hits, runs, 0.77) >= 1e-3, f"{name}: {hits}/{runs} inside the 80% intervals"
            # Too wide (a vacuous bound): more hits than 0.83 coverage gives but once in a thousand.
            assert stats.binom.sf(hits - 1, runs, 0.83) >= 1e-3, f"{name}: {hits}/{runs} inside the 80% intervals"
    finally:
        client.drop("early-coverage")


def test_strata_sampled_at_different_rates_still_cover():
    """Unit check of the stratified estimator: one agent (stratum) far faster than the other, and
    strata whose values differ, as when a dataset's halves sit on two agents. A pooled estimate
    would be biased towards the fast stratum; the stratified one covers."""
    rng = np.random.default_rng(3)
    means = np.r_[np.full(40, 1.0), np.full(40, 5.0)] + rng.standard_normal(80) * 0.3
    totals, rows = means * 100, np.full(80, 100)
    strata = Strata(np.array([40, 40]), np.array([4000, 4000]))
    runs, hits = 400, 0
    for seed in range(runs):
        r = np.random.default_rng(seed)
        estimator = Total("sum", [], "<f8")
        for h, take in ((0, 30), (1, 6)):  # 75% of the fast stratum, 15% of the slow one
            for p in r.permutation(40)[:take] + 40 * h:
                estimator.add(h, int(rows[p]), {"sum": np.asarray(totals[p])})
        value, bound = estimator.estimate(strata, 0.95)
        hits += abs(value - totals.sum()) <= bound
    assert stats.binom.cdf(hits, runs, 0.92) >= 1e-3, f"{hits}/{runs} inside the 95% intervals"


def _direct(strata, samples, confidence):
    """The stratified ratio estimate and bound of a total, straight from the per-partition values
    (samples[h] = (y, rows) arrays): the definition the running sums must reproduce."""
    value = variance = 0.0
    for h, (y, m) in samples.items():
        n, big_n = len(y), strata.partitions[h]
        ratio = y.sum(axis=0) / m.sum()
        value = value + strata.rows[h] * ratio
        d = y - ratio * m[:, None]
        variance = variance + big_n ** 2 * (1 - n / big_n) / n * (d * d).sum(axis=0) / (n - 1)
    df = min(len(y) for y, _ in samples.values()) - 1
    return value, stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(variance)


@pytest.mark.parametrize("offset", [0.0, 1e6], ids=["centred", "mean-1e6-spread-1e-3"])
def test_running_sums_reproduce_the_estimator_from_every_partition(offset):
    """The estimators keep running sums per stratum, not the partitions: their values and bounds
    must equal the textbook formulas over the partitions kept, also where the data's mean dwarfs
    its spread (a sum of squares there would cancel to noise)."""
    rng = np.random.default_rng(5)
    parts = [offset + 1e-3 * (rng.standard_normal((int(rows), 3)) + p / 10)
             for p, rows in enumerate(rng.integers(50, 150, 30))]
    stratum = [p % 2 for p in range(30)]
    strata = Strata(np.array([15, 15]), np.array([sum(len(q) for p, q in enumerate(parts) if stratum[p] == h)
                                                  for h in (0, 1)]))
    total, spread = Total("sum", [3], "<f8"), Spread([3], "<f8", 0)
    taken = [p for p in rng.permutation(30) if stratum[p] == 0][:6] + [p for p in rng.permutation(30) if stratum[p] == 1][:9]
    for p in taken:
        q = parts[p]
        total.add(stratum[p], len(q), {"sum": q.sum(axis=0)})
        spread.add(stratum[p], len(q), {"n": len(q), "mean": q.mean(axis=0), "m2": ((q - q.mean(axis=0)) ** 2).sum(axis=0)})
    rows = {h: np.array([len(parts[p]) for p in taken if stratum[p] == h], dtype=float) for h in (0, 1)}
    sums = {h: (np.array([parts[p].sum(axis=0) for p in taken if stratum[p] == h]), rows[h]) for h in (0, 1)}
    value, bound = total.estimate(strata, 0.9)
    want, want_bound = _direct(strata, sums, 0.9)
    assert np.allclose(value, want, rtol=1e-12) and np.allclose(bound, want_bound, rtol=1e-6, atol=1e-9 * np.abs(want))
    big_m = strata.rows.sum()
    mu = _direct(strata, sums, 0.9)[0] / big_m
    deviations = {h: (np.array([((parts[p] - mu) ** 2).sum(axis=0) for p in taken if stratum[p] == h]), rows[h])
                  for h in (0, 1)}
    value, bound = spread.estimate(strata, 0.9)
    want, want_bound = (v / big_m for v in _direct(strata, deviations, 0.9))
    # Tolerance: the features are shifted by the first partition, the definition's are not; float64
    # leaves ~1e-10 of the spread here, and the bound needs two digits.
    assert np.allclose(value, want, rtol=1e-9) and np.allclose(bound, want_bound, rtol=1e-4)


def test_bad_early_requests_are_invalid_argument_naming_what(client):
    a = np.ones((8, 8))
    for op, inputs in (("matmul", {"a": a, "b": a}), ("kmeans", {"x": a}), ("topk", {"x": a})):
        with pytest.raises(lepton.InvalidInput, match=f"op '{op}' has no early answers") as raised:
            client.submit(op, inputs, early=True, **({"k": 2} if op != "matmul" else {})).result()
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "sum" in raised.value.details
    x = np.ones(1000)
    for early, field in ((lepton.Early(confidence=1.5), "early.confidence"), (lepton.Early(confidence=0.0), "early.confidence"),
                         (lepton.Early(every=2.0), "early.min_fraction_step"),
                         (lepton.Early(interval=-1.0), "early.min_interval_seconds")):
        with pytest.raises(lepton.InvalidInput, match=field):
            client.submit("sum", x, early=early).result()
    with pytest.raises(lepton.InvalidInput, match="over 1 MiB"):  # every estimate would carry 2 MB of counts
        client.submit("histogram", x, bins=250_000, range=[0.0, 1.0], early=True).result()
    # RunJob has one reply: it cannot stream estimates.
    stub = pb_grpc.CoordinatorServiceStub(client._channel)
    spec = pb.RunJobRequest().spec
    spec.op, spec.early.seed = "sum", 1
    with pytest.raises(grpc.RpcError) as raised:
        stub.RunJob(pb.RunJobRequest(spec=spec), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "SubmitJob" in raised.value.details()
