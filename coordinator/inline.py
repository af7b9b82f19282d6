"""Tiny jobs computed by the coordinator itself, on an in-process NumPy device (issue #20, W6).

A job of one partition and a few KiB costs ~0.05 ms of kernel and ~1.5 ms of Python gRPC and
bookkeeping for the hop to an agent and back (the coordinator's client side, the agent's server
side and its task): on 2 cores that hop alone held small jobs under 1,000/s. When a NumPy agent
would run the job anyway, the coordinator runs the same kernel on the same bytes here instead, with
the same code path as an agent's lone partition (`NumpyDevice.run`, one leaf of the job's tree), so
the result is bitwise the agents'.

Only when all of these hold (else the job goes to an agent as before):
  - inlining is on (`lepton coordinator --inline-kib`, default INLINE_BYTES; 0 turns it off);
  - one partition, at most that many input bytes, no early answers, no resident dataset inputs, no
    result written into the client's shared memory;
  - the op is one of INLINE_OPS: reductions whose NumPy kernels use no BLAS, so no thread count of
    a BLAS library (which differs between agents and this process) can change their bits;
  - every agent that offers the op offers it only on NumPy devices that are not slowed on purpose
    (`--throttle` or a test hook: `contract.slowed_on_purpose`), and at least one does: a cluster
    whose agents would run it on OpenCL or MPI, or slowly, still runs it there.

The job's trace says where it ran: agent `coordinator`, device `numpy:inline`; the counter
`lepton_inline_partitions_total` counts them. A kernel that raises here hands the job to the
agents, which then report the error as they always did.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from lepton.backends.numpy_device import NumpyDevice
from lepton.backends.ops import reductions
from lepton.contract import slowed_on_purpose
from lepton.coordinator import metrics
from lepton.coordinator.jobs import Job, Outcome, Run
from lepton.coordinator.partitions import PartitionState
from lepton.logs import event
from lepton import wire

log = logging.getLogger("lepton.coordinator")

INLINE_BYTES = 64 << 10  # the default threshold: a reduction over 64 KiB takes ~20 µs here
INLINE_OPS = frozenset(op.name for op in reductions.OPS)  # sum, min, max, count, mean, var, describe, histogram
AGENT_ID, DEVICE = "coordinator", "numpy:inline"


class InlineRunner:
    def __init__(self, membership, max_bytes: int = INLINE_BYTES):
        self.membership, self.max_bytes = membership, max_bytes
        self.device = NumpyDevice()
        self.device.name = DEVICE

    def eligible(self, job: Job) -> bool:
        if (self.max_bytes <= 0 or job.plan.count != 1 or job.record.bytes_total > self.max_bytes
                or job.op.name not in INLINE_OPS or job.early is not None or job.datasets
                or job.result_memory is not None or job.round != 0):
            return False
        name, capable = job.op.name, 0
        for agent in self.membership.agents():
            for device in agent.devices:
                if name in device.ops:
                    if device.kind != "numpy" or slowed_on_purpose(device):
                        return False
                    capable += 1
        return capable > 0

    def run(self, job: Job) -> bool:
        """Compute the job's one partition here (the caller read its whole input and holds it off the
        dispatcher). False if it could not: the caller hands the job to the agents."""
        if job.deadline is not None and time.time() > job.deadline:
            return False  # the scheduler fails it with DEADLINE_EXCEEDED, as for any job
        run = Run(0, 1, AGENT_ID, job.round, credits=0.0)
        with job.lock:
            job.release_ready()
            if not job.parts.ready_count or not job.start_run(run):
                return False
        try:
            rows, whole = job.run_inputs(run)
            inputs = {**rows, **whole}
            params = {**job.params, "row_offset": 0} if job.op.needs_row_offset else job.params
            started = time.time()
            partial = self.device.run(job.op, inputs, params)
            finished = time.time()
            # What an agent's partial becomes on the wire: little-endian arrays (lepton.wire).
            partial = {n: wire.little_endian(np.asarray(a)) for n, a in partial.items()}
        except Exception as exc:  # noqa: BLE001 - the agents run it instead, and report what they see
            event(log, "job.inline_failed", level=logging.WARNING, job=job.id, op=job.op.name, error=repr(exc))
            self._retract(job, run)
            return False
        job.node_done(run, 0, 1, partial, [(0, DEVICE, started, finished)])
        with job.lock:
            job.runs.remove(run)
        metrics.PARTITIONS.labels("done").inc()
        metrics.INLINE_PARTITIONS.inc()
        return True

    @staticmethod
    def _retract(job: Job, run: Run) -> None:
        """Undo `start_run` for a partition that goes to the agents after all: READY again, the
        attempt in the trace marked failed."""
        with job.lock:
            job.runs.remove(run)
            attempt = run.attempts.get(0)
            if attempt is not None:
                attempt.outcome, attempt.code = Outcome.FAILED, "INTERNAL"
            if not job.state.final and job.parts.state[0] is PartitionState.RUNNING:
                job.parts.move(0, PartitionState.READY)
