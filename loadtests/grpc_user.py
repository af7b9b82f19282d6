"""A Locust User for gRPC services: every call on its channel is reported to Locust.

Follows the pattern in Locust's docs ("Testing non-HTTP systems", the gRPC User), with the
interceptor written against grpc's own interceptor interfaces (no extra package) and extended to
streaming calls:

- unary responses: reported when the response (or the error) arrives;
- streaming responses: reported when the caller has read the stream to its end, or when it breaks,
  so the response time is the whole call (for SubmitJob: upload, compute and result download) and
  the response length is the sum of all response messages' sizes.

A call is named by its method (``/lepton.v1.CoordinatorService/GetClusterStatus``) unless the caller
passes ``metadata=name("...")``: that entry is taken off before the call goes out.

Locust runs users as greenlets: grpc must be made gevent-aware before any channel is created, which
importing this module does (``grpc.experimental.gevent.init_gevent``).
"""
from __future__ import annotations

import collections
import time
from typing import Any, Iterator

import locust  # noqa: F401 - monkey-patches the standard library for gevent before grpc starts threads
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User
from locust.exception import LocustError

from lepton import security

grpc_gevent.init_gevent()

NAME_KEY = "x-locust-name"


def name(label: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that names the call in Locust's statistics: ``stub.M(req, metadata=name("sum 1K"))``."""
    return ((NAME_KEY, label),)


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                            "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


def _short_method(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class GrpcFailure(Exception):
    """What Locust records for a failed call: the status code and details, without grpc's debug
    string (which varies per call and would split one error into many lines of the error report)."""

    @classmethod
    def of(cls, error: grpc.RpcError) -> "GrpcFailure":
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        failure = cls(f"{code.name if code else 'UNKNOWN'}: {details}")
        failure.__cause__ = error
        return failure


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Fires ``environment.events.request`` once per call: name, response time, length, exception."""

    def __init__(self, environment, request_type: str = "grpc"):
        self.env, self.request_type = environment, request_type

    # -- helpers -----------------------------------------------------------------------------
    def _split(self, details: grpc.ClientCallDetails) -> tuple[str, grpc.ClientCallDetails]:
        label, rest = _short_method(details.method), []
        for key, value in details.metadata or ():
            if key == NAME_KEY:
                label = value
            else:
                rest.append((key, value))
        return label, _CallDetails(details.method, details.timeout, tuple(rest) or None, details.credentials,
                                   details.wait_for_ready, details.compression)

    def _fire(self, label: str, start: float, length: int, exception: BaseException | None, response=None):
        self.env.events.request.fire(request_type=self.request_type, name=label,
                                     response_time=(time.perf_counter() - start) * 1000,
                                     response_length=length, response=response, context={},
                                     exception=exception)

    # -- unary responses ---------------------------------------------------------------------
    def _unary_response(self, continuation, details, request):
        label, details = self._split(details)
        start = time.perf_counter()
        call = continuation(details, request)  # a grpc.Call that is also a grpc.Future
        try:
            response = call.result()
        except grpc.RpcError as exc:
            self._fire(label, start, 0, GrpcFailure.of(exc))
        else:
            self._fire(label, start, response.ByteSize(), None, response)
        return call

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return self._unary_response(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return self._unary_response(continuation, client_call_details, request_iterator)

    # -- streaming responses -----------------------------------------------------------------
    def _stream_response(self, continuation, details, request):
        label, details = self._split(details)
        start = time.perf_counter()
        return _ReportingStream(continuation(details, request), self, label, start)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return self._stream_response(continuation, client_call_details, request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return self._stream_response(continuation, client_call_details, request_iterator)


class _ReportingStream:
    """Wraps a streaming call: iterates it, counts bytes, reports once when it ends or breaks.

    A stream its caller cancels before the end is reported as a failure (grpc raises CANCELLED).
    Everything else (code(), details(), cancel(), ...) is the wrapped call's.
    """

    def __init__(self, call, interceptor: LocustInterceptor, label: str, start: float):
        self._call, self._interceptor, self._label, self._start = call, interceptor, label, start
        self._length, self._reported = 0, False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self):
        try:
            response = next(self._call)
        except StopIteration:
            self._report(None)
            raise
        except grpc.RpcError as exc:
            self._report(GrpcFailure.of(exc))
            raise
        self._length += response.ByteSize()
        return response

    def _report(self, exception: BaseException | None) -> None:
        if not self._reported:
            self._reported = True
            self._interceptor._fire(self._label, self._start, self._length, exception)

    def __getattr__(self, attr):
        return getattr(self._call, attr)


class GrpcUser(User):
    """A User with ``self.stub`` on an intercepted channel to ``host`` (``--host`` on the command line).

    ``self.raw_stub`` shares the connection but is not reported: use it for probes (does the server
    offer a method?) that must not count as requests.
    """

    abstract = True
    stub_class: type | None = None
    channel_options: list[tuple[str, Any]] = []

    def __init__(self, environment):
        super().__init__(environment)
        for value, attr in ((self.host, "host"), (self.stub_class, "stub_class")):
            if value is None:
                raise LocustError(f"You must specify the {attr} (for the host: --host ADDRESS).")
        # The token from LEPTON_TOKEN / LEPTON_TOKEN_FILE (loadtests/run passes its cluster's).
        self.raw_channel = security.channel(self.host, token=security.read_token(), options=self.channel_options)
        self.channel = grpc.intercept_channel(self.raw_channel, LocustInterceptor(environment))
        self.stub = self.stub_class(self.channel)
        self.raw_stub = self.stub_class(self.raw_channel)

    def on_stop(self) -> None:
        self.raw_channel.close()
