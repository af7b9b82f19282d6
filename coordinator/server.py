"""gRPC servicers of the coordinator: thin translation between messages and `Coordinator`."""
from __future__ import annotations

import logging
import math
import time
from concurrent import futures

import grpc
import numpy as np

from lepton.errors import InvalidInput, ResourceExhausted
from lepton.coordinator.coordinator import Coordinator
from lepton.coordinator.early import EarlyOptions, Estimate
from lepton.coordinator.intake import SMALL_JOB_BYTES, InputReader, deadline_from, seconds_left
from lepton.coordinator.jobs import JobRecord
from lepton.coordinator.planner import Scheme
from lepton.coordinator import metrics
from lepton import security, sharedmem, wire
from lepton.decoding import ParseInHandler
from lepton.rpc_errors import maps_errors
from lepton.serving import add_standard_services
from lepton.v1 import agent_service_pb2 as agent_pb, agent_service_pb2_grpc as agent_grpc
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc, job_pb2, tensor_pb2

log = logging.getLogger("lepton.coordinator")

SCHEMES = {job_pb2.PARTITION_SCHEME_UNSPECIFIED: Scheme.ROW_BLOCKS,
           job_pb2.PARTITION_SCHEME_ROW_BLOCKS: Scheme.ROW_BLOCKS,
           job_pb2.PARTITION_SCHEME_HASH: Scheme.HASH,
           job_pb2.PARTITION_SCHEME_ROUND_ROBIN: Scheme.ROUND_ROBIN}


MAX_RESULT_BYTES = 3 << 20  # of a RunJob response: below gRPC's 4 MiB default message limit


def job_status(r: JobRecord) -> job_pb2.JobStatus:
    return job_pb2.JobStatus(job_id=r.job_id, op=r.op, label=r.label, state=r.state.value,
                             bytes_received=r.bytes_received, bytes_total=r.bytes_total,
                             partitions_done=r.partitions_done, partitions_total=r.partitions_total,
                             submitted_at=r.submitted_at, finished_at=r.finished_at, error_code=r.error_code,
                             error_message=r.error_message, retries=r.retries, iteration=r.iteration)


def scheme_of(partitioning) -> Scheme:
    scheme = SCHEMES.get(partitioning.scheme)
    if scheme is None:
        raise InvalidInput(f"partitioning.scheme {partitioning.scheme} is unknown")
    return scheme


def dataset_info(d) -> pb.DatasetInfo:
    placement: dict[str, int] = {}
    for agent_id in d.placement.values():
        placement[agent_id] = placement.get(agent_id, 0) + 1
    return pb.DatasetInfo(name=d.name, dtype=wire.dtype_enum(d.dtype), shape=d.shape, total_bytes=d.nbytes,
                          partitions=d.partitions, placement=placement, created_at=d.created_at, sparse=d.sparse,
                          saved=d.saved.is_set())


def job_inputs(spec) -> tuple[list, dict[str, str], dict[int, object]]:
    """The spec's tensor inputs (headers named by their JobInput), resident ones (name -> dataset), and
    which of the headers lie in shared memory (index -> SharedBuffer)."""
    headers, datasets, shared = [], {}, {}
    for item in spec.inputs:
        source = item.WhichOneof("source")
        if source == "dataset":
            datasets[item.name] = item.dataset
            continue
        header = tensor_pb2.TensorHeader()
        if source == "shared":
            header.CopyFrom(item.shared.tensor)
            shared[len(headers)] = item.shared.buffer
        else:
            header.CopyFrom(item.tensor)
        header.name = item.name or header.name
        headers.append(header)
    return headers, datasets, shared


def early_options(spec) -> EarlyOptions | None:
    """The spec's early-answer options (unset fields: the defaults), or None if it asks for none."""
    if not spec.HasField("early"):
        return None
    early, default = spec.early, EarlyOptions()
    return EarlyOptions(early.confidence if early.HasField("confidence") else default.confidence,
                        early.min_fraction_step if early.HasField("min_fraction_step") else default.every,
                        early.min_interval_seconds if early.HasField("min_interval_seconds") else default.interval,
                        early.seed)


def estimate_message(estimate: Estimate) -> pb.Estimate:
    values = []
    for name, value in estimate.values.items():
        array, bound = wire.little_endian(np.asarray(value)), estimate.bounds[name]
        values.append(pb.EstimatedValue(
            header=wire.header(name, array), data=array.tobytes(),
            bound=b"" if bound is None else wire.little_endian(np.asarray(bound, dtype=np.float64)).tobytes()))
    return pb.Estimate(fraction=estimate.fraction, partitions_used=estimate.partitions_used,
                       partitions_total=estimate.partitions_total, confidence=estimate.confidence,
                       seed=estimate.seed, values=values)


def input_chunks(request_iterator):
    for request in request_iterator:
        if not request.HasField("chunk"):
            raise InvalidInput("only input chunks may follow the job spec")
        yield request.chunk


class CoordinatorServicer(pb_grpc.CoordinatorServiceServicer):
    def __init__(self, coordinator: Coordinator, metrics_address: str = "", dashboard_address: str = ""):
        self.c, self.metrics_address, self.dashboard_address = coordinator, metrics_address, dashboard_address
        self.intake = InputReader(coordinator)

    def _submit(self, spec, context, result_buffer=None):
        headers, datasets, shared = job_inputs(spec)
        part = spec.partitioning
        return self.c.submit(spec.op, wire.decode_params(spec.params), headers, scheme_of(part), part.count,
                             part.target_bytes, part.key_column, spec.label, deadline_from(context.time_remaining()),
                             datasets, early_options(spec), shared=shared, result_buffer=result_buffer)

    def _result(self, job, context) -> tuple[list, list]:
        """The job's result as headers and little-endian arrays, once it ended (abort if it failed)."""
        record = job.record
        if record.state.name != "SUCCEEDED":
            context.abort(grpc.StatusCode[record.error_code], record.error_message)
        deposed = self.c.deposed()
        if deposed:  # its lease lapsed as the last partitions came in: a successor has the job as lost
            context.abort(grpc.StatusCode.UNAVAILABLE, deposed)
        arrays = [wire.little_endian(np.asarray(a)) for a in job.result.values()]
        return [wire.header(name, array) for name, array in zip(job.result, arrays)], arrays

    @maps_errors
    def SubmitJob(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidInput("the first SubmitJobRequest must carry the job spec")
        spec = first.spec
        job = self._submit(spec, context, spec.result_buffer if spec.HasField("result_buffer") else None)
        context.add_callback(lambda: self.c.finished(job))
        yield pb.SubmitJobResponse(accepted=job_status(job.record))  # first: a client may wait for it
        self.intake.start(job, input_chunks(request_iterator))
        while (item := job.events.get())[0] != "done":
            if item[0] == "estimate":
                yield pb.SubmitJobResponse(estimate=estimate_message(item[1]))
            else:
                yield pb.SubmitJobResponse(progress=job_status(job.record))
        headers, arrays = self._result(job, context)
        if job.result_shared:  # it lies in the client's memfd, sealed: only where goes
            metrics.RESULT_SHARED_BYTES.inc(job.result_memory.meta.nbytes)
            yield pb.SubmitJobResponse(result_shared=tensor_pb2.SharedTensor(**job.result_memory.for_client()))
        for header in headers:
            yield pb.SubmitJobResponse(result_header=header)
        for chunk in wire.chunks(arrays):
            metrics.RESULT_BYTES.inc(len(chunk.data))
            yield pb.SubmitJobResponse(result_chunk=chunk)
        yield pb.SubmitJobResponse(done=job_status(job.record))

    @maps_errors
    def RunJob(self, request, context):
        incoming = sum(item.tensor.total_bytes for item in request.spec.inputs if item.HasField("tensor"))
        if any(item.HasField("shared") for item in request.spec.inputs):
            raise InvalidInput("RunJob carries its inputs in its one message: send shared memory with SubmitJob")
        if incoming > SMALL_JOB_BYTES:
            raise InvalidInput(f"RunJob takes at most {SMALL_JOB_BYTES >> 20} MiB of input and this job has "
                               f"{incoming} bytes: stream it with SubmitJob")
        if request.spec.HasField("early"):
            raise InvalidInput("RunJob has one reply and cannot stream early estimates: submit the job with "
                               "SubmitJob, or without early")
        job = self._submit(request.spec, context)
        context.add_callback(lambda: self.c.finished(job))  # the client went away: cancel it
        try:
            self.intake.start(job, iter(request.chunks))
            while job.events.get()[0] != "done":
                pass
            headers, arrays = self._result(job, context)
        finally:
            self.c.finished(job)
        if sum(a.nbytes for a in arrays) > MAX_RESULT_BYTES:
            raise ResourceExhausted(f"the result of {job.id} is over {MAX_RESULT_BYTES >> 20} MiB, more than one "
                                    f"message may carry: run the job with SubmitJob")
        metrics.RESULT_BYTES.inc(sum(a.nbytes for a in arrays))
        return pb.RunJobResponse(job=job_status(job.record), result_headers=headers,
                                 result_chunks=wire.chunks(arrays))

    @maps_errors
    def GetJob(self, request, context):
        return pb.GetJobResponse(job=job_status(self.c.record(request.job_id)))

    def ListJobs(self, request, context):
        return pb.ListJobsResponse(jobs=[job_status(r) for r in self.c.records(request.limit or 100)])

    @maps_errors
    def CancelJob(self, request, context):
        return pb.CancelJobResponse(job=job_status(self.c.cancel(request.job_id)))

    def GetClusterStatus(self, request, context):
        now = time.monotonic()
        agents = [pb.AgentStatus(agent_id=a.id, name=a.name, address=a.address,
                                 devices=[wire.device_to_proto(d) for d in a.devices], credits=a.credits,
                                 in_flight=math.ceil(a.in_flight), last_heartbeat_age_seconds=now - a.last_seen,
                                 partitions_done=a.partitions_done, metrics_address=a.metrics_address)
                  for a in self.c.membership.agents()]
        records = self.c.records(self.c.config.history)
        return pb.GetClusterStatusResponse(agents=agents, jobs_total=len(records),
                                           jobs_running=sum(not r.state.final for r in records),
                                           metrics_address=self.metrics_address,
                                           dashboard_address=self.dashboard_address, host_id=sharedmem.host_id())

    @maps_errors
    def GetJobTrace(self, request, context):
        record = self.c.record(request.job_id)
        return pb.GetJobTraceResponse(job=job_status(record), partitions=[
            pb.PartitionTrace(partition=a.partition, attempt=a.attempt, agent_id=a.agent_id, device=a.device,
                              queued_at=a.queued_at, sent_at=a.sent_at, started_at=a.started_at,
                              finished_at=a.finished_at, received_at=a.received_at, rows=a.rows,
                              outcome=a.outcome_text)
            for a in list(record.trace)])

    @maps_errors
    def PutDataset(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidInput("the first PutDatasetRequest must carry the spec")
        spec = first.spec

        def chunks():
            for request in request_iterator:
                if not request.HasField("chunk"):
                    raise InvalidInput("only chunks may follow the dataset spec")
                yield request.chunk

        part = spec.partitioning
        if spec.WhichOneof("data") == "csr":
            headers, cols = [spec.csr.indptr, spec.csr.indices, spec.csr.data], spec.csr.cols
        else:
            headers, cols = [spec.tensor], None
        dataset = self.c.put_dataset(spec.name, headers, chunks(), scheme_of(part), part.count,
                                     part.target_bytes, part.key_column, spec.replace, cols,
                                     spec.shared if spec.HasField("shared") else None, spec.durable,
                                     seconds_left(context.time_remaining()), spec.placement_op)
        return pb.PutDatasetResponse(dataset=dataset_info(dataset))

    def ListDatasets(self, request, context):
        return pb.ListDatasetsResponse(datasets=[dataset_info(d) for d in self.c.datasets.all()])

    @maps_errors
    def DropDataset(self, request, context):
        self.c.drop_dataset(request.name)
        return pb.DropDatasetResponse()


class AgentRegistryServicer(agent_grpc.AgentRegistryServiceServicer):
    def __init__(self, coordinator: Coordinator):
        self.c = coordinator

    @maps_errors
    def JoinCluster(self, request, context):
        resident = [(r.name, r.version, r.part, [(g.start, g.end) for g in r.ranges]) for r in request.resident]
        agent, stale = self.c.join(request.name, request.address, [wire.device_from_proto(d) for d in request.devices],
                                   request.credits, request.metrics_address, resident)
        agent.link.same_host = bool(request.host_id) and sharedmem.enabled() and request.host_id == sharedmem.host_id()
        return agent_pb.JoinClusterResponse(agent_id=agent.id, stale_prefixes=stale,
                                            heartbeat_interval_seconds=self.c.config.heartbeat_interval)

    def Heartbeat(self, request, context):
        devices = [wire.device_from_proto(d) for d in request.devices]
        return agent_pb.HeartbeatResponse(known=self.c.membership.heartbeat(request.agent_id, devices))

    def LeaveCluster(self, request, context):
        self.c.membership.remove(request.agent_id, "left")
        return agent_pb.LeaveClusterResponse()


def serve(coordinator: Coordinator, address: str, metrics_address: str = "", max_workers: int = 128,
          dashboard_address: str = "", interceptors: list[grpc.ServerInterceptor] = (),
          creds: security.Credentials | None = None, max_client_jobs: int = 64, leadership=None):
    """Start serving (TLS and tokens as creds say); returns the server, the bound port (address may
    end in :0) and its health. The security gate runs before any other interceptor; with a
    leadership (lepton.coordinator.leadership), the standby gate next; last, requests that do not
    parse become INVALID_ARGUMENT in their handler (lepton.decoding)."""
    if leadership is not None:
        from lepton.coordinator.leadership import StandbyGate

        interceptors = [StandbyGate(leadership), *interceptors]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         maximum_concurrent_rpcs=max_workers - 8, options=security.server_options(),
                         interceptors=[security.coordinator_gate(creds, max_client_jobs), *interceptors,
                                       ParseInHandler({"/lepton.v1.CoordinatorService/PutDataset":
                                                       wire.chunk_request_parser(pb.PutDatasetRequest)})])
    pb_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorServicer(coordinator, metrics_address, dashboard_address), server)
    agent_grpc.add_AgentRegistryServiceServicer_to_server(AgentRegistryServicer(coordinator), server)
    health = add_standard_services(server, [pb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name,
                                            agent_pb.DESCRIPTOR.services_by_name["AgentRegistryService"].full_name])
    port = security.bind(server, address, creds)
    server.start()
    return server, port, health
