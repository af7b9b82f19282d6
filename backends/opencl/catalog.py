"""The op catalog's OpenCL kernels (matmul, linear/mlp, gram/lstsq/pca, kmeans, spmm/gcn, qmatmul, topk).

Each kernel returns exactly the partial its op's NumPy `reference` returns (keys, dtypes, shapes).
The dense products run on gemm.cl: on GPUs a register-blocked tiled GEMM (128x128 tiles of 8x8 per
work-item, 16-byte local and global reads, double-buffered local tiles filled from a register
prefetch; small tiles for thin outputs), on CPUs (PoCL) explicit SIMD blocked for the caches.
When the output has too few tiles to fill the device (Gram matrices, inner-dimension splits) the K
dimension is split over work-groups and the host adds the slices in float64.

Programs are named '<source>.<KEY=VALUE,...>' (the build's -D options), built through the device's
program cache. Ops that need float64 on the device (kmeans, pca, qmatmul) are offered only where it
has cl_khr_fp64; a float64 input to the others on such a device is FAILED_PRECONDITION (not topk's:
it compares integer ranks of the bits). Devices that run prebuilt binaries only offer none of these ops.
"""
from __future__ import annotations

import math

import numpy as np
import pyopencl as cl

from lepton.errors import FailedPrecondition, InvalidInput
from lepton.backends.ops import REGISTRY
from lepton.backends.ops.base import Partial

SOURCES = ("gemm", "catalog")
CL = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ACT = {"none": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4}

# (device type, T) -> tile shapes (TM, TN, TK, WM, WN[, PAD]) for the tiled kernel, largest
# first (see gemm_config), or VN for gemm_cpu. On an H100 (benchmarks/bench_opencl.py --matmul 8192
# --tiles ...): 128x128x8 with 8x8 per work-item ran SGEMM at 44 TFLOP/s, 86% of cuBLAS; TK=16 60%,
# 128x256x16 80%. 32x32x32 tiles ran an 8M x 32 Gram matrix in 0.84 ms against 6.4 with 128x128.
TILES = {
    ("gpu", "float"): [(128, 128, 8, 8, 8), (32, 32, 32, 4, 4)],
    ("gpu", "double"): [(64, 64, 16, 4, 4), (32, 32, 16, 4, 4)],
    ("gpu", "int"): [(128, 128, 8, 8, 8), (32, 32, 32, 4, 4)],  # qmatmul: char in, int acc
    ("cpu", "float"): 8,    # gemm_cpu: float8 vectors (see CPU_BLOCK)
    ("cpu", "double"): 4,
    ("cpu", "int"): 8,
}
# gemm_cpu's cache blocking: a work-item's rows x columns of C, and the depth of its K blocks. On PoCL
# (2 cores, 1024^3 float32): 29 GFLOP/s; 32x64x128 21, 128x128x128 19; float4/float16 vectors no better.
# Before blocking and without fma (see gemm.cl's MAD) the kernel ran 5.
CPU_BLOCK = (64, 128, 128)
NP = {"float": np.float32, "double": np.float64, "int": np.int32, "char": np.int8}


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
        opts.append(f"-D{key}" if value == "1" and key in ("TRANS_A", "SHIFT", "EVEN", "INT_ACC") else
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
        self.in_place = {}  # role -> host address of an array the device reads in place

    def __call__(self, role: str, x: np.ndarray) -> cl.Buffer:
        device = self.device
        x = np.ascontiguousarray(x)
        self.held.append(x)
        device._check_size(x.nbytes)
        if device.zero_copy and x.nbytes:
            self.in_place[role] = x.ctypes.data
            return cl.Buffer(device.context, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=x)
        buffer = device._buffer(role, max(x.nbytes, 1))
        if x.nbytes:
            device.write(buffer, x)  # large arrays through pinned staging slots (transfer.py)
        return buffer


def _launch(device, kernel, global_size, local_size, *args) -> None:
    kernel.set_args(*args)
    device._launched(cl.enqueue_nd_range_kernel(device.queue, kernel, global_size, local_size))


# -- GEMM -------------------------------------------------------------------------------------------

def gemm_config(device, t: str, M: int = 1 << 20, N: int = 1 << 20):
    """The tile shape for an M x N output: the largest whose padding wastes at most a quarter of the
    tiles' area (tall-skinny products such as Gram matrices get the small tiles)."""
    shapes = TILES[("gpu" if device.is_gpu else "cpu", t)]
    if isinstance(shapes, int):
        return shapes
    for shape in shapes:
        area = -(-M // shape[0]) * shape[0] * -(-N // shape[1]) * shape[1]
        if area <= 1.25 * M * N:
            return shape
    return shapes[-1]


def gemm(device, inputs: Inputs, a, b: np.ndarray, M: int, N: int, K: int, lda: int, t: str, in_t: str,
         out_role: str, trans_a: bool = False, shift: np.ndarray | None = None, split: bool = True,
         tiles=None) -> tuple[cl.Buffer, int, int]:
    """C = op(A) @ B on the device into the kept buffer `out_role`: (buffer, slices, ldc). `a` is a host
    array or a device buffer with row stride `lda`; `b` a host array (K, N). With slices > 1 the
    buffer holds that many (M, ldc) products of K slices, to be added."""
    tiles = tiles or gemm_config(device, t, M, N)
    vec = isinstance(tiles, int)
    np_t = NP[t]
    if vec:  # the CPU kernel: CPU_BLOCK blocks of C per work-item, rows of B and C padded to 2 vectors
        block_m, block_n, _ = CPU_BLOCK
        ldb = -(-N // (2 * tiles)) * 2 * tiles
        grid, step = (-(-ldb // block_n), -(-M // block_m)), 16
        if ldb != N:
            b = np.pad(np.asarray(b), ((0, 0), (0, ldb - N)))
        if shift is not None and len(shift) < ldb:
            shift = np.pad(shift, (0, ldb - len(shift)))
    else:
        TM, TN, TK, WM, WN, *pad = tiles
        ldb = N
        grid, step = (-(-N // TN), -(-M // TM)), max(TK, 16)
    slices = 1
    if split:
        target = device.compute_units * (4 if device.is_gpu else 2)
        slices = max(1, min(target // (grid[0] * grid[1]), K // (step * 8)))
    kper = -(-(-(-K // slices)) // step) * step
    slices = -(-K // kper)
    abuf = inputs("a", a) if isinstance(a, np.ndarray) else a
    bbuf = inputs("b", b)
    sbuf = inputs("shift", np.asarray(shift, np_t)) if shift is not None else None
    ldc = ldb
    if vec:
        defines = dict(T=t, CPU_VEC=tiles, TRANS_A=int(trans_a), SHIFT=int(shift is not None),
                       CB_M=CPU_BLOCK[0], CB_N=CPU_BLOCK[1], KB=CPU_BLOCK[2])
        global_size, local, name = (grid[0], grid[1], slices), None, "gemm_cpu"
    else:
        # EVEN reads 4-wide vectors, which need their alignment: device buffers have it, host arrays
        # read in place (NumPy aligns to 16 bytes) may not.
        vector = 4 * np.dtype(NP[in_t]).itemsize
        even = (M % TM == 0 and N % TN == 0 and K % TK == 0 and lda % 4 == 0
                and ldb % 4 == 0 and shift is None
                and all(inputs.in_place.get(role, 0) % vector == 0 for role in ("a", "b")))
        defines = dict(T=t, TM=TM, TN=TN, TK=TK, WM=WM, WN=WN, TRANS_A=int(trans_a),
                       SHIFT=int(shift is not None), EVEN=int(even))
        if pad and pad[0]:
            defines["PAD"] = pad[0]
        local = (TN // WN, TM // WM, 1)
        global_size, name = (grid[0] * local[0], grid[1] * local[1], slices), "gemm"
    if in_t != t:
        defines["IN"] = in_t
    if t == "int":
        defines["INT_ACC"] = 1
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

# spmm work split: (work-items per work-group, non-zeros per lane). On a power-law graph (1M nodes,
# 15.6M edges, 64 float32 features; benchmarks/bench_opencl_catalog.py --full) an H100 took 2.65-3.1 ms
# for 64 to 256 x 32 to 1024 (2.69 ms here; cuSPARSE 2.37, a work-group per row 528); on PoCL a
# work-item per work-group was as fast for 256 to 4096 non-zeros (noise-bound).
SPMM_SPLIT = {"gpu": (256, 128), "cpu": (1, 512)}


def spmm_plan(indptr: np.ndarray, lanes: int, budget: int):
    """The work-groups of spmm_chunks and spmm_rows, each about lanes x budget non-zeros:
    (lo, hi, light, first, heavy). Rows of at most `budget` non-zeros are light: runs of consecutive
    ones, costing their non-zeros + 1 (the write) each, make work-groups [lo, hi) of rows. Heavier
    rows are cut into equal runs of non-zeros [lo, hi), a work-group each; heavy row k (y's row
    heavy[k]) adds the partials first[k]..first[k + 1] - 1."""
    chunk = lanes * budget
    degree = np.diff(indptr)
    is_heavy = degree > budget
    cost = np.where(is_heavy, 0, degree + 1)  # heavy rows within a light run are skipped there
    start = np.cumsum(cost) - cost
    runs = np.flatnonzero(np.diff(start // chunk, prepend=-1))  # a light run's first row
    heavy = np.flatnonzero(is_heavy)
    pieces = -(-degree[heavy] // chunk)
    first = np.concatenate([[0], np.cumsum(pieces)])
    row, n = np.repeat(heavy, pieces), np.repeat(pieces, pieces)
    k = np.arange(first[-1]) - np.repeat(first[:-1], pieces)  # the piece's number in its row
    d, base = degree[row], indptr[row]
    lo = np.concatenate([runs, base + d * k // n])
    hi = np.concatenate([runs[1:], [len(degree)] if len(runs) else [], base + d * (k + 1) // n])
    return lo.astype(np.int64), hi.astype(np.int64), len(runs), first.astype(np.int64), heavy.astype(np.int64)


def _spmm(device, bufs: Inputs, inputs, x: np.ndarray, scale: np.ndarray | None, row_offset: int) -> cl.Buffer:
    """y = A @ x (the GCN form with `scale`) into the kept buffer spmm_y, balanced by non-zeros."""
    indptr, indices, data = np.asarray(inputs["a_indptr"], np.int64), inputs["a_indices"], inputs["a_data"]
    t = _type(device, data.dtype)
    rows, features = len(indptr) - 1, x.shape[1]
    idx = "int" if indices.dtype == np.int32 else "long"
    out = device._buffer("spmm_y", rows * features * data.dtype.itemsize)
    wg, budget = SPMM_SPLIT["gpu" if device.is_gpu else "cpu"]
    lx = min(64, 1 << (features - 1).bit_length())  # features per work-group (GPU) and spmm_rows
    ly = max(1, wg // lx)
    lo, hi, light, first, heavy = spmm_plan(indptr, ly, budget)
    if not len(lo) or not features:
        return out
    tiles = -(-features // lx)
    partial = device._buffer("spmm_partial", max(1, (len(lo) - light) * features * data.dtype.itemsize))
    xbuf, sbuf, off = bufs("x", x), bufs("scale", scale) if scale is not None else None, np.int64(row_offset)
    args = (bufs("indptr", indptr), bufs("indices", indices), bufs("data", data), xbuf, np.int32(features), out,
            sbuf, off, bufs("spmm_lo", lo), bufs("spmm_hi", hi), np.int32(light), np.int64(budget), partial)
    if device.is_gpu:
        grid, local, name = (len(lo) * lx, tiles * ly), (lx, ly), "spmm_chunks"
    else:
        grid, local, name = (len(lo),), (1,), "spmm_chunks_cpu"
    _launch(device, _kernel(device, "catalog", name, T=t, IDX=idx), grid, local, *args)
    if len(heavy):
        _launch(device, _kernel(device, "catalog", "spmm_rows", T=t, IDX=idx), (len(heavy) * lx, tiles * ly),
                (lx, ly), partial, bufs("spmm_first", first), bufs("spmm_heavy", heavy), xbuf, np.int32(features),
                out, sbuf, off)
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
    xbuf = bufs("qx", x)
    xq = device._buffer("xq", M * K)
    xscale = device._buffer("xscale", M * 4)
    _launch(device, _kernel(device, "catalog", "quantize_rows", T="float", IDX="int"), (M,), None,
            xbuf, np.int32(M), np.int32(K), xq, xscale)
    acc, slices, ldc = gemm(device, bufs, xq, np.ascontiguousarray(w_q), M, N, K, K, "int", "char", "qacc")
    y = device._buffer("qy", M * N * 4)
    _launch(device, _kernel(device, "catalog", "dequantize", T="float", IDX="int"),
            (math.ceil(N / 16) * 16, math.ceil(M / 16) * 16), (16, 16),
            acc, np.int32(slices), np.int32(M), np.int32(N), np.int32(ldc), xscale, bufs("wscale", w_scale), y)
    out = {"y": device._read(y, (M, N), np.float32)}
    if "w" in inputs:
        # The float32 product on the device; the error terms are a host pass over the two results.
        ref = gemm_host(device, x, inputs["w"])
        err = (out["y"] - ref).astype(np.float64)
        out.update(sq_err=np.sum(err ** 2), sq_ref=np.sum(ref.astype(np.float64) ** 2),
                   max_err=np.max(np.abs(err), initial=0.0))
    return out


# -- topk -------------------------------------------------------------------------------------------

# dtype -> the element type code of catalog.cl's topk_rank (TOPK_I8 ... TOPK_F64)
TOPK_TYPES = {np.dtype(t): code for code, t in enumerate(
    [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float16, np.float32,
     np.float64])}
# Lists are kept by insertion (O(k) per insert) in local memory: beyond this k the host runs the
# reference (a full sort) instead.
TOPK_MAX_K = 64
TOPK_LOCAL = 32 << 10  # bytes of local memory per work-group for the lanes' lists (GPU)
TOPK_ENTRY = 12        # a list entry: 64-bit rank + int32 row
TOPK_LANE_ROWS = 16    # GPU lanes scan at least 16 k rows (fills cost O(k^2) a lane; H100: 4 and 64 slower)


def _topk_chunks_cpu(device, xbuf, args: tuple, n: int, cols: int, k: int) -> np.ndarray:
    """Rows of the best k of each contiguous chunk (a work-item each): (chunks * k, cols), no empties."""
    items = max(1, min(device.compute_units * 4, n // max(1024, 8 * k)))
    per = -(-n // items)
    items = -(-n // per)
    ranks = device._buffer("topk_ranks", items * k * cols * 8)
    out = device._buffer("topk_rows", items * k * cols * 4)
    _launch(device, _kernel(device, "catalog", "topk_chunks_cpu", T="float", IDX="int", TOPK=1), (items,), (1,),
            xbuf, *args, np.int32(n), np.int32(cols), np.int32(per), np.int32(k), ranks, out)
    rows = device._read(out, (items, k, cols), np.int32)
    counts = np.minimum(k, np.minimum(per, n - per * np.arange(items)))  # the last may hold fewer than k
    return rows[np.arange(k) < counts[:, None]]


def _topk_lanes(device, xbuf, args: tuple, n: int, cols: int, k: int) -> np.ndarray:
    """The best k rows of each column, (k, cols): lanes scan interleaved rows, each work-group merges
    its lanes' lists, then topk_merge passes merge the groups' lists ly at a time down to one."""
    budget = min(TOPK_LOCAL, device.cl_device.local_mem_size)
    wg = 1 << (min(256, budget // (k * TOPK_ENTRY)).bit_length() - 1)
    lx = min(32, wg // 4, 1 << (cols - 1).bit_length())  # ly >= 4: each merge pass shrinks the lists
    ly = wg // lx
    gx = -(-cols // lx) * lx
    groups = max(1, min(device.compute_units * 2048 // (gx * ly), -(-n // (ly * TOPK_LANE_ROWS * k))))
    local = (cl.LocalMemory(wg * k * 8), cl.LocalMemory(wg * k * 4))
    src = device._buffer("topk_a", groups * k * cols * 4)
    _launch(device, _kernel(device, "catalog", "topk_lanes", T="float", IDX="int", TOPK=1), (gx, groups * ly),
            (lx, ly), xbuf, *args, np.int32(n), np.int32(cols), np.int32(k), *local, src)
    roles = ("topk_b", "topk_a")
    while groups > 1:
        lists, groups = groups, -(-groups // ly)
        dst = device._buffer(roles[0], groups * k * cols * 4)
        _launch(device, _kernel(device, "catalog", "topk_merge", T="float", IDX="int", TOPK=1), (gx, groups * ly),
                (lx, ly), xbuf, *args, np.int32(cols), np.int32(k), np.int32(lists), src, *local, dst)
        src, roles = dst, roles[::-1]
    return device._read(src, (k, cols), np.int32)


def topk(device, inputs, params) -> Partial:
    """Each column's best k rows on the device (int32 row numbers); values are gathered from x on the
    host, and the CPU chunks' candidates merged there by the op's own ordering (Topk._best)."""
    op = REGISTRY["topk"]
    x, k, largest = inputs["x"], params["k"], params["largest"]
    n = len(x)
    # int32 row numbers on the device (headroom for the lanes' strides); no columns: nothing to launch
    if k > TOPK_MAX_K or n >= 1 << 30 or x.size == 0 or x.dtype not in TOPK_TYPES or not x.dtype.isnative:
        return op.reference(inputs, params)
    flat = np.ascontiguousarray(x).reshape(n, -1)
    cols = flat.shape[1]
    bufs = Inputs(device)  # holds x until the blocking read
    args = (np.int32(TOPK_TYPES[x.dtype]), np.int32(largest))
    run = _topk_lanes if device.is_gpu else _topk_chunks_cpu
    rows = run(device, bufs("x", flat), args, n, cols, k)
    del bufs
    values = flat[rows, np.arange(cols)]
    indices = rows.astype(np.int64) + params["row_offset"]
    if len(rows) > k:
        values, indices = op._best(values, indices, k, largest)
    shape = (k,) + x.shape[1:]
    return {"values": values.reshape(shape), "indices": indices.reshape(shape), "k": np.int64(k),
            "largest": np.bool_(largest)}


KERNELS = {"matmul.rows": matmul, "matmul.inner": matmul, "linear": linear, "mlp": mlp, "gram": gram,
           "lstsq": gram, "pca": pca, "kmeans": kmeans, "spmm": spmm, "gcn_layer": gcn_layer, "qmatmul": qmatmul,
           "topk": topk}
NEEDS_FP64 = ("pca", "kmeans", "qmatmul")


def offered(device) -> dict:
    if device.binary_only:
        return {}
    return {name: fn for name, fn in KERNELS.items() if device.fp64 or name not in NEEDS_FP64}
