"""The coordinator's metadata in etcd, where a standby that takes over finds it (see store.py).

A record is one key, `<prefix><kind>/<key>`, holding JSON. Writes are fenced on the leader's lease:
each is a transaction that lands only while the leader key is still held under this coordinator's
lease, so a deposed leader (stalled past its TTL, or cut off from etcd) cannot overwrite what its
successor wrote. A fenced write that fails raises `Unavailable` and tells the leadership it is lost.
"""
from __future__ import annotations

import base64
import json

from lepton.errors import Unavailable


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdStore:
    def __init__(self, etcd, prefix: str, leadership):
        """etcd: an etcd3gw client; leadership: lepton.coordinator.leadership.Leadership (its key and lease fence writes)."""
        self.etcd, self.prefix, self.leadership = etcd, prefix, leadership

    def _key(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}/{key}"

    def _fenced(self, *operations: dict) -> None:
        lease = self.leadership.lease
        if lease is None:  # a standby writes nothing (its gate lets no call through)
            raise Unavailable("this coordinator is a standby; it does not write the store")
        reply = self.etcd.transaction({
            "compare": [{"key": _b64(self.leadership.key), "result": "EQUAL", "target": "LEASE", "lease": lease.id}],
            "success": list(operations), "failure": []})
        if not reply.get("succeeded"):
            self.leadership.lose("a store write found the leader key held by another lease")
            raise Unavailable("this coordinator no longer leads; retry: the client follows the new leader")

    def _put(self, kind: str, key: str, value: dict) -> dict:
        return {"request_put": {"key": _b64(self._key(kind, key)),
                                "value": _b64(json.dumps(value, separators=(",", ":")))}}

    def _delete(self, kind: str, key: str) -> dict:
        return {"request_delete_range": {"key": _b64(self._key(kind, key))}}

    def put(self, kind: str, key: str, value: dict) -> None:
        self._fenced(self._put(kind, key, value))

    def delete(self, kind: str, key: str) -> None:
        self._fenced(self._delete(kind, key))

    def apply(self, writes: list[tuple[str, str, dict | None]]) -> None:
        """(kind, key, value) puts and (kind, key, None) deletes in one fenced transaction (keys distinct)."""
        self._fenced(*(self._put(kind, key, value) if value is not None else self._delete(kind, key)
                       for kind, key, value in writes))

    def load(self, kind: str) -> dict[str, dict]:
        prefix = self._key(kind)
        return {meta["key"].decode()[len(prefix):]: json.loads(value)
                for value, meta in self.etcd.get_prefix(prefix)}

    def close(self) -> None:
        pass
