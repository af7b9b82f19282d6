"""The client's retries: UNAVAILABLE calls are tried again, with bounded backoff, within a time budget.

Only calls that are safe to repeat are retried by default (`IDEMPOTENT`): reading a job, the job
list, the cluster's status, a trace, the dataset list, health, and cancelling (a second cancel
changes nothing). Puts and drops are not: a put or a drop whose reply was lost may have happened,
and the repeat would answer ALREADY_EXISTS or NOT_FOUND. Jobs are repeated only when the client asks
for it (`Client(resubmit_on_unavailable=True)`): ops are pure and the client still holds the inputs,
so a job lost with its coordinator gives the same answer when submitted again.
"""
from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

import grpc

IDEMPOTENT = frozenset({"GetJob", "ListJobs", "GetClusterStatus", "GetJobTrace", "ListDatasets", "Check", "CancelJob"})

T = TypeVar("T")


class Backoff:
    """Pauses between tries: exponential from `first` to `cap` seconds, with full jitter (so clients
    do not come back in lockstep after a restart), until `budget` seconds have passed since the
    first failure."""

    def __init__(self, budget: float, first: float = 0.1, cap: float = 2.0, sleep=time.sleep):
        self.budget, self.first, self.cap, self._sleep = budget, first, cap, sleep
        self._next, self._end = first, None
        self.tries = 0  # pauses taken: how many times the call was repeated

    def pause(self) -> bool:
        """Wait before the next try; False (no wait) once the budget is spent."""
        now = time.monotonic()
        if self._end is None:
            self._end = now + self.budget
        left = self._end - now
        if left <= 0:
            return False
        self._sleep(min(left, random.uniform(0, self._next)))
        self._next = min(self.cap, self._next * 2)
        self.tries += 1
        return True


def unavailable(exc: BaseException) -> bool:
    """UNAVAILABLE that waiting may cure: not a failed TLS handshake (an untrusted or wrong
    certificate stays so; a restarting coordinator refuses connections instead)."""
    return (isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
            and "handshake" not in (exc.details() or "").lower())


def retrying(call: Callable[[], T], budget: float) -> T:
    """call(), repeated while it fails with UNAVAILABLE and the budget lasts; its last error otherwise."""
    backoff = Backoff(budget)
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if not unavailable(exc) or not backoff.pause():
                raise
