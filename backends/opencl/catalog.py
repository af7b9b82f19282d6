"""The op catalog's OpenCL kernels (matmul, linear/mlp, gram/lstsq/pca, kmeans, spmm/gcn, qmatmul).

Each kernel returns exactly the partial its op's NumPy `reference` returns (keys, dtypes, shapes).
The dense products run on gemm.cl, a register-blocked tiled GEMM whose tile shape is chosen per
device type (TILES): the GPU shape is 128x128 tiles of 8x8 per work-item with 4-wide local reads and
double-buffered local tiles; on PoCL CPUs a variant without local tiles (NOLOCAL) measured fastest.
When the output has too few tiles to fill the device (Gram matrices, inner-dimension splits) the K
dimension is split over work-groups and the host adds the slices in float64.

Programs are named '<source>.<KEY=VALUE,...>' (the build's -D options), built through the device's
program cache. Ops that need float64 on the device (kmeans, pca, qmatmul) are offered only where it
has cl_khr_fp64; a float64 input to the others on such a device is FAILED_PRECONDITION. Devices that
run prebuilt binaries only offer none of these ops.
"""
from __future__ import annotations

import math

import numpy as np
import pyopencl as cl

from backends.errors import FailedPrecondition, InvalidInput
from backends.ops import REGISTRY
from backends.ops.base import Partial

SOURCES = ("gemm", "catalog")
CL = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ACT = {"none": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4}

# (device type, T) -> (TM, TN, TK, WM, WN, VW, NOLOCAL) for the tiled kernel, or VN for gemm_cpu
TILES = {
    ("gpu", "float"): (128, 128, 16, 8, 8, 4, False),   # 256 work-items, 32 KiB of local tiles
    ("gpu", "double"): (64, 64, 16, 4, 4, 4, False),     # 256 work-items, 32 KiB
    ("cpu", "float"): 8,    # gemm_cpu: 4 rows x float8 per work-item (benchmarks/bench_opencl.py --matmul: 16 and 4 were slower)
    ("cpu", "double"): 4,
}


# -- programs ---------------------------------------------------------------------------------------

def variant(source: str, **defines) -> str:
    return source + "." + ",".join(f"{k}={v}" for k, v in sorted(defines.items()))


def options(device, name: str) -> str:
    """Build options of a catalog program variant (see `variant`)."""
    source, _, body = name.partition(".")
    if source not in SOURCES:
        raise ValueError(name)
    opts = []
    for item in body.split(",") if body else []:
        key, _, value = item.partition("=")
        if not key.isidentifier() or not value.replace("_", "").isalnum():
            raise ValueError(name)
        opts.append(f"-D{key}" if value == "1" and key in ("TRANS_A", "SHIFT", "EVEN", "NOLOCAL") else
                    "" if value == "0" else f"-D{key}={value}")
    defines = dict(item.partition("=")[::2] for item in body.split(","))
    t = defines.get("T", "float")
    opts += [f"-DT4={t}4", f"-Dconvert_T4=convert_{t}4"]
    if device.fp64:
        opts.append("-DHAS_FP64")
    if source == "catalog":
        opts.append("-cl-fp32-correctly-rounded-divide-sqrt")  # qmatmul's x / scale as NumPy rounds it
    return " ".join(o for o in opts if o) + " -w"


def _kernel(device, source: str, kernel: str, **defines) -> cl.Kernel:
    return device._kernel(variant(source, **defines), kernel)


def _type(device, dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in CL:
        raise InvalidInput(f"the OpenCL kernels take float32 or float64; got {dtype}")
    if dtype == np.float64 and not device.fp64:
        raise FailedPrecondition(f"{device.name} has no float64 (cl_khr_fp64); send float64 work elsewhere")
    return CL[dtype]


# -- buffers ----------------------------------------------------------------------------------------

class Inputs:
    """Host arrays on the device for one call: read in place where memory is shared, else copied into
    the device's kept buffers (one per role). Holds the arrays until the call's blocking read."""

    def __init__(self, device):
        self.device = device
        self.held = []

    def __call__(self, role: str, x: np.ndarray) -> cl.Buffer:
        device = self.device
        x = np.ascontiguousarray(x)
        self.held.append(x)
        device._check_size(x.nbytes)
        if device.zero_copy and x.nbytes:
            return cl.Buffer(device.context, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=x)
        buffer = device._buffer(role, max(x.nbytes, 1))
        if x.nbytes:
            cl.enqueue_copy(device.queue, buffer, x, is_blocking=False)
        return buffer


def _launch(device, kernel, global_size, local_size, *args) -> None:
    kernel.set_args(*args)
    device._launched(cl.enqueue_nd_range_kernel(device.queue, kernel, global_size, local_size))


# -- GEMM -------------------------------------------------------------------------------------------

def gemm_config(device, t: str):
    return TILES[("gpu" if device.is_gpu else "cpu", t)]


def gemm(device, inputs: Inputs, a, b: np.ndarray, M: int, N: int, K: int, lda: int, t: str, in_t: str,
         out_role: str, trans_a: bool = False, shift: np.ndarray | None = None, split: bool = True,
         tiles=None) -> tuple[cl.Buffer, int, int]:
    """C = op(A) @ B on the device into the kept buffer `out_role`: (buffer, slices, ldc). `a` is a host
    array or a device buffer with row stride `lda`; `b` a host array (K, N). With slices > 1 the
    buffer holds that many (M, ldc) products of K slices, to be added."""
    tiles = tiles or gemm_config(device, t)
    vec = isinstance(tiles, int)
    np_t = np.float64 if t == "double" else np.float32
    if vec:  # the CPU kernel: 4 rows x `tiles` columns per work-item, rows of B and C padded
        ldb = -(-N // tiles) * tiles
        grid, step = (ldb // tiles, -(-M // 4)), 16
        if ldb != N:
            b = np.pad(np.asarray(b), ((0, 0), (0, ldb - N)))
        if shift is not None and len(shift) < ldb:
            shift = np.pad(shift, (0, ldb - len(shift)))
    else:
        TM, TN, TK, WM, WN, VW, nolocal = tiles
        ldb = N
        grid, step = (-(-N // TN), -(-M // TM)), max(TK, 16)
    slices = 1
    if split:
        target = device.compute_units * (4 if device.is_gpu else 2)
        if vec:
            target *= 64  # work-items, not work-groups
        slices = max(1, min(target // (grid[0] * grid[1]), K // (step * 8)))
    kper = -(-(-(-K // slices)) // step) * step
    slices = -(-K // kper)
    abuf = inputs("a", a) if isinstance(a, np.ndarray) else a
    bbuf = inputs("b", b)
    sbuf = inputs("shift", np.asarray(shift, np_t)) if shift is not None else None
    ldc = ldb
    if vec:
        defines = dict(T=t, CPU_VEC=tiles, TRANS_A=int(trans_a), SHIFT=int(shift is not None))
        global_size, local, name = (grid[0], grid[1], slices), None, "gemm_cpu"
    else:
        even = (not nolocal and M % TM == 0 and N % TN == 0 and K % kper == 0 and lda % 4 == 0
                and ldb % 4 == 0 and shift is None)
        defines = dict(T=t, TM=TM, TN=TN, TK=TK, WM=WM, WN=WN, VW=VW, TRANS_A=int(trans_a),
                       SHIFT=int(shift is not None), EVEN=int(even), NOLOCAL=int(nolocal))
        local = (TN // WN, TM // WM, 1)
        global_size, name = (grid[0] * local[0], grid[1] * local[1], slices), "gemm"
    if in_t != t:
        defines["IN"] = in_t
    kernel = _kernel(device, "gemm", name, **defines)
    out = device._buffer(out_role, slices * M * ldc * np.dtype(np_t).itemsize)
    _launch(device, kernel, global_size, local, np.int32(M), np.int32(N), np.int32(K), np.int32(kper),
            abuf, np.int32(lda), bbuf, np.int32(ldb), out, np.int32(ldc), sbuf)
    return out, slices, ldc


def gemm_host(device, a: np.ndarray, b: np.ndarray, trans_a: bool = False, t: str | None = None,
              shift: np.ndarray | None = None, tiles=None) -> np.ndarray:
    """op(a) @ b as a host array of the accumulator type (a's type unless `t`)."""
    in_t = _type(device, a.dtype)
    t = t or in_t
    out_dtype = np.float64 if t == "double" else np.float32
    a = np.ascontiguousarray(a)
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N = b.shape[1]
    inputs = Inputs(device)  # holds the host arrays until the blocking read
    out, slices, ldc = gemm(device, inputs, a, np.ascontiguousarray(b), M, N, K, a.shape[1], t, in_t, "c",
                            trans_a, shift, tiles=tiles)
    c = device._read(out, (slices, M, ldc), out_dtype)[:, :, :N]
    del inputs
    return c[0] if slices == 1 else c.sum(axis=0, dtype=np.float64).astype(out_dtype)


def matmul(device, inputs, params) -> Partial:
    a, b = inputs["a"], inputs["b"]
    return {"c": gemm_host(device, a, b)}


# -- linear / mlp -----------------------------------------------------------------------------------

def _epilogue(device, inputs: Inputs, y: cl.Buffer, bias: np.ndarray | None, rows: int, cols: int, ld: int,
              t: str, act: str) -> None:
    bbuf = inputs("bias", bias) if bias is not None else None
    if act == "softmax":
        kernel = _kernel(device, "catalog", "bias_softmax", T=t, IDX="int")
        _launch(device, kernel, (rows,), None, y, bbuf, np.int32(rows), np.int32(cols), np.int32(ld))
    else:
        kernel = _kernel(device, "catalog", "bias_act", T=t, IDX="int")
        _launch(device, kernel, (cols, rows), None, y, bbuf, np.int32(rows), np.int32(cols), np.int32(ld),
                np.int32(ACT[act]))


def _read_rows(device, buffer: cl.Buffer, rows: int, cols: int, ld: int, dtype) -> np.ndarray:
    out = device._read(buffer, (rows, ld), dtype)
    return out if ld == cols else np.ascontiguousarray(out[:, :cols])


def _layers(device, x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray | None, str]]) -> np.ndarray:
    """act(... act(x w0 + b0) ...) with every intermediate kept on the device."""
    t = _type(device, x.dtype)
    inputs = Inputs(device)
    y, width, ld = np.ascontiguousarray(x), x.shape[1], x.shape[1]
    rows = x.shape[0]
    for i, (w, b, act) in enumerate(layers):
        out, _, ldc = gemm(device, inputs, y, np.ascontiguousarray(w), rows, w.shape[1], width, ld, t, t,
                           f"layer{i % 2}", split=False)
        _epilogue(device, inputs, out, b, rows, w.shape[1], ldc, t, act)
        y, width, ld = out, w.shape[1], ldc
    return _read_rows(device, y, rows, width, ld, x.dtype)


def mlp(device, inputs, params) -> Partial:
    n = REGISTRY["mlp"].layers(inputs)
    layers = [(inputs[f"w{i}"], inputs[f"b{i}"], params["output"] if i == n - 1 else params["activation"])
              for i in range(n)]
    return {"y": _layers(device, inputs["x"], layers)}


def linear(device, inputs, params) -> Partial:
    return {"y": _layers(device, inputs["x"], [(inputs["w"], inputs["b"], params["output"])])}


# -- gram / lstsq / pca -----------------------------------------------------------------------------

def gram(device, inputs, params) -> Partial:
    x = inputs["x"]
    out = {"xtx": gemm_host(device, x, x, trans_a=True)}
    if "y" in inputs:
        y = inputs["y"]
        xty = gemm_host(device, x, y.reshape(len(y), -1), trans_a=True)
        out["xty"] = xty.reshape(x.shape[1:] + y.shape[1:])
    return out


def pca(device, inputs, params) -> Partial:
    """Column sums as a float64 GEMM (1ᵀX, from X's own type), then the centred co-moment
    (X - mean)ᵀ(X - mean) in float64: one more GEMM with the shift applied as tiles are loaded."""
    x = np.ascontiguousarray(inputs["x"])
    _type(device, x.dtype)
    n = len(x)
    mean = gemm_host(device, np.ones((n, 1), x.dtype), x, trans_a=True, t="double")[0] / n
    m2 = gemm_host(device, x, x, trans_a=True, t="double", shift=mean)
    return {"n": np.int64(n), "mean": mean, "m2": m2}


# -- kmeans -----------------------------------------------------------------------------------------

def kmeans(device, inputs, params) -> Partial:
    op = REGISTRY["kmeans"]
    if params["phase"] == "sample":
        return op.reference(inputs, params)  # a seeded random choice of rows: not compute
    x = np.ascontiguousarray(inputs["x"])
    t = _type(device, x.dtype)
    centroids = np.ascontiguousarray(inputs["centroids"], dtype=np.float64)
    n, d = x.shape
    k = len(centroids)
    items = max(1, min(n, device.compute_units * (256 if device.is_gpu else 4)))
    per = math.ceil(n / items)
    items = math.ceil(n / per)
    bufs = Inputs(device)
    xbuf, cbuf = bufs("x", x), bufs("centroids", centroids)
    nbuf = bufs("cnorm", np.sum(centroids * centroids, axis=1))
    sums = device._buffer("km_sums", items * k * d * 8)
    counts = device._buffer("km_counts", items * k * 8)
    inertia = device._buffer("km_inertia", items * 8)
    bad = device._buffer("km_bad", items * 8)
    kernel = _kernel(device, "catalog", "kmeans_step", T=t, IDX="int")
    _launch(device, kernel, (items,), None, xbuf, np.int64(n), np.int32(d), np.int64(per), cbuf, nbuf,
            np.int32(k), sums, counts, inertia, bad)
    bad_rows = device._read(bad, (items,), np.int64)
    if np.any(bad_rows >= 0):
        row = params["row_offset"] + int(bad_rows[bad_rows >= 0].min())
        raise InvalidInput(f"kmeans: x has NaN or infinity (row {row}); clean or drop those rows")
    return {"sums": device._read(sums, (items, k, d), np.float64).sum(axis=0),
            "counts": device._read(counts, (items, k), np.int64).sum(axis=0),
            "inertia": np.float64(device._read(inertia, (items,), np.float64).sum())}


# -- spmm / gcn -------------------------------------------------------------------------------------

def _spmm(device, bufs: Inputs, inputs, x: np.ndarray, scale: np.ndarray | None, row_offset: int) -> cl.Buffer:
    indptr, indices, data = inputs["a_indptr"], inputs["a_indices"], inputs["a_data"]
    t = _type(device, data.dtype)
    rows, features = len(indptr) - 1, x.shape[1]
    idx = "int" if indices.dtype == np.int32 else "long"
    kernel = _kernel(device, "catalog", "spmm_csr", T=t, IDX=idx)
    out = device._buffer("spmm_y", rows * features * data.dtype.itemsize)
    args = (bufs("indptr", np.asarray(indptr, np.int64)), bufs("indices", indices), bufs("data", data),
            bufs("x", x), np.int32(features), out, bufs("scale", scale) if scale is not None else None,
            np.int64(row_offset))
    if device.is_gpu:
        lx = min(64, 1 << (features - 1).bit_length())
        _launch(device, kernel, (math.ceil(features / lx) * lx, rows), (lx, 1), *args)
    else:
        _launch(device, kernel, (features, rows), None, *args)
    return out


def spmm(device, inputs, params) -> Partial:
    x = inputs["x"]
    bufs = Inputs(device)
    out = _spmm(device, bufs, inputs, x, None, 0)
    return {"y": device._read(out, (len(inputs["a_indptr"]) - 1, x.shape[1]), inputs["a_data"].dtype)}


def gcn_layer(device, inputs, params) -> Partial:
    x, w, scale = inputs["x"], inputs["w"], inputs["scale"]
    t = _type(device, x.dtype)
    rows = len(inputs["a_indptr"]) - 1
    bufs = Inputs(device)
    h = _spmm(device, bufs, inputs, x, scale, params["row_offset"])
    out, _, ldc = gemm(device, bufs, h, np.ascontiguousarray(w), rows, w.shape[1], w.shape[0], w.shape[0], t, t,
                       "layer0", split=False)
    _epilogue(device, bufs, out, None, rows, w.shape[1], ldc, t, params["activation"])
    return {"y": _read_rows(device, out, rows, w.shape[1], ldc, x.dtype)}


# -- qmatmul ----------------------------------------------------------------------------------------

def qmatmul(device, inputs, params) -> Partial:
    x = np.ascontiguousarray(inputs["x"], dtype=np.float32)
    w_q, w_scale = inputs["w_q"], inputs["w_scale"]
    M, K = x.shape
    N = w_q.shape[1]
    bufs = Inputs(device)
    xbuf = bufs("a", x)
    xq = device._buffer("xq", M * K)
    xscale = device._buffer("xscale", M * 4)
    _launch(device, _kernel(device, "catalog", "quantize_rows", T="float", IDX="int"), (M,), None,
            xbuf, np.int32(M), np.int32(K), xq, xscale)
    y = device._buffer("qy", M * N * 4)
    _launch(device, _kernel(device, "catalog", "qgemm", T="float", IDX="int"),
            (math.ceil(N / 16) * 16, math.ceil(M / 16) * 16), (16, 16),
            xq, bufs("wq", w_q), np.int32(M), np.int32(N), np.int32(K), xscale, bufs("wscale", w_scale), y)
    out = {"y": device._read(y, (M, N), np.float32)}
    if "w" in inputs:
        # The float32 product on the device; the error terms are a host pass over the two results.
        ref = gemm_host(device, x, inputs["w"])
        err = (out["y"] - ref).astype(np.float64)
        out.update(sq_err=np.sum(err ** 2), sq_ref=np.sum(ref.astype(np.float64) ** 2),
                   max_err=np.max(np.abs(err), initial=0.0))
    return out


KERNELS = {"matmul.rows": matmul, "matmul.inner": matmul, "linear": linear, "mlp": mlp, "gram": gram,
           "lstsq": gram, "pca": pca, "kmeans": kmeans, "spmm": spmm, "gcn_layer": gcn_layer, "qmatmul": qmatmul}
NEEDS_FP64 = ("pca", "kmeans", "qmatmul")


def offered(device) -> dict:
    if device.binary_only:
        return {}
    return {name: fn for name, fn in KERNELS.items() if device.fp64 or name not in NEEDS_FP64}
