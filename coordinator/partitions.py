"""The state of one job's partitions in one round: a named state each, one table of transitions.

Like the task states of dask distributed's scheduler: every partition is in exactly one state, and
the only way to change it is `PartitionTable.move`, which refuses a transition the table does not
list. The table is the whole story of a partition:

    WAITING  -> READY     its rows have arrived (row blocks stream; other plans wait for all input)
    READY    -> RUNNING   sent to an agent, in a run
    RUNNING  -> DONE      its partial is in the job's aggregation tree
    RUNNING  -> READY     its run failed with a retryable error, or the agent forgot a cached input
    READY    -> DONE      a partial of an earlier copy landed after the partition was queued again
    DONE     -> READY     an iterative job starts its next round on the same partitions

A failure that retrying cannot fix fails the job, not the partition: the job's state (JobState)
is final then, and its partitions no longer matter. A speculative copy of a run makes no state of
its own: its partitions stay RUNNING until one copy's partial lands.

Pending work is kept per home agent (where a dataset partition is resident) in dicts used as
ordered sets (insertion order; O(1) add, remove and membership), so dispatch never scans all P
partitions to find the ones an agent should take.

Not thread-safe by itself: it belongs to its Job and is guarded by the job's lock.
"""
from __future__ import annotations

import enum
import time
from typing import Callable


class PartitionState(enum.Enum):
    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"


W, R, X, D = PartitionState.WAITING, PartitionState.READY, PartitionState.RUNNING, PartitionState.DONE

#: Allowed transitions, and why each happens.
TRANSITIONS: dict[tuple[PartitionState, PartitionState], str] = {
    (W, R): "its rows arrived",
    (R, X): "sent to an agent",
    (X, D): "its partial was aggregated",
    (X, R): "its run failed and will be retried, or a cached input must be sent again",
    (R, D): "a partial of an earlier copy landed after the partition was queued again",
    (D, R): "the next round of an iterative job",
}


class PartitionTable:
    def __init__(self, count: int, home: Callable[[int], str | None] = lambda p: None):
        self.count = count
        self._home = home
        self.state: list[PartitionState] = [W] * count
        self.attempts = [0] * count  # failed attempts so far (this round)
        self.failed_on: dict[int, set[str]] = {}  # agents a partition failed on (this round)
        self.queued_at = [0.0] * count  # when it last became READY (epoch seconds)
        # READY partitions by home agent (where a dataset partition is resident; None: nowhere),
        # each an ordered set: O(1) to add, remove and test.
        self.ready: dict[str | None, dict[int, None]] = {}
        self.ready_count = 0
        self.queued_home: dict[int, str | None] = {}  # the home each READY partition is filed under
        self.released = 0  # partitions [0, released) have left WAITING
        self.done = 0

    def move(self, p: int, new: PartitionState) -> None:
        old = self.state[p]
        if (old, new) not in TRANSITIONS:
            raise RuntimeError(f"partition {p}: {old.name} -> {new.name} is not an allowed transition")
        self.state[p] = new
        if old is R:
            del self.ready[self.queued_home.pop(p)][p]
            self.ready_count -= 1
        elif old is D:
            self.done -= 1
        if new is R:
            home = self._home(p)
            self.queued_home[p] = home
            self.ready.setdefault(home, {})[p] = None
            self.ready_count += 1
            self.queued_at[p] = time.time()
        elif new is D:
            self.done += 1

    def release(self, upto: int, order=None) -> None:
        """Partitions [0, upto) have their rows: WAITING -> READY, in the order of `order` (a
        permutation of the partitions) if given, which is then the order they are handed out in."""
        todo = range(self.released, upto) if order is None else [p for p in order if self.released <= p < upto]
        for p in todo:
            self.move(p, R)
        self.released = max(self.released, upto)

    def next_round(self) -> None:
        """Every partition again, with a clean failure history."""
        self.attempts = [0] * self.count
        self.failed_on = {}
        for p in range(self.count):
            if self.state[p] is D:
                self.move(p, R)

    def retry(self, p: int, agent_id: str) -> None:
        """A failed attempt on `agent_id`: RUNNING -> READY."""
        self.failed(p, agent_id)
        self.move(p, R)

    def failed(self, p: int, agent_id: str) -> int:
        """Count a failed attempt; returns the failed attempts so far."""
        self.attempts[p] += 1
        self.failed_on.setdefault(p, set()).add(agent_id)
        return self.attempts[p]

    def backlog(self, home: str | None) -> int:
        """READY partitions resident on `home`."""
        return len(self.ready.get(home, ()))

    def counts(self) -> dict[PartitionState, int]:
        running = self.released - self.ready_count - self.done
        return {W: self.count - self.released, R: self.ready_count, X: running, D: self.done}
