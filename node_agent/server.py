"""gRPC servicer of the node agent: thin translation between messages and `Agent`."""
from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np

from lepton.errors import InvalidInput, LeptonError, NotCached
from lepton import wire
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc
from lepton.serving import add_standard_services
from lepton.agent import metrics
from lepton.agent.agent import Agent


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    def RunTask(self, request_iterator, context):
        try:
            first = next(request_iterator, None)
            if first is None or not first.HasField("task"):
                raise InvalidInput("the first RunTaskRequest must carry the task")
            task = first.task
            split, whole, offsets = self._receive(task, request_iterator)
            nodes = self.agent.run_task(task.job_id, task.op, wire.decode_params(task.params),
                                        task.first_partition, task.partition_count, task.tree_arity, split, whole,
                                        offsets, context.is_active)
            for lo, hi, partial, timings in nodes:
                names = list(partial)
                arrays = [wire.little_endian(np.asarray(partial[n])) for n in names]
                yield pb.RunTaskResponse(partial=pb.PartialHeader(
                    range_start=lo, range_end=hi, tensors=[wire.header(n, a) for n, a in zip(names, arrays)],
                    timings=[pb.PartitionTiming(partition=p, device=d, started_at=s, finished_at=f)
                             for p, d, s, f in timings]))
                for chunk in wire.chunks(arrays):
                    yield pb.RunTaskResponse(chunk=chunk)
                metrics.BYTES_OUT.inc(sum(a.nbytes for a in arrays))
            metrics.TASKS.labels("done").inc()
        except LeptonError as exc:
            metrics.TASKS.labels(exc.code.name).inc()
            context.abort(exc.code, exc.details)

    def CacheTensors(self, request_iterator, context):
        try:
            first = next(request_iterator, None)
            if first is None or not first.HasField("header"):
                raise InvalidInput("the first CacheTensorsRequest must carry the header")
            items = list(first.header.tensors)
            assembler = wire.TensorAssembler([i.tensor for i in items])
            for request in request_iterator:
                assembler.add(request.chunk)
            metrics.BYTES_IN.inc(assembler.bytes_received)
            kept = [i.cache_key for i, a in zip(items, assembler.finish_list()) if self.agent.cache.put(i.cache_key, a)]
            return pb.CacheTensorsResponse(kept=kept)
        except LeptonError as exc:
            context.abort(exc.code, exc.details)

    def DropCached(self, request, context):
        self.agent.cache.drop_prefix(request.prefix)
        return pb.DropCachedResponse()

    def _receive(self, task, request_iterator):
        """The task's inputs: streamed ones assembled (and cached when keyed), referenced ones from the cache."""
        inputs = [*(i for p in task.partitions for i in p.inputs), *task.run_inputs, *task.whole_inputs]
        streamed = [i for i in inputs if not i.by_reference]
        assembler = wire.TensorAssembler([i.tensor for i in streamed])
        for request in request_iterator:
            assembler.add(request.chunk)
        received = iter(assembler.finish_list())  # names repeat across partitions: go by order
        metrics.BYTES_IN.inc(assembler.bytes_received)
        values = []
        for item in inputs:
            if item.by_reference:
                array = self.agent.cache.get(item.cache_key)
                if array is None:
                    raise NotCached(f"{item.cache_key} is no longer cached here; send its bytes")
            else:
                array = next(received)
                if item.cache_key:
                    self.agent.cache.put(item.cache_key, array)
            values.append((item.tensor.name, array))
        if task.run_inputs:
            count = len(task.run_inputs)
            split, offsets = self.agent.cut_run(task.op, dict(values[:count]), list(task.row_splits))
            return split, dict(values[count:]), offsets
        split, position = [], 0
        for partition in task.partitions:
            split.append(dict(values[position:position + len(partition.inputs)]))
            position += len(partition.inputs)
        return split, dict(values[position:]), [p.row_offset for p in task.partitions]


def serve(agent: Agent, address: str):
    """Start serving; returns the server, the bound port and the health servicer."""
    # Enough threads for every credit plus a margin: a task holds its thread while it runs.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=agent.credits + 16, thread_name_prefix="rpc"))
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent), server)
    health = add_standard_services(server, [pb.DESCRIPTOR.services_by_name["AgentService"].full_name])
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port, health
