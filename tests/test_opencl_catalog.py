"""The op catalog's OpenCL kernels (backends/opencl/catalog.py) against the NumPy references, on the
device directly and through a real cluster whose only device is OpenCL (PoCL here and in CI).

Tolerances (those of tests/test_catalog.py), and why:
- products (matmul, gram, mlp pre-activations, spmm): float64 within 1e-10 and float32 within 1e-4
  relative to the magnitude of the terms summed (|a| @ |b|): a length-k dot product in another order
  may lose log2(k) bits; float64 results computed in float64 from float32 data (pca) within 1e-10.
- activations and softmax: 1e-5 relative to |z| + 1 (float32 libm differences).
- kmeans: sums, counts and inertia within 1e-10 of the reference on data without near-ties.
- qmatmul: the quantized integer product is exact; y within 1e-6 relative (float64 dequantization,
  then a float32 rounding) and the error terms within 1e-4 (they compare with a float32 product).
Each (program, option set) compiles once per run (a second or two on PoCL), so shapes are chosen to
exercise the edge paths (sizes that are not multiples of any tile) with few distinct builds.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

_CACHE = tempfile.mkdtemp(prefix="lepton-opencl-catalog-")
os.environ.setdefault("POCL_CACHE_DIR", os.path.join(_CACHE, "pocl"))
os.environ.setdefault("LEPTON_OPENCL_CACHE", os.path.join(_CACHE, "opencl"))

cl = pytest.importorskip("pyopencl")
lepton = pytest.importorskip("lepton")

from backends.errors import InvalidInput  # noqa: E402
from backends.ops import REGISTRY, TensorMeta  # noqa: E402
from backends.opencl import OpenCLDevice, ProgramCache, catalog  # noqa: E402
from references import close, csr, opencl_test_device  # noqa: E402

CL_DEVICE, SPEC = opencl_test_device()
CATALOG_OPS = {"matmul.rows", "matmul.inner", "linear", "mlp", "gram", "lstsq", "pca", "kmeans", "spmm",
               "gcn_layer", "qmatmul"}


@pytest.fixture(scope="module")
def device():
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False)
    yield dev
    dev.close()




def run(device, name, inputs, **params):
    """The device's partial and the reference's for one partition, after validate/prepare."""
    op = REGISTRY[name]
    meta = {k: TensorMeta(v.dtype, v.shape) for k, v in inputs.items()}
    op = op.resolve(meta, params)
    p = op.validate(meta, params)
    whole = op.prepare(inputs, p)
    arrays = {**{k: inputs[k] for k in op.split_inputs if k in inputs}, **whole}
    if op.needs_row_offset:
        p = {**p, "row_offset": 0}
    got = device.run(op, arrays, p)
    want = op.reference(arrays, p)
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert np.asarray(got[k]).dtype == np.asarray(want[k]).dtype, (k, got[k].dtype, want[k].dtype)
        assert np.shape(got[k]) == np.shape(want[k]), k
    return got, want




RTOL = {np.float32: 1e-4, np.float64: 1e-10}


def test_device_offers_the_catalog(device):
    assert CATALOG_OPS <= set(device.ops)
    assert "topk" not in device.ops  # not implemented: the scheduler sends it elsewhere


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 53, 29), (64, 16, 64), (130, 300, 67)], ids=str)
def test_matmul_rows_and_inner(device, dtype, shape):
    rng = np.random.default_rng(sum(shape))
    m, k, n = shape
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    for plan in ("rows", "inner"):
        got, want = run(device, "matmul", {"a": a, "b": b}, plan=plan)
        close(got["c"], want["c"], np.abs(a) @ np.abs(b), RTOL[dtype])


def test_split_k_for_a_long_inner_dimension(device):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((9, 20_011)).astype(np.float32), rng.standard_normal((20_011, 5)).astype(np.float32)
    got, _ = run(device, "matmul", {"a": a, "b": b}, plan="inner")
    close(got["c"], a @ b, np.abs(a) @ np.abs(b), 1e-4)


@pytest.mark.parametrize("tiles", [(128, 128, 16, 8, 8, 4, False), (64, 64, 16, 4, 4, 4, False)], ids=["gpu32", "gpu64"])
def test_gpu_tiled_gemm_on_pocl(device, tiles):
    """The GPU kernel (local tiles, double buffering, 4-wide loads) on PoCL: the EVEN path on whole tiles
    with aligned rows, the checked path on edges, and XᵀX (transposed A)."""
    rng = np.random.default_rng(2)
    dtype = np.float32 if tiles[0] == 128 else np.float64
    for (m, k, n) in [(tiles[0], 32, tiles[1]), (tiles[0] + 3, 45, 70)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        close(catalog.gemm_host(device, a, b, tiles=tiles), a @ b, np.abs(a) @ np.abs(b), RTOL[dtype])
    x = rng.standard_normal((300, 19)).astype(dtype)
    close(catalog.gemm_host(device, x, x, trans_a=True, tiles=tiles), x.T @ x, np.abs(x).T @ np.abs(x), RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_and_linear(device, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((203, 21)).astype(dtype)
    w0, b0 = (rng.standard_normal((21, 33)) / 4).astype(dtype), rng.standard_normal(33).astype(dtype)
    w1, b1 = (rng.standard_normal((33, 10)) / 5).astype(dtype), rng.standard_normal(10).astype(dtype)
    for act in ("relu", "gelu", "sigmoid", "tanh", "none"):
        for output in ("none", "softmax"):
            got, want = run(device, "mlp", {"x": x, "w0": w0, "b0": b0, "w1": w1, "b1": b1},
                            activation=act, output=output)
            close(got["y"], want["y"], np.abs(want["y"]) + 1, 1e-5)
    for act in ("gelu", "softmax"):
        got, want = run(device, "linear", {"x": x, "w": w0, "b": b0}, activation=act)
        close(got["y"], want["y"], np.abs(want["y"]) + 1, 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_lstsq_pca(device, dtype):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5003, 13)) @ rng.standard_normal((13, 13)) + 100).astype(dtype)
    y1, y2 = rng.standard_normal(5003).astype(dtype), rng.standard_normal((5003, 3)).astype(dtype)
    for y in (y1, y2):
        got, want = run(device, "gram", {"x": x, "y": y})
        close(got["xtx"], want["xtx"], np.abs(x).T @ np.abs(x), RTOL[dtype])
        close(got["xty"], want["xty"], np.abs(x).T @ np.abs(y), RTOL[dtype])
    got, want = run(device, "lstsq", {"x": x, "y": y1})
    close(got["xtx"], want["xtx"], np.abs(x).T @ np.abs(x), RTOL[dtype])
    got, want = run(device, "pca", {"x": x}, k=3)  # an offset mean: the shift must not cancel
    assert got["n"] == want["n"]
    close(got["mean"], want["mean"])
    centred = np.abs(x.astype(np.float64) - want["mean"])
    close(got["m2"], want["m2"], centred.T @ centred, 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_step(device, dtype):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(c, 0.5, size=(1001, 3)) for c in rng.uniform(-8, 8, size=(4, 3))]).astype(dtype)
    start = x[rng.choice(len(x), 5, replace=False)].astype(np.float64)
    got, want = run(device, "kmeans", {"x": x, "centroids": start})
    assert np.array_equal(got["counts"], want["counts"])
    close(got["sums"], want["sums"], np.abs(want["sums"]) + 1)
    close(got["inertia"], want["inertia"])


def test_kmeans_rejects_nan_naming_the_row(device):
    x = np.random.default_rng(6).standard_normal((500, 4))
    x[321, 2] = np.nan
    op = REGISTRY["kmeans"]
    p = {**op.validate({"x": TensorMeta(x.dtype, x.shape), "centroids": TensorMeta(x.dtype, (3, 4))}, {}),
         "row_offset": 1000}
    with pytest.raises(InvalidInput, match="row 1321"):
        device.run(op, {"x": x, "centroids": x[:3].copy()}, p)


@pytest.mark.parametrize("dtype, index", [(np.float32, np.int32), (np.float64, np.int64)])
def test_spmm_and_gcn(device, dtype, index):
    rng = np.random.default_rng(7)
    dense = (rng.random((97, 97)) < 0.05) * rng.random((97, 97))
    dense[5] = 0  # an empty row
    dense = dense.astype(dtype)
    indptr, indices, data, shape = csr(dense, index)
    x = rng.standard_normal((97, 19)).astype(dtype)
    inputs = {"a_indptr": indptr, "a_indices": indices, "a_data": data, "x": x}
    got, want = run(device, "spmm", inputs, a_cols=97)
    close(got["y"], want["y"], np.abs(dense) @ np.abs(x), RTOL[dtype])
    w = rng.standard_normal((19, 11)).astype(dtype)
    for act in ("relu", "none", "softmax"):
        got, want = run(device, "gcn_layer", {**inputs, "w": w}, a_cols=97, activation=act)
        close(got["y"], want["y"], np.abs(want["y"]) + 1, 1e-5 if dtype == np.float32 else 1e-10)


def test_qmatmul(device):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((77, 130)).astype(np.float32)
    x[3] = 0  # a zero row: scale 1
    w = rng.standard_normal((130, 45)).astype(np.float32)
    got, want = run(device, "qmatmul", {"x": x, "w": w})
    close(got["y"], want["y"], np.abs(want["y"]), 1e-6)
    for key in ("sq_err", "sq_ref", "max_err"):
        close(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-4)


# -- through a cluster whose only device is OpenCL ---------------------------------------------------

@pytest.fixture(scope="module")
def client():
    with lepton.LocalCluster(agents=1, devices=SPEC) as cluster:
        yield cluster.client(timeout=120)


def test_catalog_through_a_cluster(client):
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        a, b = rng.standard_normal((301, 67)).astype(dtype), rng.standard_normal((67, 45)).astype(dtype)
        for plan in ("rows", "inner"):
            c = client.matmul(a, b, plan=plan, partitions=3)
            assert c.dtype == dtype
            close(c, a @ b, np.abs(a) @ np.abs(b), RTOL[dtype])

    x = rng.standard_normal((500, 32)).astype(np.float32)
    layers = [(rng.standard_normal((32, 48)).astype(np.float32) / 6, rng.standard_normal(48).astype(np.float32)),
              (rng.standard_normal((48, 10)).astype(np.float32) / 8, rng.standard_normal(10).astype(np.float32))]
    y = client.mlp(x, layers, activation="tanh", output="softmax", partitions=3)
    z = np.tanh(x @ layers[0][0] + layers[0][1]) @ layers[1][0] + layers[1][1]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    close(y, e / e.sum(axis=1, keepdims=True), np.ones_like(y), 1e-5)

    x = rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12))
    yv = x @ rng.standard_normal(12) + 0.01 * rng.standard_normal(4000)
    g = client.gram(x, yv, partitions=3)
    close(g["xtx"], x.T @ x, np.abs(x).T @ np.abs(x))
    close(g["xty"], x.T @ yv, np.abs(x).T @ np.abs(yv))
    close(client.lstsq(x, yv), np.linalg.lstsq(x, yv, rcond=None)[0], rtol=1e-6)
    pca = client.pca(x + 100, k=3, partitions=3)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    close(pca["explained_variance"], values[::-1][:3], rtol=1e-9)
    for got, want in zip(pca["components"], vectors[:, ::-1].T):
        assert min(np.abs(got - want).max(), np.abs(got + want).max()) < 1e-8

    pts = np.concatenate([rng.normal(c, 0.7, size=(2000, 3)) for c in rng.uniform(-6, 6, size=(4, 3))])
    start = pts[rng.choice(len(pts), 4, replace=False)]
    got = client.kmeans(pts, centroids=start, max_iter=20, tol=1e-9, partitions=3)
    want = start
    for i in range(1, 21):
        labels = np.argmin(((pts[:, None, :] - want[None]) ** 2).sum(-1), axis=1)
        new = np.array([pts[labels == j].mean(axis=0) if np.any(labels == j) else want[j] for j in range(4)])
        shift, want = np.max(np.linalg.norm(new - want, axis=1)), new
        if shift <= 1e-9:
            break
    close(got["centroids"], want, np.abs(want) + 1, 1e-9)
    assert got["iterations"] == i and got["counts"].sum() == len(pts)

    dense = ((rng.random((300, 300)) < 0.03) * rng.random((300, 300))).astype(np.float32)
    feats = rng.standard_normal((300, 16)).astype(np.float32)
    close(client.spmm(csr(dense), feats, partitions=3), dense @ feats, np.abs(dense) @ np.abs(feats), 1e-4)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    h = client.gcn_layer(csr(dense), feats, w, activation="relu", partitions=3)
    d = 1 / np.sqrt(dense.sum(axis=1).astype(np.float64) + 1)
    want = np.maximum((d[:, None] * (dense + np.eye(300)) * d[None, :]) @ feats @ w, 0)
    close(h, want, np.abs(want) + 1, 1e-4)

    xq = rng.standard_normal((200, 128)).astype(np.float32)
    wq = rng.standard_normal((128, 40)).astype(np.float32)
    out = client.qmatmul(xq, wq, partitions=2)
    measured = np.linalg.norm(out["y"] - xq @ wq) / np.linalg.norm(xq @ wq)
    assert abs(out["relative_error"] - measured) <= 1e-3 * measured and 0 < measured < 0.02

    (agent,) = client.cluster_status().agents
    (dev,) = agent.devices
    assert dev.kind == "opencl" and CATALOG_OPS <= set(dev.ops)
    assert {"matmul.rows", "gram"} <= set(dev.throughput)  # they ran on the OpenCL device (>= 64 KiB runs)
