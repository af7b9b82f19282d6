"""The reductions (sum, min, max, count, mean, var) and histogram: their launches and op kernels.

Each op kernel returns exactly the partial its op's NumPy `reference` does. The launches pick the
layout that suits the device (CPU: a few work-items streaming contiguous chunks with 16-wide loads;
GPU: a grid-stride loop with 4-wide loads and a local-memory tree per work-group). The vector kernels
cover whole VEC-wide loads from an aligned row on; the few rows outside that range go through the
op's reference and `merge`, the same associative combine that joins partials across devices. Work a
device cannot do in its precision (float64 without cl_khr_fp64) runs on the host. A staged upload
(allocator.py) is reduced chunk by chunk as each lands, so the kernels overlap the copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from lepton.backends.opencl import variants
from lepton.backends.ops import REGISTRY
from lepton.backends.ops.base import Partial

CL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
            np.dtype(np.int32): "int", np.dtype(np.int64): "long"}
NP_TYPES = {name: dtype for dtype, name in CL_TYPES.items()}
DTYPES = tuple(CL_TYPES)
PRIMS = {"sum": "OP_SUM", "fsum": "OP_SUM", "m2": "OP_M2", "count": "OP_COUNT", "min": "OP_MIN", "max": "OP_MAX"}
# The device primitives each op needs (see reduce / histogram).
NEEDS = {"sum": ("sum",), "min": ("min",), "max": ("max",), "count": ("count",), "mean": ("fsum",),
         "var": ("fsum", "m2"), "histogram": ("histogram",)}

BLOCK = 256                 # loads summed in the inner accumulator before the outer one (see reduce.cl)
WG = 256                    # GPU work-group size
MIN_LOADS_PER_ITEM = 4096   # CPU: below this a chunk costs more to schedule than to read
HISTOGRAM_BYTES = 16 << 20  # device memory for per-work-group histogram copies


# -- programs ---------------------------------------------------------------------------------------

def accumulators(device, prim: str, dtype: np.dtype) -> tuple[str, str] | None:
    """(inner, outer) accumulator types, or None when the device cannot run it (no fp64)."""
    dtype = np.dtype(dtype)
    t = CL_TYPES[dtype]
    if prim in ("min", "max"):
        acc = (t, t)
    elif prim == "count":
        acc = ("int" if dtype == np.float32 else "long", "long")  # inner: what float compares return
    elif prim == "sum" and dtype.kind == "i":
        acc = ("long", "long")  # wraps like np.sum(dtype=int64)
    elif dtype == np.float32:
        acc = ("float", "double")
    else:
        acc = ("double", "double")  # float64 data, and int means/variances (np uses float64)
    if not device.fp64:
        if dtype == np.float32:
            acc = tuple("float" if a == "double" else a for a in acc)
        if "double" in acc:
            return None
    return acc


def variant(device, prim: str, dtype: np.dtype, layout: str) -> str:
    """The program variant (variants.py) of `prim` on `dtype`: layout 'flat' or 'columns' for the
    reductions, the edge type 'float' or 'double' for the histogram."""
    dtype = np.dtype(dtype)
    t = CL_TYPES[dtype]
    if prim == "histogram":
        return variants.name("histogram", T=t, E=layout, CHUNKED=not device.is_gpu, HAS_FP64=device.fp64)
    inner, outer = accumulators(device, prim, dtype) or ("double", "double")
    flat = layout == "flat"
    is_float = dtype.kind == "f"
    # fsum of floats is the float sum's build: it already accumulates in floating point.
    return variants.name("reduce", **{PRIMS[prim]: True}, T=t, IN=inner, OUT=outer, BLOCK=BLOCK,
                         VEC=device.vec if flat else 1, WG=WG if device.is_gpu and flat else None,
                         IS_FLOAT=is_float, MASK=("int" if t == "float" else "long") if is_float else None,
                         HAS_FP64=device.fp64)


# -- launches ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReducePlan:
    """One reduction launch over `rows` rows of `cols` columns (flat: VEC-wide loads over the rows as
    one vector; else a work-item per column and chunk of rows): kernel(xbuf, count, per, shift, out,
    out2[, cols]) writes `out_shape` partials and covers the first `covered` rows."""
    kernel: str
    global_size: tuple
    local_size: tuple
    count: int
    per: int
    covered: int
    out_shape: tuple

    @classmethod
    def make(cls, device, rows: int, cols: int, flat: bool) -> ReducePlan | None:
        """None when the launch would cover no row (fewer values than one vector load)."""
        if flat:
            nvec = rows * cols // device.vec
            if nvec == 0:
                return None
            covered = nvec * device.vec // cols
            if device.is_gpu:
                groups = max(1, min(device.compute_units * 16, math.ceil(nvec / WG)))
                return cls("reduce_tree", (groups * WG,), (WG,), nvec, 0, covered, (groups, device.vec))
            groups = max(1, min(device.compute_units * 4, nvec // MIN_LOADS_PER_ITEM))
            per = math.ceil(nvec / groups)
            groups = math.ceil(nvec / per)
            return cls("reduce_chunked", (groups,), (1,), nvec, per, covered, (groups, device.vec))
        lx = 64 if device.is_gpu else min(cols, 16)
        gx = math.ceil(cols / lx) * lx
        target = device.compute_units * (2048 if device.is_gpu else 4)
        chunks = max(1, min(rows, target // gx if device.is_gpu else math.ceil(target / (gx // lx))))
        per = math.ceil(rows / chunks)
        chunks = math.ceil(rows / per)
        return cls("reduce_columns", (gx, chunks), (lx, 1), rows, per, rows, (chunks, cols))


def reduce(device, prim: str, x: np.ndarray, shift: np.ndarray | None = None,
           resident: tuple | None = None) -> tuple[np.ndarray | None, np.ndarray | None, int, int]:
    """Reduce rows of `x` along axis 0 with primitive `prim` (see PRIMS) on `device`.

    Returns (first, second, lo, hi): per-column results shaped x.shape[1:] for rows x[lo:hi]
    (second only for m2: sums of d and of d*d with d = x - shift; both None when lo == hi).
    The flat kernels cover whole VEC-wide loads and in-place reads start at an aligned row, so the
    caller reduces the few rows outside [lo, hi) on the host.
    `shift` is per column, already in the inner accumulator's type; `resident`: device.allocator.upload(x)'s
    result (upload(x, chunks=True)'s is consumed by the first call; pass its first two items to later ones).
    Every primitive's partials add up (or take extremes) across chunks like across work-items, and
    chunk bounds depend only on the shape, so results are the same every run.
    """
    memory = device.allocator
    xbuf, head, *pending = resident if resident is not None else memory.upload(x, chunks=True)
    dtype = x.dtype
    inner, outer = accumulators(device, prim, dtype)
    cols = x.size // x.shape[0]
    flat = device.vec % cols == 0
    shift_buf = None
    if shift is not None:
        shift_host = np.tile(shift.reshape(-1), device.vec // cols) if flat else shift.reshape(-1)
        shift_host = np.ascontiguousarray(shift_host, dtype=NP_TYPES[inner])
        shift_buf = memory.buffer("shift", shift_host.nbytes)
        cl.enqueue_copy(device.queue, shift_buf, shift_host, is_blocking=False)
    name = variant(device, prim, dtype, "flat" if flat else "columns")
    res = dtype if prim in ("min", "max") else NP_TYPES[outer]
    row_bytes = x.itemsize * cols
    parts = []
    try:
        for lo, hi, event in pending[0] if pending else [(0, x.shape[0] - head, None)]:
            plan = ReducePlan.make(device, hi - lo, cols, flat)
            if plan is None:
                continue
            chunk = xbuf if event is None else xbuf.get_sub_region(lo * row_bytes, (hi - lo) * row_bytes)
            nbytes = int(np.prod(plan.out_shape)) * np.dtype(res).itemsize
            out = memory.buffer("out", nbytes)
            out2 = memory.buffer("out2", nbytes) if prim == "m2" else None
            device.program(name).kernel(plan.kernel)(
                plan.global_size, plan.local_size, chunk, np.uint64(plan.count), np.uint64(plan.per), shift_buf,
                out, out2, *([np.uint64(cols)] if not flat else []), after=event)
            # Non-blocking reads: the next chunk's kernel reuses out, after the read (the queue is in
            # order). Their events are kept: pyopencl waits for a dropped copy event there and then.
            first = np.empty(plan.out_shape, res)
            second = np.empty(plan.out_shape, res) if out2 is not None else None
            reads = [cl.enqueue_copy(device.queue, first, out, is_blocking=False)]
            if out2 is not None:
                reads.append(cl.enqueue_copy(device.queue, second, out2, is_blocking=False))
            device.queue.flush()  # start the kernel while the host fills the next chunk
            parts.append((plan.covered, first, second, reads))
    finally:
        if pending:
            pending[0].close()  # after an error: stops the copies (see Stager.chunks)
    if not parts:
        return None, None, head, head
    parts[-1][3][-1].wait()  # the last read; the queue is in order
    covered = sum(p[0] for p in parts)
    first = _fold(prim, np.concatenate([p[1] for p in parts]), cols, flat)
    second = _fold(prim, np.concatenate([p[2] for p in parts]), cols, flat) if prim == "m2" else None
    columns = x.shape[1:]
    return (first.reshape(columns), None if second is None else second.reshape(columns), head, head + covered)


def _fold(prim: str, partials: np.ndarray, cols: int, flat: bool) -> np.ndarray:
    """(items, lanes or columns) partials -> one value per column, in float64 / int64 for sums."""
    if prim == "min":
        fold = np.min
    elif prim == "max":
        fold = np.max
    else:
        wide = np.float64 if partials.dtype.kind == "f" else np.int64
        fold = lambda a, axis: np.sum(a, axis=axis, dtype=wide)  # noqa: E731
    lanes = fold(partials, axis=0)
    return fold(lanes.reshape(-1, cols), axis=0) if flat else lanes


def histogram_groups(device, n: int) -> tuple[int, int, int]:
    """(work-groups, work-group size, values per work-item or 0 for grid-stride) for n values."""
    if device.is_gpu:
        return max(1, min(device.compute_units * 16, math.ceil(n / WG))), WG, 0
    groups = max(1, min(device.compute_units * 4, n // (MIN_LOADS_PER_ITEM * 16)))
    per = math.ceil(n / groups)
    return math.ceil(n / per), 1, per


def histogram_counts(device, x: np.ndarray, edges: np.ndarray, uniform: bool) -> np.ndarray:
    """Counts (columns, bins) int64 of a 1-D or (rows, columns) input, as np.histogram bins them.
    A staged upload is counted chunk by chunk as it lands: the launches add into the same counts."""
    memory = device.allocator
    # xbuf is held until the read: kernel arguments do not keep buffers alive.
    xbuf, head, *pending = memory.upload(x, chunks=True)
    cols = 1 if x.ndim == 1 else x.shape[1]
    nb = len(edges) - 1
    etype = "float" if edges.dtype == np.float32 else "double"
    kernel = device.program(variant(device, "histogram", x.dtype, etype)).kernel("histogram")
    edges = np.ascontiguousarray(edges, dtype=NP_TYPES[etype])
    edges_buf = memory.buffer("edges", edges.nbytes)
    cl.enqueue_copy(device.queue, edges_buf, edges, is_blocking=False)
    # A positive norm turns on the arithmetic guess of uniform bins; zero means binary search.
    norm = edges.dtype.type(nb / (float(edges[-1]) - float(edges[0]))) if uniform else edges.dtype.type(0)
    n_all = (x.shape[0] - head) * cols
    copies = max(1, min(histogram_groups(device, n_all)[0], HISTOGRAM_BYTES // (cols * nb * 4)))
    counts = memory.buffer("counts", copies * cols * nb * 4)
    cl.enqueue_fill_buffer(device.queue, counts, np.uint32(0), 0, copies * cols * nb * 4)
    row_bytes = x.itemsize * cols
    chunks = []  # sub-buffers, held until the read
    try:
        for lo, hi, event in pending[0] if pending else [(0, x.shape[0] - head, None)]:
            chunk = xbuf if event is None else xbuf.get_sub_region(lo * row_bytes, (hi - lo) * row_bytes)
            chunks.append(chunk)
            groups, local, per = histogram_groups(device, (hi - lo) * cols)
            kernel((groups * local,), (local,), chunk, np.uint64((hi - lo) * cols), np.uint64(per), np.uint64(cols),
                   edges_buf, np.uint32(nb), norm, counts, np.uint32(copies), after=event)
            device.queue.flush()
    finally:
        if pending:
            pending[0].close()
    counts = memory.copyout(counts, (copies, cols, nb), np.uint32).sum(axis=0, dtype=np.int64)
    for c in range(cols if head else 0):  # the unaligned head rows (see Allocator.upload)
        counts[c] += np.histogram(x[:head].reshape(head, cols)[:, c], bins=edges)[0]
    return counts


# -- op kernels -------------------------------------------------------------------------------------

def _typed(partial: Partial) -> Partial:
    """Reference types: arrays everywhere, except the row count 'n' (an int64 scalar)."""
    return {k: np.int64(v) if k == "n" else np.asarray(v) for k, v in partial.items()}


def _with_rest(op_name: str, x: np.ndarray, params: dict, bulk: Partial, lo: int, hi: int) -> Partial:
    """`bulk` covers rows x[lo:hi]; merge in the reference partials of the rows before and after."""
    op = REGISTRY[op_name]
    parts = ([op.reference({"x": x[:lo]}, params)] if lo > 0 else []) + ([bulk] if hi > lo else []) + \
            ([op.reference({"x": x[hi:]}, params)] if hi < len(x) else [])
    result = parts[0]
    for part in parts[1:]:
        result = op.merge(result, part)
    return _typed(result)


def _on_host(device, x: np.ndarray, prims: tuple[str, ...]) -> bool:
    # Non-native byte order and empty columns never reach a kernel.
    return x.size == 0 or x.dtype not in DTYPES or any(accumulators(device, p, x.dtype) is None for p in prims)


def _simple(op_name: str, prim: str, key: str):
    def kernel(device, inputs, params):
        x = inputs["x"]
        if _on_host(device, x, (prim,)):
            return REGISTRY[op_name].reference(inputs, params)
        value, _, lo, hi = reduce(device, prim, x)
        return _with_rest(op_name, x, params, {key: value}, lo, hi)
    return kernel


def count(device, inputs, params):
    x = inputs["x"]
    if x.dtype.kind != "f" or _on_host(device, x, ("count",)):
        return REGISTRY["count"].reference(inputs, params)  # integers have no NaN: the row count
    value, _, lo, hi = reduce(device, "count", x)
    return _with_rest("count", x, params, {"count": value}, lo, hi)


def mean(device, inputs, params):
    x = inputs["x"]
    if _on_host(device, x, ("fsum",)):
        return REGISTRY["mean"].reference(inputs, params)
    total, _, lo, hi = reduce(device, "fsum", x)
    return _with_rest("mean", x, params, {"n": hi - lo, "sum": total}, lo, hi)


def var(device, inputs, params):
    """Two passes over data kept on the device: the mean, then sums of d and d^2 with d = x - shift.

    shift is the mean rounded to the kernel's type; with it, m2 = S2 - S1^2/n is free of the
    cancellation a plain sum of squares suffers, and mean = shift + S1/n refines the first pass.
    """
    x = inputs["x"]
    if _on_host(device, x, ("fsum", "m2")):
        return REGISTRY["var"].reference(inputs, params)
    resident = device.allocator.upload(x, chunks=True)  # a staged copy: the first pass overlaps it
    total, _, lo, hi = reduce(device, "fsum", x, resident=resident)
    if hi == lo:
        return REGISTRY["var"].reference(inputs, params)
    n = hi - lo
    inner = np.float32 if accumulators(device, "m2", x.dtype)[0] == "float" else np.float64
    shift = (total / n).astype(inner)
    s1, s2, _, _ = reduce(device, "m2", x, shift=shift, resident=resident[:2])
    m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
    return _with_rest("var", x, params, {"n": n, "mean": shift + s1 / n, "m2": m2}, lo, hi)


def histogram(device, inputs, params):
    x = inputs["x"]
    edges = REGISTRY["histogram"].edges(params)  # np.histogram's own edges, in its edge dtype
    if x.size == 0 or x.dtype not in DTYPES or (edges.dtype != np.float32 and not device.fp64):
        return REGISTRY["histogram"].reference(inputs, params)
    counts = histogram_counts(device, x, edges, uniform="edges" not in params)
    return {"counts": counts[0] if x.ndim == 1 else counts}


KERNELS = {"sum": _simple("sum", "sum", "sum"), "min": _simple("min", "min", "min"),
           "max": _simple("max", "max", "max"), "count": count, "mean": mean, "var": var,
           "histogram": histogram}


def offered(device) -> dict:
    """The ops whose programs the device can have for some dtype and layout: all of them where it
    compiles, those its prebuilt binaries cover where it does not."""
    def layouts(op):
        return ("float", "double") if op == "histogram" else ("flat", "columns")
    return {op: KERNELS[op] for op, prims in NEEDS.items()
            if any(all(device.has_program(variant(device, p, dtype, layout)) for p in prims)
                   for dtype in DTYPES for layout in layouts(op))}
