"""The reductions' OpenCL kernels: each returns exactly the partial its op's NumPy `reference` does.

The vector kernels cover whole VEC-wide loads from an aligned row on; the few rows outside that
range go through the op's reference and `merge`, the same associative combine that joins partials across
devices. Work a device cannot do in its precision (float64 without cl_khr_fp64) runs on the host.
"""
from __future__ import annotations

import numpy as np

from lepton.backends.opencl import catalog
from lepton.backends.ops import REGISTRY
from lepton.backends.ops.base import Partial

DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "int32", "int64"))
# The device primitives each op needs (see OpenCLDevice.reduce / histogram).
NEEDS = {"sum": ("sum",), "min": ("min",), "max": ("max",), "count": ("count",), "mean": ("fsum",),
         "var": ("fsum", "m2"), "histogram": ("histogram",)}


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
    return x.size == 0 or x.dtype not in DTYPES or any(device.accumulators(p, x.dtype) is None for p in prims)


def _simple(op_name: str, prim: str, key: str):
    def kernel(device, inputs, params):
        x = inputs["x"]
        if _on_host(device, x, (prim,)):
            return REGISTRY[op_name].reference(inputs, params)
        value, _, lo, hi = device.reduce(prim, x)
        return _with_rest(op_name, x, params, {key: value}, lo, hi)
    return kernel


def count(device, inputs, params):
    x = inputs["x"]
    if x.dtype.kind != "f" or _on_host(device, x, ("count",)):
        return REGISTRY["count"].reference(inputs, params)  # integers have no NaN: the row count
    value, _, lo, hi = device.reduce("count", x)
    return _with_rest("count", x, params, {"count": value}, lo, hi)


def mean(device, inputs, params):
    x = inputs["x"]
    if _on_host(device, x, ("fsum",)):
        return REGISTRY["mean"].reference(inputs, params)
    total, _, lo, hi = device.reduce("fsum", x)
    return _with_rest("mean", x, params, {"n": hi - lo, "sum": total}, lo, hi)


def var(device, inputs, params):
    """Two passes over data kept on the device: the mean, then sums of d and d^2 with d = x - shift.

    shift is the mean rounded to the kernel's type; with it, m2 = S2 - S1^2/n is free of the
    cancellation a plain sum of squares suffers, and mean = shift + S1/n refines the first pass.
    """
    x = inputs["x"]
    if _on_host(device, x, ("fsum", "m2")):
        return REGISTRY["var"].reference(inputs, params)
    resident = device.upload(x, chunks=True)  # a staged copy: the first pass overlaps it
    total, _, lo, hi = device.reduce("fsum", x, resident=resident)
    if hi == lo:
        return REGISTRY["var"].reference(inputs, params)
    n = hi - lo
    inner = np.float32 if device.accumulators("m2", x.dtype)[0] == "float" else np.float64
    shift = (total / n).astype(inner)
    s1, s2, _, _ = device.reduce("m2", x, shift=shift, resident=resident[:2])
    m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
    return _with_rest("var", x, params, {"n": n, "mean": shift + s1 / n, "m2": m2}, lo, hi)


def histogram(device, inputs, params):
    x = inputs["x"]
    edges = REGISTRY["histogram"].edges(params)  # np.histogram's own edges, in its edge dtype
    if x.size == 0 or x.dtype not in DTYPES or (edges.dtype != np.float32 and not device.fp64):
        return REGISTRY["histogram"].reference(inputs, params)
    counts = device.histogram(x, edges, uniform="edges" not in params)
    return {"counts": counts[0] if x.ndim == 1 else counts}


KERNELS = {"sum": _simple("sum", "sum", "sum"), "min": _simple("min", "min", "min"),
           "max": _simple("max", "max", "max"), "count": count, "mean": mean, "var": var,
           "histogram": histogram}


def offered(device) -> dict:
    """All ops, or on a binary-only device those whose programs it holds for some dtype and layout."""
    if not device.binary_only:
        return {**KERNELS, **catalog.offered(device)}
    held = set(device._programs)
    layouts = ("flat", "columns")
    offered_ops = {}
    for op, prims in NEEDS.items():
        for dtype in DTYPES:
            for layout in (("float", "double") if op == "histogram" else layouts):
                if all(device.variant(p, dtype, layout) in held for p in prims):
                    offered_ops[op] = KERNELS[op]
    return offered_ops
