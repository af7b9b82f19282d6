"""Prometheus metrics of the coordinator: counters where events happen, gauges read at scrape time."""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lepton.tuning import trims_done

JOBS = Counter("lepton_jobs_total", "Jobs that ended, by op and final state", ["op", "state"])
JOB_SECONDS = Histogram("lepton_job_seconds", "Seconds from submission to the end of a job", ["op"],
                        buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000))
PARTITIONS = Counter("lepton_partitions_total", "Partition executions by outcome (done, retried, failed)",
                     ["outcome"])
INLINE_PARTITIONS = Counter("lepton_inline_partitions_total",
                            "Partitions of tiny jobs the coordinator computed itself (coordinator/inline.py)")
INPUT_BYTES = Counter("lepton_input_bytes_total", "Input bytes received from clients")
RESULT_BYTES = Counter("lepton_result_bytes_total", "Result bytes sent to clients")
RESULT_SHARED_BYTES = Counter("lepton_result_shared_bytes_total",
                              "Result bytes handed to clients in their own shared memory instead of sent")
BYTES_TO_AGENTS = Counter("lepton_agent_bytes_sent_total", "Partition bytes sent to agents")
BYTES_FROM_AGENTS = Counter("lepton_agent_bytes_received_total", "Partial bytes received from agents")


class ClusterCollector:
    """Gauges derived from the coordinator's state when Prometheus scrapes."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        agents = self.coordinator.membership.agents()
        jobs = self.coordinator.scheduler.jobs
        yield GaugeMetricFamily("lepton_agents", "Agents in the cluster", value=len(agents))
        yield GaugeMetricFamily("lepton_jobs_active", "Jobs accepted and not yet ended", value=len(jobs))
        yield GaugeMetricFamily("lepton_pending_partitions", "Partitions not yet sent to an agent",
                                value=sum(j.parts.count - j.parts.released + j.parts.ready_count for j in list(jobs)))
        in_flight = GaugeMetricFamily("lepton_agent_in_flight_partitions",
                                      "Credits in use on an agent: partitions sent and not finished (a "
                                      "run of small partitions takes one per target partition size)", labels=["agent"])
        credits = GaugeMetricFamily("lepton_agent_credits", "Partitions an agent accepts at once", labels=["agent"])
        for agent in agents:
            in_flight.add_metric([agent.id], agent.in_flight)
            credits.add_metric([agent.id], agent.credits)
        yield in_flight
        yield credits
        yield CounterMetricFamily("lepton_heap_trims", "Idle trims of the heap done (lepton.tuning.IdleTrim)",
                                  value=trims_done())


def register(coordinator) -> None:
    REGISTRY.register(ClusterCollector(coordinator))
