"""Partitioning: every row lands in exactly one partition; counts never depend on the cluster."""
import numpy as np
import pytest

from lepton.errors import InvalidInput
from lepton.backends.ops import TensorMeta, get_op
from lepton.coordinator.planner import Scheme, hash_keys, plan


def meta(a):
    return {"x": TensorMeta(a.dtype, a.shape)}


@pytest.mark.parametrize("scheme", list(Scheme))
def test_every_row_in_exactly_one_partition(scheme, rng):
    x = rng.integers(0, 50, size=(1001, 3)).astype(np.float64)
    p = plan(get_op("sum"), meta(x), scheme, count=7, target_bytes=1)
    order = p.order([x])
    rows = np.arange(1001) if order is None else order
    assert p.count == 7 and p.row_splits[0] == 0 and p.row_splits[-1] == 1001
    assert sorted(rows.tolist()) == list(range(1001))
    if scheme is Scheme.HASH:  # equal keys share a partition
        part = np.repeat(np.arange(7), np.diff(p.row_splits))
        keys = x[order, 0]
        for key in np.unique(keys):
            assert len(set(part[keys == key])) == 1


def test_count_from_target_bytes_only():
    x = TensorMeta(np.dtype(np.float32), (10_000_000,))
    assert plan(get_op("sum"), {"x": x}, Scheme.ROW_BLOCKS, 0, 8 << 20).count == 5  # 40 MB / 8 MiB
    assert plan(get_op("sum"), {"x": TensorMeta(np.dtype(np.float32), (3,))}, Scheme.ROW_BLOCKS, 10, 1).count == 3


def test_hash_is_stable_and_signed_zero_agrees():
    keys = np.array([0.0, -0.0, 1.5, 2.5])
    h = hash_keys(keys)
    assert h[0] == h[1] and len(set(h.tolist())) == 3
    assert hash_keys(np.array([42], dtype=np.int64))[0] == np.uint64(0xBDD732262FEB6E95)


@pytest.mark.parametrize("kwargs, message", [
    ({"count": -1}, "partitioning.count"),
    ({"count": 1 << 20}, "partitioning.count"),
    ({"target_bytes": 0}, "target_bytes"),
    ({"scheme": Scheme.HASH, "key_column": 9}, "key_column"),
])
def test_bad_partitioning_is_invalid(kwargs, message):
    x = np.zeros((10, 2))
    args = {"scheme": Scheme.ROW_BLOCKS, "count": 2, "target_bytes": 1} | kwargs
    with pytest.raises(InvalidInput, match=message):
        plan(get_op("sum"), meta(x), **args)
