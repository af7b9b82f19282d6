"""The coordinator as plain Python: validation at the edge, planning, job table, cluster view.

The gRPC servicer (coordinator/server.py) translates messages and calls this class.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass

from backends.errors import FailedPrecondition, InvalidInput, Unavailable
from backends.ops import get_op
from coordinator import planner
from coordinator.agent_link import AgentLink
from coordinator.jobs import Job, JobRecord
from coordinator.membership import Membership
from coordinator.scheduler import Scheduler
from lepton.logs import event
from lepton.wire import TensorAssembler

log = logging.getLogger("lepton.coordinator")


@dataclass
class Config:
    tree_arity: int = 8
    target_partition_bytes: int = 8 << 20
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    max_job_bytes: int = 16 << 30
    max_attempts: int = 3
    agent_wait: float = 30.0
    history: int = 1000


class Coordinator:
    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.membership = Membership(self.config.heartbeat_timeout, AgentLink,
                                     on_change=lambda: self.scheduler.notify(),
                                     on_remove=lambda agent: self.scheduler.on_agent_removed(agent))
        self.scheduler = Scheduler(self.membership, self.config.max_attempts, self.config.agent_wait)
        self._jobs: dict[str, Job] = {}
        self._records: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="membership", daemon=True)
        self._reaper.start()

    def submit(self, op_name: str, params: dict, headers: list, scheme: planner.Scheme, count: int,
               target_bytes: int, key_column: int, label: str, deadline: float | None) -> Job:
        op = get_op(op_name)
        names = [h.name for h in headers]
        if len(set(names)) != len(names):
            raise InvalidInput(f"input names must be unique; got {names}")
        if set(names) != set(op.inputs):
            raise InvalidInput(f"op {op.name!r} takes inputs {list(op.inputs)}; got {names}")
        inputs = TensorAssembler(headers, max_bytes=self.config.max_job_bytes)
        metas = dict(zip(names, inputs.metas))
        params = op.validate(metas, params)
        plan = planner.plan(op, metas, scheme, count, target_bytes or self.config.target_partition_bytes,
                            key_column)
        self._check_capacity(op.name)
        job = Job(f"job-{next(self._ids)}", op, params, label, inputs, plan, self.config.tree_arity, deadline)
        with self._lock:
            self._jobs[job.id] = job
            self._records[job.id] = job.record
            while len(self._records) > self.config.history:
                old, _ = self._records.popitem(last=False)
                self._jobs.pop(old, None)
        event(log, "job.accepted", job=job.id, op=op.name, bytes=inputs.bytes_total, partitions=plan.count,
              scheme=plan.scheme.value)
        self.scheduler.add(job)
        return job

    def _check_capacity(self, op_name: str) -> None:
        agents = self.membership.agents()
        if not agents:
            raise Unavailable("no agents have joined this coordinator; start one with "
                              "`lepton agent --coordinator ADDRESS --device numpy`")
        if not any(op_name in a.ops for a in agents):
            offered = sorted({op for a in agents for op in a.ops})
            raise FailedPrecondition(f"no agent's devices offer op {op_name!r}; the cluster offers {offered}")

    def input_ended(self, job: Job) -> None:
        """The client's stream ended: check the input and let every partition run."""
        job.end_input()
        self.scheduler.notify()

    def finished(self, job: Job) -> None:
        """The job's stream is over: drop the data it still holds (the record stays)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        if not job.state.final:
            self.scheduler.end(job, "CANCELLED", "the client went away")
        job.result = None

    def cancel(self, job_id: str) -> JobRecord:
        record = self.record(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            self.scheduler.end(job, "CANCELLED", "cancelled by request")
        return record

    def fail(self, job: Job, code: str, message: str) -> None:
        self.scheduler.end(job, code, message)

    def record(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id)
        if record is None:
            raise InvalidInput(f"no job {job_id!r} (known jobs are kept for the last {self.config.history})")
        return record

    def records(self, limit: int) -> list[JobRecord]:
        with self._lock:
            return list(reversed(self._records.values()))[:limit]

    def _reap(self) -> None:
        while not self._stop.wait(self.config.heartbeat_interval / 2):
            self.membership.expire()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.scheduler.end(job, "UNAVAILABLE", "the coordinator is shutting down")
        self.scheduler.stop()
        for agent in self.membership.agents():
            agent.link.close()

    def wait_agents(self, count: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.membership.agents()) >= count:
                return True
            time.sleep(0.05)
        return False
