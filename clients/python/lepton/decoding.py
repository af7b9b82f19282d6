"""Requests that do not parse end INVALID_ARGUMENT from the handler, saying which method's request.

gRPC's own path for them (a request deserializer that raises) ends the call INTERNAL ("Exception
deserializing request!") and, in grpcio 1.85, leaks it: the handler thread, woken without a request,
sends a second status whose batch is never completed, and that batch holds the call's Python state
and its native call, arena included, for good. 600 unparseable requests left 600 calls alive after
a garbage collection (tests/test_fuzz.py's servers grew by a third in 15 s of fuzzing). `ParseInHandler`
gives every method a deserializer that cannot fail: a request that does not parse becomes a
`Malformed` marker, which the handler turns into the status, and gRPC ends the call the usual way.
"""
from __future__ import annotations

import grpc

from lepton.errors import InvalidInput

HELP = "the client's message definitions must match the server's (lepton.v1)"


class Malformed:
    """Stands for a request message that did not parse: why not."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error


class MalformedRequest(InvalidInput):
    """Raised from a request stream at a message that did not parse (servicers map it as any
    InvalidInput: lepton.rpc_errors)."""


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a deserializer raises (as gRPC catches)
            return Malformed(f"{type(exc).__name__}: {exc}")
    return parse


class ParseInHandler(grpc.ServerInterceptor):
    """Put it last among a server's interceptors: the ones before (the security gate) still decide
    first, and pass its deserializer on. `deserializers`: method -> a deserializer to use instead of
    the generated one (wire.chunk_request_parser for the streams of bytes)."""

    def __init__(self, deserializers: dict | None = None):
        self.deserializers = dict(deserializers or {})

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def why(malformed: Malformed) -> str:
            return f"the request to {method} does not parse ({malformed.error}); {HELP}"

        def one(behavior):
            def checked(request, context):
                if isinstance(request, Malformed):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, why(request))
                return behavior(request, context)
            return checked

        def stream(requests):
            for request in requests:
                if isinstance(request, Malformed):
                    raise MalformedRequest(why(request))
                yield request

        def many_to_one(behavior):
            def checked(requests, context):
                try:
                    return behavior(stream(requests), context)
                except MalformedRequest as exc:  # a handler that does not map errors itself
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.details)
            return checked

        def many_to_many(behavior):
            def checked(requests, context):
                try:
                    yield from behavior(stream(requests), context)
                except MalformedRequest as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.details)
            return checked

        kinds = [("unary_unary", grpc.unary_unary_rpc_method_handler, one),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler, one),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler, many_to_one),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler, many_to_many)]
        for kind, make, wrap in kinds:
            behavior = getattr(handler, kind)
            if behavior is not None:
                deserializer = self.deserializers.get(method, handler.request_deserializer)
                return make(wrap(behavior), request_deserializer=_tolerant(deserializer),
                            response_serializer=handler.response_serializer)
        return handler
