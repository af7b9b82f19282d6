"""How a Lepton process ends: a shutdown with a hard bound, and children that die with their starter.

Shutdown. The first SIGTERM or SIGINT starts an orderly stop: the caller sets health to NOT_SERVING,
`stop_server` lets in-flight RPCs drain for the first half of the bound and then cancels the rest.
From the first signal on, a watchdog thread ends the process when the bound has passed, whatever
its threads are doing (a handler stuck in a kernel, a C call that never returns): it logs the step
that overran with every thread's stack, then `os._exit`s. A second SIGTERM or SIGINT exits at once.

Starter. A process that `LocalCluster` or `lepton up` starts is told its starter's pid through the
environment (`child_env`). On Linux it asks for SIGTERM when its starter dies (PR_SET_PDEATHSIG, only
when the starter spawned it from its main thread: the signal fires when the spawning *thread* exits);
everywhere it also polls its parent pid, which changes when the starter is gone and it is re-parented.
Either way it takes the orderly path above.
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import threading
import time

from lepton.logs import event

log = logging.getLogger("lepton.lifecycle")

DEFAULT_SHUTDOWN_SECONDS = 5.0
EXIT_OVERRAN = 70  # EX_SOFTWARE: the orderly shutdown did not finish within its bound
PARENT_PID_ENV = "LEPTON_PARENT_PID"
PARENT_DEATHSIG_ENV = "LEPTON_PARENT_DEATHSIG"
PARENT_POLL_SECONDS = 0.25
_PR_SET_PDEATHSIG = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shutdown-timeout", type=float,
                        default=float(os.environ.get("LEPTON_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_SECONDS)),
                        help="seconds from SIGTERM to exit, at most: the first half drains in-flight calls, "
                             "then the rest are cancelled [LEPTON_SHUTDOWN_TIMEOUT]")


class Shutdown:
    """The stop signals of a server process, and the bound on how long stopping may take."""

    def __init__(self, bound: float):
        self.bound = max(0.1, bound)
        self.stop = threading.Event()  # set by the first `request`
        self.reason = ""
        self.deadline: float | None = None
        self._step = "waiting"
        self._signalled = False
        self._lock = threading.Lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self._signalled:
            event(log, "shutdown.forced", level=logging.WARNING, signal=name)
            os._exit(128 + signum)  # asked twice: no more waiting
        self._signalled = True
        self.request(name)

    def request(self, reason: str) -> None:
        """Start stopping (a signal, the starter gone, a device failed); safe from any thread. From
        the first request on, the process ends within the bound."""
        with self._lock:
            if self.deadline is not None:
                return
            self.reason, self.deadline = reason, time.monotonic() + self.bound
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        self.stop.set()

    def wait(self) -> str:
        """Block until asked to stop; returns why."""
        while not self.stop.wait(1.0):  # a timed wait, so the signal handlers run promptly
            pass
        return self.reason

    def step(self, name: str) -> None:
        """Name what the orderly path is doing now, for the watchdog's report."""
        self._step = name

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.deadline is not None else self.bound

    def _watchdog(self) -> None:
        time.sleep(self.remaining())
        event(log, "shutdown.overran", level=logging.ERROR, bound=self.bound, step=self._step)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_OVERRAN)

    def stop_server(self, server) -> None:
        """Stop a grpc.Server: drain for half of what is left of the bound, cancel the rest, and wait
        for it to finish stopping no longer than the bound allows (leaving a margin to exit in)."""
        self.step("draining RPCs")
        done = server.stop(grace=self.remaining() / 2)
        if not done.wait(timeout=max(0.0, self.remaining() - 0.5)):
            event(log, "shutdown.server_not_stopped", level=logging.WARNING, bound=self.bound)
        self.step("exiting")


# -- children and their starter ----------------------------------------------------------------

def child_env(detach: bool = False) -> dict[str, str]:
    """Environment for a process this one starts, so that it ends when this one is gone."""
    if detach:
        return {PARENT_PID_ENV: "", PARENT_DEATHSIG_ENV: ""}
    main_thread = threading.current_thread() is threading.main_thread()
    return {PARENT_PID_ENV: str(os.getpid()), PARENT_DEATHSIG_ENV: "1" if main_thread else ""}


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ParentGuard:
    """Ends this process in an orderly way when the process that started it is gone."""

    def __init__(self, parent_pid: int | None, deathsig: bool):
        self.parent_pid = parent_pid
        # PDEATHSIG is kept across exec, so an agent that becomes mpiexec (mpi:N) passes it on.
        self.deathsig = bool(parent_pid) and deathsig and _set_pdeathsig(signal.SIGTERM)

    @classmethod
    def from_env(cls) -> "ParentGuard":
        """Read (and remove, so grandchildren do not inherit a pid that is not their parent's) the
        starter's pid; arm PDEATHSIG at once, before any thread exists."""
        pid = os.environ.pop(PARENT_PID_ENV, "")
        deathsig = os.environ.pop(PARENT_DEATHSIG_ENV, "") == "1"
        return cls(int(pid) if pid.isdigit() else None, deathsig)

    def gone(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def watch(self, on_gone) -> None:
        """Call on_gone(reason) once the starter is gone (checked now too: it may have died already)."""
        if self.parent_pid is None:
            return

        def poll():
            while not self.gone():
                time.sleep(PARENT_POLL_SECONDS)
            event(log, "parent.gone", level=logging.WARNING, parent=self.parent_pid)
            on_gone(f"starter {self.parent_pid} is gone")

        threading.Thread(target=poll, name="parent-watch", daemon=True).start()
