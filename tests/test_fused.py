"""describe's one-pass kernel (backends/ops/fused.py) against whole-array NumPy, bit for bit, and its
`stats` parameter. No network: the cluster path is tests/test_fast_paths.py's."""
import numpy as np
import pytest

from lepton.errors import InvalidInput
from lepton.backends.ops import TensorMeta, fused, get_op

# Lengths around the pairwise recursion's edges: below and at its 128-value blocks, uneven halves
# (n/2 rounded down to a multiple of 8: the right half is the longer), a 4 MiB float32 block.
LENGTHS = [1, 7, 8, 127, 128, 129, 1000, 4096, 4097, 65_535, 65_536, 65_537, 100_003, 777_777,
           (1 << 20) - 8, 1 << 20]


def bits(values: dict) -> dict:
    return {k: (np.asarray(v).dtype.str, np.asarray(v).tobytes()) for k, v in values.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk_bytes", [1 << 10, fused.CHUNK_BYTES])
def test_chunked_pass_is_bitwise_numpy(dtype, chunk_bytes, monkeypatch, rng):
    monkeypatch.setattr(fused, "CHUNK_BYTES", chunk_bytes)  # 1 KiB: hundreds of chunks, deep trees
    for n in LENGTHS:
        x = (rng.standard_normal(n) * 50 + 1e3).astype(dtype)  # an offset: the centring matters
        assert fused.fits(x)
        for extremes, centred in ((True, True), (True, False), (False, False)):
            got = fused.moments(x, extremes, centred)
            assert bits(got) == bits(fused.plain_moments(x, extremes, centred)), (n, extremes, centred)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf, as NumPy warns
def test_chunked_pass_keeps_nan_and_inf(rng):
    x = rng.standard_normal(300_000).astype(np.float32)
    for special in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[123_457] = special
        got, want = fused.moments(y, True, True), fused.plain_moments(y, True, True)
        for k in want:
            assert np.array_equal(got[k], want[k], equal_nan=True), (special, k)


def test_other_layouts_take_the_plain_path(rng):
    x = rng.standard_normal(4000)
    assert not fused.fits(x[::2]) and not fused.fits(x.reshape(1000, 4)) and not fused.fits(x.astype(">f8"))
    assert not fused.fits(x.astype(np.int64))


def describe(x, **params):
    op = get_op("describe")
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
    return op.finalize(op.reference({"x": x}, p), p)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
@pytest.mark.parametrize("shape", [(50_000,), (20_000, 3)])
@pytest.mark.parametrize("stats", [["sum", "min", "max"], ["var"], ["mean"], ["count", "max"], ["min"]])
def test_stats_are_the_full_results_asked_for(dtype, shape, stats, rng):
    x = (rng.standard_normal(shape) * 1000).astype(dtype)
    full = describe(x, ddof=1)
    got = describe(x, ddof=1, stats=", ".join(reversed(stats)))  # any order; results come in describe's
    assert list(got) == [s for s in full if s in stats]
    assert bits(got) == bits({s: full[s] for s in stats})


def test_sum_min_max_skip_the_centred_pass(monkeypatch, rng):
    asked, real = [], fused.moments

    def moments(x, extremes, centred):
        asked.append(centred)
        return real(x, extremes, centred)
    monkeypatch.setattr(fused, "moments", moments)
    describe(rng.standard_normal(10_000), stats="sum,min,max")
    describe(rng.standard_normal(10_000))
    assert asked == [False, True]


@pytest.mark.parametrize("stats", ["", "median", "sum,", ["sum"], 1, "sum,mode"])
def test_bad_stats_name_the_choices(stats):
    with pytest.raises(InvalidInput, match="'stats' must name some of sum, min, max, mean, var, count, separated by"):
        get_op("describe").validate({"x": TensorMeta(np.dtype(np.float32), (10,))}, {"stats": stats})
