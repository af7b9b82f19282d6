"""Which coordinator leads: an etcd key held under a lease, and the gate that turns standbys away.

Every coordinator given `--etcd` campaigns for one key, `<prefix>leader`: the one that creates it
(a transaction that succeeds only while the key is absent) leads, and keeps its lease alive a few
times per TTL. The others watch the key and answer every call with UNAVAILABLE naming the leader
(details, and the trailing metadata `lepton-leader`). When the leader dies its keepalives stop, etcd
deletes the key once the lease's TTL runs out, and the first standby whose transaction lands leads:
it loads the metadata from the store before it opens its gate.

A leader that cannot renew its lease for a whole TTL (etcd unreachable, or the process stalled)
has lost the key to someone else, or soon will: `on_lost` is called and the process stops, rather
than serve beside a second leader. Every store write is fenced on the lease as well
(lepton.coordinator.etcd_store), so a deposed leader's late write cannot land.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

import grpc

from lepton.failover import LEADER_METADATA
from lepton.logs import event

log = logging.getLogger("lepton.coordinator.leadership")

ALWAYS_SERVED = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # a standby answers these itself


def connect(url: str, timeout: float = 5):
    """An etcd v3 client for `url` (http://HOST:PORT, etcd's JSON gateway), or a clear error."""
    try:
        import etcd3gw
    except ImportError:
        raise SystemExit("--etcd needs the etcd client: pip install 'lepton[ha]'") from None
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--etcd takes http://HOST:PORT (one etcd endpoint); got {url!r}")
    client = etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme, timeout=timeout)
    try:
        client.status()
    except Exception as exc:  # noqa: BLE001 - requests' and etcd3gw's errors alike
        raise SystemExit(f"cannot reach etcd at {url}: {type(exc).__name__}: {exc}") from None
    return client


class Leadership:
    def __init__(self, etcd, prefix: str, address: str, ttl: int = 2, on_elected: Callable[[], None] = lambda: None,
                 on_lost: Callable[[str], None] = lambda reason: None):
        """address: what this coordinator tells clients and agents to dial. on_elected runs once
        the key is ours and before `leading` is set (the metadata is loaded there)."""
        self.etcd, self.key, self.address, self.ttl = etcd, prefix + "leader", address, ttl
        self._on_elected, self._on_lost = on_elected, on_lost
        self.leading = False
        self.leader = ""  # the leader's address as last seen ("" while there is none)
        self.lease = None
        self.elected_at = 0.0  # time.monotonic() of taking over
        self._stop, self._lost = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._campaign():
                    self._lead()
                    return
            except Exception as exc:  # noqa: BLE001 - etcd unreachable or answering errors: try again
                event(log, "leadership.etcd_error", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(self.ttl / 4)

    def _campaign(self) -> bool:
        """One round: take the key if it is free, else note the leader and wait for the key to go."""
        held = self.etcd.get(self.key)
        if not held:
            self.leader = ""
            lease = self.etcd.lease(self.ttl)
            if self.etcd.create(self.key, self.address, lease):
                self.lease = lease
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
        event(log, "leadership.elected", address=self.address, key=self.key)
        keeper = threading.Thread(target=self._keep_alive, name="lease-keepalive", daemon=True)
        keeper.start()  # while the metadata loads, too: a long load must not let the lease lapse
        try:
            self._on_elected()
        except Exception as exc:  # noqa: BLE001
            self.lose(f"loading the metadata failed: {type(exc).__name__}: {exc}")
            return
        if not self._lost.is_set():
            self.leader, self.elected_at, self.leading = self.address, time.monotonic(), True
        keeper.join()

    def _keep_alive(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.ttl / 4) and not self._lost.is_set():
            try:
                if self.lease.refresh() > 0:
                    renewed = time.monotonic()
                    continue
                self.lose("etcd says our lease expired")
            except Exception as exc:  # noqa: BLE001 - keep trying until the TTL is spent
                if time.monotonic() - renewed >= self.ttl:
                    self.lose(f"the lease could not be renewed for {self.ttl}s: {type(exc).__name__}: {exc}")

    def lose(self, reason: str) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        self.leading, self.leader = False, ""  # whoever leads now, it is not us
        event(log, "leadership.lost", level=logging.ERROR, address=self.address, reason=reason)
        self._on_lost(reason)

    def stop(self) -> None:
        """Stop campaigning; a leader hands the key back at once (revoking the lease deletes it)."""
        self._stop.set()
        self.leading, self.leader = False, ""  # callers go to the next address, not back to us
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
