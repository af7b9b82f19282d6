"""Following the leader among coordinator addresses: what clients and agents do by themselves.

A highly available cluster runs two or more coordinators, one of them leading (etcd elects it:
lepton.coordinator.leadership). Clients and agents are given every address ("a:1,b:2", or a list).
A standby answers every call with UNAVAILABLE and the trailing metadata `lepton-leader`: the leader's
address, or "" while none leads. Such a call did nothing, so it can go again: to the named leader,
else to the next address. A call that could not connect at all did nothing either, and with several
addresses it goes to the next one. Other failures, a broken call among them, are the caller's to
judge: a job that was running when its leader died fails with UNAVAILABLE, and is resubmitted.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Callable

import grpc

LEADER_METADATA = "lepton-leader"
# What gRPC says of a call that never reached a server (core's wording, stable across releases).
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed", "name resolution")


def parse(addresses: str | list[str] | tuple[str, ...]) -> list[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2'] (order kept, duplicates and blanks dropped)."""
    items = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    if not out:
        raise ValueError(f"no coordinator address in {addresses!r}")
    return out


def standby_answer(exc: grpc.RpcError) -> tuple[bool, str]:
    """(whether a standby coordinator sent this error, the leader it named or "")."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False, ""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == LEADER_METADATA:
            return True, value if isinstance(value, str) else value.decode()
    return False, ""


def never_connected(exc: grpc.RpcError) -> bool:
    details = (exc.details() or "").lower() if hasattr(exc, "details") else ""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(text in details for text in _NOT_CONNECTED)


class Coordinators:
    """The addresses, a channel to each (opened when first used), and the one calls go to now."""

    BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0

    def __init__(self, addresses, dial: Callable[[str], grpc.Channel], patience: float = 30):
        """dial(address) -> channel, with the caller's credentials. patience: seconds a call keeps
        following (through a failover) before its last error stands."""
        self.addresses, self._dial, self.patience = parse(addresses), dial, patience
        self.current = self.addresses[0]
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self) -> grpc.Channel:
        with self._lock:
            if self.current not in self._channels:
                self._channels[self.current] = self._dial(self.current)
            return self._channels[self.current]

    def _move(self, failed: str, leader: str = "") -> None:
        """After `failed` turned a call away: the named leader, else the address after it."""
        with self._lock:
            if self.current != failed:
                return  # another thread moved on already
            if leader and leader != failed:
                if leader not in self.addresses:
                    self.addresses.append(leader)
                self.current = leader
            else:
                self.current = self.addresses[(self.addresses.index(failed) + 1) % len(self.addresses)]

    def follow(self, exc: grpc.RpcError, failed: str, attempt: int, started: float,
               repeatable: bool = False) -> bool:
        """Whether the call that failed at address `failed` with `exc` may go again now; if so, calls
        go to where the leader is thought to be, after a jittered backoff (the `attempt`th).
        repeatable: the call may go again elsewhere even if it may have landed (an agent's join and
        heartbeat), so that a call that timed out moves on too: a leader stalled (SIGSTOP, a hung
        host) accepts connections and answers nothing."""
        standby, leader = standby_answer(exc)
        timed_out = repeatable and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        if not standby and not (len(self.addresses) > 1 and (never_connected(exc) or timed_out)):
            return False
        if time.monotonic() - started > self.patience:
            return False
        self._move(failed, leader)
        time.sleep(random.uniform(0, min(self.BACKOFF_MAX, self.BACKOFF_FIRST * 2 ** attempt)))
        return True

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
