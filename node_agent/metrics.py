"""Prometheus metrics of a node agent."""
from __future__ import annotations

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lepton.tuning import trims_done

TASKS = Counter("lepton_agent_tasks_total", "Tasks (runs of partitions) by outcome", ["outcome"])
PARTITIONS = Counter("lepton_device_partitions_total", "Partitions run, by device and op", ["device", "op"])
BUSY_SECONDS = Counter("lepton_device_busy_seconds_total", "Seconds each device spent running kernels", ["device"])
BYTES_IN = Counter("lepton_agent_input_bytes_total", "Partition bytes received from the coordinator")
BYTES_SHARED = Counter("lepton_agent_shared_input_bytes_total",
                       "Partition bytes mapped from shared memory on this host instead of received")
BYTES_WRITTEN = Counter("lepton_agent_shared_result_bytes_total",
                        "Result rows written into the client's shared memory on this host instead of sent")
BYTES_OUT = Counter("lepton_agent_output_bytes_total", "Partial bytes sent to the coordinator")


class DeviceCollector:
    """Queue depth and measured throughput per device, and the tensor cache, read when Prometheus scrapes."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        queued = GaugeMetricFamily("lepton_device_queued_bytes", "Input bytes waiting in a device's queue",
                                   labels=["device"])
        speed = GaugeMetricFamily("lepton_device_throughput_bytes_per_second",
                                  "Measured input bytes per second, by device and op", labels=["device", "op"])
        for worker in self.agent.workers:
            queued.add_metric([worker.device.name], worker.queued_bytes)
            for op, rate in worker.device.info().throughput.items():
                speed.add_metric([worker.device.name, op], rate)
        yield queued
        yield speed
        cache = self.agent.cache
        yield GaugeMetricFamily("lepton_agent_cache_bytes", "Bytes held in the tensor cache", value=cache.bytes)
        yield CounterMetricFamily("lepton_agent_cache_hits", "Cached tensors used by reference", value=cache.hits)
        yield CounterMetricFamily("lepton_agent_cache_misses", "Referenced tensors no longer cached",
                                  value=cache.misses)
        yield CounterMetricFamily("lepton_agent_cache_evictions", "Tensors evicted to stay in budget",
                                  value=cache.evictions)
        yield CounterMetricFamily("lepton_heap_trims", "Idle trims of the heap done (lepton.tuning.IdleTrim)",
                                  value=trims_done())


def register(agent) -> None:
    REGISTRY.register(DeviceCollector(agent))
