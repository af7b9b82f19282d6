"""An etcd v3 client over several endpoints of one etcd cluster, with TLS: what `--etcd` dials.

`--etcd https://a:2379,https://b:2379` lists members of one etcd cluster (any of them answers for
all: etcd forwards to its own leader). Calls go to one endpoint; a call that could not connect to
it goes again to the next, in order, until each has been tried once; a call that timed out is not
repeated (it may have landed: a lease granted, a key created), but the next call goes to the next
endpoint. Every call goes through the one `post` below, a lease's renewals and revocation too, so
they all move. A watch (`watch_once`) is a streaming request of its own: one that cannot connect
raises, and the campaign's next call moves on (lepton.coordinator.leadership).

TLS: https endpoints are checked against `ca` (a PEM file; default: the system's roots), and with
`cert` and `key` the client presents a certificate (etcd's --client-cert-auth). The client is
etcd3gw's (the JSON gateway, so no second protobuf runtime beside gRPC's): its requests.Session
carries the CA and the certificate for every call, watches included.
"""
from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from lepton.logs import event

log = logging.getLogger("lepton.coordinator.etcd")


def parse_endpoints(spec: str) -> list[tuple[str, str, int]]:
    """'http://a:2379,https://b:2379' (or bare host:port, http) -> [(scheme, host, port), ...]."""
    endpoints = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "//" in item else f"http://{item}")
        try:
            port = parts.port or 2379
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise SystemExit(f"--etcd takes http(s)://HOST:PORT, comma-separated for several endpoints; got {item!r}")
        endpoints.append((parts.scheme, parts.hostname, port))
    if not endpoints:
        raise SystemExit(f"--etcd names no endpoint: {spec!r}")
    if len({scheme for scheme, _, _ in endpoints}) > 1:
        raise SystemExit(f"--etcd mixes http and https endpoints: {spec!r} (one etcd cluster speaks one)")
    return endpoints


def connect(spec: str, ca: str = "", cert: str = "", key: str = "", timeout: float = 5):
    """A client of the etcd cluster whose endpoints `spec` lists, checked to answer; else a clear exit."""
    try:
        import etcd3gw
        import requests.adapters
        from etcd3gw import exceptions
    except ImportError:
        raise SystemExit("--etcd needs the etcd client: pip install 'lepton[ha]'") from None
    endpoints = parse_endpoints(spec)
    if bool(cert) != bool(key):
        raise SystemExit("--etcd-cert and --etcd-key go together (the client certificate and its private key)")
    if (ca or cert) and endpoints[0][0] != "https":
        raise SystemExit(f"--etcd-ca/--etcd-cert need https endpoints; got {spec!r}")

    class Bounded(requests.adapters.HTTPAdapter):
        """Gives every request without a timeout this client's."""

        def send(self, request, **kwargs):
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    class Endpoints(etcd3gw.Etcd3Client):
        def __init__(self):
            scheme, host, port = endpoints[0]
            super().__init__(host=host, port=port, protocol=scheme, ca_cert=ca or None,
                             cert_key=key or None, cert_cert=cert or None, timeout=timeout, api_path="/v3/")
            if ca:  # requests lets REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) override a session's CA
                self.session.trust_env = False  # (psf/requests#3829): the CA given must win
            # etcd3gw opens a watch with no timeout: an endpoint that accepts and never answers (a
            # hung host, a partition) would hold the campaign for ever. Every request gets one.
            for scheme in ("http://", "https://"):
                self.session.mount(scheme, Bounded())
            self.endpoints, self.index = endpoints, 0
            self._lock = threading.Lock()

        @property
        def url(self) -> str:
            return self.base_url

        def _next(self, failed: int, error: Exception) -> None:
            if len(self.endpoints) == 1:
                return
            with self._lock:
                if self.index != failed:
                    return  # another thread moved on already
                self.index = (failed + 1) % len(self.endpoints)
                self.protocol, self.host, self.port = self.endpoints[self.index]
            event(log, "etcd.endpoint_failed", level=logging.WARNING, failed=_url(endpoints[failed]),
                  trying=self.url, error=why(error)[:300])

        def post(self, url, *args, **kwargs):
            path = urlsplit(url).path  # (etcd3gw built `url` on whichever endpoint was current then)
            for _ in range(len(self.endpoints)):
                index = self.index
                try:
                    return super().post(_url(self.endpoints[index]) + path, *args, **kwargs)
                except exceptions.ConnectionFailedError as exc:  # never reached it: the next may answer
                    self._next(index, exc)
                    last = exc
                except exceptions.ConnectionTimeoutError as exc:  # may have landed: not repeated
                    self._next(index, exc)
                    raise
            raise last

    client = Endpoints()
    for tried in range(len(endpoints)):  # a timeout moves on too, here: a status check may repeat
        try:
            client.status()
            return client
        except exceptions.ConnectionTimeoutError as exc:
            if tried == len(endpoints) - 1:
                raise SystemExit(f"cannot reach etcd at {spec}: {why(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - requests' and etcd3gw's errors alike
            raise SystemExit(f"cannot reach etcd at {spec}: {why(exc)}") from None


def why(exc: Exception) -> str:
    """An etcd3gw error's explanation: it keeps requests' own (the refused connection, the failed
    certificate check) in `detail_text`, and its str() is empty."""
    return f"{type(exc).__name__}: {getattr(exc, 'detail_text', None) or exc}"


def _url(endpoint: tuple[str, str, int]) -> str:
    scheme, host, port = endpoint
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
