"""The coordinator's side of AgentService: send a run of partitions, receive its partials."""
from __future__ import annotations

from typing import Callable, Iterator

import grpc
import numpy as np

from lepton import wire
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc


class AgentLink:
    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    def run_task(self, job, run, timeout: float | None,
                 on_call: Callable[[object], None]) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Stream the run's inputs to the agent; yield (lo, hi, partial) as the agent's nodes arrive."""
        splits, arrays = job.task_inputs(run)
        arrays = {n: wire.little_endian(a) for n, a in arrays.items()}
        task = pb.Task(job_id=job.id, op=job.op.name, params=wire.encode_params(job.params),
                       first_partition=run.lo, partition_count=job.plan.count, row_splits=splits,
                       inputs=[wire.header(n, a) for n, a in arrays.items()], tree_arity=job.tree_arity,
                       split_inputs=job.op.split_inputs)

        def requests():
            yield pb.RunTaskRequest(task=task)
            for chunk in wire.chunks(arrays.values()):
                yield pb.RunTaskRequest(chunk=chunk)

        call = self._stub.RunTask(requests(), timeout=timeout)
        on_call(call)
        node = assembler = None
        for response in call:
            if response.HasField("partial"):
                if node is not None:
                    yield node.range_start, node.range_end, assembler.finish()
                node, assembler = response.partial, wire.TensorAssembler(response.partial.tensors)
            else:
                assembler.add(response.chunk)
        if node is not None:
            yield node.range_start, node.range_end, assembler.finish()

    def close(self) -> None:
        self._channel.close()
