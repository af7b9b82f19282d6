"""Which agents are in the cluster: join, heartbeat, leave, and expiry of the silent ones."""
from __future__ import annotations

import itertools
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from lepton.contract import DeviceInfo
from lepton.errors import InvalidInput, ResourceExhausted
from lepton.logs import event

log = logging.getLogger("lepton.coordinator")


MAX_NAME = 128
# host:port with a DNS name, an IPv4 address or a bracketed IPv6 address (what gRPC dials).
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253}):(?P<port>[0-9]{1,5})")


def check_join(name: str, address: str, metrics_address: str) -> None:
    """Reject a join whose name or addresses are not what an agent sends (InvalidInput): they are
    shown by `lepton status` and dialled by the coordinator, so arbitrary bytes must not get in."""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"JoinCluster: name must be 1 to {MAX_NAME} printable characters; got {name[:40]!r}"
                           f"{'...' if len(name) > 40 else ''} ({len(name)} characters)")
    for field_name, value, required in (("address", address, True), ("metrics_address", metrics_address, False)):
        if not value and not required:
            continue
        match = _ADDRESS.fullmatch(value)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise InvalidInput(f"JoinCluster: {field_name} must be host:port (a DNS name, IPv4 or [IPv6] address "
                               f"and a port in 1..65535); got {value[:80]!r} (an agent sends what --advertise, "
                               f"--listen or --metrics-listen say)")


@dataclass(eq=False)  # identity: one record per membership
class Agent:
    id: str
    name: str
    address: str
    devices: list[DeviceInfo]
    credits: int
    link: object  # lepton.coordinator.agent_link.AgentLink
    metrics_address: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: float = 0.0  # credits in use, in eighths: runs sent and not finished (scheduler-owned, under its lock)
    partitions_done: int = 0  # (scheduler-owned, under its lock)

    @property
    def ops(self) -> set[str]:
        return {op for d in self.devices for op in d.ops}


class Membership:
    def __init__(self, heartbeat_timeout: float, make_link: Callable[[str], object],
                 on_change: Callable[[], None], on_remove: Callable[[Agent], None], max_agents: int = 1024,
                 on_join: Callable[[Agent], None] = lambda agent: None):
        self.heartbeat_timeout, self.max_agents = heartbeat_timeout, max_agents
        self._make_link, self._on_change, self._on_remove = make_link, on_change, on_remove
        self._on_join = on_join  # the coordinator's: store the agent (a successor takes it back)
        self._agents: dict[str, Agent] = {}
        # Ids carry this coordinator's incarnation: an agent still heartbeating an id from before a
        # restart is told to join again, never taken for the agent the new one gave that number.
        self.incarnation = secrets.token_hex(2)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def agents(self) -> list[Agent]:
        with self._lock:
            return list(self._agents.values())

    def _full(self) -> None:
        if len(self._agents) >= self.max_agents:
            raise ResourceExhausted(f"{self.max_agents} agents are registered already (--max-agents); "
                                    f"one must leave or expire before another joins")

    def join(self, name: str, address: str, devices: list[DeviceInfo], credits: int,
             metrics_address: str = "", prepare: Callable[[Agent], None] = lambda agent: None) -> Agent:
        """Register an agent; `prepare(agent)` runs before any job can see it (what it already holds)."""
        check_join(name, address, metrics_address)
        with self._lock:
            self._full()
        agent = Agent(f"agent-{self.incarnation}-{next(self._ids)}", name, address, devices, max(1, credits),
                      self._make_link(address), metrics_address)
        prepare(agent)
        with self._lock:
            try:
                self._full()
            except ResourceExhausted:
                agent.link.close()
                raise
            self._agents[agent.id] = agent
        self._on_join(agent)
        event(log, "agent.joined", agent=agent.id, name=name, address=address,
              devices=",".join(d.name for d in devices), credits=agent.credits)
        self._on_change()
        return agent

    def restore(self, agent_id: str, name: str, address: str, devices: list[DeviceInfo], credits: int,
                metrics_address: str = "") -> Agent:
        """Take back an agent a previous leader had (from the store), keeping its id: it counts as
        just seen, and expires as usual unless it heartbeats here (it follows the leader by itself)."""
        agent = Agent(agent_id, name, address, devices, max(1, credits), self._make_link(address), metrics_address)
        with self._lock:
            self._agents[agent.id] = agent
        event(log, "agent.restored", agent=agent.id, name=name, address=address)
        self._on_change()
        return agent

    def heartbeat(self, agent_id: str, devices: list[DeviceInfo] | None = None) -> bool:
        with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None:
                return False
            agent.last_seen = time.monotonic()
            if devices:
                agent.devices = devices
            return True

    def remove(self, agent_id: str, reason: str) -> None:
        with self._lock:
            agent = self._agents.pop(agent_id, None)
        if agent is None:
            return
        event(log, "agent.removed", agent=agent_id, name=agent.name, reason=reason)
        self._on_remove(agent)
        agent.link.close()
        self._on_change()

    def forget_all(self) -> None:
        """Drop every agent without telling anyone (a coordinator that stepped down: the agents are
        the new leader's now, and the store's records of them are not ours to delete)."""
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            agent.link.close()
        if agents:
            self._on_change()

    def expire(self) -> None:
        """Drop agents silent for longer than the heartbeat timeout."""
        now = time.monotonic()
        for agent in self.agents():
            if now - agent.last_seen > self.heartbeat_timeout:
                self.remove(agent.id, f"no heartbeat for {now - agent.last_seen:.1f}s")
