"""The coordinator's side of AgentService: send a run of partitions, receive its partials."""
from __future__ import annotations

from typing import Callable, Iterator

import grpc
import numpy as np

from coordinator import metrics
from lepton import wire
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc


class AgentLink:
    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    def run_task(self, job, run, timeout: float | None, on_call: Callable[[object], None]
                 ) -> Iterator[tuple[int, int, dict[str, np.ndarray], list[tuple]]]:
        """Stream the run's inputs to the agent; yield (lo, hi, partial, timings) as the agent's nodes
        arrive, timings being (partition, device, started_at, finished_at)."""
        splits, arrays = job.task_inputs(run)
        arrays = {n: wire.little_endian(a) for n, a in arrays.items()}
        task = pb.Task(job_id=job.id, op=job.op.name, params=wire.encode_params(job.params),
                       first_partition=run.lo, partition_count=job.plan.count, row_splits=splits,
                       inputs=[wire.header(n, a) for n, a in arrays.items()], tree_arity=job.tree_arity,
                       split_inputs=job.op.split_inputs)

        def requests():
            yield pb.RunTaskRequest(task=task)
            for chunk in wire.chunks(arrays.values()):
                metrics.BYTES_TO_AGENTS.inc(len(chunk.data))
                yield pb.RunTaskRequest(chunk=chunk)

        call = self._stub.RunTask(requests(), timeout=timeout)
        on_call(call)
        def node_done(node, assembler):
            metrics.BYTES_FROM_AGENTS.inc(assembler.bytes_received)
            timings = [(t.partition, t.device, t.started_at, t.finished_at) for t in node.timings]
            return node.range_start, node.range_end, assembler.finish(), timings

        node = assembler = None
        for response in call:
            if response.HasField("partial"):
                if node is not None:
                    yield node_done(node, assembler)
                node, assembler = response.partial, wire.TensorAssembler(response.partial.tensors)
            else:
                assembler.add(response.chunk)
        if node is not None:
            yield node_done(node, assembler)

    def close(self) -> None:
        self._channel.close()
