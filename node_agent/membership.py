"""The agent's side of membership: join the coordinator, keep heartbeating, rejoin when forgotten.

While the coordinator cannot be reached, the agent retries with exponential backoff and full jitter
(so a fleet of agents does not reconnect in lockstep after a coordinator restart). Once it has been
unreachable for `coordinator_timeout` seconds (0: never), the agent gives up: `on_give_up` is called
with the reason, and the agent exits non-zero.

Every join announces the dataset partitions the agent's cache holds (`resident`), so that a
restarted coordinator uses them instead of sending them again; the versions it answers are stale
(dropped or replaced meanwhile) leave the cache.
"""
from __future__ import annotations

import logging
import random
import threading
import time

import grpc

from lepton import failover, sharedmem, wire
from lepton.contract import DATASET_KEY_PREFIX, parse_dataset_key
from lepton.logs import event
from lepton.tuning import IdleTrim
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc
from lepton.agent.agent import Agent

log = logging.getLogger("lepton.agent")


def resident(keys: list[str]) -> list[pb.ResidentDataset]:
    """The dataset partitions among cache `keys`, by (dataset, version, part), in ranges."""
    held: dict[tuple[str, str, str], list[int]] = {}
    for key in keys:
        parsed = parse_dataset_key(key)
        if parsed is not None:
            name, version, partition, part = parsed
            held.setdefault((name, version, part), []).append(partition)
    out = []
    for (name, version, part), partitions in sorted(held.items()):
        ranges: list[list[int]] = []
        for p in sorted(set(partitions)):
            if ranges and ranges[-1][1] == p:
                ranges[-1][1] = p + 1
            else:
                ranges.append([p, p + 1])
        out.append(pb.ResidentDataset(name=name, version=version, part=part,
                                      ranges=[pb.PartitionRange(start=a, end=b) for a, b in ranges]))
    return out


class MembershipClient:
    BACKOFF_FIRST, BACKOFF_MAX, FOLLOW_BACKOFF_MAX = 0.1, 5.0, 0.5

    def __init__(self, agent: Agent, coordinator: str, name: str, address: str, metrics_address: str = "",
                 coordinator_timeout: float = 0, on_give_up=lambda reason: None, dial=grpc.insecure_channel):
        """coordinator: its address, or every coordinator's of a highly available cluster ("a:1,b:2"):
        the agent follows the leader (lepton.failover). dial(address) -> channel, with the join credential."""
        self.agent, self.coordinator, self.name, self.address = agent, coordinator, name, address
        self.metrics_address = metrics_address
        self.coordinator_timeout, self._on_give_up = coordinator_timeout, on_give_up
        self.gave_up = ""  # why the agent stopped waiting for its coordinator, once it has
        self.agent_id: str | None = None
        self.interval = 0.5
        self._coordinators = failover.Coordinators(coordinator, dial)
        self._stub = pb_grpc.AgentRegistryServiceStub(self._coordinators.channel())
        self._stop = threading.Event()
        self._trim = IdleTrim()
        self._thread = threading.Thread(target=self._loop, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _devices(self):
        return [wire.device_to_proto(d.info()) for d in self.agent.devices]

    def _loop(self) -> None:
        backoff, last_contact = self.BACKOFF_FIRST, time.monotonic()
        while not self._stop.is_set():
            address = self._coordinators.current
            try:
                if self.agent_id is None:
                    held = resident(self.agent.cache.keys(DATASET_KEY_PREFIX))
                    reply = self._stub.JoinCluster(pb.JoinClusterRequest(
                        name=self.name, address=self.address, devices=self._devices(),
                        credits=self.agent.credits, metrics_address=self.metrics_address, resident=held,
                        host_id=sharedmem.host_id() if sharedmem.enabled() else ""), timeout=5)
                    for prefix in reply.stale_prefixes:
                        self.agent.cache.drop_prefix(prefix)
                    self.agent_id, self.interval = reply.agent_id, reply.heartbeat_interval_seconds or 0.5
                    event(log, "agent.joined", agent=self.agent_id, coordinator=address,
                          resident=sum(r.end - r.start for d in held for r in d.ranges),
                          stale=len(reply.stale_prefixes))
                elif not self._stub.Heartbeat(pb.HeartbeatRequest(agent_id=self.agent_id, devices=self._devices()),
                                              timeout=5).known:
                    event(log, "agent.forgotten", agent=self.agent_id)
                    self.agent_id = None
                    continue
                backoff, last_contact = self.BACKOFF_FIRST, time.monotonic()
                # The heartbeat is the agent's one periodic thread: it also gives freed heap back when idle.
                self._trim.poll(self.agent.busy(), last_contact)
                self._stop.wait(self.interval)
            except grpc.RpcError as exc:
                # A standby, a dead address, or one that answers nothing (a stalled leader): joins
                # and heartbeats may go to another coordinator whatever became of this one.
                followed = self._coordinators.follow(exc, address, 0, time.monotonic(), repeatable=True)
                if followed:
                    self._stub = pb_grpc.AgentRegistryServiceStub(self._coordinators.channel())
                    event(log, "coordinator.following", level=logging.INFO, turned_away_by=address,
                          trying=self._coordinators.current, code=exc.code().name)
                    if failover.standby_answer(exc)[1]:  # a standby named the leader: go there now
                        continue
                silent = time.monotonic() - last_contact
                event(log, "coordinator.unreachable", level=logging.WARNING, coordinator=self.coordinator,
                      code=exc.code().name, seconds=round(silent, 1))
                if self.coordinator_timeout and silent >= self.coordinator_timeout:
                    self.gave_up = (f"coordinator {self.coordinator} unreachable for {silent:.0f}s "
                                    f"(--coordinator-timeout {self.coordinator_timeout:g}s); last error "
                                    f"{exc.code().name}")
                    event(log, "agent.coordinator_lost", level=logging.ERROR, reason=self.gave_up)
                    self._on_give_up(self.gave_up)
                    return
                pause = random.uniform(0, backoff)
                if self.coordinator_timeout:  # try once more right at the limit, not past it
                    pause = min(pause, self.coordinator_timeout - silent)
                self._stop.wait(pause)
                # Following a failover (several addresses), the next try is another server: back off
                # less, so that the agent reaches the new leader before its heartbeat timeout.
                backoff = min(self.FOLLOW_BACKOFF_MAX if followed else self.BACKOFF_MAX, backoff * 2)

    def stop(self) -> None:
        """Stop heartbeating and leave; quick, as it runs inside the agent's bounded shutdown."""
        self._stop.set()
        self._thread.join(timeout=1)
        if self.agent_id is not None and not self.gave_up:
            try:
                self._stub.LeaveCluster(pb.LeaveClusterRequest(agent_id=self.agent_id), timeout=0.5)
            except grpc.RpcError:
                pass  # the coordinator will expire us
        self._coordinators.close()
