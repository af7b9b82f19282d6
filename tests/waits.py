"""Waiting on a condition, never on the clock: poll until it holds, fail saying what was awaited."""
from __future__ import annotations

import time


def wait_for(condition, what: str, timeout: float = 60, processes=(), every: float = 0.05):
    """The first truthy value of condition(), polled every `every` s; AssertionError after `timeout`
    s, or as soon as one of `processes` (Popen) has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise AssertionError(f"a process exited with {dead[0].returncode} while waiting for {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
