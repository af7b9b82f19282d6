"""The checker can fail: it passes Lepton's fold and rejects what a broken fold would give."""
import numpy as np
import pytest

from lepton.backends.ops import TensorMeta, get_op
from lepton.backends.tree import Tree, TreeAggregator
from references import mismatch


def lepton_fold(op_name, x, partitions, drop=None, **params):
    """What a cluster computes: the op's partials (canonical blocks) of `partitions` row blocks,
    folded in the arity-8 tree; `drop`: the index of a partition left out."""
    from lepton.backends.blocks import run_blocked

    op = get_op(op_name)
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, dict(params))
    cuts = np.linspace(0, len(x), partitions + 1).astype(int)
    aggregator = TreeAggregator(Tree(partitions, 8), op.combine)
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        part = {"x": x[lo:hi]}
        aggregator.add(i, i + 1, {} if i == drop else run_blocked(op, op.reference, part, p))
    return op.finalize(aggregator.done[(0, partitions)], p)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return {"float32": rng.random(1_000_000, dtype=np.float32),  # positive: errors do not cancel
            "float64": rng.standard_normal((200_000, 2)) * np.exp(rng.uniform(-20, 20, (200_000, 2))),
            "offset": (1e6 + rng.standard_normal(300_000)).astype(np.float32),
            # one 4 MiB block of two columns, which NumPy adds row after row in float32: Lepton's own
            # error here is 2.5e-5 of sum(|x|), past the 1e-5 * sum(|x|) the tests allowed before
            "columns": np.random.default_rng(1).random((524_288, 2), dtype=np.float32)}


@pytest.mark.parametrize("name", ["float32", "float64", "offset", "columns"])
@pytest.mark.parametrize("op", ["sum", "mean", "var"])
def test_the_fold_passes(data, name, op):
    assert mismatch(op, data[name], lepton_fold(op, data[name], 37)) is None


@pytest.mark.parametrize("name, op", [("float32", "sum"), ("float32", "mean"), ("float32", "var"),
                                      ("float64", "sum"), ("float64", "mean"), ("float64", "var"),
                                      ("offset", "sum"), ("offset", "var"),  # (its mean does not move)
                                      ("columns", "sum"), ("columns", "mean"), ("columns", "var")])
def test_a_missing_partition_is_rejected(data, name, op):
    x = data[name]
    assert mismatch(op, x, lepton_fold(op, x, 37, drop=20)) is not None


def test_a_float32_running_sum_is_rejected(data):
    x = data["float32"]
    running = np.cumsum(x, dtype=np.float32)[-1]
    assert mismatch("sum", x, {"sum": np.asarray(running)}) is not None
    running_mean = running / np.float32(len(x))
    assert mismatch("mean", x, {"mean": np.asarray(running_mean)}) is not None


def test_the_float32_bounds_are_tight(data):
    """Within 20x of Lepton's real error on 1-D float32, and under the old constant's 1e-5 * sum(|x|)
    by 15x; on one block of columns (a float32 running sum of 2^19 rows) within 15x of the larger column's error."""
    from references import reference, tolerance

    for name, most in (("float32", 20), ("columns", 15)):
        x = data[name]
        got, want = lepton_fold("sum", x, 1)["sum"], reference("sum", x)["sum"]
        bound = tolerance("sum", x, want, got)
        error = np.abs(got.astype(np.float64) - x.astype(np.float64).sum(axis=0))
        assert np.all(bound <= most * max(np.max(error), np.max(np.spacing(want)))), (name, bound, error)
    x = data["float32"]
    assert tolerance("sum", x, np.float32(0), np.float32(0)) <= 1e-5 / 15 * np.abs(x).sum()


def test_float32_sums_of_several_blocks_beat_one_numpy_call():
    """The README's "usually the more accurate": 4 blocks of columns, each a float32 running sum, added
    in float64, against NumPy's one running sum down 2^21 rows."""
    x = np.random.default_rng(2).random((4 * 524_288, 2), dtype=np.float32)
    exact = x.astype(np.float64).sum(axis=0)
    lepton = np.abs(lepton_fold("sum", x, 1)["sum"].astype(np.float64) - exact)
    numpy = np.abs(np.sum(x, axis=0).astype(np.float64) - exact)
    assert np.all(lepton < numpy), (lepton, numpy)


def test_float32_variance_in_float32_is_rejected(data):
    x = data["offset"]  # mean 1e6, std 1: float32 squares of x lose the variance
    naive = np.float32(np.mean(x * x, dtype=np.float32) - np.mean(x, dtype=np.float32) ** 2)
    assert mismatch("var", x, {"var": np.asarray(naive)}) is not None


def test_exact_results_must_be_exact(data):
    x = (data["float64"][:, 0] * 1000).astype(np.int64)
    right = {"sum": np.asarray(np.sum(x))}
    assert mismatch("sum", x, right) is None
    assert mismatch("sum", x, {"sum": right["sum"] + 1}) is not None
    assert mismatch("max", x, {"max": np.asarray(x.max())}) is None
    assert mismatch("max", x, {"max": np.asarray(np.sort(x)[-2])}) is not None
