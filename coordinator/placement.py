"""Where a job's partitions run: how many partitions an agent's next run may hold, and when a
resident partition is worth moving; and how many of a new dataset's partitions each agent holds.
The partitioning never depends on this (the planner cuts by the input alone), so a placement
changes who runs which partition, never a result's bits.

Two policies (`lepton coordinator --placement`):

    speed    (default) each agent's measured throughput for the job's op (`Speeds`) sizes its runs
             in proportion to its speed: an agent's share of the work left is what it can do by the
             time all of them, working at their measured speeds, would finish together (a fluid
             HEFT), in runs of an eighth of it with at most two in flight, so that what an agent
             holds is soon done and the rest follows the estimates as they change.
             The last partitions go by earliest finish time: an agent takes one more only if no
             other would finish it sooner. An agent not yet measured for the op gets one probe
             partition first (when none is measured yet, the job runs as `credits` would). A resident partition moves to another agent only if it finishes
             there sooner, the move charged at the measured link speed. A new dataset's blocks
             are sized by the agents' relative speeds, when they clearly differ (`blocks`).
    credits  guided self-scheduling, blind to speed: a share of what is ready that leaves every
             capable agent two runs' worth; resident partitions move once their agent is more than
             `steal_backlog` behind; a new dataset goes in even blocks. The policy before
             speeds, kept for comparison.

Both are called by the scheduler under its lock, holding the job's lock; run sizes are further
capped by the agent's free credits (Scheduler.run_size), except runs of partitions resident on the
agent, which ship nothing, once the placement says its share sizes them (`sizes_resident_runs`).
"""
from __future__ import annotations

import math
import threading

from lepton.coordinator.jobs import Job, Run
from lepton.coordinator.membership import Agent
from lepton.coordinator.partitions import PartitionState

POLICIES = ("speed", "credits")

# Weight of the newest partition in a decayed estimate: a device that slows down is believed within
# a few partitions (4x slower reads as 2.5x after one, 3.4x after three).
DECAY = 0.5
# Partitions smaller than this measure per-call overhead, not the device (as backends/device.py).
MIN_MEASURED_BYTES = 1 << 16
# Partitions timed before an estimate may justify moving resident data (the first run of an op on a
# device is often slow: allocation, first-touch, lazy imports).
CONFIDENT_AFTER = 3
# Resident partitions move only from an agent with more than this many of the job's waiting: an
# imbalance of a few partitions is within the estimates' noise on a loaded machine, and a balanced
# dataset's jobs should ship no bytes.
MIN_STEAL_BACKLOG = 4
# A resident partition moves only to an agent measured at least this much faster than its home:
# without it an idle agent took partitions from an equally fast one whose estimate had dipped for a
# moment (one 1.6 MB partition of a k-means dataset now and then: tests/test_catalog.py), and a move
# ships the bytes for good.
MOVE_SPEED_GAP = 1.5
# A new dataset's blocks follow the agents' relative speeds only when the fastest is this much faster
# than the slowest: between equal agents on a loaded machine the estimates wander by 1.5x at times,
# and uneven blocks on equal agents make every job wait for the larger one.
PLACE_SPEED_GAP = 2.0
# A speculative copy of a run goes to another agent before the run overruns only if the copy, after
# what that agent holds of the job, would be done in a third of the time the run's owner needs for
# it and its runs ahead: a margin beyond the 1.5x that equal agents' estimates wander by.
COPY_GAIN = 3.0
# Runs of a job an agent may hold at once under speed placement: one computing, one on its way.
PIPELINE = 2
# A run's fixed cost (dispatch, the task's call, its first partial back) was 3-15 ms in
# bench_hetero's traces on the loaded 2-core machine, and the coordinator's own stalls (folding a
# matmul's row blocks holds its GIL for 0.1-0.8 s) left agents waiting for their next run: a run
# holds this much of the agent's compute at least (0.05 s: devices idle 0.6 s per job on the
# NumPy + PoCL + MPI matmul; 0.2 s: about as much idle as under credits, one noisy run).
MIN_RUN_SECONDS = 0.2


class Speeds:
    """Decayed throughput estimates, in input bytes per second: per (agent, device, op), from the
    kernel times of the partitions the agents send back (their own clock, so no skew), seeded by
    what each device reports in its heartbeats (`DeviceInfo.throughput`); and per agent, the
    coordinator's send rate towards it (AgentLink.send_rate)."""

    def __init__(self):
        self._rates: dict[tuple[str, str, str], float] = {}
        self._seen: dict[tuple[str, str, str], int] = {}  # partitions timed, per key
        self._lock = threading.Lock()

    def observe(self, agent_id: str, op: str, device: str, nbytes: float, seconds: float) -> None:
        if nbytes < MIN_MEASURED_BYTES or seconds <= 0:
            return
        rate, key = nbytes / seconds, (agent_id, device, op)
        with self._lock:
            old = self._rates.get(key)
            self._rates[key] = rate if old is None else (1 - DECAY) * old + DECAY * rate
            self._seen[key] = self._seen.get(key, 0) + 1

    def observe_job(self, agent: Agent, job: Job, timings: list[tuple]) -> None:
        """Timings (partition, device, started, finished) of a node of the job's run on `agent`."""
        for p, device, started, finished in timings:
            self.observe(agent.id, job.op.name, device, partition_bytes(job, p), finished - started)

    def device_rate(self, agent: Agent, device, op: str) -> float | None:
        own = self._rates.get((agent.id, device.name, op))
        return own if own is not None else device.throughput.get(op)

    def rate(self, agent: Agent, op: str) -> float | None:
        """The agent's compute rate for `op`: its capable devices together (an unmeasured one counted
        as the mean of its measured siblings); None if none of them was ever measured."""
        devices = [d for d in agent.devices if op in d.ops]
        known = [r for d in devices if (r := self.device_rate(agent, d, op))]
        if not known:
            return None
        return sum(known) * len(devices) / len(known)

    def relative(self, agents: list[Agent], op: str = "") -> dict[str, float] | None:
        """Each agent's speed against the fastest (1.0): for `op`, if every agent offers it and was
        measured for it; else, for work not known, the geometric mean over the ops every agent
        offers and was measured for of its rate over the fastest agent's; None if none was."""
        common = set.intersection(*(a.ops for a in agents)) if agents else set()
        if op in common and all(self.rate(a, op) for a in agents):
            common = {op}
        logs: dict[str, float] = {a.id: 0.0 for a in agents}
        used = 0
        for each in sorted(common):
            rates = {a.id: self.rate(a, each) for a in agents}
            if not all(rates.values()):
                continue
            fastest = max(rates.values())
            for agent_id, rate in rates.items():
                logs[agent_id] += math.log(rate / fastest)
            used += 1
        return {agent_id: math.exp(total / used) for agent_id, total in logs.items()} if used else None

    def confident(self, agent: Agent, op: str) -> bool:
        """Every device of the agent offering `op` has timed CONFIDENT_AFTER partitions of it here."""
        return all(self._seen.get((agent.id, d.name, op), 0) >= CONFIDENT_AFTER for d in agent.devices if op in d.ops)

    def forget(self, agent_id: str) -> None:
        with self._lock:
            self._rates = {k: v for k, v in self._rates.items() if k[0] != agent_id}
            self._seen = {k: v for k, v in self._seen.items() if k[0] != agent_id}


def partition_bytes(job: Job, p: int) -> float:
    """Bytes of the split inputs in partition p: rows times the job's bytes per row."""
    splits = job.plan.row_splits
    rows = int(splits[-1]) or 1
    return job.partition_bytes * job.plan.count * int(splits[p + 1] - splits[p]) / rows


def in_flight(job: Job) -> dict[str, int]:
    """The job's partitions sent to each agent and not yet back (speculative copies included)."""
    state, out = job.parts.state, {}
    for run in job.runs:
        out[run.agent_id] = out.get(run.agent_id, 0) + sum(1 for p in range(run.lo, run.hi)
                                                           if state[p] is PartitionState.RUNNING)
    return out


def runs_in_flight(job: Job, agent_id: str) -> int:
    """The job's runs on the agent with a partition not yet back."""
    state = job.parts.state
    return sum(1 for run in job.runs if run.agent_id == agent_id
               and any(state[p] is PartitionState.RUNNING for p in range(run.lo, run.hi)))


class CreditsPlacement:
    """Guided self-scheduling (the module docstring)."""

    name = "credits"

    def __init__(self, steal_backlog: int = 16):
        self.steal_backlog = steal_backlog

    def order(self, job: Job, capable: list[Agent]) -> list[Agent]:
        return sorted(capable, key=lambda a: a.in_flight / a.credits)

    def share(self, job: Job, agent: Agent, capable: list[Agent], floor: int, local: bool = False) -> int:
        return max(-(-job.parts.ready_count // (2 * len(capable))), floor)

    def steal(self, job: Job, agent: Agent, home: Agent) -> int:
        return job.parts.count if job.parts.backlog(home.id) > self.steal_backlog else 0

    def sizes_resident_runs(self, job: Job, agent: Agent, capable: list[Agent]) -> bool:
        return False  # blind to speed: resident runs stay small, so that a slow agent's can move

    def blocks(self, agents: list[Agent], partitions: int, op: str = "") -> list[int]:
        return even_blocks(len(agents), partitions)

    def copy_pays(self, job: Job, run: Run, agent: Agent, owner: Agent) -> bool:
        return False  # blind to speed: copies only of runs that overran the job's median

    def observe(self, agent: Agent, job: Job, timings: list[tuple]) -> None:
        pass

    def forget(self, agent: Agent) -> None:
        pass


def even_blocks(agents: int, partitions: int) -> list[int]:
    """Partitions per agent in contiguous blocks of (nearly) equal size, larger ones first."""
    return [-(-(i + 1) * partitions // agents) + (i * partitions // -agents) for i in range(agents)]


def weighted_blocks(weights: list[float], partitions: int) -> list[int]:
    """Partitions per agent in proportion to `weights` (largest remainders), summing to `partitions`."""
    total = sum(weights)
    exact = [w * partitions / total for w in weights]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[:partitions - sum(counts)]:
        counts[i] += 1
    return counts


class SpeedPlacement:
    """Placement by measured speed (the module docstring)."""

    name = "speed"

    def __init__(self, speeds: Speeds | None = None):
        self.speeds = speeds or Speeds()
        self._fallback = CreditsPlacement()

    def blocks(self, agents: list[Agent], partitions: int, op: str = "") -> list[int]:
        """Partitions of a new dataset per agent (in this order), in contiguous blocks: in proportion
        to the agents' relative speeds (`Speeds.relative`, for `op` where it was measured) when the
        fastest is PLACE_SPEED_GAP times the slowest, else even. Equal blocks left a fast agent idle
        once its own were done, for work too cheap to be worth moving (a sum over a mixed cluster);
        between agents of about equal speed the estimates' noise would only unbalance them."""
        speeds = self.speeds.relative(agents, op)
        if not speeds or max(speeds.values()) < PLACE_SPEED_GAP * min(speeds.values()):
            return even_blocks(len(agents), partitions)
        return weighted_blocks([speeds[a.id] for a in agents], partitions)

    def copy_pays(self, job: Job, run: Run, agent: Agent, owner: Agent) -> bool:
        """Whether a copy of `owner`'s run on `agent`, after what `agent` holds of the job, would be
        done in under 1/COPY_GAIN of the time `owner` needs for what the run has left and for its
        runs ahead of it: the owner slowed down (its progress tells, partition by partition) or is
        much slower (MOVE_SPEED_GAP at least), and the copy pays for the work it repeats. Not for a job on a dataset: a copy
        ships resident partitions and moves their home (the straggler rule alone decides there)."""
        if job.datasets:
            return False
        here, there = self.rate(job, agent), self.speeds.rate(owner, job.op.name)
        if not (here and there and self.speeds.confident(agent, job.op.name)) or here < MOVE_SPEED_GAP * there:
            return False  # about equal agents never copy early: a CI run's equal pair copied on noise
        state = job.parts.state

        def left(agent_id: str, before: Run | None = None) -> int:
            return sum(1 for r in job.runs if r.agent_id == agent_id and r.round == run.round
                       and (before is None or r.started <= before.started) for p in range(r.lo, r.hi)
                       if not r.attempts[p].finished_at and state[p] is not PartitionState.DONE)

        return COPY_GAIN * (left(agent.id) + len(run)) / here < left(owner.id, run) / there

    def observe(self, agent: Agent, job: Job, timings: list[tuple]) -> None:
        self.speeds.observe_job(agent, job, timings)

    def forget(self, agent: Agent) -> None:
        self.speeds.forget(agent.id)

    def rate(self, job: Job, agent: Agent) -> float | None:
        """What the agent does of this job per second: its compute rate, and for streamed input no
        more than the coordinator sends it (a run's transfer overlaps the previous run's compute)."""
        rate = self.speeds.rate(agent, job.op.name)
        link = getattr(agent.link, "send_rate", None)
        if rate is not None and link and not job.datasets:
            rate = min(rate, link)
        return rate

    def _rates(self, job: Job, capable: list[Agent]) -> dict[str, float | None]:
        return {a.id: self.rate(job, a) for a in capable}

    def order(self, job: Job, capable: list[Agent]) -> list[Agent]:
        """Fastest first (unmeasured ones last), so the fast agents take their shares first."""
        rates = self._rates(job, capable)
        return sorted(capable, key=lambda a: (-(rates[a.id] or 0.0), a.in_flight / a.credits))

    def sizes_resident_runs(self, job: Job, agent: Agent, capable: list[Agent]) -> bool:
        """Whether the share alone sizes a run of partitions resident on the agent (the scheduler
        caps other runs by bytes). Yes once every capable agent is measured for the op, or when it
        is the only one: the share then holds what the agent will finish in time. Not while the
        agents are still being measured: a large run on an agent that proves slow could not move
        (a throttled agent's first runs held half its block and were left to speculation)."""
        rates = self._rates(job, capable)
        return len(capable) == 1 or all(rates.values())

    def share(self, job: Job, agent: Agent, capable: list[Agent], floor: int, local: bool = False) -> int:
        """Partitions for the agent's next run (0: none now); `local`: some of the job's ready
        partitions are resident on it."""
        rates = self._rates(job, capable)
        measured = {a.id: r for a in capable if (r := rates[a.id])}
        if not measured or len(capable) == 1:
            # Nobody to compare with: a fresh cluster's first job of the op runs as self-scheduling
            # would, and measures every agent on the way.
            return self._fallback.share(job, agent, capable, floor)
        holding = in_flight(job)
        if rates[agent.id] is None:
            if job.partition_bytes >= MIN_MEASURED_BYTES:
                return 0 if holding.get(agent.id) else 1  # the probe, then wait for its timing
            rates[agent.id] = measured[agent.id] = sum(measured.values()) / len(measured)  # unmeasurable
        size = max(1.0, job.partition_bytes)
        flying = {a: holding.get(a, 0) * size for a in measured}
        # The agents, all at their measured speed, finish the work left together at `horizon`; this
        # agent's share is what it does by then, less what it still holds. The work left counts the
        # partitions whose rows are still streaming too: while the pool is thin, a slow agent that
        # grabbed whatever was ready would hold the job's end.
        horizon = (job.parts.count - job.parts.done) * size / sum(measured.values())
        rate = measured[agent.id]
        share, held = rate * horizon / size, flying[agent.id] / size
        if share - held >= 1:
            # Runs of an eighth of the share, PIPELINE of them in flight: the next one is on the agent
            # before the last one ends (with one in flight, each run's dispatch, transfer and start
            # was an idle gap on the device, 10-100 ms on the loaded 2-core machine: bench_hetero's
            # traces), and the ready pool keeps the rest for whoever the estimates favour next. A
            # run holds at least MIN_RUN_SECONDS of the agent's compute, so that its fixed cost and
            # the coordinator's stalls do not dominate.
            if runs_in_flight(job, agent.id) >= PIPELINE:
                return 0
            amortized = math.ceil(rate * MIN_RUN_SECONDS / size)
            return min(math.floor(share - held), max(math.ceil(share / 8), floor, amortized))
        # The tail: partitions here only as long as no other agent would finish one sooner, taken
        # at once (runs of one each cost a run's fixed cost). A resident partition's own agent may
        # always take at least one: whether moving it elsewhere pays is `steal`'s call, made by the
        # other agents, and a partition nobody takes would hang the job.
        others = [(flying[a] + size) / r for a, r in measured.items() if a != agent.id]
        if not others:
            return 1
        take = max(0, math.floor((min(others) * rate - flying[agent.id]) / size))
        return max(1, take) if local else take

    def steal(self, job: Job, agent: Agent, home: Agent) -> int:
        """How many of `home`'s resident ready partitions this agent should take: as many as it
        finishes, moving them at its link speed, in half the time `home` would take to get to them.
        Half: a move costs bytes for good (and the data lives here from then on), so it must pay
        clearly, beyond the estimates' noise; and only towards an agent MOVE_SPEED_GAP times faster
        than the home, so that agents of about equal speed never trade partitions."""
        rate, home_rate = self.rate(job, agent), self.speeds.rate(home, job.op.name)
        if job.parts.backlog(home.id) <= MIN_STEAL_BACKLOG:
            return 0
        if not (rate and home_rate and self.speeds.confident(agent, job.op.name)
                and self.speeds.confident(home, job.op.name)):
            return self._fallback.steal(job, agent, home)
        if rate < MOVE_SPEED_GAP * home_rate:
            return 0  # agents of about equal speed never trade partitions, however idle one of them is
        link = getattr(agent.link, "send_rate", None) or rate  # unmeasured: as fast as it computes
        size, holding = max(1.0, job.partition_bytes), in_flight(job)
        waiting_there = (job.parts.backlog(home.id) + holding.get(home.id, 0)) * size / home_rate
        busy_here = holding.get(agent.id, 0) * size / rate
        # n moved: done here by busy_here + n * (size/link + size/rate), and no longer waited for there.
        here, there = size / link + size / rate, size / home_rate
        return max(0, math.floor((waiting_there - 2 * busy_here) / (2 * here + there)))


def make(name: str, steal_backlog: int = 16):
    if name == "credits":
        return CreditsPlacement(steal_backlog)
    if name == "speed":
        return SpeedPlacement()
    raise ValueError(f"placement must be one of {', '.join(POLICIES)}; got {name!r}")
