"""MPI backend: one device backed by a pool of MPI ranks (mpi4py and the `mpich` wheel).

Launching:
    mpiexec -n 4 lepton agent --device mpi ...   the agent is rank 0 and serves gRPC; ranks 1..3 work.
                                                 Add -disable-auto-cleanup so a rank that exits makes
                                                 the device fail (Unavailable) instead of hydra
                                                 killing the agent with it.
    lepton agent --device mpi:4 ...              the same in one command: the agent re-execs itself
                                                 under the `mpich` wheel's mpiexec (beside this Python,
                                                 else on PATH), with -disable-auto-cleanup.
    lepton agent --device mpi:4@hosts ...        many machines: `hosts` goes to mpiexec -f (one host
                                                 per line, `host:slots`); LEPTON_MPI_HOSTFILE works
                                                 too. Every host needs the same venv path, and hydra
                                                 reaches remote hosts with ssh. Rank 0 runs on the
                                                 first host and is the agent.

A partition is split across all ranks (rank 0 included) with the op's own `take` (rows; columns of
A with rows of B for matmul.inner; CSR rows with their non-zeros), each rank runs the op's NumPy
reference on its share, and rank 0 combines the partials. Ops with inexact merges (float sums) are
split on their canonical block boundaries and folded in the same block tree as the NumPy device, so
a partition's partial is the same bits on either device; the others are split evenly by rows and
combined in rank order (see pool.py). Importing this module only registers the factory; MPI starts
when a device is opened.

When a rank dies the pool is over: the device raises Unavailable from then on (or, if the rank was
killed by a signal on rank 0's host, hydra kills the agent outright); either way the coordinator
reschedules, and the agent should be restarted (see MpiDevice.on_failure).
"""
from __future__ import annotations

import grpc
import mpi4py  # noqa: F401 - without mpi4py the 'mpi' kind stays unknown (ImportError)

from lepton.backends import discovery
from lepton.backends.device import Device
from lepton.errors import FailedPrecondition, LeptonError
from lepton.backends.mpi.launch import parse_spec, relaunch, under_mpiexec


class KernelError(LeptonError):
    """An op's kernel raised on some rank of the pool; the partition fails, the pool stays usable."""

    code = grpc.StatusCode.INTERNAL


def open_mpi(arg: str | None, first_index: int) -> list[Device]:
    """`mpi`: we run under mpiexec. `mpi:N[@hostfile]`: re-exec under mpiexec -n N unless already there.

    Rank 0 gets a one-device list; the other ranks serve the pool here and exit when it stops.
    """
    ranks, hostfile = parse_spec(arg)
    if not under_mpiexec():
        if ranks is None:
            raise FailedPrecondition("device 'mpi' needs to run under mpiexec (mpiexec -n N lepton agent "
                                     "--device mpi); or use 'mpi:N' to launch N ranks")
        relaunch(ranks, hostfile)
    from lepton.backends.mpi.pool import open_pool  # initializes MPI

    return open_pool(ranks, first_index)


discovery.FACTORIES["mpi"] = open_mpi
