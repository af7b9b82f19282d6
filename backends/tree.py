"""The deterministic aggregation tree (ARCHITECTURE.md §6).

A fixed k-ary tree over P partition indices: the node at level L, index j covers partitions
[j*k^L, min((j+1)*k^L, P)). A node's value is the left fold of its children's values, so the
result does not depend on who computed what, in which order partials arrived, or on retries.
Coordinator and agents use the same tree: an agent folds the partitions of its task into the
maximal nodes the task covers, and the coordinator folds those up to the root.
"""
from __future__ import annotations

import os
from typing import Callable

from lepton.backends.ops import Partial

Range = tuple[int, int]


class Tree:
    def __init__(self, leaves: int, arity: int):
        if leaves < 1 or arity < 2:
            raise ValueError(f"a tree needs at least 1 leaf and arity >= 2 (got {leaves}, {arity})")
        self.leaves, self.arity = leaves, arity
        self.top = 0
        while arity ** self.top < leaves:
            self.top += 1

    def node(self, level: int, index: int) -> Range:
        size = self.arity ** level
        return index * size, min((index + 1) * size, self.leaves)

    def level_of(self, lo: int, hi: int) -> int:
        """The highest level whose node is exactly [lo, hi)."""
        for level in range(self.top, -1, -1):
            size = self.arity ** level
            if lo % size == 0 and min(lo + size, self.leaves) == hi:
                return level
        raise ValueError(f"[{lo}, {hi}) is not a node of the tree over {self.leaves} partitions")

    def children(self, level: int, index: int) -> int:
        lo, hi = self.node(level, index)
        child = self.arity ** (level - 1)
        return -(-(hi - lo) // child)

    def cover(self, lo: int, hi: int) -> list[Range]:
        """The maximal nodes that exactly cover [lo, hi), left to right."""
        nodes, pos = [], lo
        while pos < hi:
            for level in range(self.top, -1, -1):
                size = self.arity ** level
                if pos % size == 0 and min(pos + size, self.leaves) <= hi:
                    nodes.append((pos, min(pos + size, self.leaves)))
                    pos = nodes[-1][1]
                    break
        return nodes


class TreeAggregator:
    """Folds partials of nodes within [lo, hi) of `tree` as soon as adjacent siblings exist.

    Nodes whose parent reaches outside [lo, hi) are complete here and land in `done`, keyed by
    range; with [lo, hi) the whole tree that is just the root. Exactly-once: a range added twice is
    ignored (returns False); a range overlapping one already added is a bug and raises.
    Memory: at most (arity - 1) stashed partials per level.
    """

    def __init__(self, tree: Tree, combine: Callable[[Partial, Partial], Partial],
                 lo: int = 0, hi: int | None = None):
        self.tree, self.combine = tree, combine
        self.lo, self.hi = lo, tree.leaves if hi is None else hi
        self.covered = bytearray(tree.leaves)
        self.covered_count = 0
        self.done: dict[Range, Partial] = {}
        # parent (level, index) -> [next child to fold, folded prefix, {child: partial}]
        self._pending: dict[tuple[int, int], list] = {}
        # Test hook, never set in production: fold each node's children in the order they arrive
        # instead of left to right. tests/test_determinism.py must fail with it (so it can fail).
        self._arrival_order = os.environ.get("LEPTON_TEST_FOLD_IN_ARRIVAL_ORDER") == "1"

    @property
    def complete(self) -> bool:
        return self.covered_count == self.hi - self.lo

    def add(self, lo: int, hi: int, partial: Partial) -> bool:
        seen = sum(self.covered[lo:hi])
        if seen == hi - lo:
            return False
        if seen or not (self.lo <= lo < hi <= self.hi):
            raise ValueError(f"partial [{lo}, {hi}) overlaps what was already aggregated or lies outside "
                             f"[{self.lo}, {self.hi})")
        self.covered[lo:hi] = b"\x01" * (hi - lo)
        self.covered_count += hi - lo
        level = self.tree.level_of(lo, hi)
        self._insert(level, lo // self.tree.arity ** level, partial)
        return True

    def _insert(self, level: int, index: int, partial: Partial) -> None:
        k = self.tree.arity
        while True:
            parent = (level + 1, index // k)
            plo, phi = self.tree.node(*parent)
            if level == self.tree.top or plo < self.lo or phi > self.hi:
                self.done[self.tree.node(level, index)] = partial
                return
            slot = self._pending.setdefault(parent, [0, None, {}])
            if self._arrival_order:  # slot[0] counts the children folded so far
                slot[1] = partial if slot[0] == 0 else self.combine(slot[1], partial)
                slot[0] += 1
            else:
                slot[2][index % k] = partial
                while slot[0] in slot[2]:
                    value = slot[2].pop(slot[0])
                    slot[1] = value if slot[0] == 0 else self.combine(slot[1], value)
                    slot[0] += 1
            if slot[0] < self.tree.children(*parent):
                return
            del self._pending[parent]
            level, index, partial = parent[0], parent[1], slot[1]
