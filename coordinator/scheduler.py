"""Send partitions to agents: credit-based flow control, retries, and failure handling.

One dispatcher thread assigns runs of ready partitions to agents that offer the job's op, never
putting more work in flight on an agent than the credits it granted (see `run_size`); how many
partitions a run holds and which agent gets resident ones is the placement's call
(lepton.coordinator.placement: by measured speed, or the older guided self-scheduling); a pool of threads
streams each run and feeds the partials that come back to the job's aggregation tree. A failed
run's partitions that no partial covers go back to pending (on another agent when there is one)
until `max_attempts`; errors that retrying cannot fix fail the job at once.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from lepton.errors import LeptonError
from lepton.coordinator import metrics, placement as placements
from lepton.coordinator.jobs import Job, Outcome, Run
from lepton.coordinator.membership import Agent, Membership
from lepton.coordinator.partitions import PartitionState
from lepton.logs import event

log = logging.getLogger("lepton.coordinator")

# Worth another try, elsewhere: the agent went away, ran out of memory, or broke.
CREDIT_STEPS = 8  # credits are counted in eighths: a small run takes one eighth

RETRYABLE = {"UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "ABORTED", "DATA_LOSS"}


class Scheduler:
    """Owns the list of active jobs and the agents' credits in flight, under `cond`; each job's own
    state is under its lock, always taken after `cond`."""

    def __init__(self, membership: Membership, max_attempts: int = 3, agent_wait: float = 30.0,
                 steal_backlog: int = 16, unit_bytes: int = 8 << 20, placement: str = "speed"):
        self.membership = membership
        self.max_attempts, self.agent_wait = max_attempts, agent_wait
        # Run sizes and moves of resident partitions: by measured speed, or (credits) by guided
        # self-scheduling, which moves resident partitions only from an agent more than
        # steal_backlog behind.
        self.placement = placements.make(placement, steal_backlog)
        # A credit is one partition of the target size in flight: a run costs one credit per this
        # many bytes of its split inputs, in eighths (CREDIT_STEPS), at least one eighth. A whole
        # credit per tiny job would let only 2 × credits of them run at once, and the rest would
        # queue for the dispatcher and a pool thread, which costs them more than the run.
        self.unit_bytes = max(1, unit_bytes)
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
        """Take a job; its partitions go out as its input says they are ready (`notify`)."""
        job.wake = self.notify
        with self.cond:
            self.jobs.append(job)

    def hold(self, job: Job) -> None:
        """The caller will start the job's run itself (`run_here`): the dispatcher, which other jobs'
        runs wake all the time under load, must not take it and hand it to a pool thread."""
        job.held = True

    def release(self, job: Job) -> None:
        """The dispatcher's job again (wakes it)."""
        with self.cond:
            job.held = False
            self.cond.notify_all()

    def done_here(self, job: Job) -> None:
        """The caller finished the held job itself (coordinator/inline.py): off the list now, not at
        the dispatcher's next pass."""
        with self.cond:
            job.held = False
            if job in self.jobs:
                self.jobs.remove(job)

    def run_here(self, job: Job) -> bool:
        """Run the job's next run on the calling thread, if an agent has a credit free: a small job
        then needs no dispatcher and no pool thread. Either way the job is the dispatcher's after
        (later rounds, retries); False if no run could start."""
        with self.cond:
            job.held = False
            agents = self.membership.agents()
            capable = [a for a in agents if job.op.name in a.ops]
            run = None
            if capable:
                with job.lock:
                    agent = self.placement.order(job, capable)[0]
                    job.release_ready()
                    run = self._take_run(job, agent, capable, {a.id for a in capable}, {a.id: a for a in agents})
            if run is None:
                self.cond.notify_all()
                return False
        self._execute(agent, job, run)
        return True

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def end(self, job: Job, code: str, message: str) -> None:
        """Fail (or, with code CANCELLED, cancel) a job and stop its runs on the agents."""
        if job.cancel(message) if code == "CANCELLED" else job.fail(code, message):
            event(log, "job.stopped", job=job.id, code=code, message=message)
        with self.cond:
            with job.lock:
                calls = [run.call for run in job.runs if run.call is not None]
            self.cond.notify_all()
        for call in calls:
            call.cancel()

    def on_agent_removed(self, agent: Agent) -> None:
        """Stop the runs on a lost agent; their partitions return to pending when the calls end."""
        calls = []
        self.placement.forget(agent)
        with self.cond:
            for job in self.jobs:
                with job.lock:
                    calls += [r.call for r in job.runs if r.agent_id == agent.id and r.call is not None]
            self.cond.notify_all()
        for call in calls:
            call.cancel()

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
                    # Every change that can make work (input, a finished run, an agent) notifies;
                    # the timeout only serves deadlines, agent waits and stragglers.
                    self.cond.wait(0.25 if self.jobs else None)
            for job, code, message in expired:
                self.end(job, code, message)
            for agent, job, run in launches:
                self._pool.submit(self._execute, agent, job, run)

    def _assign(self):
        self.jobs = [j for j in self.jobs if not j.state.final]
        agents = self.membership.agents()
        live = {a.id: a for a in agents}
        launches, expired, active, now = [], [], [], time.time()
        for job in self.jobs:
            capable = [a for a in agents if job.op.name in a.ops]
            with job.lock:
                if not job.held:
                    job.release_ready()
                problem = self._expired(job, capable, now)
            if problem:
                expired.append((job, *problem))
            elif capable and not job.held:
                active.append((job, capable, {a.id for a in capable}))
        progress, broken = True, set()
        while progress:  # one run per (job, agent) per pass, so concurrent jobs interleave
            progress = False
            for job, capable, capable_ids in active:
                if job.id in broken:
                    continue
                with job.lock:
                    try:
                        for agent in self.placement.order(job, capable):
                            run = self._take_run(job, agent, capable, capable_ids, live) or self._speculate(job, agent, live)
                            if run:
                                launches.append((agent, job, run))
                                progress = True
                    except Exception as exc:  # noqa: BLE001 - a bug here must fail the job, not stop dispatching
                        log.exception("scheduling job %s failed", job.id)
                        broken.add(job.id)
                        expired.append((job, "INTERNAL", f"scheduling the job failed: {exc!r}"))
        return launches, expired

    def _expired(self, job: Job, capable: list[Agent], now: float):
        if job.deadline is not None and now > job.deadline:
            return "DEADLINE_EXCEEDED", "the job's deadline passed before it finished"
        if capable or not job.parts.ready_count:
            job.waiting_since = None
            return None
        job.waiting_since = job.waiting_since or now
        if now - job.waiting_since > self.agent_wait:
            return "UNAVAILABLE", (f"no agent offering op {job.op.name!r} for {self.agent_wait:.0f}s; "
                                   f"start one with `lepton agent --coordinator ADDRESS --device ...`")
        return None

    def run_size(self, job: Job, agent: Agent, capable: list[Agent], in_place: bool = False) -> int:
        """How many partitions the agent's next run of the job may hold (0: none now); `in_place`:
        the run's rows are on the agent's host already (resident there, or in shared memory it maps).

        The placement's share for this agent (lepton.coordinator.placement), never less than a floor
        unless the placement says none; and for a run that ships its rows, no more than half the
        agent's credits' worth of bytes, so the next run's transfer overlaps this one's compute. A
        run in place ships nothing: once the placement says so, its share alone sizes it (capped by
        bytes, a 1 GiB dataset's describe went in 128 runs of one 8 MiB partition, and half of each
        agent's time was the runs' fixed cost between its kernels: benchmarks/peers/resident.py).
        """
        free = agent.credits - agent.in_flight
        if free < min(1.0, self.credits_of(job, 1)):  # no room for one partition (or a whole credit)
            return 0
        per_partition = max(1.0, job.partition_bytes)
        # The floor: an eighth of a credit's bytes, but no more than an even split of the job over
        # the agents: a run costs the coordinator about a millisecond of its own, which thousands of
        # tiny partitions spread over many agents would pay thousands of times (the per-partition
        # cost is microseconds).
        floor = min(-(-(self.unit_bytes // 8) // int(per_partition)), -(-job.plan.count // len(capable)))
        share = self.placement.share(job, agent, capable, floor, local=job.parts.backlog(agent.id) > 0)
        if share <= 0 or (in_place and self.placement.sizes_resident_runs(job, agent, capable)):
            return max(0, share)
        by_bytes = int(min(free, max(1, agent.credits // 2)) * self.unit_bytes // per_partition)
        return max(1, min(share, by_bytes))

    def credits_of(self, job: Job, partitions: int, in_place: bool = False) -> float:
        # Eighths only for a job of one partition (the small jobs they are for). A job of many
        # partitions takes whole credits: with eighths a slow agent took 8x its share in flight at
        # once, so no backlog was left to move off it (tests/test_datasets.py, 16 behind), and an
        # early job lost running estimates (tests/test_early.py).
        steps = CREDIT_STEPS if job.plan.count == 1 and job.early is None else 1
        units = -(-int(partitions * job.partition_bytes * steps) // self.unit_bytes)
        cost = max(1, units) / steps  # eighths add and subtract exactly in floating point
        # A run in place holds no bytes in transit and none buffered: one credit (one run computing)
        # whatever its size, so that another job's run still finds room on the agent beside it.
        return min(cost, 1.0) if in_place else cost

    def _take_run(self, job: Job, agent: Agent, capable: list[Agent], capable_ids: set[str],
                  live: dict[str, Agent]) -> Run | None:
        parts = job.parts
        if not parts.ready_count or job.state.final:
            return None
        if agent.in_flight >= agent.credits:
            return None

        def eligible(p: int) -> bool:
            # Retry elsewhere while some capable agent has not failed it yet.
            failed_on = parts.failed_on.get(p)
            return not failed_on or agent.id not in failed_on or failed_on >= capable_ids

        # Tiers of homes: resident here; then nowhere (streamed); then resident on an agent that is
        # gone; then on a live one, as many as the placement says are worth moving.
        first = next((p for p in parts.ready.get(agent.id, ()) if eligible(p)), None)
        resident, last = first is not None, None
        # Rows the agent maps from the client's shared memory cost it no transfer either.
        in_place = resident or (job.split_in_shared_memory and getattr(agent.link, "same_host", False)
                                and bool(parts.ready.get(None)))
        limit = min(self.run_size(job, agent, capable, in_place), job.max_run)
        if limit <= 0:
            if not parts.failed_on:
                return None
            # A partition that failed elsewhere may have only this agent left to run it, whatever
            # its speed: one partition then, so that no retry waits on an agent it may not use.
            limit = 1
        tiers = ([None], [h for h in parts.ready if h not in live and h is not None]) if first is None else ()
        for tier in tiers:
            first = next((p for h in tier for p in parts.ready.get(h, ()) if eligible(p)), None)
            if first is not None:
                break
        else:
            for h in [h for h in parts.ready if h in live and h != agent.id] if first is None else ():
                moves = self.placement.steal(job, agent, live[h])
                # Moved ones come off the end of the home's ready partitions, which it works through
                # from the front: both then keep contiguous runs (from the front, the two interleaved
                # and every run after the first steal held one partition).
                last = max((p for p in parts.ready.get(h, ()) if eligible(p)), default=None) if moves > 0 else None
                if last is not None:
                    limit = min(limit, moves)
                    break
        if first is None and last is None:
            return None
        if last is not None:
            home, first = parts.queued_home[last], last
            while (last - first + 1 < limit and first > 0 and parts.state[first - 1] is PartitionState.READY
                   and parts.queued_home[first - 1] == home and eligible(first - 1)):
                first -= 1
            hi = last + 1
        else:
            home = parts.queued_home[first]
            hi = first + 1
            while (hi - first < limit and hi < parts.count and parts.state[hi] is PartitionState.READY
                   and parts.queued_home[hi] == home and eligible(hi)):
                hi += 1
        run = Run(first, hi, agent.id, job.round, credits=self.credits_of(job, hi - first, in_place and home in (agent.id, None)))
        job.start_run(run)
        agent.in_flight += run.credits
        return run

    def _speculate(self, job: Job, agent: Agent, live: dict[str, Agent]) -> Run | None:
        """Near the end of a job, run a copy of a straggling run on an idle agent; whichever finishes
        first counts (partials are de-duplicated by range) and the other is cancelled. A run straggles
        once it has taken straggler_factor times the job's median per partition, or as soon as the
        placement says the copy finishes clearly sooner (its agent slowed down: its progress says so)."""
        if job.parts.ready_count or job.state.final:
            return None
        median = sorted(job.run_seconds)[len(job.run_seconds) // 2] if job.run_seconds else None
        now = time.monotonic()

        def straggles(r: Run) -> bool:
            if median is not None and now - r.started > max(self.straggler_factor * median * len(r),
                                                            self.straggler_min):
                return True
            owner = live.get(r.agent_id)
            return owner is not None and self.placement.copy_pays(job, r, agent, owner)

        slow = [r for r in job.runs if not r.duplicated and r.agent_id != agent.id and r.round == job.round
                and agent.credits - agent.in_flight >= r.credits and straggles(r)]
        if not slow:
            return None
        original = min(slow, key=lambda r: r.started)
        original.duplicated = True
        copy = Run(original.lo, original.hi, agent.id, job.round, duplicated=True, credits=original.credits)
        job.start_run(copy)
        agent.in_flight += copy.credits
        event(log, "run.speculative", job=job.id, partitions=f"{copy.lo}-{copy.hi}", agent=agent.id,
              straggler=original.agent_id, seconds=f"{now - original.started:.2f}",
              median="-" if median is None else f"{median:.3f}")
        return copy

    # -- execution ---------------------------------------------------------------------------
    def _execute(self, agent: Agent, job: Job, run: Run) -> None:
        def on_call(call):
            with job.lock:
                run.call = call
                final = job.state.final
            if final:
                call.cancel()

        timeout = None if job.deadline is None else max(0.1, job.deadline - time.time())
        event(log, "run.sent", level=logging.DEBUG, job=job.id, partitions=f"{run.lo}-{run.hi}", agent=agent.id)
        error = None
        try:
            for lo, hi, partial, timings in agent.link.run_task(job, run, timeout, on_call):
                if lo is None:  # progress: partitions done ahead of their node
                    job.progress(run, timings)
                else:
                    job.node_done(run, lo, hi, partial, timings)
                self.placement.observe(agent, job, timings)
                if lo is None and not job.parts.ready_count:  # the end game: an idle agent may copy this run
                    self.notify()
        except grpc.RpcError as exc:
            error = (exc.code().name, exc.details() or "")
        except LeptonError as exc:
            error = (exc.code.name, exc.details)
        except Exception as exc:  # noqa: BLE001 - a bad reply must not kill the dispatcher
            error = ("INTERNAL", repr(exc))
        self._finished(agent, job, run, error)

    def _finished(self, agent: Agent, job: Job, run: Run, error) -> None:
        fatal, calls = None, []
        with self.cond:
            agent.in_flight -= run.credits
            with job.lock:
                job.runs.remove(run)
                run.call = None  # (a failed call's traceback holds the frames that sent it)
                missing = job.unfinished(run)
                agent.partitions_done += len(run) - len(missing)
                if error is None and len(run):
                    job.run_seconds.append((time.monotonic() - run.started) / len(run))
                twins = [o for o in job.runs if (o.lo, o.hi, o.round) == (run.lo, run.hi, run.round)]
                if job.state.final or not missing:  # won or lost a race, or the job is over: stop its twin
                    calls = [o.call for o in twins if o.call is not None]
                elif twins:  # failed, but a speculative twin still computes these partitions
                    missing = []
                for attempt in run.attempts.values():
                    if attempt.outcome is Outcome.RUNNING and attempt.partition not in missing:
                        attempt.outcome = Outcome.SUPERSEDED  # the other copy of the run got there first
                metrics.PARTITIONS.labels("done").inc(len(run) - len(missing))
                if missing and not job.state.final:
                    fatal = self._failed(job, agent, run, missing, error)
            # Wake the dispatcher only if the freed credits have work to take: waking it after each
            # small job (that its caller ran) cost more than the job's run. (Stragglers, deadlines
            # and agent waits are served by its timeout.)
            if job.state.final and job in self.jobs:  # (else the dispatcher drops it, 4 times a second)
                self.jobs.remove(job)
            if missing or any(j.parts.ready_count and not j.held for j in self.jobs):
                self.cond.notify_all()
        for call in calls:
            call.cancel()
        if fatal:
            self.end(job, *fatal)
        if error and error[0] == "UNAVAILABLE" and missing:
            # Unreachable: drop it now; if it is alive, its next heartbeat makes it join again.
            self.membership.remove(agent.id, f"unreachable: {error[1]}")

    def _failed(self, job: Job, agent: Agent, run: Run, missing: list[int], error):
        """Partitions of a run that ended without their partials: queue them again, or say why the
        job fails (the caller holds the scheduler's and the job's locks)."""
        parts = job.parts
        if error and error[0] == "NOT_FOUND":
            # A cache miss, not a failure: the link forgot those keys; the bytes go next time.
            for p in missing:
                parts.move(p, PartitionState.READY)
                run.attempts[p].outcome = Outcome.CACHE_MISS
            return None
        code, message = error or ("INTERNAL", "the agent ended the task without all its partials")
        event(log, "run.failed", level=logging.WARNING, job=job.id, partitions=f"{run.lo}-{run.hi}",
              agent=agent.id, code=code, message=message)
        attempts = max([parts.failed(p, agent.id) for p in missing])
        for p in missing:
            run.attempts[p].outcome, run.attempts[p].code = Outcome.FAILED, code
        fatal = None
        if code not in RETRYABLE:
            fatal = (code, f"partition {missing[0]} on {agent.id}: {message}")
        elif attempts >= self.max_attempts:
            fatal = (code, f"partition {missing[0]} failed {self.max_attempts} times; last error: {message}")
        else:
            job.record.retries += 1
            for p in missing:
                parts.move(p, PartitionState.READY)
        metrics.PARTITIONS.labels("failed" if fatal else "retried").inc(len(missing))
        return fatal
