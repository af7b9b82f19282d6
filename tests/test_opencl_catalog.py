"""The op catalog's OpenCL kernels (backends/opencl/catalog.py) against the NumPy references, on the
device directly (through a real cluster whose only device is OpenCL: tests/test_catalog.py, whose
tests run on both kinds of cluster).

Tolerances (those of tests/test_catalog.py), and why:
- products (matmul, gram, mlp pre-activations, spmm): float64 within 1e-10 and float32 within 1e-4
  relative to the magnitude of the terms summed (|a| @ |b|): a length-k dot product in another order
  may lose log2(k) bits; float64 results computed in float64 from float32 data (pca) within 1e-10.
- activations and softmax: 1e-5 relative to |z| + 1 (float32 libm differences).
- kmeans: sums, counts and inertia within 1e-10 of the reference on data without near-ties (float32
  inertia 1e-5: the reference computes float32 distances in float32).
- qmatmul: the quantized integer product is exact; y within 1e-6 relative (float64 dequantization,
  then a float32 rounding) and the error terms within 1e-4 (they compare with a float32 product).
Each (program, option set) compiles once per run (a second or two on PoCL), so shapes are chosen to
exercise the edge paths (sizes that are not multiples of any tile) with few distinct builds.
"""
from __future__ import annotations


import numpy as np
import pytest

from opencl_devices import usable_opencl_device

CL_DEVICE, SPEC = usable_opencl_device()


from lepton.errors import InvalidInput  # noqa: E402
from lepton.backends.ops import REGISTRY, TensorMeta  # noqa: E402
from lepton.backends.opencl import OpenCLDevice, ProgramCache, catalog  # noqa: E402
from references import close, csr  # noqa: E402
CATALOG_OPS = {"matmul.rows", "matmul.inner", "linear", "mlp", "gram", "lstsq", "pca", "kmeans", "spmm",
               "gcn_layer", "qmatmul", "topk"}


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


@pytest.mark.slow  # up to 14 s each on PoCL with 2 cores
@pytest.mark.parametrize("tiles, dtype", [(shape, dtype) for (kind, t), shapes in catalog.TILES.items()
                                          if kind == "gpu" and t != "int"
                                          for shape, dtype in zip(shapes, [catalog.NP[t]] * len(shapes))])
def test_gpu_tiled_gemm_on_pocl(device, tiles, dtype):
    """The GPU kernel (local tiles, double buffering, 4-wide loads) on PoCL: the EVEN path on whole tiles
    with aligned rows, the checked path on edges, and XᵀX (transposed A)."""
    rng = np.random.default_rng(2)
    for (m, k, n) in [(tiles[0], 32, tiles[1]), (tiles[0] + 3, 45, 70)]:
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        close(catalog.gemm_host(device, a, b, tiles=tiles), a @ b, np.abs(a) @ np.abs(b), RTOL[dtype])
    # Whole tiles, but A one element off the vector alignment (PoCL reads host arrays in place).
    a = np.empty(tiles[0] * 32 + 1, dtype)[1:].reshape(tiles[0], 32)
    a[:], b = rng.standard_normal(a.shape), rng.standard_normal((32, tiles[1])).astype(dtype)
    close(catalog.gemm_host(device, a, b, tiles=tiles), a @ b, np.abs(a) @ np.abs(b), RTOL[dtype])
    # XᵀX: ragged, and on whole tiles with K split into slices of which the last is shorter
    for x in (rng.standard_normal((300, 19)).astype(dtype), rng.standard_normal((1008, tiles[0])).astype(dtype)):
        close(catalog.gemm_host(device, x, x, trans_a=True, tiles=tiles), x.T @ x, np.abs(x).T @ np.abs(x),
              RTOL[dtype])


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
    # The NumPy reference computes float32 points' distances in float32 (this device in float64).
    close(got["inertia"], want["inertia"], rtol=1e-10 if dtype == np.float64 else 1e-5)


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


@pytest.fixture(scope="module")
def gpu_device():
    """The GPU code paths (work-group sizes, work splits) on PoCL."""
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, gpu_layout=True)
    yield dev
    dev.close()


def power_law(n, rng, index):
    """A CSR matrix with power-law row lengths: rows of thousands of non-zeros (several work-groups'
    worth on either path), a run of empty rows, and many rows of one or two."""
    degree = np.minimum(rng.zipf(1.7, n), n // 2)
    degree[[3, 4, n - 1]] = [n - 7, 5 * n // 8, 3 * n // 4]
    degree[100:140] = 0
    row = np.repeat(np.arange(n), degree)
    key = np.unique(row * n + rng.integers(0, n, len(row)))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(key // n, minlength=n))]).astype(np.int64)
    return indptr, (key % n).astype(index), rng.standard_normal(len(key))


@pytest.mark.slow  # 17-23 s each on PoCL with 2 cores
@pytest.mark.parametrize("dtype, index", [(np.float32, np.int32), (np.float64, np.int64), (np.float32, np.int64)])
def test_spmm_balanced_on_power_law_rows(device, gpu_device, dtype, index):
    """Heavy rows split over work-groups and added in a fixed order: within the tolerance of the
    reference, and bitwise the same on every run."""
    rng = np.random.default_rng(10)
    n = 4500
    indptr, indices, data = power_law(n, rng, index)
    assert np.diff(indptr).max() > 2048 and np.any(np.diff(indptr) == 0)  # > 2 work-groups on PoCL
    data = data.astype(dtype)
    dense = np.zeros((n, n), dtype)
    dense[np.repeat(np.arange(n), np.diff(indptr)), indices] = data
    inputs = {"a_indptr": indptr, "a_indices": indices, "a_data": data}
    for dev in (device, gpu_device):
        for features in (1, 37, 64, 130):
            x = rng.standard_normal((n, features)).astype(dtype)
            got, want = run(dev, "spmm", {**inputs, "x": x}, a_cols=n)
            close(got["y"], want["y"], np.abs(dense) @ np.abs(x), RTOL[dtype])
            again, _ = run(dev, "spmm", {**inputs, "x": x}, a_cols=n)
            assert np.array_equal(got["y"], again["y"])
        gcn = {**inputs, "a_data": np.abs(data), "x": x, "w": rng.standard_normal((features, 11)).astype(dtype)}
        got, want = run(dev, "gcn_layer", gcn, a_cols=n, activation="none")  # weights: non-negative
        # float32: the products' 1e-4 (the reference sums a heavy row's 2,000+ terms one by one, SciPy's order)
        close(got["y"], want["y"], np.abs(want["y"]) + 1, 1e-4 if dtype == np.float32 else 1e-10)
        again, _ = run(dev, "gcn_layer", gcn, a_cols=n, activation="none")
        assert np.array_equal(got["y"], again["y"])


def test_spmm_plan_covers_every_row_and_nonzero_once():
    rng = np.random.default_rng(11)
    indptr, _, _ = power_law(3000, rng, np.int32)
    degree = np.diff(indptr)
    for lanes, budget in [(1, 1024), (4, 64), (64, 1)]:
        lo, hi, light, first, heavy = catalog.spmm_plan(indptr, lanes, budget)
        # light work-groups tile the rows; the heavy rows' pieces tile their non-zeros, in order
        assert lo[0] == 0 and hi[light - 1] == len(degree) and np.array_equal(lo[1:light], hi[:light - 1])
        assert np.array_equal(heavy, np.flatnonzero(degree > budget))
        pieces = np.stack([lo[light:], hi[light:]], axis=1)
        assert np.all(pieces[:, 1] - pieces[:, 0] <= lanes * budget) and np.all(pieces[:, 1] > pieces[:, 0])
        assert np.array_equal(pieces[first[:-1], 0], indptr[heavy])
        assert np.array_equal(pieces[first[1:] - 1, 1], indptr[heavy + 1])
        within = np.isin(np.arange(1, len(pieces)), first, invert=True)  # not a row's first piece
        assert np.array_equal(pieces[1:, 0][within], pieces[:-1, 1][within])
        cost = np.where(degree > budget, 0, degree + 1)
        group_cost = np.add.reduceat(cost, lo[:light])
        assert group_cost.max() <= 2 * lanes * budget + 1


def test_qmatmul(device):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((77, 130)).astype(np.float32)
    x[3] = 0  # a zero row: scale 1
    w = rng.standard_normal((130, 45)).astype(np.float32)
    got, want = run(device, "qmatmul", {"x": x, "w": w})
    close(got["y"], want["y"], np.abs(want["y"]), 1e-6)
    for key in ("sq_err", "sq_ref", "max_err"):
        close(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-4)


def test_qmatmul_gpu_tiles_and_split_k(gpu_device):
    """The int8 product on the GPU's tiled GEMM (char inputs, int accumulators): whole tiles (the
    vector-load path), ragged edges, and a long K split over slices, all exact before dequantizing."""
    rng = np.random.default_rng(12)
    for m, k, n in [(128, 64, 128), (77, 130, 45), (5, 3000, 7)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w_q = rng.integers(-127, 128, (k, n)).astype(np.int8)
        w_scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
        got, want = run(gpu_device, "qmatmul", {"x": x, "w_q": w_q, "w_scale": w_scale})
        close(got["y"], want["y"], np.abs(want["y"]), 1e-6)


# -- topk -------------------------------------------------------------------------------------------

TOPK_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float16,
               np.float32, np.float64]


def topk_data(rng, shape, dtype):
    """Few distinct values (many ties), the dtype's extremes, and for floats NaN (some negative, some
    with payloads), infinities, subnormals and both zeros (equal: ties)."""
    dtype = np.dtype(dtype)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    pool = [info.min, info.max, 0, 1, 2, 3]
    if dtype.kind == "f":
        pool += [np.inf, -np.inf, np.nan, -np.nan, -0.0, -1.5, info.smallest_subnormal, -info.tiny]
    x = np.array(pool, dtype)[rng.integers(0, len(pool), shape)]
    if dtype.kind == "f":
        bits = x.view(f"u{dtype.itemsize}")
        bits[np.isnan(x)] |= 1 + np.arange(np.isnan(x).sum(), dtype=bits.dtype) % 3
    return x


def same_topk(dev, x, k, largest, row_offset=0):
    """The device's partial equals the reference's bitwise (a selection: no arithmetic)."""
    op = REGISTRY["topk"]
    p = {**op.validate({"x": TensorMeta(x.dtype, x.shape)}, {"k": k, "largest": largest}), "row_offset": row_offset}
    got, want = dev.run(op, {"x": x}, p), op.reference({"x": x}, p)
    assert set(got) == set(want)
    for key in want:
        g, w = np.asarray(got[key]), np.asarray(want[key])
        assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), (key, x.dtype, k, largest)


@pytest.mark.parametrize("dtype", TOPK_DTYPES, ids=lambda d: np.dtype(d).name)
def test_topk_every_dtype_bitwise(device, gpu_device, dtype):
    """Both code paths (CPU chunks merged on the host; GPU lanes merged in local memory, then by passes),
    1-D and 2-D, one and many columns, k = 1, 5, 64 (the most the device takes), k = rows, and a k past
    64 (the reference on the host); ties by the lower row, NaN last."""
    rng = np.random.default_rng(13)
    for dev in (device, gpu_device):
        for shape in [(4099,), (3001, 1), (2999, 37), (40, 3)]:
            x = topk_data(rng, shape, dtype)
            for k in sorted({1, 5, min(64, shape[0]), 100 if shape[0] > 100 else shape[0]}):
                for largest in (True, False):
                    same_topk(dev, x, k, largest, row_offset=1000)


def test_topk_long_columns_and_worst_orders(device, gpu_device):
    """Rows enough for several merge passes on the GPU path (k = 64 on 8 columns: groups of 4 lanes);
    sorted input (every row inserts at the front); all-equal and all-NaN columns (ties everywhere)."""
    rng = np.random.default_rng(14)
    cases = [rng.integers(0, 4, 300_000).astype(np.float32), rng.integers(0, 3, (40_000, 8)).astype(np.float32),
             np.arange(60_000, dtype=np.int64), np.zeros((20_000, 5), np.float32), np.full((5000, 3), np.nan)]
    for dev in (device, gpu_device):
        for x in cases:
            for k in (1, 10, 64):
                for largest in (True, False):
                    same_topk(dev, x, k, largest)


def test_topk_on_partitions_shorter_than_k(device, gpu_device):
    """A partition can hold fewer rows than k (one, at the least): its partial holds all of them, as the
    reference's does. On the GPU path the lists' unfilled slots (row -1) must not become rows: they
    gave x[-1]'s value and the index row_offset - 1."""
    rng = np.random.default_rng(16)
    op = REGISTRY["topk"]
    for dev in (device, gpu_device):
        for rows, cols in [(1, None), (1, 3), (3, None), (5, 2), (63, 4)]:
            shape = (rows,) if cols is None else (rows, cols)
            x = topk_data(rng, shape, np.float32)
            whole = TensorMeta(x.dtype, (1000,) + shape[1:])  # the job's input: k is checked against it
            for k, largest in [(10, True), (64, False)]:
                p = {**op.validate({"x": whole}, {"k": k, "largest": largest}), "row_offset": 500}
                got, want = dev.run(op, {"x": x}, p), op.reference({"x": x}, p)
                for key in want:
                    g, w = np.asarray(got[key]), np.asarray(want[key])
                    assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), \
                        (dev.is_gpu, shape, k, key, g, w)


def test_topk_float64_without_fp64(gpu_device):
    """Ranks are 64-bit integers: float64 needs no cl_khr_fp64."""
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, fp64=False)
    try:
        assert "topk" in dev.ops and "pca" not in dev.ops
        same_topk(dev, topk_data(np.random.default_rng(15), (3000, 4), np.float64), 7, True)
    finally:
        dev.close()


# -- int8 on the dot-product units, k-means in float32 (issue 17) -----------------------------------

class FakeCLDevice:
    """What catalog.int8_dot reads of a pyopencl device (the edge of a unit test: no such drivers here)."""
    def __init__(self, extensions="", nv=None):
        self.extensions = extensions
        if nv is not None:
            self.compute_capability_major_nv, self.compute_capability_minor_nv = nv


def test_int8_dot_is_chosen_by_capability():
    choose = catalog.int8_dot
    assert choose(FakeCLDevice("cl_khr_fp64 cl_khr_integer_dot_product"), True) == "khr"
    assert choose(FakeCLDevice("cl_khr_integer_dot_product cl_nv_device_attribute_query", (9, 0)), True) == "khr"
    assert choose(FakeCLDevice("cl_nv_device_attribute_query", (9, 0)), True) == "ptx"
    assert choose(FakeCLDevice("cl_nv_device_attribute_query", (6, 1)), True) == "ptx"
    assert choose(FakeCLDevice("cl_nv_device_attribute_query", (6, 0)), True) == "char4"  # no dp4a before 6.1
    assert choose(FakeCLDevice("cl_khr_fp64"), True) == "char4"
    assert choose(FakeCLDevice("cl_khr_integer_dot_product"), False) == "int32"  # CPUs: gemm_cpu's SIMD
    assert choose(CL_DEVICE, False) == "int32"
    assert catalog.int8_dots(FakeCLDevice("cl_khr_integer_dot_product cl_nv_device_attribute_query", (9, 0)),
                             True) == ["khr", "ptx", "char4", "int32"]
    with pytest.raises(ValueError, match="GPU layout"):
        OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, gpu_layout=False, int8_dot="char4")


def int8_variants():
    """(layout, int8_dot) pairs this device can run: int32 on both layouts, char4, and khr and ptx
    where offered (a GPU: benchmarks/gpu_check.sh)."""
    return [(False, "int32")] + [(True, dot) for dot in catalog.int8_dots(CL_DEVICE, True)]


@pytest.mark.parametrize("gpu_layout, dot", int8_variants(), ids=str)
def test_int8_product_bitwise_equals_int32_matmul(gpu_layout, dot):
    """Each int8 product forced on its own device against NumPy's int32 matmul, bitwise: the whole
    int8 range (-128 too, and rows of +-127 at K = 3001, the largest sums), whole tiles (vector loads),
    K not a multiple of 4 (packed zeros) and a long K split over slices."""
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, gpu_layout=gpu_layout,
                       int8_dot=dot)
    rng = np.random.default_rng(17)
    try:
        for m, k, n in [(128, 64, 128), (5, 3001, 7)]:
            a = rng.integers(-128, 128, (m, k)).astype(np.int8)
            w = rng.integers(-128, 128, (k, n)).astype(np.int8)
            a[0], w[:, 0] = 127, 127
            a[1], w[:, 1] = -128, -128
            got = catalog.int8_matmul_host(dev, a, w)
            assert got.dtype == np.int32 and np.array_equal(got, a.astype(np.int32) @ w.astype(np.int32)), (m, k, n)
        assert dev.int8_dot == dot  # no fallback was needed
    finally:
        dev.close()


@pytest.mark.parametrize("gpu_layout", [False, True])
def test_quantize_rows_bitwise(gpu_layout):
    """quantize_rows (a work-group per row, coalesced) gives the reference's int8 values and scales
    bitwise: rows of zeros (scale 1), rows longer than a work-group (1000 > 256 lanes), K % 4 != 0."""
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, gpu_layout=gpu_layout)
    rng = np.random.default_rng(18)
    try:
        for m, k in [(37, 1000), (9, 3), (1, 1)]:
            x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100, (m, 1))).astype(np.float32)
            x[m // 2] = 0
            scale = np.abs(x).max(axis=1) / 127
            scale[scale == 0] = 1
            want = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
            q, s = catalog.quantize_host(dev, x)
            assert np.array_equal(s, scale) and np.array_equal(q, want), (m, k)
    finally:
        dev.close()


def test_kmeans_float32_ties_are_within_float32_rounding(device, gpu_device):
    """Centroids 1e-6 apart make rows tie at float32 resolution (on PoCL about 120 of 3000 rows pick
    another centroid than exact arithmetic would, the NumPy reference's the same way). The device's
    label may differ from the exact one's, and from the reference's, only where their scores
    |c|^2 - 2 x.c (exact in float64) differ by no more than both sides' float32 rounding bound:
    B(c) = 2 u (2 d sum|x_i c_i| + |c|^2 + 2|x.c|), u = 2^-24 (a length-d dot product in another
    order moves by at most d u sum|x_i c_i| each way; the subtraction rounds once more)."""
    from lepton.backends.ops.kmeans import assign

    rng = np.random.default_rng(19)
    d = 8
    x = rng.standard_normal((3000, d)).astype(np.float32)
    c = (rng.standard_normal((1, d)) + 1e-6 * rng.standard_normal((6, d))).astype(np.float32)
    want, _ = assign(x, c.astype(np.float64))
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    norms = (c64 * c64).sum(1)[None, :]
    exact = norms - 2 * x64 @ c64.T
    bound = 2 * 2.0 ** -24 * (2 * d * np.abs(x64) @ np.abs(c64).T + norms + 2 * np.abs(x64 @ c64.T))
    rows, best = np.arange(len(x)), exact.argmin(axis=1)
    assert np.count_nonzero(want != best) > 10  # the data do tie at float32 resolution

    def within(a, b):
        return np.all(np.abs(exact[rows, a] - exact[rows, b]) <= bound[rows, a] + bound[rows, b])

    for dev in (device, gpu_device):
        got = catalog.kmeans_labels_host(dev, x, c)
        assert np.all(got >= 0) and within(got, best) and within(got, want)
        assert np.mean(got != want) < 0.05  # ties only, not another assignment


def test_kmeans_partials_bitwise_across_runs_and_layouts(device, gpu_device):
    """Sums, counts and inertia are bitwise the same on every run and on both layouts (other work-group
    sizes and grids): the partials' rows and the folds follow from the shape alone. 20,000 rows make
    79 partials of 256, folded twice (32 at a time). The noise spans 2^-30 to 1 around centres up to 20
    (one at 0), so the float64 sums are inexact and another order would show in the bits."""
    rng = np.random.default_rng(20)
    centres = np.concatenate([np.zeros((1, 3)), rng.uniform(-20, 20, size=(4, 3))])
    x = np.concatenate([c + rng.normal(0, 0.5, size=(4000, 3)) * 2.0 ** -rng.integers(0, 30, size=(4000, 3))
                        for c in centres]).astype(np.float32)
    start = centres.astype(np.float64) + 0.1
    assert catalog.KmeansPlan.make(len(x), 3, 5).partials > catalog.KM_FAN
    first, want = run(device, "kmeans", {"x": x, "centroids": start})
    assert np.array_equal(first["counts"], want["counts"])
    close(first["sums"], want["sums"], np.abs(want["sums"]) + 1)
    close(first["inertia"], want["inertia"], rtol=1e-5)
    for dev in (device, device, gpu_device, gpu_device):
        again, _ = run(dev, "kmeans", {"x": x, "centroids": start})
        for key in first:
            assert np.asarray(again[key]).tobytes() == np.asarray(first[key]).tobytes(), (dev.is_gpu, key)


def test_int8_dot_falls_back_when_the_driver_refuses_it():
    """A packed product whose build the driver refuses (NVIDIA's inline PTX, on PoCL) gives way to the
    portable char4 one, still exact, and the device keeps the fallback."""
    if "ptx" in catalog.int8_dots(CL_DEVICE, True):
        pytest.skip("this device builds dp4a: nothing to refuse")
    dev = OpenCLDevice(CL_DEVICE, "opencl:0", cache=ProgramCache(), calibrate=False, gpu_layout=True, int8_dot="ptx")
    rng = np.random.default_rng(21)
    a, w = rng.integers(-128, 128, (5, 301)).astype(np.int8), rng.integers(-128, 128, (301, 7)).astype(np.int8)
    try:
        assert np.array_equal(catalog.int8_matmul_host(dev, a, w), a.astype(np.int32) @ w.astype(np.int32))
        assert dev.int8_dot == "char4"
    finally:
        dev.close()
