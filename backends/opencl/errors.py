"""pyopencl exceptions -> Lepton errors, so no OpenCL failure reaches a caller as anything else.

Out of device or host memory is RESOURCE_EXHAUSTED (the scheduler retries elsewhere or in smaller
pieces); a program that does not build or load is FAILED_PRECONDITION with the driver's build log;
any other OpenCL error is a bug or a broken driver: INTERNAL.
"""
from __future__ import annotations

from contextlib import contextmanager

import pyopencl as cl

from lepton.errors import FailedPrecondition, LeptonError, ResourceExhausted

_OUT_OF_MEMORY = {cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE, cl.status_code.OUT_OF_RESOURCES,
                  cl.status_code.OUT_OF_HOST_MEMORY}
_NOT_BUILT = {cl.status_code.BUILD_PROGRAM_FAILURE, cl.status_code.INVALID_BINARY,
              cl.status_code.INVALID_BUILD_OPTIONS, cl.status_code.INVALID_PROGRAM_EXECUTABLE}


def translate(error: Exception, what: str, refused: type[LeptonError] = LeptonError) -> LeptonError:
    """The Lepton error for `error`, raised while doing `what` (used in the message)."""
    if isinstance(error, MemoryError):
        return ResourceExhausted(f"out of host memory while {what}")
    code = getattr(error, "code", None)
    if code in _OUT_OF_MEMORY:
        return ResourceExhausted(f"OpenCL device out of memory while {what} ({error}); "
                                 f"retry on another device or in smaller partitions")
    if code in _NOT_BUILT:
        # pyopencl's message carries the driver's build log.
        return FailedPrecondition(f"OpenCL program failed while {what}:\n{error}")
    return refused(f"OpenCL error while {what}: {error}")


@contextmanager
def cl_errors(what: str, refused: type[LeptonError] = LeptonError):
    """Re-raise pyopencl errors (and host MemoryError) as Lepton errors; `refused` for the rest."""
    try:
        yield
    except LeptonError:
        raise
    except (cl.Error, MemoryError) as error:
        raise translate(error, what, refused) from error
