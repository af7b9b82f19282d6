"""Send partitions to agents: credit-based flow control, retries, and failure handling.

One dispatcher thread assigns runs of ready partitions to agents that offer the job's op, never
putting more partitions in flight on an agent than the credits it granted; a pool of threads
streams each run and feeds the partials that come back to the job's aggregation tree. A failed
run's partitions that no partial covers go back to pending (on another agent when there is one)
until `max_attempts`; errors that retrying cannot fix fail the job at once.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from lepton.errors import LeptonError
from lepton.coordinator import metrics
from lepton.coordinator.jobs import Attempt, Job, Run
from lepton.coordinator.membership import Agent, Membership
from lepton.logs import event

log = logging.getLogger("lepton.coordinator")

# Worth another try, elsewhere: the agent went away, ran out of memory, or broke.
RETRYABLE = {"UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "ABORTED", "DATA_LOSS"}


class Scheduler:
    def __init__(self, membership: Membership, max_attempts: int = 3, agent_wait: float = 30.0,
                 steal_backlog: int = 16):
        self.membership = membership
        self.max_attempts, self.agent_wait = max_attempts, agent_wait
        # Resident partitions move to an idle agent only when their own agent has more than this
        # many of the job's partitions waiting: moving data costs more than a short wait.
        self.steal_backlog = steal_backlog
        # A run is a straggler once it has taken this many times the job's median per partition
        # (and at least straggler_min seconds), with nothing left to schedule.
        self.straggler_factor, self.straggler_min = 3.0, 0.5
        self.cond = threading.Condition()
        self.jobs: list[Job] = []  # active, in submission order
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="run")
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def add(self, job: Job) -> None:
        with self.cond:
            self.jobs.append(job)
            self.cond.notify_all()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def end(self, job: Job, code: str, message: str) -> None:
        """Fail (or, with code CANCELLED, cancel) a job and stop its runs on the agents."""
        if job.cancel(message) if code == "CANCELLED" else job.fail(code, message):
            event(log, "job.stopped", job=job.id, code=code, message=message)
        with self.cond:
            for run in job.runs:
                if run.call is not None:
                    run.call.cancel()
            self.cond.notify_all()

    def on_agent_removed(self, agent: Agent) -> None:
        """Stop the runs on a lost agent; their partitions return to pending when the calls end."""
        with self.cond:
            for job in self.jobs:
                for run in job.runs:
                    if run.agent_id == agent.id and run.call is not None:
                        run.call.cancel()
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- dispatch ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                if self._stopped:
                    return
                launches, expired = self._assign()
                if not launches and not expired:
                    self.cond.wait(0.25)
            for job, code, message in expired:
                self.end(job, code, message)
            for agent, job, run in launches:
                self._pool.submit(self._execute, agent, job, run)

    def _assign(self):
        self.jobs = [j for j in self.jobs if not j.state.final]
        agents = self.membership.agents()
        live = {a.id for a in agents}
        launches, expired, now = [], [], time.time()
        progress = True
        while progress:  # one run per (job, agent) per pass, so concurrent jobs interleave
            progress = False
            for job in self.jobs:
                if any(j is job for j, _, _ in expired):
                    continue
                if job.round_ready:  # an iterative job's next round: every partition again
                    job.round_ready = False
                    job.pending, job.attempts, job.failed_on = list(range(job.plan.count)), {}, {}
                    job.queued_at = dict.fromkeys(job.pending, now)
                capable = [a for a in agents if job.op.name in a.ops]
                problem = self._expired(job, capable, now)
                if problem:
                    expired.append((job, *problem))
                    continue
                ready = job.ready_partitions()
                for p in range(job.ready_seen, ready):
                    job.queued_at[p] = now
                job.ready_seen = max(job.ready_seen, ready)
                backlog = collections.Counter(job.home(p) for p in job.pending) if job.datasets else {}
                capable_ids = {a.id for a in capable}
                for agent in sorted(capable, key=lambda a: a.in_flight / a.credits):
                    run = self._take_run(job, agent, ready, capable_ids, live, backlog) or \
                        self._speculate(job, agent)
                    if run:
                        launches.append((agent, job, run))
                        progress = True
        return launches, expired

    def _expired(self, job: Job, capable: list[Agent], now: float):
        if job.deadline is not None and now > job.deadline:
            return "DEADLINE_EXCEEDED", "the job's deadline passed before it finished"
        if capable or not job.pending:
            job.waiting_since = None
            return None
        job.waiting_since = job.waiting_since or now
        if now - job.waiting_since > self.agent_wait:
            return "UNAVAILABLE", (f"no agent offering op {job.op.name!r} for {self.agent_wait:.0f}s; "
                                   f"start one with `lepton agent --coordinator ADDRESS --device ...`")
        return None

    def _take_run(self, job: Job, agent: Agent, ready: int, capable: set[str], live: set[str],
                  backlog: dict) -> Run | None:
        free = agent.credits - agent.in_flight
        # Half the credits per run, so the next run's transfer overlaps this one's compute.
        limit = min(free, max(1, agent.credits // 2), job.tree_arity)
        if limit <= 0:
            return None

        def eligible(p: int, tier: int) -> bool:
            failed_on = job.failed_on.get(p, set())
            # Retry elsewhere while some capable agent has not failed it yet.
            if p >= ready or (agent.id in failed_on and not failed_on >= capable):
                return False
            home = job.home(p)
            if tier == 0:  # resident here, or resident nowhere
                return home is None or home == agent.id
            if tier == 1:  # its agent is gone
                return home not in live
            return backlog.get(home, 0) > self.steal_backlog  # its agent is far behind

        for tier in range(3):
            first = next((p for p in job.pending if eligible(p, tier)), None)
            if first is not None:
                break
        else:
            return None
        hi = first + 1
        while hi - first < limit and hi in job.pending and hi % job.tree_arity and eligible(hi, tier):
            hi += 1
        if tier:
            for p in range(first, hi):
                backlog[job.home(p)] -= 1
        now, splits = time.time(), job.plan.row_splits
        run = Run(first, hi, agent.id, job.round)
        for p in range(first, hi):
            job.pending.remove(p)
            run.attempts[p] = Attempt(p, job.attempts.get(p, 0) + 1, agent.id,
                                      job.queued_at.get(p, job.record.submitted_at), now,
                                      int(splits[p + 1] - splits[p]))
            job.record.trace.append(run.attempts[p])
        job.runs.append(run)
        job.mark_running()
        agent.in_flight += len(run)
        return run

    def _speculate(self, job: Job, agent: Agent) -> Run | None:
        """Near the end of a job, run a copy of a straggling run on an idle agent; whichever finishes
        first counts (partials are de-duplicated by range) and the other is cancelled."""
        if job.pending or job.op.iterative and job.round_ready:
            return None
        median = sorted(job.run_seconds)[len(job.run_seconds) // 2] if job.run_seconds else None
        if median is None:
            return None
        now = time.monotonic()
        slow = [r for r in job.runs if not r.duplicated and r.agent_id != agent.id and r.round == job.round
                and now - r.started > max(self.straggler_factor * median * len(r), self.straggler_min)
                and agent.credits - agent.in_flight >= len(r)]
        if not slow:
            return None
        original = min(slow, key=lambda r: r.started)
        original.duplicated = True
        copy = Run(original.lo, original.hi, agent.id, job.round, duplicated=True)
        now_epoch = time.time()
        for p in range(copy.lo, copy.hi):
            copy.attempts[p] = Attempt(p, job.attempts.get(p, 0) + 1, agent.id, now_epoch, now_epoch,
                                       original.attempts[p].rows, outcome="")
            job.record.trace.append(copy.attempts[p])
        job.runs.append(copy)
        agent.in_flight += len(copy)
        event(log, "run.speculative", job=job.id, partitions=f"{copy.lo}-{copy.hi}", agent=agent.id,
              straggler=original.agent_id, seconds=f"{now - original.started:.2f}", median=f"{median:.3f}")
        return copy

    # -- execution ---------------------------------------------------------------------------
    def _execute(self, agent: Agent, job: Job, run: Run) -> None:
        def on_call(call):
            run.call = call
            if job.state.final:
                call.cancel()

        timeout = None if job.deadline is None else max(0.1, job.deadline - time.time())
        event(log, "run.sent", job=job.id, partitions=f"{run.lo}-{run.hi}", agent=agent.id)
        error = None
        try:
            for lo, hi, partial, timings in agent.link.run_task(job, run, agent.cached, timeout, on_call):
                now = time.time()
                for p, device, started, finished in timings:
                    run.attempts[p].device, run.attempts[p].started_at, run.attempts[p].finished_at = \
                        device, started, finished
                for p in range(lo, hi):
                    run.attempts[p].received_at, run.attempts[p].outcome = now, "done"
                    if job.datasets:
                        job.resident_on(p, agent.id)
                job.add_partial(lo, hi, partial, run.round)
        except grpc.RpcError as exc:
            error = (exc.code().name, exc.details() or "")
        except LeptonError as exc:
            error = (exc.code.name, exc.details)
        except Exception as exc:  # noqa: BLE001 - a bad reply must not kill the dispatcher
            error = ("INTERNAL", repr(exc))
        self._finished(agent, job, run, error)

    def _finished(self, agent: Agent, job: Job, run: Run, error) -> None:
        fatal = None
        with self.cond:
            job.runs.remove(run)
            agent.in_flight -= len(run)
            missing = [p for p in range(run.lo, run.hi) if not job.covered(p, run.round)]
            agent.partitions_done += len(run) - len(missing)
            if error is None and len(run):
                job.run_seconds.append((time.monotonic() - run.started) / len(run))
            twins = [o for o in job.runs if (o.lo, o.hi, o.round) == (run.lo, run.hi, run.round)]
            if job.state.final or not missing:  # won or lost a race, or the job is over: stop its twin
                for other in twins:
                    if other.call is not None:
                        other.call.cancel()
            elif twins:  # failed, but a speculative twin still computes these partitions
                missing = []
            for attempt in run.attempts.values():
                if not attempt.outcome and job.covered(attempt.partition, run.round):
                    attempt.outcome = "superseded"  # the other copy of the run got there first
            metrics.PARTITIONS.labels("done").inc(len(run) - len(missing))
            if missing and not job.state.final and error and error[0] == "NOT_FOUND":
                # A cache miss, not a failure: the link forgot those keys; the bytes go next time.
                job.pending = sorted(job.pending + missing)
                for p in missing:
                    run.attempts[p].outcome = "NOT_FOUND"
            elif missing and not job.state.final:
                code, message = error or ("INTERNAL", "the agent ended the task without all its partials")
                event(log, "run.failed", level=logging.WARNING, job=job.id, partitions=f"{run.lo}-{run.hi}",
                      agent=agent.id, code=code, message=message)
                now = time.time()
                for p in missing:
                    job.attempts[p] = job.attempts.get(p, 0) + 1
                    job.failed_on.setdefault(p, set()).add(agent.id)
                    run.attempts[p].outcome = code
                    job.queued_at[p] = now
                if code not in RETRYABLE:
                    fatal = (code, f"partition {missing[0]} on {agent.id}: {message}")
                elif max(job.attempts[p] for p in missing) >= self.max_attempts:
                    fatal = (code, f"partition {missing[0]} failed {self.max_attempts} times; last error: {message}")
                else:
                    job.record.retries += 1
                    job.pending = sorted(job.pending + missing)
                metrics.PARTITIONS.labels("failed" if fatal else "retried").inc(len(missing))
            self.cond.notify_all()
        if fatal:
            self.end(job, *fatal)
        if error and error[0] == "UNAVAILABLE" and missing:
            # Unreachable: drop it now; if it is alive, its next heartbeat makes it join again.
            self.membership.remove(agent.id, f"unreachable: {error[1]}")
