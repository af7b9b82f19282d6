"""gRPC servicer of the node agent: thin translation between messages and `Agent`."""
from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np

from lepton.errors import InvalidInput, LeptonError, NotCached
from lepton import security, sharedmem, wire
from lepton.decoding import ParseInHandler
from lepton.rpc_errors import maps_errors
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc
from lepton.serving import add_standard_services
from lepton.agent import metrics, results
from lepton.agent.agent import Agent, TaskInput


# A partial of at most this many bytes goes in its header's message (PartialHeader.chunks): each
# message a server streams waits for gRPC's polling thread, so one message per node beats two.
INLINE_PARTIAL_BYTES = 256 << 10


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
        writer = None
        try:
            split, whole, offsets = self._receive(task, chunks)
            writer = results.writer(task)  # rows into the client's shared memory (node_agent/results.py)
            nodes = self.agent.run_task(task.job_id, task.op, wire.decode_params(task.params),
                                        task.first_partition, task.partition_count, task.tree_arity, split, whole,
                                        offsets, context.is_active, writer.write if writer else None)
            for lo, hi, partial, timings in nodes:
                timed = [pb.PartitionTiming(partition=p, device=d, started_at=s, finished_at=f)
                         for p, d, s, f in timings]
                if partial is None:  # progress: partitions done ahead of their node
                    yield response(progress=pb.TaskProgress(timings=timed))
                    continue
                if partial is sharedmem.WRITTEN:
                    yield response(partial=pb.PartialHeader(range_start=lo, range_end=hi, written=True, timings=timed))
                    continue
                names = list(partial)
                arrays = [wire.little_endian(np.asarray(partial[n])) for n in names]
                nbytes = sum(a.nbytes for a in arrays)
                inline = nbytes <= INLINE_PARTIAL_BYTES  # its bytes in the header's message
                yield response(partial=pb.PartialHeader(
                    range_start=lo, range_end=hi, tensors=[wire.header(n, a) for n, a in zip(names, arrays)],
                    timings=timed,
                    chunks=wire.chunks(arrays) if inline else ()))
                if not inline:
                    for chunk in wire.chunks(arrays):
                        yield response(chunk=chunk)
                metrics.BYTES_OUT.inc(nbytes)
            metrics.TASKS.labels("done").inc()
        except LeptonError as exc:
            metrics.TASKS.labels(exc.code.name).inc()
            raise
        finally:
            if writer is not None:
                writer.close()

    @maps_errors
    def CacheTensors(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise InvalidInput("the first CacheTensorsRequest must carry the header")
        items = list(first.header.tensors)
        arrays = self._by_value(items, (r.chunk for r in request_iterator))
        return pb.CacheTensorsResponse(kept=self.agent.keep([i.cache_key for i in items], arrays))

    def DropCached(self, request, context):
        self.agent.cache.drop_prefix(request.prefix)
        return pb.DropCachedResponse()

    @staticmethod
    def _by_value(items, chunks) -> list[np.ndarray]:
        """The arrays of TaskInputs sent by value, in order: those in shared memory mapped from it (no
        chunks for them; NOT_FOUND if this agent cannot map it, so the bytes come instead), the others
        assembled from `chunks`."""
        streamed = [i.tensor for i in items if not i.HasField("shared")]
        assembler = wire.TensorAssembler(streamed)
        for chunk in chunks:
            assembler.add(chunk)
        metrics.BYTES_IN.inc(assembler.bytes_received)
        arrays = iter(assembler.finish_list())
        shared = [i for i in items if i.HasField("shared")]
        views = iter(map_shared(shared))
        return [next(views) if i.HasField("shared") else next(arrays) for i in items]

    def _receive(self, task, chunks):
        """The task's inputs (split per partition, whole, row offsets), from its messages."""
        messages = [*(i for p in task.partitions for i in p.inputs), *task.run_inputs, *task.whole_inputs]
        # Whole inputs in shared memory: copied into this agent's memory by the job's first task here,
        # and taken from that copy by its later ones (node_agent/copies.py).
        copies, first_whole = self.agent.copies, len(messages) - len(task.whole_inputs)
        copied = {j for j in range(first_whole, len(messages)) if copies.wants(messages[j])}
        arrays = iter(self._by_value([i for j, i in enumerate(messages) if not i.by_reference and j not in copied],
                                     chunks))
        received = [self._whole_copy(task.job_id, i) if j in copied else next(arrays)
                    for j, i in enumerate(messages) if not i.by_reference]
        values = self.agent.resolve([TaskInput(i.tensor.name, i.cache_key, i.by_reference) for i in messages],
                                    received)
        if task.run_inputs:
            count = len(task.run_inputs)
            split, offsets = self.agent.cut_run(task.op, dict(values[:count]), list(task.row_splits))
            return split, dict(values[count:]), offsets
        split, position = [], 0
        for partition in task.partitions:
            split.append(dict(values[position:position + len(partition.inputs)]))
            position += len(partition.inputs)
        return split, dict(values[position:]), [p.row_offset for p in task.partitions]

    def _whole_copy(self, job_id: str, item) -> np.ndarray:
        """A whole input in shared memory: this job's copy here, read now if it is the first task to
        name it; mapped where it lies if it is too large to keep (node_agent/copies.py)."""
        copies, meta = self.agent.copies, wire.meta(item.tensor)

        def read():
            try:
                copy = sharedmem.read_copy(item.shared, meta.nbytes)
            except LeptonError as exc:
                raise NotCached(exc.details) from None  # NOT_FOUND: the coordinator sends the bytes instead
            metrics.BYTES_SHARED.inc(meta.nbytes)
            return copy.view(meta.dtype).reshape(meta.shape)

        array = copies.get(copies.key(job_id, item), meta.nbytes, read)
        return array if array is not None else map_shared([item])[0]


def map_shared(items) -> list[np.ndarray]:
    """The arrays of TaskInputs whose bytes lie in shared memory, mapped read-only (one open per memfd)."""
    by_buffer: dict[tuple, list[int]] = {}
    for j, item in enumerate(items):
        b = item.shared
        by_buffer.setdefault((b.host_id, b.pid, b.fd, b.name), []).append(j)
    out: list = [None] * len(items)
    for positions in by_buffer.values():
        first = items[positions[0]].shared
        metas = [wire.meta(items[j].tensor) for j in positions]
        try:
            views = sharedmem.open_views(first, [(items[j].shared.offset, m.nbytes) for j, m in zip(positions, metas)])
        except LeptonError as exc:
            raise NotCached(exc.details) from None  # NOT_FOUND: the coordinator sends the bytes instead
        for j, m, view in zip(positions, metas, views):
            out[j] = view.view(m.dtype).reshape(m.shape)
    metrics.BYTES_SHARED.inc(sum(a.nbytes for a in out))
    return out


def serve(agent: Agent, address: str, interceptors: list[grpc.ServerInterceptor] = (),
          creds: security.Credentials | None = None):
    """Start serving (TLS, and only its coordinator, as creds say); returns the server, the bound port
    and the health servicer. The security gate runs before any other interceptor; requests that do
    not parse become INVALID_ARGUMENT in their handler (lepton.decoding)."""
    # Enough threads for every credit plus a margin: a task holds its thread while it runs.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=agent.credits + 16, thread_name_prefix="rpc"),
                         options=security.server_options(),
                         interceptors=[security.agent_gate(creds), *interceptors, ParseInHandler({
                             "/lepton.v1.AgentService/RunTask": wire.chunk_request_parser(pb.RunTaskRequest),
                             "/lepton.v1.AgentService/CacheTensors": wire.chunk_request_parser(pb.CacheTensorsRequest)})])
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(agent), server)
    health = add_standard_services(server, [pb.DESCRIPTOR.services_by_name["AgentService"].full_name])
    port = security.bind(server, address, creds)
    server.start()
    return server, port, health
