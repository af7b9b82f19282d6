"""What every Lepton server offers operators: gRPC health, server reflection, Prometheus metrics.

Health is served by our own small servicer rather than grpcio-health-checking's: the stock one was
seen to stop answering Check for good after concurrent Watch calls (ARCHITECTURE.md §10).
"""
from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health for the server as a whole ("") and for each of its services."""

    def __init__(self, services: list[str]):
        self._status = {name: SERVING for name in ["", *services]}
        self._changed = threading.Condition()

    def set_all(self, status: int) -> None:
        with self._changed:
            self._status = {name: status for name in self._status}
            self._changed.notify_all()

    def Check(self, request, context):
        with self._changed:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context):
        last = None
        while context.is_active():
            with self._changed:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status == last:
                    self._changed.wait(timeout=1.0)  # wake now and then to notice a gone client
                    continue
            last = status
            yield health_pb2.HealthCheckResponse(status=status)


def add_standard_services(server: grpc.Server, services: list[str]) -> Health:
    """Health checking and reflection for `services` (full names), so grpcurl and load balancers work."""
    health = Health(services)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME], server)
    return health


def start_metrics(listen: str, **tls) -> str:
    """Serve Prometheus text metrics on host:port (port 0 picks one); returns the bound address.
    tls: start_http_server's certfile, keyfile, client_cafile, ... (lepton.security.metrics_tls)."""
    if not listen or listen == "off":
        return ""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    server, _ = start_http_server(int(port), addr=host or "127.0.0.1", **tls)
    return f"{host or '127.0.0.1'}:{server.server_port}"
