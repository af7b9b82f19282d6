"""Starting under mpiexec: detect it, find the `mpich` wheel's mpiexec, re-exec the command line."""
from __future__ import annotations

import os
import shutil
import sys

from lepton.errors import FailedPrecondition, InvalidInput

# Set by the launchers we know (MPICH's hydra, Open MPI, PMIx, Slurm's srun) in every rank's environment.
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDI_CONTROL_FD")
_LAUNCHED = "LEPTON_MPI_LAUNCHED"  # marks our own re-exec, so a launch that failed cannot loop


def under_mpiexec() -> bool:
    """True when a process manager started us (checked without initializing MPI)."""
    return any(name in os.environ for name in _MPI_ENV)


def find_mpiexec() -> str:
    """The mpiexec beside this interpreter (the `mpich` wheel installs it there), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if not found:
        raise FailedPrecondition("device 'mpi:N' needs mpiexec: install the 'mpich' wheel (pip install mpich) "
                                 "or put an MPI's mpiexec on PATH")
    return found


def parse_spec(arg: str | None) -> tuple[int | None, str | None]:
    """`None` -> (None, None); "N" -> (N, None); "N@hostfile" -> (N, hostfile).

    Without "@hostfile", LEPTON_MPI_HOSTFILE names one (mpiexec's `-f`: one host per line, `host:slots`).
    """
    if arg is None:
        return None, None
    count, _, hostfile = arg.partition("@")
    hostfile = hostfile or os.environ.get("LEPTON_MPI_HOSTFILE", "")
    if not count.isdigit() or int(count) < 1:
        raise InvalidInput(f"device spec 'mpi:{arg}': expected mpi:N or mpi:N@HOSTFILE with N a positive rank count")
    if hostfile and not os.path.isfile(hostfile):
        raise InvalidInput(f"device spec 'mpi:{arg}': hostfile {hostfile!r} does not exist")
    return int(count), hostfile or None


def mpiexec_command(ranks: int, hostfile: str | None) -> list[str]:
    """mpiexec running this same command line (interpreter options included) with `ranks` ranks."""
    command = [find_mpiexec(), "-n", str(ranks)]
    # Hydra's default is to SIGKILL every rank when one exits early, the agent included; with
    # auto-cleanup off it sends SIGUSR1 to the others instead, so rank 0 can fail the device cleanly.
    # (A rank killed by a signal still takes down every rank on its host: see pool.py.)
    if os.path.exists(os.path.join(os.path.dirname(command[0]), "hydra_pmi_proxy")):  # MPICH's hydra
        command.insert(1, "-disable-auto-cleanup")
    if hostfile:
        command[1:1] = ["-f", hostfile]
    return command + [sys.executable, *sys.orig_argv[1:]]


def relaunch(ranks: int, hostfile: str | None) -> None:
    """Replace this process by mpiexec running the same command with `ranks` ranks (never returns).

    exec, not fork: no thread, gRPC server or MPI exists yet, and the agent's PID becomes mpiexec's,
    so a signal sent to it reaches mpiexec, which forwards SIGTERM/SIGINT to every rank.
    """
    if os.environ.get(_LAUNCHED):
        raise FailedPrecondition("re-executed under mpiexec but no MPI environment was found; "
                                 "is the mpiexec found a different MPI than mpi4py's?")
    command = mpiexec_command(ranks, hostfile)
    os.environ[_LAUNCHED] = str(ranks)
    if not hostfile:  # the ranks share this machine's cores: one BLAS pool each would oversubscribe them
        threads = str(max(1, int(os.environ.get("OPENBLAS_NUM_THREADS", os.cpu_count() or 1)) // ranks))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = threads
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
