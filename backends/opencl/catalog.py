"""The op catalog's OpenCL kernels (matmul, linear/mlp, gram/lstsq/pca, kmeans, spmm/gcn, qmatmul, topk).

Each kernel returns exactly the partial its op's NumPy `reference` returns (keys, dtypes, shapes).
The dense products run on gemm.cl: on GPUs a register-blocked tiled GEMM (128x128 tiles of 8x8 per
work-item, 16-byte local and global reads, double-buffered local tiles filled from a register
prefetch; small tiles for thin outputs), on CPUs (PoCL) explicit SIMD blocked for the caches.
When the output has too few tiles to fill the device (Gram matrices, inner-dimension splits) the K
dimension is split over work-groups and the host adds the slices in float64. On devices with memory
of their own a large A streams in, each chunk's row blocks (or K slices) launched as it lands (gemm).
qmatmul's int8 products are chosen by capability (int8_dots: the dot-product instructions on GPUs),
k-means runs as a GEMM, an argmin and fixed-order float64 partials (KmeansPlan).

Launches are planned before any buffer exists (GemmPlan, TopkPlan: small dataclasses of sizes) and
run through the device's public parts: its programs (variants.py names them), kernels called to
launch, and its allocator's kept buffers and copies. Ops that need float64 on the device (kmeans,
pca, qmatmul) are offered only where it has cl_khr_fp64; a float64 input to the others on such a
device is FAILED_PRECONDITION (not topk's: it compares integer ranks of the bits). Devices that run
prebuilt binaries only offer none of these ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from lepton.errors import FailedPrecondition, InvalidInput
from lepton.backends.opencl import variants
from lepton.backends.opencl.allocator import Inputs
from lepton.backends.opencl.program import Kernel
from lepton.backends.ops import REGISTRY
from lepton.backends.ops.base import Partial

CL = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ACT = {"none": 0, "relu": 1, "gelu": 2, "sigmoid": 3, "tanh": 4}

# (device type, T) -> tile shapes (TM, TN, TK, WM, WN[, PAD]) for the tiled kernel, largest
# first (see gemm_config), or VN for gemm_cpu. On an H100 (benchmarks/bench_opencl.py --matmul 8192
# --tiles ...): 128x128x8 with 8x8 per work-item ran SGEMM at 44 TFLOP/s, 86% of cuBLAS; TK=16 60%,
# 128x256x16 80%. 32x32x32 tiles ran an 8M x 32 Gram matrix in 0.84 ms against 6.4 with 128x128.
TILES = {
    ("gpu", "float"): [(128, 128, 8, 8, 8), (32, 32, 32, 4, 4)],
    ("gpu", "double"): [(64, 64, 16, 4, 4), (32, 32, 16, 4, 4)],
    ("gpu", "int"): [(128, 128, 8, 8, 8), (32, 32, 32, 4, 4)],  # qmatmul: char or packed int in, int acc
    ("cpu", "float"): 8,    # gemm_cpu: float8 vectors (see CPU_BLOCK)
    ("cpu", "double"): 4,
    ("cpu", "int"): 8,
}
# gemm_cpu's cache blocking: a work-item's rows x columns of C, and the depth of its K blocks. On PoCL
# (2 cores, 1024^3 float32): 29 GFLOP/s; 32x64x128 21, 128x128x128 19; float4/float16 vectors no better.
# Before blocking and without fma (see gemm.cl's MAD) the kernel ran 5.
CPU_BLOCK = (64, 128, 128)
NP = {"float": np.float32, "double": np.float64, "int": np.int32, "char": np.int8}


# -- programs and buffers ---------------------------------------------------------------------------

def _kernel(device, source: str, kernel: str, **defines) -> Kernel:
    return device.program(variants.name(source, HAS_FP64=device.fp64, **defines)).kernel(kernel)


def _type(device, dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in CL:
        raise InvalidInput(f"the OpenCL kernels take float32 or float64; got {dtype}")
    if dtype == np.float64 and not device.fp64:
        raise FailedPrecondition(f"{device.name} has no float64 (cl_khr_fp64); send float64 work elsewhere")
    return CL[dtype]


def _read(device, buffer: cl.Buffer, shape: tuple, dtype) -> np.ndarray:
    return device.allocator.copyout(buffer, shape, dtype)


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


@dataclass(frozen=True)
class Product:
    """C = op(A) @ B, M x N from an inner dimension K: A is M x K (K x M with trans_a) with row
    stride lda; t is C's and the accumulator's type, in_t A's and B's; shift: a per-column shift
    subtracted from A and B as tiles are loaded (the centred co-moment)."""
    M: int
    N: int
    K: int
    lda: int
    t: str
    in_t: str
    trans_a: bool = False
    shift: bool = False


@dataclass(frozen=True)
class GemmPlan:
    """How a Product runs on one device: the tile shape (TM, TN, TK, WM, WN[, PAD]) or, for the CPU
    kernel, its vector width; B's and C's row stride ldb (on CPUs padded to two vectors); the grid of
    output blocks; and K cut into `slices` of `kper` (a multiple of the kernel's step) when the output
    has too few blocks to fill the device: C then holds that many (M, ldb) products, to be added."""
    p: Product
    tiles: tuple | int
    ldb: int
    grid: tuple[int, int]
    slices: int
    kper: int

    @classmethod
    def make(cls, device, p: Product, split: bool = True, tiles=None) -> GemmPlan:
        tiles = tiles or gemm_config(device, p.t, p.M, p.N)
        if isinstance(tiles, int):  # the CPU kernel: CPU_BLOCK blocks of C per work-item
            block_m, block_n, _ = CPU_BLOCK
            ldb = -(-p.N // (2 * tiles)) * 2 * tiles
            grid, step = (-(-ldb // block_n), -(-p.M // block_m)), 16
        else:
            TM, TN, TK = tiles[:3]
            ldb = p.N
            grid, step = (-(-p.N // TN), -(-p.M // TM)), max(TK, 16)
        slices = 1
        if split:
            target = device.compute_units * (4 if device.is_gpu else 2)
            slices = max(1, min(target // (grid[0] * grid[1]), p.K // (step * 8)))
        kper = -(-(-(-p.K // slices)) // step) * step
        return cls(p, tiles, ldb, grid, -(-p.K // kper), kper)

    @property
    def cpu(self) -> bool:
        return isinstance(self.tiles, int)

    def launch(self, inputs: Inputs, roles: tuple = ("a", "b")) -> tuple[str, dict, tuple, tuple | None]:
        """(kernel, defines, global size, local size); `inputs` tells where A and B (held under
        `roles`) are read in place."""
        p = self.p
        if self.cpu:
            defines = dict(T=p.t, CPU_VEC=self.tiles, TRANS_A=p.trans_a, SHIFT=p.shift,
                           CB_M=CPU_BLOCK[0], CB_N=CPU_BLOCK[1], KB=CPU_BLOCK[2])
            name, global_size, local = "gemm_cpu", (self.grid[0], self.grid[1], self.slices), None
        else:
            TM, TN, TK, WM, WN, *pad = self.tiles
            # EVEN reads 4-wide vectors, which need their alignment: device buffers have it, host arrays
            # read in place (NumPy aligns to 16 bytes) may not.
            vector = 4 * np.dtype(NP[p.in_t]).itemsize
            even = (p.M % TM == 0 and p.N % TN == 0 and p.K % TK == 0 and p.lda % 4 == 0
                    and self.ldb % 4 == 0 and not p.shift
                    and all(inputs.in_place.get(role, 0) % vector == 0 for role in roles))
            defines = dict(T=p.t, TM=TM, TN=TN, TK=TK, WM=WM, WN=WN, TRANS_A=p.trans_a, SHIFT=p.shift, EVEN=even,
                           PAD=pad[0] if pad and pad[0] else None)
            local = (TN // WN, TM // WM, 1)
            name, global_size = "gemm", (self.grid[0] * local[0], self.grid[1] * local[1], self.slices)
        defines.update(IN=p.in_t if p.in_t != p.t else None, INT_ACC=p.t == "int")
        return name, defines, global_size, local


def stream_rows(device, plan: GemmPlan, a) -> int:
    """Rows of a host A per staged chunk when A should stream in (a device with memory of its own, A
    large), else 0: whole row blocks of C (K slices for XᵀX), so each launch covers whole work-groups."""
    stager = device.allocator.stager
    if stager is None or not isinstance(a, np.ndarray):
        return 0
    p = plan.p
    unit = plan.kper if p.trans_a else (CPU_BLOCK[0] if plan.cpu else plan.tiles[0])
    rows = stager.rows_per_chunk(a, multiple=unit)
    return rows if 0 < rows < a.shape[0] else 0


def gemm(device, inputs: Inputs, plan: GemmPlan, a, b, out_role: str,
         shift: np.ndarray | None = None, dot: str | None = None, a_role: str = "a",
         ready: list | None = None) -> cl.Buffer:
    """Launch `plan` into the kept buffer `out_role` (plan.slices products of (M, plan.ldb)). `a` and
    `b` are host arrays or device buffers ((M, K) and (K, N); b a host array on CPUs); `shift` the
    Product's, per column; `dot` the tiled kernel's int8 dot product (gemm.cl's DOT) on packed ints;
    `a_role` the role `inputs` holds A under when it is a buffer from them.

    A large host A on a device with memory of its own streams in through the pinned staging slots
    (stream_rows): each chunk's part of the grid (its row blocks of C, or for XᵀX its K slices) is
    launched as the chunk lands, over the whole buffers with a global offset, so every work-group
    computes exactly what it computes in one launch: the same bits. `ready` (a list) then gets
    (end byte of C, event) per launch for Allocator.copyout when C is one product (rows of A = rows
    of C), so the first rows come back while the last compute."""
    p = plan.p
    if plan.cpu:  # rows of B and C padded to two vectors
        if plan.ldb != p.N:
            b = np.pad(np.asarray(b), ((0, 0), (0, plan.ldb - p.N)))
        if shift is not None and len(shift) < plan.ldb:
            shift = np.pad(shift, (0, plan.ldb - len(shift)))
    rows = stream_rows(device, plan, a)
    if rows:
        abuf = device.allocator.buffer(a_role, a.nbytes)  # filled chunk by chunk below
    else:
        abuf = inputs(a_role, a) if isinstance(a, np.ndarray) else a
    bbuf = inputs("b", b) if isinstance(b, np.ndarray) else b
    sbuf = inputs("shift", np.asarray(shift, NP[p.t])) if shift is not None else None
    name, defines, global_size, local = plan.launch(inputs, (a_role, "b"))
    if dot is not None:
        defines["DOT"] = dot
    itemsize = np.dtype(NP[p.t]).itemsize
    out = device.allocator.buffer(out_role, plan.slices * p.M * plan.ldb * itemsize)
    kernel = _kernel(device, "gemm", name, **defines)
    args = (np.int32(p.M), np.int32(p.N), np.int32(p.K), np.int32(plan.kper), abuf, np.int32(p.lda), bbuf,
            np.int32(plan.ldb), out, np.int32(plan.ldb), sbuf)
    if not rows:
        kernel(global_size, local, *args)
        return out
    # The grid dimension a chunk covers: dimension 2 (slices) for XᵀX, else 1 (row blocks); its
    # unit of rows, and work-items per block along it (the kernel's global size counts work-items).
    dim, unit = (2, plan.kper) if p.trans_a else (1, CPU_BLOCK[0] if plan.cpu else plan.tiles[0])
    step = 1 if dim == 2 or local is None else local[1]
    pending = device.allocator.stager.chunks(device.queue, abuf, a, rows)
    try:
        for lo, hi, event in pending:
            first, last = lo // unit, -(-hi // unit)
            size, offset = list(global_size), [0, 0, 0]
            size[dim], offset[dim] = (last - first) * step, first * step
            done = kernel(tuple(size), local, *args, after=event, offset=tuple(offset))
            device.queue.flush()  # start it while the next chunk is filled
            if ready is not None and not p.trans_a and plan.slices == 1:
                ready.append((min(p.M, last * unit) * plan.ldb * itemsize, done))
    finally:
        pending.close()
    return out


def gemm_host(device, a: np.ndarray, b: np.ndarray, trans_a: bool = False, t: str | None = None,
              shift: np.ndarray | None = None, tiles=None) -> np.ndarray:
    """op(a) @ b as a host array of the accumulator type (a's type unless `t`)."""
    in_t = _type(device, a.dtype)
    t = t or in_t
    out_dtype = np.float64 if t == "double" else np.float32
    a = np.ascontiguousarray(a)
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    N = b.shape[1]
    plan = GemmPlan.make(device, Product(M, N, K, a.shape[1], t, in_t, trans_a, shift is not None), tiles=tiles)
    inputs = Inputs(device.allocator)  # holds the host arrays until the blocking read
    ready = []
    out = gemm(device, inputs, plan, a, np.ascontiguousarray(b), "c", shift, ready=ready)
    c = device.allocator.copyout(out, (plan.slices, M, plan.ldb), out_dtype, ready or None)[:, :, :N]
    del inputs
    return c[0] if plan.slices == 1 else c.sum(axis=0, dtype=np.float64).astype(out_dtype)


def matmul(device, inputs, params) -> Partial:
    a, b = inputs["a"], inputs["b"]
    return {"c": gemm_host(device, a, b)}


# -- linear / mlp -----------------------------------------------------------------------------------

def _epilogue(device, inputs: Inputs, y: cl.Buffer, bias: np.ndarray | None, rows: int, cols: int, ld: int,
              t: str, act: str) -> None:
    bbuf = inputs("bias", bias) if bias is not None else None
    if act == "softmax":
        kernel = _kernel(device, "catalog", "bias_softmax", T=t, IDX="int")
        kernel((rows,), None, y, bbuf, np.int32(rows), np.int32(cols), np.int32(ld))
    else:
        kernel = _kernel(device, "catalog", "bias_act", T=t, IDX="int")
        kernel((cols, rows), None, y, bbuf, np.int32(rows), np.int32(cols), np.int32(ld), np.int32(ACT[act]))


def _read_rows(device, buffer: cl.Buffer, rows: int, cols: int, ld: int, dtype) -> np.ndarray:
    out = _read(device, buffer, (rows, ld), dtype)
    return out if ld == cols else np.ascontiguousarray(out[:, :cols])


def _layers(device, x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray | None, str]]) -> np.ndarray:
    """act(... act(x w0 + b0) ...) with every intermediate kept on the device."""
    t = _type(device, x.dtype)
    inputs = Inputs(device.allocator)
    y, width, ld = np.ascontiguousarray(x), x.shape[1], x.shape[1]
    rows = x.shape[0]
    for i, (w, b, act) in enumerate(layers):
        plan = GemmPlan.make(device, Product(rows, w.shape[1], width, ld, t, t), split=False)
        out = gemm(device, inputs, plan, y, np.ascontiguousarray(w), f"layer{i % 2}")
        _epilogue(device, inputs, out, b, rows, w.shape[1], plan.ldb, t, act)
        y, width, ld = out, w.shape[1], plan.ldb
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

# k-means partials: rows per partial from the shape alone (at least KM_MIN_ROWS; the partials of one
# call take at most KM_PART_BYTES), folded KM_FAN at a time: bits independent of the launch.
KM_MIN_ROWS = 256
KM_PART_BYTES = 64 << 20
KM_FAN = 32


@dataclass(frozen=True)
class KmeansPlan:
    """One k-means step on n rows of d features and k centroids: `partials` partials of `per` rows,
    each `width` float64 values (sums k x d, counts k, inertia)."""
    n: int
    d: int
    k: int
    per: int
    partials: int

    @property
    def width(self) -> int:
        return self.k * self.d + self.k + 1

    @classmethod
    def make(cls, n: int, d: int, k: int) -> KmeansPlan:
        width = k * d + k + 1
        most = max(1, KM_PART_BYTES // (8 * width))
        per = max(KM_MIN_ROWS, -(-n // most))
        return cls(n, d, k, per, max(1, -(-n // per)))


def _kmeans_assign(device, bufs: Inputs, x: np.ndarray, centroids: np.ndarray):
    """(x, labels, distances) on the device: the GEMM dots = x cᵀ in x's type, then kmeans_assign."""
    n, d = x.shape
    k, t = len(centroids), CL[x.dtype]
    cnorm = np.sum(centroids * centroids, axis=1)  # the reference's own expression: the same bits
    xbuf = bufs("x", x)  # copied once (devices with memory of their own): the GEMM and the kernels read it
    plan = GemmPlan.make(device, Product(n, k, d, d, t, t), split=False)
    dots = gemm(device, bufs, plan, xbuf, np.ascontiguousarray(centroids.T), "km_dots", a_role="x")
    labels = device.allocator.buffer("km_labels", max(1, n) * 4)
    dist = device.allocator.buffer("km_dist", max(1, n) * x.itemsize)
    wg = 64 if device.is_gpu else None
    _kernel(device, "catalog", "kmeans_assign", T=t, IDX="int")(
        (-(-n // 64) * 64,), (wg,) if wg else None, xbuf, np.int32(n), np.int32(d), dots, np.int32(plan.ldb),
        bufs("centroids", centroids), bufs("cnorm", cnorm), np.int32(k), labels, dist)
    return xbuf, labels, dist


def kmeans_labels_host(device, x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The device's nearest centroid of each row (int32; -1 for a row with NaN or infinity), as a
    k-means step assigns them (tests: ties at float32 resolution)."""
    x = np.ascontiguousarray(x)
    bufs = Inputs(device.allocator)
    _, labels, _ = _kmeans_assign(device, bufs, x, np.ascontiguousarray(centroids, dtype=x.dtype))
    return _read(device, labels, (len(x),), np.int32)


def kmeans(device, inputs, params) -> Partial:
    """Distances in the reference's precision (x's type; float64 with precision="float64") by the
    GEMM dots = x cᵀ, then kmeans_assign, kmeans_partials and fold_partials (catalog.cl)."""
    op = REGISTRY["kmeans"]
    if params["phase"] == "sample":
        return op.reference(inputs, params)  # a seeded random choice of rows: not compute
    x = np.ascontiguousarray(inputs["x"])
    _type(device, x.dtype)
    if params.get("precision", "auto") == "float64":
        x = x.astype(np.float64)  # the GEMM reads both operands in one type
    t, work = CL[x.dtype], x.dtype
    n, d = x.shape
    centroids = np.ascontiguousarray(inputs["centroids"], dtype=work)
    k = len(centroids)
    if n == 0 or d == 0:
        return op.reference(inputs, params)
    bufs = Inputs(device.allocator)
    xbuf, labels, dist = _kmeans_assign(device, bufs, x, centroids)
    km = KmeansPlan.make(n, d, k)
    part = device.allocator.buffer("km_part", km.partials * km.width * 8)
    bad = device.allocator.buffer("km_bad", km.partials * 8)
    _kernel(device, "catalog", "kmeans_partials", T=t, IDX="int")(
        (d, km.partials), None, xbuf, np.int32(n), np.int32(d), np.int32(km.per), labels, dist, np.int32(k),
        part, bad)
    count, roles = km.partials, ("km_fold_a", "km_fold_b")
    while count > 1:
        groups = -(-count // KM_FAN)
        out = device.allocator.buffer(roles[0], groups * km.width * 8)
        _kernel(device, "catalog", "fold_partials", T=t, IDX="int")(
            (-(-km.width // 64) * 64, groups), None, part, np.int32(count), np.int32(km.width), np.int32(KM_FAN), out)
        part, count, roles = out, groups, roles[::-1]
    bad_rows = _read(device, bad, (km.partials,), np.int64)
    if np.any(bad_rows >= 0):
        row = params["row_offset"] + int(bad_rows[bad_rows >= 0].min())
        raise InvalidInput(f"kmeans: x has NaN or infinity (row {row}); clean or drop those rows")
    total = _read(device, part, (km.width,), np.float64)
    return {"sums": total[:k * d].reshape(k, d), "counts": total[k * d:k * d + k].astype(np.int64),
            "inertia": np.float64(total[-1])}


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
    out = device.allocator.buffer("spmm_y", rows * features * data.dtype.itemsize)
    wg, budget = SPMM_SPLIT["gpu" if device.is_gpu else "cpu"]
    lx = min(64, 1 << (features - 1).bit_length())  # features per work-group (GPU) and spmm_rows
    ly = max(1, wg // lx)
    lo, hi, light, first, heavy = spmm_plan(indptr, ly, budget)
    if not len(lo) or not features:
        return out
    tiles = -(-features // lx)
    partial = device.allocator.buffer("spmm_partial", max(1, (len(lo) - light) * features * data.dtype.itemsize))
    xbuf, sbuf, off = bufs("x", x), bufs("scale", scale) if scale is not None else None, np.int64(row_offset)
    args = (bufs("indptr", indptr), bufs("indices", indices), bufs("data", data), xbuf, np.int32(features), out,
            sbuf, off, bufs("spmm_lo", lo), bufs("spmm_hi", hi), np.int32(light), np.int64(budget), partial)
    if device.is_gpu:
        grid, local, name = (len(lo) * lx, tiles * ly), (lx, ly), "spmm_chunks"
    else:
        grid, local, name = (len(lo),), (1,), "spmm_chunks_cpu"
    _kernel(device, "catalog", name, T=t, IDX=idx)(grid, local, *args)
    if len(heavy):
        _kernel(device, "catalog", "spmm_rows", T=t, IDX=idx)(
            (len(heavy) * lx, tiles * ly), (lx, ly), partial, bufs("spmm_first", first), bufs("spmm_heavy", heavy),
            xbuf, np.int32(features), out, sbuf, off)
    return out


def spmm(device, inputs, params) -> Partial:
    x = inputs["x"]
    bufs = Inputs(device.allocator)
    out = _spmm(device, bufs, inputs, x, None, 0)
    return {"y": _read(device, out, (len(inputs["a_indptr"]) - 1, x.shape[1]), inputs["a_data"].dtype)}


def gcn_layer(device, inputs, params) -> Partial:
    x, w, scale = inputs["x"], inputs["w"], inputs["scale"]
    t = _type(device, x.dtype)
    rows = len(inputs["a_indptr"]) - 1
    bufs = Inputs(device.allocator)
    h = _spmm(device, bufs, inputs, x, scale, params["row_offset"])
    plan = GemmPlan.make(device, Product(rows, w.shape[1], w.shape[0], w.shape[0], t, t), split=False)
    out = gemm(device, bufs, plan, h, np.ascontiguousarray(w), "layer0")
    _epilogue(device, bufs, out, None, rows, w.shape[1], plan.ldb, t, params["activation"])
    return {"y": _read_rows(device, out, rows, w.shape[1], plan.ldb, x.dtype)}


# -- qmatmul ----------------------------------------------------------------------------------------

# The int8 products, by what the device has (int8_dot chooses): "khr" (cl_khr_integer_dot_product),
# "ptx" (dp4a by inline PTX, NVIDIA from compute capability 6.1), "char4" (packed dot products in
# portable OpenCL C, which a compiler may lower to the same instructions), all on the GPU's tiled
# GEMM with four int8 values per int; "int32" (an int32 multiply-add per pair), the CPUs' path.
INT8_DOTS = ("khr", "ptx", "char4", "int32")
# quantize_rows: work-items per row, at most (catalog.cl's QUANTIZE_WG), on GPUs and on CPUs. On
# PoCL (2 cores, 2560 x 1280): 1 lane 13.8 ms, 16 lanes 10.9, 64 16.5, 256 25 (noisy: a shared machine).
QUANTIZE_WG = {"gpu": 256, "cpu": 16}


def int8_dots(cl_device, is_gpu: bool) -> list[str]:
    """The int8 products a device can run, best first: the dot-product instructions it has, on the
    GPU layout (the tiled GEMM), then portable char4 dot products; int32 everywhere."""
    if not is_gpu:
        return ["int32"]  # gemm_cpu: explicit SIMD multiply-adds, no packed path
    found = ["khr"] if "cl_khr_integer_dot_product" in cl_device.extensions else []
    try:
        if "cl_nv_device_attribute_query" in cl_device.extensions and \
                (cl_device.compute_capability_major_nv, cl_device.compute_capability_minor_nv) >= (6, 1):
            found.append("ptx")  # dp4a came with compute capability 6.1
    except (cl.Error, AttributeError):
        pass
    return found + ["char4", "int32"]


def int8_dot(cl_device, is_gpu: bool) -> str:
    """The int8 product a device gets by default: the best it can run."""
    return int8_dots(cl_device, is_gpu)[0]


def _int8_product(device, bufs: Inputs, xq: cl.Buffer, M: int, K: int, w_q: np.ndarray):
    """(int32 accumulators, plan) of xq @ w_q: xq is M rows of the plan's lda bytes on the device."""
    dot = device.int8_dot
    if dot == "int32":
        plan = GemmPlan.make(device, Product(M, w_q.shape[1], K, K, "int", "char"))
        return gemm(device, bufs, plan, xq, np.ascontiguousarray(w_q), "qacc"), plan
    N, quads = w_q.shape[1], -(-K // 4)
    packed = device.allocator.buffer("wq_packed", quads * N * 4)
    _kernel(device, "catalog", "pack_k4", T="float", IDX="int")(
        (-(-N // 64) * 64, quads), (64, 1), bufs("wq", np.ascontiguousarray(w_q)), np.int32(K), np.int32(N), packed)
    plan = GemmPlan.make(device, Product(M, N, quads, quads, "int", "int"))
    try:
        return gemm(device, bufs, plan, xq, packed, "qacc", dot=dot), plan
    except FailedPrecondition:
        if dot == "char4":
            raise
        device.int8_dot = "char4"  # the driver refused the instruction (a build failure): portable C
        return gemm(device, bufs, plan, xq, packed, "qacc", dot="char4"), plan


def quantize_lanes(device, cols: int) -> int:
    """Work-items per row of quantize_rows: a power of two, at most a row's length (rounded up) and
    what the kernel and the device take."""
    most = QUANTIZE_WG["gpu" if device.is_gpu else "cpu"]
    limit = 1 << (min(most, device.cl_device.max_work_group_size).bit_length() - 1)
    return min(limit, 1 << (max(1, cols) - 1).bit_length())


def _quantize(device, bufs: Inputs, x: np.ndarray) -> tuple[cl.Buffer, cl.Buffer, int]:
    """(xq, xscale, ldq): x's rows quantized on the device, rows of xq ldq bytes (K in fours when packed)."""
    M, K = x.shape
    ldq = K if device.int8_dot == "int32" else -(-K // 4) * 4
    xq = device.allocator.buffer("xq", max(1, M * ldq))
    xscale = device.allocator.buffer("xscale", max(1, M) * 4)
    lanes = quantize_lanes(device, K)
    _kernel(device, "catalog", "quantize_rows", T="float", IDX="int")(
        (lanes, M), (lanes, 1), bufs("qx", x), np.int32(M), np.int32(K), np.int32(ldq), xq, xscale)
    return xq, xscale, ldq


def quantize_host(device, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x_q int8 (M, K), scales float32 (M,)) as qmatmul quantizes on the device (tests, benchmarks)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bufs = Inputs(device.allocator)
    xq, xscale, ldq = _quantize(device, bufs, x)
    q = _read(device, xq, (len(x), ldq), np.int8)[:, :x.shape[1]]
    return q, _read(device, xscale, (len(x),), np.float32)


def int8_matmul_host(device, a_q: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    """a_q @ w_q of int8 matrices as int32 (M, N), by the device's int8 product (tests, benchmarks)."""
    M, K = a_q.shape
    ldq = K if device.int8_dot == "int32" else -(-K // 4) * 4
    padded = np.zeros((M, ldq), np.int8)
    padded[:, :K] = a_q
    bufs = Inputs(device.allocator)
    acc, plan = _int8_product(device, bufs, bufs("xq_host", padded), M, K, w_q)
    c = _read(device, acc, (plan.slices, M, plan.ldb), np.int32)[:, :, :w_q.shape[1]]
    return c[0] if plan.slices == 1 else c.sum(axis=0, dtype=np.int32)


def qmatmul(device, inputs, params) -> Partial:
    x = np.ascontiguousarray(inputs["x"], dtype=np.float32)
    w_q, w_scale = inputs["w_q"], inputs["w_scale"]
    M, K = x.shape
    N = w_q.shape[1]
    bufs = Inputs(device.allocator)
    xq, xscale, _ = _quantize(device, bufs, x)
    acc, plan = _int8_product(device, bufs, xq, M, K, w_q)
    y = device.allocator.buffer("qy", M * N * 4)
    _kernel(device, "catalog", "dequantize", T="float", IDX="int")(
        (math.ceil(N / 16) * 16, math.ceil(M / 16) * 16), (16, 16), acc, np.int32(plan.slices), np.int32(M),
        np.int32(N), np.int32(plan.ldb), xscale, bufs("wscale", w_scale), y)
    out = {"y": _read(device, y, (M, N), np.float32)}
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
    ranks = device.allocator.buffer("topk_ranks", items * k * cols * 8)
    out = device.allocator.buffer("topk_rows", items * k * cols * 4)
    _kernel(device, "catalog", "topk_chunks_cpu", T="float", IDX="int", TOPK=True)(
        (items,), (1,), xbuf, *args, np.int32(n), np.int32(cols), np.int32(per), np.int32(k), ranks, out)
    rows = _read(device, out, (items, k, cols), np.int32)
    counts = np.minimum(k, np.minimum(per, n - per * np.arange(items)))  # the last may hold fewer than k
    return rows[np.arange(k) < counts[:, None]]


@dataclass(frozen=True)
class TopkPlan:
    """The GPU layout of topk on n rows of `cols` columns: work-groups of lx columns x ly lanes (wg
    work-items, each a list of k in local memory) over a gx x (groups * ly) grid."""
    wg: int
    lx: int
    ly: int
    gx: int
    groups: int

    @classmethod
    def make(cls, device, n: int, cols: int, k: int) -> TopkPlan:
        budget = min(TOPK_LOCAL, device.cl_device.local_mem_size)
        wg = 1 << (min(256, budget // (k * TOPK_ENTRY)).bit_length() - 1)
        lx = min(32, wg // 4, 1 << (cols - 1).bit_length())  # ly >= 4: each merge pass shrinks the lists
        ly = wg // lx
        gx = -(-cols // lx) * lx
        groups = max(1, min(device.compute_units * 2048 // (gx * ly), -(-n // (ly * TOPK_LANE_ROWS * k))))
        return cls(wg, lx, ly, gx, groups)


def _topk_lanes(device, xbuf, args: tuple, n: int, cols: int, k: int) -> np.ndarray:
    """The best min(n, k) rows of each column, (min(n, k), cols): lanes scan interleaved rows, each
    work-group merges its lanes' lists, then topk_merge passes merge the groups' lists ly at a time
    down to one."""
    plan = TopkPlan.make(device, n, cols, k)
    groups, local_size = plan.groups, (plan.lx, plan.ly)
    local = (cl.LocalMemory(plan.wg * k * 8), cl.LocalMemory(plan.wg * k * 4))
    src = device.allocator.buffer("topk_a", groups * k * cols * 4)
    _kernel(device, "catalog", "topk_lanes", T="float", IDX="int", TOPK=True)(
        (plan.gx, groups * plan.ly), local_size, xbuf, *args, np.int32(n), np.int32(cols), np.int32(k), *local, src)
    roles = ("topk_b", "topk_a")
    while groups > 1:
        lists, groups = groups, -(-groups // plan.ly)
        dst = device.allocator.buffer(roles[0], groups * k * cols * 4)
        _kernel(device, "catalog", "topk_merge", T="float", IDX="int", TOPK=True)(
            (plan.gx, groups * plan.ly), local_size, xbuf, *args, np.int32(cols), np.int32(k), np.int32(lists),
            src, *local, dst)
        src, roles = dst, roles[::-1]
    # A list sorts its empty slots (row -1) last, and every column has min(n, k) rows: a partition
    # shorter than k leaves k - n of them, which are not rows of x.
    return _read(device, src, (k, cols), np.int32)[:min(n, k)]


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
    bufs = Inputs(device.allocator)  # holds x until the blocking read
    args = (np.int32(TOPK_TYPES[x.dtype]), np.int32(largest))
    run = _topk_lanes if device.is_gpu else _topk_chunks_cpu
    rows = run(device, bufs("x", flat), args, n, cols, k)
    del bufs
    values = flat[rows, np.arange(cols)]
    indices = rows.astype(np.int64) + params["row_offset"]
    if len(rows) > k:
        values, indices = op._best(values, indices, k, largest)
    shape = (min(n, k),) + x.shape[1:]  # a partition shorter than k has n rows to give, as the reference
    return {"values": values.reshape(shape), "indices": indices.reshape(shape), "k": np.int64(k),
            "largest": np.bool_(largest)}


KERNELS = {"matmul.rows": matmul, "matmul.inner": matmul, "linear": linear, "mlp": mlp, "gram": gram,
           "lstsq": gram, "pca": pca, "kmeans": kmeans, "spmm": spmm, "gcn_layer": gcn_layer, "qmatmul": qmatmul,
           "topk": topk}
NEEDS_FP64 = ("pca", "kmeans", "qmatmul")


def offered(device) -> dict:
    # The catalog's variants follow the shapes (tiles, types, flags): no manifest can list them all.
    if device.compiler is None:
        return {}
    return {name: fn for name, fn in KERNELS.items() if device.fp64 or name not in NEEDS_FP64}
