"""Errors raised by ops and devices, each mapped to one gRPC status by the servicers."""


class LeptonError(Exception):
    """Base class; `code` is the gRPC status code name the servicers answer with."""

    code = "INTERNAL"


class InvalidInput(LeptonError):
    """The caller sent something wrong: name the field and what was expected."""

    code = "INVALID_ARGUMENT"


class ResourceExhausted(LeptonError):
    """A limit was hit (job size, device memory); retrying elsewhere or smaller may work."""

    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(LeptonError):
    """The system is not in a state to do this (no device offers the op, a kernel did not build)."""

    code = "FAILED_PRECONDITION"


class NotFound(LeptonError):
    """A named thing (job, dataset) does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(LeptonError):
    code = "ALREADY_EXISTS"


class NotCached(NotFound):
    """A task referenced a cached tensor the agent no longer holds: the sender must send the bytes."""


class Unavailable(LeptonError):
    """A transient problem: an agent went away, no agent is connected yet."""

    code = "UNAVAILABLE"
