"""The one error hierarchy of Lepton, shared by the client, the servers and the backends.

Every error carries the gRPC status code it travels as (`code`, a `grpc.StatusCode`) and a message
a person can act on (`details`). Servers raise these and a single mapping turns them into statuses;
the client turns a status it receives back into the matching class, so `except lepton.NotFound`
works on either side of the wire.
"""
from __future__ import annotations

import grpc


class LeptonError(Exception):
    """Base class: `code` is the grpc.StatusCode, `details` the explanation."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, details: str = "", code: grpc.StatusCode | str | None = None):
        super().__init__(details)
        if isinstance(code, str):
            code = grpc.StatusCode[code]
        if code is not None:
            self.code = code
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"

    @staticmethod
    def from_status(code: grpc.StatusCode, details: str) -> "LeptonError":
        """The error of the class that stands for `code` (LeptonError itself for codes without one)."""
        cls = _BY_CODE.get(code, LeptonError)
        return cls(details, code)

    @staticmethod
    def from_rpc(error: grpc.RpcError) -> "LeptonError":
        return LeptonError.from_status(error.code(), error.details() or "")


class InvalidInput(LeptonError):
    """The caller sent something wrong: name the field and what was expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(LeptonError):
    """A limit was hit (job size, device memory); retrying elsewhere or smaller may work."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(LeptonError):
    """The system is not in a state to do this (no device offers the op, a kernel did not build)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(LeptonError):
    """A named thing (job, dataset) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LeptonError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NotCached(NotFound):
    """A task referenced a cached tensor the agent no longer holds: the sender must send the bytes."""


class Unavailable(LeptonError):
    """A transient problem: an agent went away, no agent is connected yet, the coordinator restarts."""

    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(LeptonError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(LeptonError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(LeptonError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LeptonError):
    code = grpc.StatusCode.PERMISSION_DENIED


_BY_CODE = {cls.code: cls for cls in (InvalidInput, ResourceExhausted, FailedPrecondition, NotFound, AlreadyExists,
                                      Unavailable, Cancelled, DeadlineExceeded, Unauthenticated, PermissionDenied)}
