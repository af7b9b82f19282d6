"""gRPC servicer of the node agent: thin translation between messages and `Agent`."""
from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np

from lepton.errors import InvalidInput, LeptonError
from lepton import security, wire
from lepton.rpc_errors import maps_errors
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc
from lepton.serving import add_standard_services
from lepton.agent import metrics
from lepton.agent.agent import Agent, TaskInput


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    @maps_errors
    def RunTask(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("task"):
            raise InvalidInput("the first RunTaskRequest must carry the task")
        yield from self._run(first.task, (r.chunk for r in request_iterator), context, pb.RunTaskResponse)

    @maps_errors
    def RunSmallTask(self, request, context):
        yield from self._run(request.task, request.chunks, context, pb.RunSmallTaskResponse)

    def _run(self, task, chunks, context, response):
        try:
            split, whole, offsets = self._receive(task, chunks)
            nodes = self.agent.run_task(task.job_id, task.op, wire.decode_params(task.params),
                                        task.first_partition, task.partition_count, task.tree_arity, split, whole,
                                        offsets, context.is_active)
            for lo, hi, partial, timings in nodes:
                names = list(partial)
                arrays = [wire.little_endian(np.asarray(partial[n])) for n in names]
                yield response(partial=pb.PartialHeader(
                    range_start=lo, range_end=hi, tensors=[wire.header(n, a) for n, a in zip(names, arrays)],
                    timings=[pb.PartitionTiming(partition=p, device=d, started_at=s, finished_at=f)
                             for p, d, s, f in timings]))
                for chunk in wire.chunks(arrays):
                    yield response(chunk=chunk)
                metrics.BYTES_OUT.inc(sum(a.nbytes for a in arrays))
            metrics.TASKS.labels("done").inc()
        except LeptonError as exc:
            metrics.TASKS.labels(exc.code.name).inc()
            raise

    @maps_errors
    def CacheTensors(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidInput("the first CacheTensorsRequest must carry the header")
        items = list(first.header.tensors)
        assembler = wire.TensorAssembler([i.tensor for i in items])
        for request in request_iterator:
            assembler.add(request.chunk)
        metrics.BYTES_IN.inc(assembler.bytes_received)
        return pb.CacheTensorsResponse(kept=self.agent.keep([i.cache_key for i in items], assembler.finish_list()))

    def DropCached(self, request, context):
        self.agent.cache.drop_prefix(request.prefix)
        return pb.DropCachedResponse()

    def _receive(self, task, chunks):
        """The task's inputs (split per partition, whole, row offsets), from its messages."""
        messages = [*(i for p in task.partitions for i in p.inputs), *task.run_inputs, *task.whole_inputs]
        assembler = wire.TensorAssembler([i.tensor for i in messages if not i.by_reference])
        for chunk in chunks:
            assembler.add(chunk)
        metrics.BYTES_IN.inc(assembler.bytes_received)
        values = self.agent.resolve([TaskInput(i.tensor.name, i.cache_key, i.by_reference) for i in messages],
                                    assembler.finish_list())
        if task.run_inputs:
            count = len(task.run_inputs)
            split, offsets = self.agent.cut_run(task.op, dict(values[:count]), list(task.row_splits))
            return split, dict(values[count:]), offsets
        split, position = [], 0
        for partition in task.partitions:
            split.append(dict(values[position:position + len(partition.inputs)]))
            position += len(partition.inputs)
        return split, dict(values[position:]), [p.row_offset for p in task.partitions]


def serve(agent: Agent, address: str, interceptors: list[grpc.ServerInterceptor] = (),
          creds: security.Credentials | None = None):
    """Start serving (TLS, and only its coordinator, as creds say); returns the server, the bound port
    and the health servicer. The security gate runs before any other interceptor."""
    # Enough threads for every credit plus a margin: a task holds its thread while it runs.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=agent.credits + 16, thread_name_prefix="rpc"),
                         options=security.server_options(),
                         interceptors=[security.agent_gate(creds), *interceptors])
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent), server)
    health = add_standard_services(server, [pb.DESCRIPTOR.services_by_name["AgentService"].full_name])
    port = security.bind(server, address, creds)
    server.start()
    return server, port, health
