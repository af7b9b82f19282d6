"""The gRPC half of Lepton's security: the one server interceptor (Gatekeeper), the job limiter,
TLS binding and client channels. Flags, Credentials and the exposure check live in
lepton.credentials (no gRPC there) and are re-exported here. See lepton.credentials for the model."""
from __future__ import annotations

import hashlib
import hmac
import threading

import grpc

from lepton.credentials import (AGENT_CN_PREFIX, COORDINATOR, COORDINATOR_CN, FULL, JOIN, MAX_MESSAGE_BYTES, PEER,  # noqa: F401
                                READ, READ_METHODS, Credentials, _read, add_server_arguments, check_exposure,
                                credentials_from_args, is_loopback, read_token)


# -- servers -------------------------------------------------------------------------------
def server_options() -> list[tuple[str, int]]:
    """Bounds on what one caller can make a server hold: message and metadata sizes."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_metadata_size", 16 << 10)]


def bind(server: grpc.Server, address: str, creds: Credentials | None) -> int:
    """Listen on address with TLS when creds have a certificate; returns the port (OSError if none)."""
    if creds is not None and creds.tls:
        ca = _read(creds.tls_ca) if creds.mtls else None
        port = server.add_secure_port(address, grpc.ssl_server_credentials(
            [(_read(creds.tls_key), _read(creds.tls_cert))], root_certificates=ca, require_client_auth=creds.mtls))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def _service_methods(descriptor, service: str) -> list[str]:
    s = descriptor.services_by_name[service]
    return [f"/{s.full_name}/{m.name}" for m in s.methods]


def coordinator_policy() -> dict[str, set[str]]:
    """Method -> the grants that reach it. Methods not listed (health, reflection): Gatekeeper.default."""
    from lepton.v1 import agent_service_pb2, coordinator_service_pb2

    policy = {}
    for method in _service_methods(coordinator_service_pb2.DESCRIPTOR, "CoordinatorService"):
        policy[method] = {FULL, READ} if method.rsplit("/", 1)[1] in READ_METHODS else {FULL}
    for method in _service_methods(agent_service_pb2.DESCRIPTOR, "AgentRegistryService"):
        policy[method] = {JOIN}
    return policy


def agent_policy() -> dict[str, set[str]]:
    from lepton.v1 import agent_service_pb2

    return {method: {COORDINATOR} for method in _service_methods(agent_service_pb2.DESCRIPTOR, "AgentService")}


def _bearer(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _matches(given: str, expected: str) -> bool:
    # Both sides always compared: no early exit on which secret is configured or how long it is.
    return bool(expected) & hmac.compare_digest(given.encode(), expected.encode())


class JobLimiter:
    """At most `limit` concurrent calls per caller identity; an identity's entry goes when its count does."""

    def __init__(self, limit: int):
        self.limit = limit
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, identity: str) -> bool:
        with self._lock:
            if self._active.get(identity, 0) >= self.limit:
                return False
            self._active[identity] = self._active.get(identity, 0) + 1
            return True

    def leave(self, identity: str) -> None:
        with self._lock:
            left = self._active.get(identity, 0) - 1
            if left > 0:
                self._active[identity] = left
            else:
                self._active.pop(identity, None)


class Gatekeeper(grpc.ServerInterceptor):
    """The one server interceptor: every call proves a grant the method's policy accepts, or ends
    UNAUTHENTICATED before the servicer sees it. Calls in `limited` also count against the caller's
    JobLimiter share (RESOURCE_EXHAUSTED beyond it)."""

    def __init__(self, creds: Credentials, policy: dict[str, set[str]], role: str,
                 limited: set[str] = frozenset(), limiter: JobLimiter | None = None):
        self.creds, self.policy, self.role = creds, policy, role
        self.limited, self.limiter = limited, limiter
        # Methods outside the policy (health, reflection): any credential of the cluster that this
        # server checks; on an agent a certificate of the cluster will do, on the coordinator it won't.
        self.default = {FULL, READ, JOIN} if role == "coordinator" else {COORDINATOR, JOIN, PEER}
        # A credential not configured grants its rights to everyone (loopback, or --insecure).
        self.free = set()
        if not creds.token and role == "coordinator":
            self.free |= {FULL, READ}
        if not creds.join_token and not creds.mtls:
            self.free |= {JOIN, COORDINATOR}

    def grants(self, metadata, auth_context) -> tuple[set[str], str]:
        """The caller's grants and its identity (certificate name, token fingerprint, or 'anonymous')."""
        token = _bearer(metadata)
        grants = set(self.free)
        full, read, join = (_matches(token, t) for t in (self.creds.token, self.creds.read_token, self.creds.join_token))
        if full:
            grants.add(FULL)
        if read:
            grants.add(READ)
        if join:
            grants.add(JOIN)
            if not self.creds.mtls:
                grants.add(COORDINATOR)  # the per-cluster secret, where certificates do not say who calls
        names = [n.decode(errors="replace") for n in auth_context.get("x509_common_name", [])]
        if names:  # present only when the TLS layer verified the certificate against the CA
            grants.add(PEER)
            if names[0] == COORDINATOR_CN:
                grants.add(COORDINATOR)
            if names[0].startswith(AGENT_CN_PREFIX) and self.creds.mtls:
                grants.add(JOIN)
            return grants, f"cert:{names[0]}"
        if token and (full or read or join):
            return grants, "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
        return grants, "anonymous"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        needed = self.policy.get(method, self.default)
        metadata = handler_call_details.invocation_metadata
        limited = method in self.limited and self.limiter is not None

        def guard(behavior):
            def checked(request, context):
                grants, identity = self.grants(metadata, context.auth_context())
                if not grants & needed:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  f"{method} needs {self._describe(needed)}: none was presented, or it is wrong")
                if limited:
                    if not self.limiter.enter(identity):
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"{self.limiter.limit} jobs of this caller are running already; "
                                      f"wait for one to finish")
                    if not context.add_callback(lambda: self.limiter.leave(identity)):
                        self.limiter.leave(identity)  # the call ended already: no callback will come
                return behavior(request, context)
            return checked

        kinds = [("unary_unary", grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler)]
        for kind, make in kinds:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(guard(behavior), request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler

    def _describe(self, needed: set[str]) -> str:
        if needed & {FULL, READ} and not needed & {JOIN, COORDINATOR}:
            return "the client token ('authorization: Bearer TOKEN'; lepton --token / LEPTON_TOKEN)" + (
                "" if READ in needed else ", the full one, not the read-only one")
        if JOIN in needed and len(needed) == 1:
            return "the cluster's join credential (--join-token, or an agent certificate under --mtls)"
        if COORDINATOR in needed and len(needed) == 1:
            return "the credential of this agent's own coordinator"
        return "a credential of this cluster"


# -- clients -------------------------------------------------------------------------------
class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call (works on plaintext loopback channels too,
    where gRPC refuses call credentials)."""

    def __init__(self, token: str):
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._pair])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def channel(address: str, *, token: str = "", tls: bool | None = None, tls_ca=None, tls_cert=None, tls_key=None,
            options: list | tuple = ()) -> grpc.Channel:
    """A channel to a Lepton server. TLS when asked for or when any certificate is given: the server's
    certificate is always checked (against tls_ca, else the system's roots). A token rides in
    `authorization` metadata on every call."""
    if tls is None:
        tls = bool(tls_ca or tls_cert)
    # Unary-stream calls (the coordinator's RunSmallTask) are read by the calling thread itself, not
    # through the channel's polling thread: one thread hop fewer per small task.
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("SingleThreadedUnaryStream", 1), *options]  # grpc.experimental.ChannelOptions
    if tls:
        creds = grpc.ssl_channel_credentials(root_certificates=_read(tls_ca), private_key=_read(tls_key),
                                             certificate_chain=_read(tls_cert))
        raw = grpc.secure_channel(address, creds, options=options)
    else:
        raw = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(raw, _Metadata(token)) if token else raw


JOB_METHODS = ("/SubmitJob", "/RunJob")  # the calls that run a job: what --max-client-jobs counts


# -- the servers' gates --------------------------------------------------------------------
def coordinator_gate(creds: Credentials | None, max_client_jobs: int = 64) -> Gatekeeper:
    """The coordinator's interceptor: tokens per method; the calls that run a job (SubmitJob, and
    RunJob for small ones) counted per caller."""
    from lepton.v1 import coordinator_service_pb2

    submit = _service_methods(coordinator_service_pb2.DESCRIPTOR, "CoordinatorService")
    return Gatekeeper(creds or Credentials(), coordinator_policy(), "coordinator",
                      limited={m for m in submit if m.endswith(JOB_METHODS)}, limiter=JobLimiter(max_client_jobs))


def agent_gate(creds: Credentials | None) -> Gatekeeper:
    """The agent's interceptor: AgentService for its coordinator only."""
    return Gatekeeper(creds or Credentials(), agent_policy(), "agent")


def metrics_tls(creds: Credentials | None) -> dict:
    """prometheus_client.start_http_server's TLS arguments: the server's certificate, and the CA's
    check of the scraper's certificate where mutual TLS is on."""
    if creds is None or not creds.tls:
        return {}
    tls = {"certfile": creds.tls_cert, "keyfile": creds.tls_key}
    if creds.mtls:
        tls.update(client_cafile=creds.tls_ca, client_auth_required=True)
    return tls
