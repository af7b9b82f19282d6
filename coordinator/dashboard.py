"""The coordinator's live dashboard: one HTTP port, a static page, and one Server-Sent Events stream.

The page (dashboard.html) draws with Plotly, served from the `plotly` package on this machine (no
CDN: clusters are often offline). Each connected page gets one snapshot a second on its own event
stream: agents and devices, jobs, datasets, data rates and device busy time, and, for the job the
page is showing, its per-partition trace. A snapshot is built once per tick however many pages
watch, from the coordinator's public state (`snapshot`, `trace`), so the cost stays flat (see
benchmarks/bench_dashboard.py). With a token set, every request must carry it (`?token=` or an
`Authorization: Bearer` header); the page passes on the one it was opened with.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from lepton.coordinator import metrics

log = logging.getLogger("lepton.coordinator")

PAGE = Path(__file__).with_name("dashboard.html")
HISTORY = 300          # seconds of rates and busy time kept for the charts
MAX_STREAMS = 32       # pages watching at once; more get 503 (no thread per stranger)
RECENT_JOBS = 50
TRACE_LIMIT = 4000     # attempts drawn in a task stream: the latest ones of a bigger job (and a count)


def _plotly_js() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.exists() else None


def job_row(record) -> dict:
    return {"job_id": record.job_id, "op": record.op, "label": record.label, "state": record.state.name,
            "partitions_done": record.partitions_done, "partitions_total": record.partitions_total,
            "bytes_total": record.bytes_total, "bytes_received": record.bytes_received,
            "submitted_at": record.submitted_at, "finished_at": record.finished_at, "retries": record.retries,
            "iteration": record.iteration, "error": f"{record.error_code} {record.error_message}".strip()}


def trace(record, limit: int | None = None) -> list[dict]:
    """The attempts of a job's partitions (the latest `limit`), as the task stream draws them."""
    attempts = list(record.trace)
    if limit is not None:
        attempts = attempts[-limit:]
    return [{"partition": a.partition, "attempt": a.attempt, "agent": a.agent_id, "device": a.device,
             "queued_at": a.queued_at, "sent_at": a.sent_at, "started_at": a.started_at,
             "finished_at": a.finished_at, "received_at": a.received_at, "rows": a.rows,
             "outcome": a.outcome_text} for a in attempts]


class Sampler:
    """Once a second: the cluster's state, byte rates and device busy fractions, kept for HISTORY s."""

    def __init__(self, coordinator):
        self.c = coordinator
        self.samples: deque = deque(maxlen=HISTORY)
        self._last_counters: tuple | None = None
        self._lock = threading.Lock()
        self.latest: dict = {}

    @staticmethod
    def _counters() -> tuple[float, ...]:
        return tuple(counter._value.get() for counter in (metrics.INPUT_BYTES, metrics.BYTES_TO_AGENTS,
                                                          metrics.BYTES_FROM_AGENTS, metrics.RESULT_BYTES))

    def _busy(self, records, now: float, window: float = 1.0) -> dict[str, float]:
        """Fraction of the last `window` seconds each device spent running partitions (from traces)."""
        busy: dict[str, float] = {}
        for record in records:
            if record.finished_at and record.finished_at < now - window:
                continue
            for a in list(record.trace):
                if not a.device or not a.started_at:
                    continue
                end = a.finished_at or now
                overlap = min(end, now) - max(a.started_at, now - window)
                if overlap > 0:
                    key = f"{a.agent_id}/{a.device}"
                    busy[key] = min(1.0, busy.get(key, 0.0) + overlap / window)
        return busy

    def tick(self) -> dict:
        now = time.time()
        counters = self._counters()
        last, self._last_counters = self._last_counters, (now, counters)
        rates = [0.0] * len(counters) if last is None else \
            [(b - a) / max(1e-3, now - last[0]) for a, b in zip(last[1], counters)]
        records = self.c.records(RECENT_JOBS)
        agents = self.c.membership.agents()
        monotonic = time.monotonic()
        snapshot = {
            "time": now,
            "agents": [{"id": a.id, "name": a.name, "address": a.address, "credits": a.credits,
                        "in_flight": a.in_flight, "partitions_done": a.partitions_done,
                        "heartbeat_age": monotonic - a.last_seen,
                        "devices": [{"name": d.name, "kind": d.kind, "description": d.description,
                                     "memory_bytes": d.memory_bytes, "ops": list(d.ops),
                                     "throughput": dict(d.throughput)} for d in a.devices]} for a in agents],
            "jobs": [job_row(r) for r in records],
            "datasets": [{"name": d.name, "shape": list(d.shape), "bytes": d.nbytes, "partitions": d.partitions,
                          "placement": _count(d.placement.values())} for d in self.c.datasets.all()],
        }
        sample = {"time": now, "in": rates[0], "to_agents": rates[1], "from_agents": rates[2], "out": rates[3],
                  "busy": self._busy(records, now)}
        with self._lock:
            self.samples.append(sample)
            snapshot["history"] = list(self.samples)
            self.latest = snapshot
        return snapshot


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class Dashboard:
    def __init__(self, coordinator, listen: str, token: str = ""):
        self.c, self.token = coordinator, token
        self.sampler = Sampler(coordinator)
        self._tick = threading.Condition()
        self._generation = 0
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self._stop = threading.Event()
        self._plotly = _plotly_js()
        self.cpu_seconds = 0.0  # thread CPU time spent sampling and sending: the dashboard's whole cost
        self._cpu_lock = threading.Lock()
        host, _, port = listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"dashboard": self})
        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
        self.server.daemon_threads = True
        self.address = f"{host or '127.0.0.1'}:{self.server.server_port}"
        self._threads = [threading.Thread(target=self.server.serve_forever, name="dashboard", daemon=True),
                         threading.Thread(target=self._sample, name="dashboard-sampler", daemon=True)]
        for thread in self._threads:
            thread.start()

    def url(self) -> str:
        return f"http://{self.address}/" + (f"?token={self.token}" if self.token else "")

    def charge(self, seconds: float) -> None:
        with self._cpu_lock:
            self.cpu_seconds += seconds

    def _sample(self) -> None:
        while not self._stop.is_set():
            start = time.thread_time()
            try:
                self.sampler.tick()
                self.sampler.latest["dashboard_cpu_seconds"] = self.cpu_seconds
            except Exception:  # noqa: BLE001 - a bad tick must not end the dashboard
                log.exception("dashboard sample failed")
            self.charge(time.thread_time() - start)
            with self._tick:
                self._generation += 1
                self._tick.notify_all()
            self._stop.wait(1.0)

    def wait_tick(self, seen: int, timeout: float = 5.0) -> int:
        with self._tick:
            self._tick.wait_for(lambda: self._generation != seen or self._stop.is_set(), timeout)
            return self._generation

    def allowed(self, handler: "_Handler", query: dict) -> bool:
        if not self.token:
            return True
        given = (query.get("token") or [""])[0]
        header = handler.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def stop(self) -> None:
        self._stop.set()
        with self._tick:
            self._tick.notify_all()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # requests are not worth a log line each (and carry tokens)
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        url = urlparse(self.path)
        query = parse_qs(url.query)
        d = self.dashboard
        if not d.allowed(self, query):
            return self._send(HTTPStatus.UNAUTHORIZED, b"a token is needed: open the address lepton printed",
                              "text/plain")
        if url.path == "/":
            return self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        if url.path == "/static/plotly.min.js" and d._plotly is not None:
            return self._send(HTTPStatus.OK, d._plotly.read_bytes(), "application/javascript", cache=True)
        if url.path == "/api/snapshot":  # the next tick's: at most a second old, and after the request
            d.wait_tick(d._generation)
            return self._json(d.sampler.latest)
        if url.path.startswith("/api/trace/"):
            return self._trace(url.path.rsplit("/", 1)[1])
        if url.path == "/events":
            return self._events((query.get("job") or [""])[0])
        self._send(HTTPStatus.NOT_FOUND, b"no such page", "text/plain")

    def _trace(self, job_id: str) -> None:
        try:
            record = self.dashboard.c.record(job_id)
        except Exception:  # noqa: BLE001 - NotFound, or a malformed id
            return self._send(HTTPStatus.NOT_FOUND, b"no such job", "text/plain")
        self._json({"job": job_row(record), "trace": trace(record)})

    def _json(self, value) -> None:
        self._send(HTTPStatus.OK, json.dumps(value).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _events(self, job_id: str) -> None:
        d = self.dashboard
        if not d._streams.acquire(blocking=False):
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many dashboards open", "text/plain")
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            seen = -1
            while not d._stop.is_set():
                seen = d.wait_tick(seen)
                start = time.thread_time()
                payload = dict(d.sampler.latest)
                if job_id:
                    try:
                        record = d.c.record(job_id)
                        payload["trace"] = {"job": job_row(record), "trace": trace(record, TRACE_LIMIT),
                                            "attempts": len(record.trace)}
                    except Exception:  # noqa: BLE001
                        payload["trace"] = None
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()
                d.charge(time.thread_time() - start)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away
        finally:
            d._streams.release()


def start(coordinator, listen: str, token: str = "") -> Dashboard | None:
    """Serve the dashboard on host:port (port 0 picks one); None when `listen` is "off" or empty."""
    if not listen or listen == "off":
        return None
    return Dashboard(coordinator, listen, token)
