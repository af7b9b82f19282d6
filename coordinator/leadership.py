"""Which coordinator leads: an etcd key held under a lease, and the gate that turns standbys away.

Every coordinator given `--etcd` campaigns for one key, `<prefix>leader`: the one that creates it
(a transaction that succeeds only while the key is absent) leads, and keeps its lease alive a few
times per TTL. The others watch the key and answer every call with UNAVAILABLE naming the leader
(details, and the trailing metadata `lepton-leader`). When the leader dies its keepalives stop, etcd
deletes the key once the lease's TTL runs out, and the first standby whose transaction lands leads:
it loads the metadata from the store before it opens its gate.

A leader that cannot renew its lease for a whole TTL (etcd unreachable, or the process stalled)
has lost the key to someone else, or soon will. It steps down rather than serve beside a second
leader: `leading` is False from the moment the TTL has passed since the last renewal that etcd
acknowledged (so a process resumed after a stall turns calls away before any of its threads learns
why), `on_lost` runs (the coordinator fails its jobs and forgets its state), and the leadership
campaigns again as a standby: it can lead again later. Every store write is fenced on the lease as
well (lepton.coordinator.etcd_store), so a deposed leader's late write cannot land.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from lepton.coordinator.etcd_client import connect, why  # noqa: F401 - connect: the one way --etcd dials (main.py)
from lepton.failover import LEADER_METADATA
from lepton.logs import event

log = logging.getLogger("lepton.coordinator.leadership")

ALWAYS_SERVED = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # a standby answers these itself


class Leadership:
    def __init__(self, etcd, prefix: str, address: str, ttl: int = 2, on_elected: Callable[[], None] = lambda: None,
                 on_lost: Callable[[str, str], None] = lambda reason, leader: None):
        """address: what this coordinator tells clients and agents to dial. on_elected runs once
        the key is ours and before `leading` is set (the metadata is loaded there). on_lost(reason,
        leader) runs once per lost term, on the leadership's thread, with `leading` already False:
        leader is the successor's address if etcd named one by then, else ""."""
        self.etcd, self.key, self.address, self.ttl = etcd, prefix + "leader", address, ttl
        self._on_elected, self._on_lost = on_elected, on_lost
        self._leading = False
        self._renewed = 0.0  # time.monotonic() when the last acknowledged renewal was sent
        self.leader = ""  # the leader's address as last seen ("" while there is none)
        self.lease = None
        self.elected_at = 0.0  # time.monotonic() of taking over
        self.terms = 0  # how many times this coordinator has been elected
        self._reason = ""
        self._stop, self._lost = threading.Event(), threading.Event()
        self._wake = threading.Event()  # ends the keepalive's wait: the term was lost, or we stop
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    @property
    def leading(self) -> bool:
        """Whether we lead now: elected, not deposed, and renewed within the TTL (a lease etcd may
        have let lapse already is not one to serve under)."""
        return self._leading and time.monotonic() - self._renewed < self.ttl

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._campaign():
                    self._lead()
                    if not self._stop.is_set():
                        self._step_down()
            except Exception as exc:  # noqa: BLE001 - etcd unreachable or answering errors: try again
                event(log, "leadership.etcd_error", level=logging.WARNING, error=why(exc))
                self._stop.wait(self.ttl / 4)

    def _campaign(self) -> bool:
        """One round: take the key if it is free, else note the leader and wait for the key to go."""
        held = self.etcd.get(self.key)
        if not held:
            self.leader = ""
            lease = self.etcd.lease(self.ttl)
            sent = time.monotonic()
            if self.etcd.create(self.key, self.address, lease):
                self.lease, self._renewed = lease, sent
                self._lost.clear()
                self._wake.clear()
                return True
            lease.revoke()
            return False
        self.leader = held[0].decode()
        try:  # a deletion ends the wait at once; the timeout bounds a deletion missed between get and watch
            self.etcd.watch_once(self.key, timeout=self.ttl / 2, filters=["NOPUT"])
        except Exception:  # noqa: BLE001 - etcd3gw.exceptions.WatchTimedOut, or a broken stream
            pass
        return False

    def _lead(self) -> None:
        """Hold the lead until it is lost (or we stop): load the metadata, open the gate, renew."""
        self.terms += 1
        event(log, "leadership.elected", address=self.address, key=self.key, term=self.terms)
        keeper = threading.Thread(target=self._keep_alive, name="lease-keepalive", daemon=True)
        keeper.start()  # while the metadata loads, too: a long load must not let the lease lapse
        try:
            self._on_elected()
        except Exception as exc:  # noqa: BLE001
            self.lose(f"loading the metadata failed: {type(exc).__name__}: {exc}")
        if not self._lost.is_set():
            self.leader, self.elected_at, self._leading = self.address, time.monotonic(), True
        keeper.join()

    def _keep_alive(self) -> None:
        lease = self.lease
        while not self._wake.wait(self.ttl / 4) and not self._stop.is_set():
            sent = time.monotonic()
            try:
                if lease.refresh() > 0:
                    self._renewed = sent
                    continue
                self.lose("etcd says our lease expired")
            except Exception as exc:  # noqa: BLE001 - keep trying until the TTL is spent
                if time.monotonic() - self._renewed >= self.ttl:
                    self.lose(f"the lease could not be renewed for {self.ttl}s: {why(exc)}")

    def lose(self, reason: str) -> None:
        """The lead is lost (any thread may say so): the gate closes now; the leadership's thread
        steps down (on_lost) and campaigns again."""
        if self._lost.is_set():
            return
        self._reason = reason
        self._lost.set()
        self._wake.set()  # the step-down starts now, not at the keepalive's next turn
        self._leading, self.leader = False, ""  # whoever leads now, it is not us
        event(log, "leadership.lost", level=logging.ERROR, address=self.address, reason=reason)

    def _step_down(self) -> None:
        lease, self.lease = self.lease, None  # store writes stop here (EtcdStore refuses without a lease)
        try:  # who leads now, for the jobs we fail: a client can go straight there
            held = self.etcd.get(self.key)
            self.leader = held[0].decode() if held and held[0].decode() != self.address else ""
        except Exception:  # noqa: BLE001 - etcd unreachable: clients try the next address
            self.leader = ""
        try:
            lease.revoke()  # in case etcd still holds it: the key must go for anyone to lead
        except Exception:  # noqa: BLE001 - expired already, or etcd unreachable: it expires by itself
            pass
        event(log, "leadership.stepped_down", address=self.address, leader=self.leader or "unknown",
              reason=self._reason)
        self._on_lost(self._reason, self.leader)

    def stop(self) -> None:
        """Stop campaigning; a leader hands the key back at once (revoking the lease deletes it)."""
        self._stop.set()
        self._wake.set()
        self._leading, self.leader = False, ""  # callers go to the next address, not back to us
        if self.lease is not None:
            try:
                self.lease.revoke()
            except Exception:  # noqa: BLE001 - etcd gone: the lease expires by itself
                pass
        self._thread.join(timeout=self.ttl)


class StandbyGate(grpc.ServerInterceptor):
    """While this coordinator does not lead, every call (but health and reflection) ends UNAVAILABLE
    naming the leader, before any servicer sees it: a standby holds no state to answer from."""

    def __init__(self, leadership: Leadership):
        self.leadership = leadership

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or self.leadership.leading or handler_call_details.method.startswith(ALWAYS_SERVED):
            return handler

        def refuse(request, context):
            leader = self.leadership.leader
            context.set_trailing_metadata([(LEADER_METADATA, leader)])
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"this coordinator is a standby; the leader is {leader}" if leader else
                          "this coordinator is a standby and no coordinator leads yet; retry shortly")

        kinds = [("unary_unary", grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler)]
        for kind, make in kinds:
            if getattr(handler, kind) is not None:
                return make(refuse, request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler
