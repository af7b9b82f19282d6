"""Several reductions of one 1-D block in one pass over memory, with NumPy's own float sums, bit for bit.

A 4 MiB block does not fit in a core's L2 cache (1 MiB on this project's machines), so `np.sum(x)`,
`np.min(x)` and `np.max(x)` one after the other read it from L3 or DRAM three times, and describe's
centred pass (`x - shift`, its sum, the squares' sum) several more. Here the block is cut into
L2-sized chunks, and every reduction of a chunk runs while the chunk is in cache.

The chunks are not arbitrary: NumPy adds a contiguous 1-D float array pairwise (`pairwise_sum` in
numpy/_core/src/umath/loops_utils.h.src: a range of more than 128 values is split at n/2 rounded
down to a multiple of 8, and the halves' sums are added). Cutting the block where that recursion
cuts it, summing each chunk with NumPy (which recurses inside it exactly as it would have) and adding
the chunk sums up the same tree in the input's type gives bitwise `np.sum(x)`
(tests/test_fused.py checks it over many lengths). So describe's sums stay bitwise Sum's, and its
mean and variance those of the plain per-block computation (`plain_moments`), with no change to the
fold model of tests/references.py.
"""
from __future__ import annotations

import functools

import numpy as np

CHUNK_BYTES = 256 << 10  # a chunk and its scratch copy together take half of a 1 MiB L2
PAIRWISE_BLOCK = 128  # NumPy's PW_BLOCKSIZE: below it, no split


@functools.lru_cache(maxsize=256)
def plan(n: int, chunk: int) -> tuple[tuple[tuple[int, int], ...], object]:
    """NumPy's pairwise split of n values, stopped at ranges of at most `chunk` values: the ranges
    (start, stop) in order, and the tree joining them (a leaf is a range's index, a node a pair)."""
    chunk = max(chunk, PAIRWISE_BLOCK)
    ranges: list[tuple[int, int]] = []

    def split(lo: int, count: int):
        if count <= chunk:
            ranges.append((lo, lo + count))
            return len(ranges) - 1
        half = count // 2
        half -= half % 8
        return split(lo, half), split(lo + half, count - half)

    tree = split(0, n)
    return tuple(ranges), tree


def fold(tree, values: np.ndarray):
    """The chunk sums `values` added up `tree`, in their own type (as NumPy adds the halves)."""
    if isinstance(tree, int):
        return values[tree]
    return fold(tree[0], values) + fold(tree[1], values)


def fits(x: np.ndarray) -> bool:
    """Blocks this kernel computes bitwise as NumPy: contiguous, aligned, native 1-D floats (NumPy
    buffers other layouts in pieces of 8192, and sums those pieces in another order)."""
    return (x.ndim == 1 and x.dtype.kind == "f" and x.dtype.isnative and x.flags.c_contiguous
            and x.flags.aligned and len(x) > 0)


def moments(x: np.ndarray, extremes: bool, centred: bool) -> dict[str, np.ndarray]:
    """One pass over `x` (see `fits`) in chunks: its float sum (bitwise np.sum(x)), with `extremes`
    its min and max (np.min, np.max), and with `centred` the centred sums of the plain computation
    (`plain_moments`): shift = sum / n in x's type, then the sums of d = x - shift and of d², each
    bitwise NumPy's sum of the whole block. The centred pass reads the block a second time, from
    the cache it was just read into where it fits (a 4 MiB block in L3)."""
    n, dtype = len(x), x.dtype
    ranges, tree = plan(n, max(1, CHUNK_BYTES // dtype.itemsize))
    chunks = [x[lo:hi] for lo, hi in ranges]
    k = len(chunks)
    sums = np.empty(k, dtype)
    add = np.add.reduce
    if extremes:
        lows, highs = np.empty(k, dtype), np.empty(k, dtype)
        minimum, maximum = np.minimum.reduce, np.maximum.reduce
        for i, c in enumerate(chunks):  # while the chunk is in cache
            sums[i] = add(c)
            lows[i] = minimum(c)
            highs[i] = maximum(c)
        out = {"min": minimum(lows), "max": maximum(highs)}  # exact: any order gives the same
    else:
        for i, c in enumerate(chunks):
            sums[i] = add(c)
        out = {}
    total = fold(tree, sums)
    out["sum"] = total
    if centred:
        shift = dtype.type(np.float64(total) / n)  # as plain_moments: the float64 sum / n, rounded to x's type
        scratch = np.empty(max(len(c) for c in chunks), dtype)  # (a right half can be the longer)
        residuals, squares = np.empty(k, dtype), np.empty(k, dtype)
        for i, c in enumerate(chunks):
            d = scratch[:len(c)]
            np.subtract(c, shift, out=d)
            residuals[i] = add(d)
            np.multiply(d, d, out=d)  # np.square(d), bitwise
            squares[i] = add(d)
        out.update(shift=shift, residual=fold(tree, residuals), squares=fold(tree, squares))
    return out


def plain_moments(x: np.ndarray, extremes: bool, centred: bool) -> dict[str, np.ndarray]:
    """What `moments` computes, as whole-array NumPy calls along axis 0 (one pass per call): its
    definition, and describe's kernel where `fits` says no. A 1-D block sums pairwise in x's own
    type; along axis 0 of a matrix NumPy sums row after row, so there the centring and its sums run
    in float64."""
    total = np.sum(x, axis=0)
    out = {"sum": total}
    if extremes:
        out.update(min=np.min(x, axis=0), max=np.max(x, axis=0))
    if centred:
        work = x.dtype if x.ndim == 1 else np.dtype(np.float64)
        shift = (np.asarray(total, dtype=np.float64) / len(x)).astype(work)
        d = x - shift
        residual = np.sum(d, axis=0)
        np.square(d, out=d)
        out.update(shift=shift, residual=residual, squares=np.sum(d, axis=0))
    return out
