"""The coordinator's side of AgentService: send a run of partitions, receive its partials."""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Iterator

import grpc
import numpy as np

from lepton.coordinator import metrics
from lepton import sharedmem, wire
from lepton.errors import LeptonError, Unavailable
from lepton.v1 import agent_service_pb2 as pb, agent_service_pb2_grpc as pb_grpc, tensor_pb2


# Tasks whose streamed inputs are at most this big go in one message (gRPC's default limit is 4 MiB).
SMALL_TASK_BYTES = 1 << 20
# Streams shorter than this mostly fill gRPC's flow-control window: they say little of the link.
SEND_MEASURED_BYTES = 4 << 20


class CachedKeys:
    """The tensor cache keys an agent is believed to hold; run threads and RPC threads share it."""

    def __init__(self):
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._keys  # one lookup: atomic

    def update(self, keys) -> None:
        with self._lock:
            self._keys.update(keys)

    def discard(self, keys) -> None:
        with self._lock:
            self._keys.difference_update(keys)

    def drop_prefix(self, prefix: str) -> None:
        with self._lock:
            self._keys = {k for k in self._keys if not k.startswith(prefix)}

    def __len__(self) -> int:
        return len(self._keys)


class AgentLink:
    def __init__(self, address: str, channel: grpc.Channel | None = None):
        self.address = address
        self.cached = CachedKeys()
        # Bytes per second the coordinator streams run inputs to this agent at, decayed (None until a
        # run of at least SEND_MEASURED_BYTES was sent): what moving data there costs (placement.py).
        self.send_rate: float | None = None
        self._channel = channel or grpc.insecure_channel(address)  # channel: with the cluster's credentials
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        # The streams of bytes take requests serialized by hand (wire.framed_chunks: one copy of each
        # chunk, where protobuf made two and a TensorChunk object per chunk).
        service = "/lepton.v1.AgentService/"
        self._run_raw = self._channel.stream_stream(service + "RunTask", request_serializer=None,
                                                    response_deserializer=pb.RunTaskResponse.FromString)
        self._cache_raw = self._channel.stream_unary(service + "CacheTensors", request_serializer=None,
                                                     response_deserializer=pb.CacheTensorsResponse.FromString)
        # Calls start under this lock and close() takes it: grpcio segfaults when a call starts on a
        # closed channel (seen when a dataset still placing met the coordinator's shutdown).
        self._lock = threading.Lock()
        self._closed = False
        # The agent is on this host (its JoinCluster said so): arrays that are views of a memfd this
        # process opened go as SharedBuffers, not bytes. Cleared if the agent cannot open them.
        self.same_host = False

    def _start(self, method, *args, **kwargs):
        """Start a call (non-blocking forms only), unless the link is closed."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"the link to the agent at {self.address} is closed")
            return method(*args, **kwargs)

    def _task(self, job, run):
        """The run's Task message, the arrays whose bytes follow it, and the cache keys it sends,
        references and passes in shared memory. (Apart from run_task's generator, so that no view of
        the job's input outlives the call in a frame that its traceback keeps.)"""
        cached = self.cached
        streamed: list[np.ndarray] = []
        sending, referenced, shared = set(), set(), []

        def task_input(name: str, array: np.ndarray, header=None, key: str = "") -> pb.TaskInput:
            array = wire.little_endian(array)
            header = header or wire.header(name, array, checksum=False)
            if key and key in cached:
                referenced.add(key)
                return pb.TaskInput(tensor=header, cache_key=key, by_reference=True)
            if key:
                sending.add(key)
            if (where := self._shared(array)) is not None:
                shared.append(key)
                return pb.TaskInput(tensor=header, cache_key=key, shared=where)
            header.crc32c = wire.checksum(array) if not header.HasField("crc32c") else header.crc32c
            streamed.append(array)
            return pb.TaskInput(tensor=header, cache_key=key)

        task = pb.Task(job_id=job.id, op=job.op.name, params=wire.encode_params(job.params),
                       first_partition=run.lo, partition_count=job.plan.count, tree_arity=job.tree_arity)
        if job.datasets:  # resident partitions go by their own cache keys: one entry per partition
            split, whole = job.task_inputs(run)
            task.partitions.extend(pb.TaskPartition(inputs=[task_input(n, a, key=job.split_key(n, run.lo + j))
                                                            for n, a in rows.items()],
                                                    row_offset=int(job.plan.row_splits[run.lo + j]))
                                   for j, rows in enumerate(split))
        else:  # the run's rows in one piece per input, cut by row_splits on the agent
            rows, whole = job.run_inputs(run)
            task.run_inputs.extend(task_input(n, a) for n, a in rows.items())
            task.row_splits.extend(job.plan.row_splits[run.lo:run.hi + 1].tolist())
        for n in whole:
            array, header, _ = job.whole_input(n, keyed=False)
            if (where := self._shared(array)) is not None:  # not cached: mapping it again is free
                task.whole_inputs.append(pb.TaskInput(tensor=header, shared=where))
            else:
                task.whole_inputs.append(task_input(n, *job.whole_input(n)))

        memory = job.result_memory
        if memory is not None and self.same_host and memory.file.fd >= 0:  # rows straight into the client's memfd
            task.result.CopyFrom(pb.ResultBuffer(**memory.for_agents()))
            shared.append("")  # (an agent that cannot open it says so as for inputs: the link stops sharing)
        return task, streamed, sending, referenced, shared

    def run_task(self, job, run, timeout: float | None, on_call: Callable[[object], None]
                 ) -> Iterator[tuple[int, int, dict[str, np.ndarray], list[tuple]]]:
        """Stream the run's inputs to the agent; yield (lo, hi, partial, timings) as the agent's nodes
        arrive, timings being (partition, device, started_at, finished_at), and its progress (the
        timings of partitions done ahead of their node) as (None, None, None, timings).

        Whole inputs (by content) and dataset partitions are cached on the agent: `cached` holds the
        keys this agent is known to hold, and those go by reference instead of by value. A key is
        added once the agent has the bytes (it answers only after receiving all of them), and the
        referenced keys are dropped when it reports a miss.
        """
        cached = self.cached
        task, streamed, sending, referenced, shared = self._task(job, run)

        def requests():
            yield pb.RunTaskRequest(task=task).SerializeToString()
            start = time.perf_counter()
            yield from wire.framed_chunks(streamed)
            sent = sum(a.nbytes for a in streamed)
            metrics.BYTES_TO_AGENTS.inc(sent)
            # gRPC pulls the next chunk once flow control lets the last one go: the pace it pulls at
            # is the link's (less a window's worth, buffered at the end).
            self._observe_send(sent, time.perf_counter() - start)

        nbytes = sum(a.nbytes for a in streamed)
        if nbytes <= SMALL_TASK_BYTES:  # one message: no request stream (and no thread) to drive
            metrics.BYTES_TO_AGENTS.inc(nbytes)
            call = self._start(self._stub.RunSmallTask, pb.RunSmallTaskRequest(task=task, chunks=wire.chunks(streamed)),
                               timeout=timeout)
        else:
            call = self._start(self._run_raw, requests(), timeout=timeout)
        on_call(call)
        def node_done(node, assembler):
            metrics.BYTES_FROM_AGENTS.inc(assembler.bytes_received)
            timings = [(t.partition, t.device, t.started_at, t.finished_at) for t in node.timings]
            if node.written and not task.HasField("result"):
                raise LeptonError(f"the agent at {self.address} says it wrote partitions [{node.range_start}, "
                                  f"{node.range_end}) into a result buffer the task did not give it")
            partial = sharedmem.WRITTEN if node.written else assembler.finish()
            return node.range_start, node.range_end, partial, timings

        node = assembler = None
        try:
            try:
                responses = iter(call)
                first = next(responses, None)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    cached.discard(referenced)
                    if shared and sharedmem.UNAVAILABLE in (exc.details() or ""):
                        self.same_host = False  # the run goes again, with bytes
                raise
            cached.update(sending)
            for response in itertools.chain([first] if first is not None else [], responses):
                if response.HasField("partial"):
                    if node is not None:
                        yield node_done(node, assembler)
                    node, assembler = response.partial, wire.TensorAssembler(response.partial.tensors)
                    for chunk in node.chunks:  # a small partial's bytes ride in its header's message
                        assembler.add(chunk)
                elif response.HasField("progress"):  # (it never comes between a node's chunks)
                    if node is not None:
                        yield node_done(node, assembler)
                        node = None
                    yield None, None, None, [(t.partition, t.device, t.started_at, t.finished_at)
                                             for t in response.progress.timings]
                else:
                    assembler.add(response.chunk)
            if node is not None:
                yield node_done(node, assembler)
        finally:
            # A failed call is an exception whose traceback holds this frame, and the frame the call:
            # a cycle that only the garbage collector breaks. Let go of the input views now, so that
            # shared memory they lie in is freed when the job ends (the agent read them all by the
            # time it answers).
            streamed.clear()

    def _shared(self, array: np.ndarray):
        """Where `array` lies in shared memory the agent can map, or None (then its bytes go)."""
        where = sharedmem.registry.locate(array) if self.same_host else None
        return None if where is None else tensor_pb2.SharedBuffer(**where)

    def _observe_send(self, nbytes: int, seconds: float) -> None:
        if nbytes < SEND_MEASURED_BYTES or seconds <= 0:
            return
        rate, old = nbytes / seconds, self.send_rate
        self.send_rate = rate if old is None else 0.5 * old + 0.5 * rate  # one float store: atomic

    def cache_tensors(self, items: list[tuple[str, str, np.ndarray]], timeout: float) -> list[str]:
        """Send (cache key, name, array) items to the agent's cache; returns the keys it kept. Arrays
        in shared memory the agent can map go by where they lie (if it cannot, they go again as bytes)."""
        try:
            return self._cache_tensors(items, timeout, shared=self.same_host)
        except grpc.RpcError as exc:
            if not (exc.code() == grpc.StatusCode.NOT_FOUND and sharedmem.UNAVAILABLE in (exc.details() or "")):
                raise
            self.same_host = False
        return self._cache_tensors(items, timeout, shared=False)

    def _cache_tensors(self, items, timeout: float, shared: bool) -> list[str]:
        arrays, tensors = [], []
        for key, name, array in items:
            array = wire.little_endian(array)
            where = self._shared(array) if shared else None
            if where is not None:
                tensors.append(pb.TaskInput(tensor=wire.header(name, array, checksum=False), cache_key=key,
                                            shared=where))
            else:
                tensors.append(pb.TaskInput(tensor=wire.header(name, array), cache_key=key))
                arrays.append(array)
        header = pb.CacheTensorsHeader(tensors=tensors)

        def requests():
            yield pb.CacheTensorsRequest(header=header).SerializeToString()
            yield from wire.framed_chunks(arrays)
            metrics.BYTES_TO_AGENTS.inc(sum(a.nbytes for a in arrays))

        try:
            return list(self._start(self._cache_raw.future, requests(), timeout=timeout).result().kept)
        finally:
            arrays.clear()  # as in run_task: no view outlives the call in a traceback's frame

    def drop_cached(self, prefix: str) -> None:
        try:
            self._start(self._stub.DropCached.future, pb.DropCachedRequest(prefix=prefix), timeout=5).result()
        except (grpc.RpcError, Unavailable):
            pass  # best effort: its LRU evicts what it no longer needs

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._channel.close()
