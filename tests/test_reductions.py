"""The reductions' contracts without a network: any split into partitions, combined in the tree, equals
NumPy. (The op catalog runs through clusters: test_catalog.py.)"""
import numpy as np
import pytest

from lepton.errors import InvalidInput
from lepton.backends.ops import TensorMeta, get_op
from lepton.backends.ops.reductions import OPS as REDUCTIONS
from lepton.backends.tree import Tree, TreeAggregator
from references import mismatch

PARAMS = {"histogram": {"bins": 10, "range": [-2.0, 2.0]}, "var": {"ddof": 1}, "describe": {"ddof": 1}}


def partitioned(op_name, x, splits, params):
    op = get_op(op_name)
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, dict(params))
    tree = Tree(len(splits) - 1, 3)
    aggregator = TreeAggregator(tree, op.combine)
    for i in reversed(range(len(splits) - 1)):
        part = x[splits[i]:splits[i + 1]]
        aggregator.add(i, i + 1, op.reference({"x": part}, p) if len(part) else {})
    return op.finalize(aggregator.done[(0, tree.leaves)], p)


@pytest.mark.parametrize("op", sorted(o.name for o in REDUCTIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("shape", [(1000,), (1000, 3)])
def test_partitioned_equals_numpy(op, dtype, shape, rng):
    x = (rng.standard_normal(shape) * (1 if dtype.startswith("float") else 1000)).astype(dtype)
    splits = [0, 0, 1, 250, 250, 700, 1000]  # empty partitions included
    got = partitioned(op, x, splits, PARAMS.get(op, {}))
    assert mismatch(op, x, got, **PARAMS.get(op, {})) is None


@pytest.mark.parametrize("op", ["var", "describe"])
def test_var_is_stable_where_sum_of_squares_cancels(op):
    x = (1e8 + np.arange(10_000) % 7).astype(np.float64)
    got = partitioned(op, x, [0, 3000, 7000, 10_000], {})
    assert abs(got["var"] - np.var(x)) <= 1e-9 * np.var(x)


def test_nan_propagates_like_numpy():
    x = np.array([1.0, np.nan, 3.0, 4.0])
    for op in ("sum", "min", "max", "mean"):
        assert np.isnan(partitioned(op, x, [0, 2, 4], {})[op])
    assert partitioned("count", x, [0, 2, 4], {})["count"] == 3
    described = partitioned("describe", x, [0, 2, 4], {})
    assert all(np.isnan(described[op]) for op in ("sum", "min", "max", "mean", "var"))
    assert described["count"] == 3


@pytest.mark.parametrize("op, params, shape, dtype, message", [
    ("min", {}, (0,), "float32", "needs at least one row"),
    ("mean", {}, (0, 3), "float64", "needs at least one row"),
    ("sum", {}, (4,), "float16", "dtype float16"),
    ("sum", {"axis": 1}, (4,), "float32", "unknown parameter"),
    ("sum", {}, (), "float32", "needs 1 to"),
    ("var", {"ddof": 5}, (4,), "float32", "ddof"),
    ("histogram", {}, (4,), "float32", "needs 'bins'"),
    ("histogram", {"bins": 0, "range": [0, 1]}, (4,), "float32", "'bins' must be"),
    ("histogram", {"bins": 4}, (4,), "float32", "needs 'range'"),
    ("histogram", {"bins": 4, "range": [1, 0]}, (4,), "float32", "low < high"),
    ("histogram", {"edges": [0, 2, 1]}, (4,), "float32", "strictly increasing"),
    ("histogram", {"bins": 4, "range": [0, 1]}, (4, 2, 2), "float32", "needs 1 to 2"),
])
def test_bad_input_names_the_problem(op, params, shape, dtype, message):
    with pytest.raises(InvalidInput, match=message):
        get_op(op).validate({"x": TensorMeta(np.dtype(dtype), shape)}, params)


def test_empty_input_where_allowed():
    x = np.zeros((0, 2), dtype=np.float32)
    assert partitioned("sum", x, [0, 0], {})["sum"].tolist() == [0.0, 0.0]
    assert partitioned("count", x, [0, 0], {})["count"].tolist() == [0, 0]
