"""The op catalog through a real cluster, against NumPy references: a cluster of NumPy agents, and
(the tests taking `any_client`) one whose only device is OpenCL (PoCL here and in CI).

Tolerances: float64 results to 1e-10 relative (different summation orders and BLAS blockings);
float32 to 1e-4 relative to the magnitude of the terms summed (|a| @ |b| for products), since
float32 has 24 bits and a length-k dot product may lose log2(k) of them.
"""

import urllib.request

import grpc
import numpy as np
import pytest

import lepton
from lepton.backends.ops import TensorMeta, get_op
from references import check_kmeans, check_pca, check_topk, close, csr, gcn_reference
from waits import wait_for

CATALOG_OPS = {"matmul.rows", "matmul.inner", "linear", "mlp", "gram", "lstsq", "pca", "kmeans", "spmm",
               "gcn_layer", "qmatmul", "topk"}


@pytest.fixture(scope="module", params=["numpy", "opencl"])
def any_client(request, clusters):
    """A client of a cluster of two NumPy agents, or of one agent whose only device is OpenCL."""
    if request.param == "numpy":
        yield clusters[2].client(timeout=120)
        return
    from opencl_devices import usable_opencl_device

    _, spec = usable_opencl_device()
    with lepton.LocalCluster(agents=1, devices=spec) as cluster:
        yield cluster.client(timeout=120)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape, plan", [((500, 64, 48), "rows"), ((16, 2000, 12), "inner"), ((300, 40, 30), "auto")])
def test_matmul(any_client, rng, dtype, rtol, shape, plan):
    m, k, n = shape
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = any_client.matmul(a, b, plan=plan, partitions=7)
    assert c.dtype == dtype
    close(c, a @ b, np.abs(a) @ np.abs(b), rtol)
    chosen = {"rows": "matmul.rows", "inner": "matmul.inner", "auto": "matmul.rows"}[plan]  # 40 < 4 * 300
    assert any_client.jobs(limit=1)[0].op == chosen


@pytest.mark.parametrize("m, k, n, plan", [(10, 40, 3, "inner"), (10, 39, 3, "rows"), (3, 40, 10, "inner"),
                                           (3, 39, 10, "rows"), (1, 4, 1, "inner")])
def test_matmul_auto_picks_inner_when_k_is_at_least_4_max_m_n(m, k, n, plan):
    meta = {"a": TensorMeta(np.dtype(np.float64), (m, k)), "b": TensorMeta(np.dtype(np.float64), (k, n))}
    assert get_op("matmul").resolve(meta, {"plan": "auto"}).name == f"matmul.{plan}"


def test_mlp_and_linear(any_client, rng):
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    layers = [(rng.standard_normal((32, 64)).astype(np.float32) / 6, rng.standard_normal(64).astype(np.float32)),
              (rng.standard_normal((64, 10)).astype(np.float32) / 8, rng.standard_normal(10).astype(np.float32))]
    for act, f in [("relu", lambda z: np.maximum(z, 0)), ("tanh", np.tanh), ("sigmoid", lambda z: 1 / (1 + np.exp(-z)))]:
        y = any_client.mlp(x, layers, activation=act, output="softmax", partitions=5)
        z = f(x @ layers[0][0] + layers[0][1]) @ layers[1][0] + layers[1][1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        close(y, e / e.sum(axis=1, keepdims=True), np.ones_like(y), 1e-5)  # probabilities: absolute 1e-5
    y = any_client.linear(x, *layers[0], activation="gelu")
    z = x @ layers[0][0] + layers[0][1]
    close(y, 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))), np.abs(z) + 1, 1e-5)


def test_qmatmul_reports_its_error(any_client, rng):
    x = rng.standard_normal((400, 256)).astype(np.float32)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    out = any_client.qmatmul(x, w, partitions=4)
    ref = x @ w
    measured = np.linalg.norm(out["y"] - ref) / np.linalg.norm(ref)
    assert abs(out["relative_error"] - measured) <= 1e-3 * measured
    assert 0 < measured < 0.02  # int8 with per-channel and per-row scales: about 1% error
    # Given int8 weights and scales, the result is the exact dequantized integer product.
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    exact = any_client.qmatmul(x, w_q=w_q, w_scale=scale)["y"]
    assert np.array_equal(exact, out["y"])


def test_gram_lstsq_pca(any_client, rng):
    x = rng.standard_normal((5000, 12)) @ rng.standard_normal((12, 12))
    y = x @ rng.standard_normal(12) + 0.01 * rng.standard_normal(5000)
    g = any_client.gram(x, y, partitions=6)
    close(g["xtx"], x.T @ x, np.abs(x).T @ np.abs(x))
    close(g["xty"], x.T @ y, np.abs(x).T @ np.abs(y))
    close(any_client.lstsq(x, y), np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-6)  # normal equations: cond^2
    ridge = 50.0  # (XᵀX + ridge I)⁻¹ Xᵀy; the same normal equations, better conditioned
    close(any_client.lstsq(x, y, ridge=ridge), np.linalg.solve(x.T @ x + ridge * np.eye(12), x.T @ y), rtol=1e-8)
    check_pca(any_client, x, partitions=6)


def test_topk(any_client, rng):
    check_topk(any_client, rng.integers(-50, 50, size=(3000, 3)).astype(np.int64), partitions=9)




def test_kmeans_matches_numpy_lloyd_from_the_same_start(any_client, rng):
    x = np.concatenate([rng.normal(c, 0.7, size=(3000, 3)) for c in rng.uniform(-6, 6, size=(5, 3))])
    check_kmeans(any_client, x, x[rng.choice(len(x), 5, replace=False)], 30, partitions=8)


def bytes_sent(client):
    address = client.cluster_status().metrics_address
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("lepton_agent_bytes_sent_total ")))


def test_kmeans_on_a_resident_dataset_ships_almost_nothing(client, rng):
    x = rng.standard_normal((400_000, 8))  # 25.6 MB
    ds = client.put("kmeans-points", x, partitions=16, replace=True)
    before = bytes_sent(client)
    result = client.kmeans(ds, k=16, max_iter=10, tol=0.0, seed=1)
    shipped = bytes_sent(client) - before
    assert result["iterations"] == 10
    assert shipped < 0.01 * x.nbytes, f"shipped {shipped} bytes for a {x.nbytes}-byte dataset"
    client.drop("kmeans-points")


def test_weights_ship_once_per_agent(client, rng):
    x = rng.standard_normal((64, 512))
    w = rng.standard_normal((512, 512))  # 2 MB of weights
    client.matmul(x, w, plan="rows", partitions=4)
    before = bytes_sent(client)
    for _ in range(3):
        client.matmul(x, w, plan="rows", partitions=4)
    assert bytes_sent(client) - before <= 3 * x.nbytes  # the rows, not the weights again


def test_spmm_balances_by_nonzeros_and_gcn_normalises(any_client, rng):
    n = 3000
    degree = np.minimum((rng.pareto(1.2, n) + 1) * 3, n).astype(int)  # power law
    dense = np.zeros((n, n))
    for i, d in enumerate(degree):
        dense[i, rng.choice(n, d, replace=False)] = rng.random(d)
    x = rng.standard_normal((n, 16))
    job = any_client.submit("spmm", {**dict(zip(("a_indptr", "a_indices", "a_data"), csr(dense)[:3])), "x": x},
                        a_cols=n, partitions=8)
    close(job.result()["y"], dense @ x, np.abs(dense) @ np.abs(x))
    rows = [p.rows for p in sorted(any_client.trace(job.job_id).partitions, key=lambda p: p.partition)]
    indptr = csr(dense)[0]
    bounds = np.concatenate([[0], np.cumsum(rows)])
    nnz = np.diff(indptr[bounds])
    even_rows = np.diff(indptr[np.linspace(0, n, 9).astype(int)])
    # Balanced by non-zeros: within a heavy row's worth of the mean, far better than even row counts.
    assert nnz.max() - nnz.mean() <= degree.max() and nnz.max() < even_rows.max(), (nnz, even_rows)
    w = rng.standard_normal((16, 4))
    sym = np.maximum(dense, dense.T)
    want = gcn_reference(sym, x, w)
    got = any_client.gcn_layer(csr(sym), x, w, partitions=6)
    close(got, want, np.abs(want) + 1, 1e-9)


BAD = {
    "matmul inner dimensions": ("matmul", {"a": np.ones((3, 4)), "b": np.ones((5, 2))}, {}, "inner dimensions differ"),
    "csr unsorted": ("spmm", {"a_indptr": np.array([0, 2], np.int64), "a_indices": np.array([1, 0], np.int32),
                              "a_data": np.ones(2), "x": np.ones((2, 3))}, {"a_cols": 2}, "strictly increasing"),
    "csr out of range": ("spmm", {"a_indptr": np.array([0, 1], np.int64), "a_indices": np.array([5], np.int32),
                                  "a_data": np.ones(1), "x": np.ones((2, 3))}, {"a_cols": 2}, "outside [0, 2)"),
    "k larger than points": ("kmeans", {"x": np.ones((3, 2))}, {"k": 5}, "larger than the number of points"),
    "int8 without scales": ("qmatmul", {"x": np.ones((2, 3), np.float32), "w_q": np.ones((3, 2), np.int8)}, {},
                            "w_scale"),
    "nan in kmeans": ("kmeans", {"x": np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]])}, {"k": 2}, "NaN"),
    "mlp layer mismatch": ("mlp", {"x": np.ones((2, 3)), "w0": np.ones((4, 2)), "b0": np.ones(2)}, {},
                           "layer 0 does not fit"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_per_op_is_invalid_argument(client, case):
    op, inputs, params, message = BAD[case]
    with pytest.raises(lepton.LeptonError) as info:
        client.run(op, inputs, **params)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert message in info.value.details


def test_optional_inputs_and_datasets_work_together(client, rng):
    x = rng.standard_normal((20_000, 6))
    assert set(client.gram(x)) == {"xtx"}
    ds = client.put("gram-x", x, partitions=5, replace=True)
    close(client.gram(ds)["xtx"], x.T @ x, np.abs(x).T @ np.abs(x))
    values, indices = client.topk(ds, k=3)
    assert np.array_equal(values, -np.sort(-x, axis=0)[:3])
    assert np.array_equal(indices, np.argsort(-x, axis=0, kind="stable")[:3])
    client.drop("gram-x")


@pytest.mark.parametrize("any_client", ["opencl"], indirect=True)
def test_the_opencl_device_ran_the_catalog(any_client):
    """The cluster's only device is OpenCL, so the jobs above ran there; runs of 64 KiB or more are
    measured, and the next heartbeat reports their throughput."""
    x = np.random.default_rng(3).standard_normal((2000, 16))  # 256 KB in one partition
    any_client.matmul(x, x[:16], plan="rows", partitions=1)
    any_client.gram(x, partitions=1)

    def measured():
        (agent,) = any_client.cluster_status().agents
        (device,) = agent.devices
        return device if {"matmul.rows", "gram"} <= set(device.throughput) else None

    device = wait_for(measured, "the next heartbeat to report matmul.rows and gram throughput")
    assert device.kind == "opencl" and CATALOG_OPS <= set(device.ops)
