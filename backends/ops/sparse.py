"""Sparse x dense: CSR matrix products (SpMM) and graph convolution layers (GCN).

A CSR matrix A travels as three inputs, `a_indptr` (int64, rows + 1), `a_indices` (int32 or int64
column of each non-zero, sorted within each row) and `a_data` (the values), with the parameter
`a_cols` giving its column count. Partitions are row blocks balanced by non-zeros, not rows: in a
power-law graph a few rows hold most of the edges.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse

from lepton.errors import InvalidInput
from lepton.backends.ops.base import Op, TensorMeta
from lepton.backends.ops.common import ACTIVATIONS, FLOATS, Concat, activation, check_params, matrix

CSR = ("a_indptr", "a_indices", "a_data")
INDEX_TYPES = (np.dtype(np.int32), np.dtype(np.int64))


def check_csr(op: Op, inputs, params) -> tuple[int, int, np.dtype]:
    indptr, indices, data = (inputs[n] for n in CSR)
    cols = params.get("a_cols")
    if not isinstance(cols, int) or cols < 1:
        raise InvalidInput(f"{op.name}: parameter 'a_cols' (the sparse matrix's column count) must be a positive "
                           f"integer; got {cols!r}")
    if len(indptr.shape) != 1 or indptr.shape[0] < 2 or indptr.dtype != np.dtype(np.int64):
        raise InvalidInput(f"{op.name}: a_indptr must be 1-D int64 with rows + 1 >= 2 values; got "
                           f"{list(indptr.shape)} {indptr.dtype}")
    if len(indices.shape) != 1 or indices.dtype not in INDEX_TYPES:
        raise InvalidInput(f"{op.name}: a_indices must be 1-D int32 or int64; got {list(indices.shape)} {indices.dtype}")
    if data.shape != indices.shape or data.dtype not in FLOATS:
        raise InvalidInput(f"{op.name}: a_data must be float32 or float64 with one value per index "
                           f"({indices.shape[0]}); got {list(data.shape)} {data.dtype}")
    return indptr.shape[0] - 1, cols, data.dtype


def check_csr_values(op: Op, arrays, cols: int) -> None:
    indptr, indices = arrays["a_indptr"], arrays["a_indices"]
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise InvalidInput(f"{op.name}: a_indptr must start at 0, never decrease, and end at the number of "
                           f"non-zeros ({len(indices)}); it ends at {indptr[-1]}")
    if len(indices) and (indices.min() < 0 or indices.max() >= cols):
        raise InvalidInput(f"{op.name}: a_indices has a column outside [0, {cols}) (min {indices.min()}, "
                           f"max {indices.max()})")
    step = np.diff(indices.astype(np.int64))
    row_starts = np.zeros(len(indices), dtype=bool)
    row_starts[indptr[1:-1][indptr[1:-1] < len(indices)]] = True
    unsorted = (step <= 0) & ~row_starts[1:]
    if np.any(unsorted):
        at = int(np.argmax(unsorted)) + 1
        row = int(np.searchsorted(indptr, at, side="right")) - 1
        raise InvalidInput(f"{op.name}: a_indices must be strictly increasing within each row; row {row} is not")


def take_csr(indptr, indices, data, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [start, stop) of a CSR matrix, its indptr re-based to 0."""
    lo, hi = indptr[start], indptr[stop]
    return indptr[start:stop + 1] - lo, indices[lo:hi], data[lo:hi]


def csr_times_dense(indptr, indices, data, x) -> np.ndarray:
    """Rows of A @ x, by SciPy's CSR kernel: each row sums its non-zeros in index order, so a row's
    value does not depend on the row block it is computed in (bitwise the same on any partitioning)."""
    rows = len(indptr) - 1
    out_dtype = np.result_type(data, x)
    if rows == 0 or len(indices) == 0:
        return np.zeros((rows, x.shape[1]), dtype=out_dtype)
    # SciPy gives indptr and indices one index type, the wider of the two: int32 column indices with
    # the contract's int64 indptr were copied to int64 on every call (8 bytes per non-zero written,
    # then read by the kernel: ~15% of a W3 partition). A partition's indptr is small (rows + 1), so
    # narrow it instead when the indices are int32; the sums are the same, in the same order.
    if indices.dtype == np.int32 and indptr.dtype != np.int32 and len(indices) <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    a = scipy.sparse.csr_array((data, indices, indptr), shape=(rows, x.shape[0]), copy=False)
    return np.asarray(a @ x, dtype=out_dtype)


class _SparseRows(Concat):
    split_inputs = CSR
    balanced = True

    def rows(self, inputs):
        return inputs["a_indptr"].shape[0] - 1

    def take(self, source, start, stop):
        return dict(zip(CSR, take_csr(*(source[n] for n in CSR), start, stop)))

    def row_weights(self, arrays):
        return np.diff(arrays["a_indptr"]) + 1  # non-zeros, plus a little per row

    def check_data(self, arrays, params):
        check_csr_values(self, arrays, params["a_cols"])


class Spmm(_SparseRows):
    """Y = A @ X for CSR A and dense X (inputs a_indptr, a_indices, a_data, x)."""

    name = "spmm"
    whole_inputs = ("x",)

    def validate(self, inputs, params):
        check_params(self, params, ("a_cols",))
        rows, cols, dtype = check_csr(self, inputs, params)
        x = matrix(self, inputs, "x")
        if x.shape[0] != cols or x.dtype != dtype:
            raise InvalidInput(f"spmm: x must have a's {cols} columns as rows and a_data's dtype {dtype}; got "
                               f"{list(x.shape)} {x.dtype}")
        return {"a_cols": cols}

    def row_result(self, inputs, params):
        return "y", TensorMeta(inputs["a_data"].dtype, (inputs["a_indptr"].shape[0] - 1, inputs["x"].shape[1]))

    def reference(self, inputs, params):
        return {"y": csr_times_dense(inputs["a_indptr"], inputs["a_indices"], inputs["a_data"], inputs["x"])}


class GcnLayer(_SparseRows):
    """One graph convolution, act(Â X W), Â = D^-1/2 (A + I) D^-1/2 with D the row sums of A + I
    (Kipf & Welling); the service computes the normalisation. Inputs: the CSR adjacency (square),
    node features x, weights w; parameter `activation` (default relu)."""

    name = "gcn_layer"
    block_bytes = 4 << 20  # BLAS rounds a row differently in different row blocks: fix the blocks
    whole_inputs = ("x", "w")
    needs_row_offset = True

    def validate(self, inputs, params):
        check_params(self, params, ("a_cols", "activation"))
        rows, cols, dtype = check_csr(self, inputs, params)
        if rows != cols:
            raise InvalidInput(f"gcn_layer: the adjacency must be square; it is {rows}x{cols}")
        x, w = matrix(self, inputs, "x"), matrix(self, inputs, "w")
        if x.shape[0] != rows or w.shape[0] != x.shape[1] or x.dtype != dtype or w.dtype != dtype:
            raise InvalidInput(f"gcn_layer: x must be {rows} x f and w f x h, both {dtype}; got x {list(x.shape)} "
                               f"{x.dtype}, w {list(w.shape)} {w.dtype}")
        return {"a_cols": cols, "activation": activation(self, params, "activation", "relu")}

    def row_result(self, inputs, params):
        return "y", TensorMeta(inputs["x"].dtype, (inputs["a_indptr"].shape[0] - 1, inputs["w"].shape[1]))

    def prepare(self, arrays, params):
        indptr, data, x = arrays["a_indptr"], arrays["a_data"], arrays["x"]
        degree = np.zeros(len(indptr) - 1)
        nonempty = np.flatnonzero(np.diff(indptr))
        if len(nonempty):
            degree[nonempty] = np.add.reduceat(data.astype(np.float64), indptr[nonempty])
        scale = (1 / np.sqrt(degree + 1)).astype(x.dtype)  # + 1: the self loop
        return {"x": x * scale[:, None], "w": arrays["w"], "scale": scale}

    def reference(self, inputs, params):
        indptr, x_scaled, scale = inputs["a_indptr"], inputs["x"], inputs["scale"]
        rows = slice(params["row_offset"], params["row_offset"] + len(indptr) - 1)
        h = csr_times_dense(indptr, inputs["a_indices"], inputs["a_data"], x_scaled) + x_scaled[rows]
        h *= scale[rows, None]
        return {"y": ACTIVATIONS[params["activation"]](h @ inputs["w"]).astype(x_scaled.dtype)}


SPMM = Spmm()
OPS = (SPMM, GcnLayer())
