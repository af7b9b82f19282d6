"""Errors mapped once for every servicer: a LeptonError raised by a handler becomes the call's status.

    class FooServicer(pb_grpc.FooServicer):
        @maps_errors
        def Bar(self, request, context):
            ...  # raise lepton.errors.InvalidInput("...") anywhere below

The status code and message are the error's own (`LeptonError.code`, `.details`), which the client
turns back into the same class with `LeptonError.from_rpc`. Other exceptions are left to gRPC,
which reports them as UNKNOWN: a bug should be loud, not dressed up as a domain error.
"""
from __future__ import annotations

import functools
import inspect

from lepton.errors import LeptonError


def maps_errors(method):
    """Decorate a servicer method, unary or streaming (a generator), so that a LeptonError aborts
    the call with its code and details."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except LeptonError as exc:
                context.abort(exc.code, exc.details)
        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except LeptonError as exc:
            context.abort(exc.code, exc.details)
    return unary
