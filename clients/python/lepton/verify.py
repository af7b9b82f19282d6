"""NumPy references and the tolerances Lepton states for each op.

Partitioned reductions reassociate floating-point sums, so float results differ from a single
NumPy call in the last bits: sums are held to `rtol(dtype) * sum(|x|)` (the error bound of a
reassociated sum scales with the magnitude summed, not with the result, which may cancel to ~0);
means and variances to `rtol(dtype)` relative. Lepton combines partials in float64, so for float32
input it is the NumPy reference that is the less accurate side. min, max, count and histogram are
exact.
"""
from __future__ import annotations

import numpy as np

RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def rtol(dtype) -> float:
    return RTOL.get(np.dtype(dtype), 0.0)


def reference(op: str, x: np.ndarray, **params) -> dict[str, np.ndarray]:
    """What NumPy says, in the result names Lepton uses."""
    if op == "histogram":
        columns = [x] if x.ndim == 1 else x.T
        bins = params.get("edges", params.get("bins"))
        results = [np.histogram(c, bins=bins, range=params.get("range")) for c in columns]
        counts = results[0][0] if x.ndim == 1 else np.stack([r[0] for r in results])
        return {"counts": counts, "edges": results[0][1]}
    if op == "count":
        valid = ~np.isnan(x) if x.dtype.kind == "f" else np.ones_like(x, dtype=bool)
        return {"count": np.count_nonzero(valid, axis=0)}
    if op == "var":
        return {"var": np.var(x, axis=0, ddof=params.get("ddof", 0))}
    if op == "sum" and x.dtype.kind == "f":
        return {"sum": np.sum(x, axis=0, dtype=np.float64).astype(x.dtype)}
    return {op: getattr(np, op)(x, axis=0)}


def mismatch(op: str, x: np.ndarray, got: dict[str, np.ndarray], **params) -> str | None:
    """None if `got` matches NumPy within the stated tolerance, else what differs."""
    want = reference(op, x, **params)
    for name, expected in want.items():
        value = np.asarray(got[name])
        expected = np.asarray(expected)
        if value.shape != expected.shape:
            return f"{name}: shape {value.shape}, expected {expected.shape}"
        if value.dtype != expected.dtype:
            return f"{name}: dtype {value.dtype}, expected {expected.dtype}"
        # Float sums, and means and variances (float64 for integer input), are reassociated.
        tol = rtol(expected.dtype) if name in ("sum", "mean", "var") else 0.0
        scale = np.sum(np.abs(x.astype(np.float64)), axis=0) if name == "sum" else np.abs(expected)
        error = np.abs(value.astype(np.float64) - expected.astype(np.float64))
        bad = ~((error <= tol * scale) | (np.isnan(value) & np.isnan(expected)))
        if np.any(bad):
            return f"{name}: max error {np.max(error):.3g} exceeds {tol:g} x scale (got {value}, expected {expected})"
    return None
