"""Same inputs and partitioning give bitwise the same result on 1-3 agents and any arrival order.

The input is float64 of a wide dynamic range (normal x exp(uniform(-20, 20))): its partials' float64
sums round differently for every fold order, so a coordinator or agent that folded partials as they
arrived instead of in the fixed tree would give other bits from run to run. (float32 input cannot show
this: its partials are float64 sums of float32 values, exact in any order, and the final cast to
float32 hides the rest.) `LEPTON_TEST_FOLD_IN_ARRIVAL_ORDER=1` switches backends/tree.py to such a
fold; with it, both tests below fail.
"""
import hashlib
import random

import numpy as np
import pytest

import lepton
from lepton.backends.ops import TensorMeta, get_op
from lepton.backends.tree import Tree, TreeAggregator

PARTITIONS = 37  # arity 8: the root folds 5 nodes, each node up to 8 partials from several agents


def wide(rng, shape):
    return rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, shape))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(2024)
    return wide(rng, 60_000), wide(rng, (20_000, 3))


def jobs(x1, x2):
    """(op, x) for sum, mean and var of a column, var of three columns and the Gram matrix."""
    return [("sum", x1), ("mean", x1), ("var", x1), ("var", x2), ("gram", x2)]


@pytest.fixture(scope="module")
def shuffled():
    """Three agents that sleep 0-20 ms before each partition, so partials arrive in random order."""
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", "0.02"]) as cluster:
        yield cluster


def results(client, x1, x2):
    out = []
    for op, x in jobs(x1, x2):
        for scheme in ("row_blocks", "hash", "round_robin"):
            result = client.run(op, x, partitioning=scheme, partitions=PARTITIONS)
            out.append((op, x.ndim, scheme, {k: v.tobytes() for k, v in result.items()}))
    return out


@pytest.mark.slow  # about 11 s: 75 jobs on five clusters
def test_bitwise_identical_across_agent_counts_and_arrival_orders(clusters, shuffled, inputs):
    expected = results(clusters[1].client(), *inputs)
    for client in (clusters[2].client(), clusters[3].client(), shuffled.client(), shuffled.client()):
        for got, want in zip(results(client, *inputs), expected):
            assert got == want, f"{got[:3]}: other bits than on one agent"


@pytest.mark.parametrize("op, column", [("sum", 0), ("mean", 0), ("var", 0), ("var", 1), ("gram", 1)])
def test_the_input_tells_fold_orders_apart(inputs, op, column):
    """Without a network: the tree's fold gives one result for any arrival order, while an
    arrival-order fold of the same partials gives many (so the cluster test above can fail)."""
    x = inputs[column]
    definition = get_op(op)
    params = definition.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    cuts = np.linspace(0, len(x), PARTITIONS + 1).astype(int)
    partials = [definition.reference({"x": x[lo:hi]}, params) for lo, hi in zip(cuts, cuts[1:])]
    rnd = random.Random(7)

    def fold(arrival_order=False):
        distinct = set()
        for _ in range(30):
            order = list(range(PARTITIONS))
            rnd.shuffle(order)
            aggregator = TreeAggregator(Tree(PARTITIONS, 8), definition.combine)
            if arrival_order:
                aggregator._arrival_order = True  # what LEPTON_TEST_FOLD_IN_ARRIVAL_ORDER=1 sets
            for i in order:
                aggregator.add(i, i + 1, partials[i])
            root = definition.finalize(aggregator.done[(0, PARTITIONS)], params)
            distinct.add(b"".join(np.asarray(v).tobytes() for v in root.values()))
        return len(distinct)

    assert fold() == 1
    assert fold(arrival_order=True) > 1


def float32_products(client, a, b, x):
    """Digests of matmul (row plan, 8 partitions) and the Gram matrix (8 partitions) of float32 inputs
    (digests: a failing comparison of megabytes of bytes would spend minutes in pytest's diff)."""
    c = client.matmul(a, b, partitions=8)
    g = client.gram(x, partitions=8)
    return [hashlib.sha256(v.tobytes()).hexdigest() for v in (c, *g.values())]


@pytest.mark.slow  # about 6 s: two more clusters
def test_float32_blas_products_are_bitwise_the_same_on_one_and_on_two_agents(clusters):
    """BLAS products too. On CPUs where OpenBLAS runs its Haswell kernels (AMD Zen 5 with OpenBLAS
    0.3.31, for one), float32 GEMMs round differently on one thread and on two: agents whose BLAS
    pools took a share of the cores by the number of agents gave other bits on 1 agent than on 2
    (on a machine whose kernels do not care, this passes either way)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((4096, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    x = rng.standard_normal((262_144, 32)).astype(np.float32)
    expected = float32_products(clusters[1].client(timeout=120), a, b, x)
    assert float32_products(clusters[2].client(timeout=120), a, b, x) == expected
    with lepton.LocalCluster(agents=0) as cluster:  # agents added one by one get the same pools
        cluster.add_agent("numpy")
        cluster.add_agent("numpy")
        assert float32_products(cluster.client(timeout=120), a, b, x) == expected
