"""The agent's side of membership: join the coordinator, keep heartbeating, rejoin when forgotten."""
from __future__ import annotations

import logging
import threading

import grpc

from lepton import wire
from lepton.logs import event
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc
from lepton.agent.agent import Agent

log = logging.getLogger("lepton.agent")


class MembershipClient:
    def __init__(self, agent: Agent, coordinator: str, name: str, address: str, metrics_address: str = ""):
        self.agent, self.coordinator, self.name, self.address = agent, coordinator, name, address
        self.metrics_address = metrics_address
        self.agent_id: str | None = None
        self.interval = 0.5
        self._channel = grpc.insecure_channel(coordinator)
        self._stub = pb_grpc.AgentRegistryServiceStub(self._channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _devices(self):
        return [wire.device_to_proto(d.info()) for d in self.agent.devices]

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if self.agent_id is None:
                    reply = self._stub.JoinCluster(pb.JoinClusterRequest(
                        name=self.name, address=self.address, devices=self._devices(),
                        credits=self.agent.credits, metrics_address=self.metrics_address), timeout=5)
                    self.agent_id, self.interval = reply.agent_id, reply.heartbeat_interval_seconds or 0.5
                    event(log, "agent.joined", agent=self.agent_id, coordinator=self.coordinator)
                elif not self._stub.Heartbeat(pb.HeartbeatRequest(agent_id=self.agent_id, devices=self._devices()),
                                              timeout=5).known:
                    event(log, "agent.forgotten", agent=self.agent_id)
                    self.agent_id = None
                    continue
                backoff = 0.1
                self._stop.wait(self.interval)
            except grpc.RpcError as exc:
                event(log, "coordinator.unreachable", level=logging.WARNING, coordinator=self.coordinator,
                      code=exc.code().name)
                self._stop.wait(backoff)
                backoff = min(2.0, backoff * 2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.agent_id is not None:
            try:
                self._stub.LeaveCluster(pb.LeaveClusterRequest(agent_id=self.agent_id), timeout=2)
            except grpc.RpcError:
                pass  # the coordinator will expire us
        self._channel.close()
