"""The agent's device handling, without a network: pieces on out-of-memory."""
import numpy as np
import pytest

from lepton.errors import ResourceExhausted
from lepton.backends.numpy_device import NumpyDevice
from lepton.backends.ops import TensorMeta, get_op
from lepton.agent.agent import run_in_pieces
from references import assert_matches


class SmallMemoryDevice(NumpyDevice):
    """A NumPy device that pretends to run out of memory above a number of rows (a unit-test edge)."""

    def __init__(self, max_rows: int):
        super().__init__()
        self.max_rows, self.calls = max_rows, []

    def run(self, op, inputs, params):
        rows = op.rows(inputs)
        self.calls.append(rows)
        if rows > self.max_rows:
            raise ResourceExhausted(f"{rows} rows do not fit")
        return super().run(op, inputs, params)


@pytest.mark.parametrize("op_name, params", [("sum", {}), ("max", {}), ("histogram", {"bins": 5, "range": [0, 1]}),
                                             ("topk", {"k": 3})])
def test_out_of_memory_runs_the_partition_in_pieces(op_name, params):
    x = np.random.default_rng(0).random((1000, 2))
    op = get_op(op_name)
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, params)
    if op.needs_row_offset:
        p["row_offset"] = 500
    device = SmallMemoryDevice(max_rows=300)
    got = op.finalize(run_in_pieces(device, op, {"x": x}, p), p)
    want = op.finalize(NumpyDevice().run(op, {"x": x}, p), p)
    if op_name == "sum":  # the fold's bound (tests/references.py); the others are exact
        assert_matches("sum", x, got)
    for key in want if op_name != "sum" else ():
        assert np.array_equal(got[key], want[key]), key
    assert max(device.calls[1:]) <= 500 and device.calls[0] == 1000


def test_a_piece_that_never_fits_fails_with_resource_exhausted():
    x = np.ones((640, 2))
    op = get_op("sum")
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    device = SmallMemoryDevice(max_rows=0)
    with pytest.raises(ResourceExhausted):
        run_in_pieces(device, op, {"x": x}, p)
    assert min(device.calls) == 10  # halved down to 1/64 of the partition (640 / 64 rows), no further


def test_pieces_stop_at_one_64th():
    x = np.random.default_rng(1).random((640, 2))
    op = get_op("sum")
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    fits = SmallMemoryDevice(max_rows=10)  # 1/64 fits: the partition runs in 64 pieces
    assert_matches("sum", x, op.finalize(run_in_pieces(fits, op, {"x": x}, p), p))
    with pytest.raises(ResourceExhausted):
        run_in_pieces(SmallMemoryDevice(max_rows=9), op, {"x": x}, p)  # 1/128 would: it gives up


def test_out_of_memory_pieces_keep_the_canonical_blocks_bits():
    """A float32 sum over three 4 MiB blocks, on a device that fits two blocks at most: cut on the
    block tree's root split, the pieces' combine is bitwise the partition's canonical partial (no
    tolerance: the README promises the same bits however a partition is run)."""
    op = get_op("sum")
    per_block = op.block_bytes // 4
    x = (np.random.default_rng(3).standard_normal(3 * per_block - 12345) * 1e3).astype(np.float32)
    p = op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    want = NumpyDevice().run(op, {"x": x}, p)
    device = SmallMemoryDevice(max_rows=2 * per_block)
    got = run_in_pieces(device, op, {"x": x}, p)
    assert device.calls[1:] == [2 * per_block, len(x) - 2 * per_block]
    for key in want:
        assert np.array_equal(got[key], want[key]), key


@pytest.mark.parametrize("first, partitions, arity", [(0, 0, 8), (0, 1, 1), (2, 2, 8), (-1, 4, 8)])
def test_a_task_outside_its_tree_is_invalid_input_not_a_crash(first, partitions, arity):
    from lepton.agent.agent import Agent
    from lepton.errors import InvalidInput

    agent = Agent([NumpyDevice()])
    try:
        with pytest.raises(InvalidInput, match="tree_arity"):
            list(agent.run_task("job-1", "sum", {}, first, partitions, arity, [{"x": np.ones(3)}], {}, [0]))
    finally:
        agent.stop()


def test_a_long_run_reports_its_partitions_done_before_its_partial():
    """A run that computes longer than PROGRESS_SECONDS sends the timings of partitions done while
    their node waits for the rest (progress: lo is None), and the node's own timings leave those out,
    so the coordinator's estimate counts each partition once; the node's partial is the run's sum."""
    from lepton.agent.agent import Agent, PROGRESS_SECONDS

    agent = Agent([NumpyDevice()], test_delay=(PROGRESS_SECONDS, PROGRESS_SECONDS))  # 4 partitions, 0.2 s
    try:
        x = np.arange(4000, dtype=np.float64)
        split = [{"x": x[i * 1000:(i + 1) * 1000]} for i in range(4)]
        items = list(agent.run_task("job-1", "sum", {}, 0, 4, 8, split, {}, [0, 1000, 2000, 3000]))
    finally:
        agent.stop()
    nodes = [(lo, hi, partial) for lo, hi, partial, _ in items if lo is not None]
    progress = [timings for lo, _, _, timings in items if lo is None]
    assert [(lo, hi) for lo, hi, _ in nodes] == [(0, 4)] and progress, items
    assert sorted(t[0] for _, _, _, timings in items for t in timings) == [0, 1, 2, 3]  # each timed once
    assert all(t[2] <= t[3] for timings in progress for t in timings)
    assert nodes[0][2]["sum"] == x.sum()  # integers in float64: exact
