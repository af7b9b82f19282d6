"""The aggregation tree: any split into runs, any arrival order, same fold as the fixed tree."""
import random

import pytest

from lepton.backends.tree import Tree, TreeAggregator


def concat(a, b):
    return {"s": "(" + a["s"] + "+" + b["s"] + ")"}


def fold(tree, level, index):
    """The value the fixed tree defines: the left fold of each node's children."""
    if level == 0:
        return {"s": str(index)}
    children = [fold(tree, level - 1, index * tree.arity + i) for i in range(tree.children(level, index))]
    value = children[0]
    for child in children[1:]:
        value = concat(value, child)
    return value


@pytest.mark.parametrize("leaves", [1, 2, 3, 7, 8, 9, 63, 64, 65, 200])
@pytest.mark.parametrize("arity", [2, 3, 8])
def test_any_runs_and_order_give_the_fixed_fold(leaves, arity):
    tree, rnd = Tree(leaves, arity), random.Random(leaves * 31 + arity)
    expected = fold(tree, tree.top, 0)
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, leaves), rnd.randint(0, leaves - 1))) if leaves > 1 else []
        bounds, nodes = [0, *cuts, leaves], []
        for lo, hi in zip(bounds, bounds[1:]):  # an agent pre-combining its run
            agent = TreeAggregator(tree, concat, lo, hi)
            order = list(range(lo, hi))
            rnd.shuffle(order)
            for i in order:
                agent.add(i, i + 1, {"s": str(i)})
            assert sorted(agent.done) == tree.cover(lo, hi)
            nodes += agent.done.items()
        rnd.shuffle(nodes)
        coordinator = TreeAggregator(tree, concat)
        for (lo, hi), value in nodes:
            assert coordinator.add(lo, hi, value)
            assert not coordinator.add(lo, hi, value)  # a duplicate is ignored: exactly once
        assert coordinator.complete and coordinator.done == {(0, leaves): expected}


def test_overlapping_partial_is_refused():
    aggregator = TreeAggregator(Tree(16, 4), concat)
    aggregator.add(0, 1, {"s": "0"})
    with pytest.raises(ValueError, match="overlaps"):
        aggregator.add(0, 4, {"s": "x"})


def test_memory_stays_logarithmic():
    tree = Tree(4096, 8)
    aggregator = TreeAggregator(tree, concat)
    peak = 0
    for i in range(4096):
        aggregator.add(i, i + 1, {"s": "."})
        peak = max(peak, sum(len(slot[2]) + 1 for slot in aggregator._pending.values()))
    assert peak <= 2 * tree.top  # in-order arrival: one folded prefix per level
