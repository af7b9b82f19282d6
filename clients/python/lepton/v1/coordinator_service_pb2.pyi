from lepton.v1 import job_pb2 as _job_pb2
from lepton.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetSpec(_message.Message):
    __slots__ = ("name", "tensor", "csr", "partitioning", "replace", "shared", "durable", "placement_op")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    PARTITIONING_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_OP_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: _tensor_pb2.TensorHeader
    csr: CsrMatrix
    partitioning: _job_pb2.Partitioning
    replace: bool
    shared: _tensor_pb2.SharedBuffer
    durable: bool
    placement_op: str
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., csr: _Optional[_Union[CsrMatrix, _Mapping]] = ..., partitioning: _Optional[_Union[_job_pb2.Partitioning, _Mapping]] = ..., replace: _Optional[bool] = ..., shared: _Optional[_Union[_tensor_pb2.SharedBuffer, _Mapping]] = ..., durable: _Optional[bool] = ..., placement_op: _Optional[str] = ...) -> None: ...

class CsrMatrix(_message.Message):
    __slots__ = ("indptr", "indices", "data", "cols")
    INDPTR_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    indptr: _tensor_pb2.TensorHeader
    indices: _tensor_pb2.TensorHeader
    data: _tensor_pb2.TensorHeader
    cols: int
    def __init__(self, indptr: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., indices: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., data: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., cols: _Optional[int] = ...) -> None: ...

class PutDatasetRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: DatasetSpec
    chunk: _tensor_pb2.TensorChunk
    def __init__(self, spec: _Optional[_Union[DatasetSpec, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "dtype", "shape", "total_bytes", "partitions", "placement", "created_at", "sparse", "saved")
    class PlacementEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    total_bytes: int
    partitions: int
    placement: _containers.ScalarMap[str, int]
    created_at: float
    sparse: bool
    saved: bool
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., total_bytes: _Optional[int] = ..., partitions: _Optional[int] = ..., placement: _Optional[_Mapping[str, int]] = ..., created_at: _Optional[float] = ..., sparse: _Optional[bool] = ..., saved: _Optional[bool] = ...) -> None: ...

class PutDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetInfo
    def __init__(self, dataset: _Optional[_Union[DatasetInfo, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ...) -> None: ...

class DropDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: _job_pb2.JobSpec
    chunk: _tensor_pb2.TensorChunk
    def __init__(self, spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("accepted", "progress", "result_header", "result_chunk", "done", "estimate", "result_shared")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_SHARED_FIELD_NUMBER: _ClassVar[int]
    accepted: _job_pb2.JobStatus
    progress: _job_pb2.JobStatus
    result_header: _tensor_pb2.TensorHeader
    result_chunk: _tensor_pb2.TensorChunk
    done: _job_pb2.JobStatus
    estimate: Estimate
    result_shared: _tensor_pb2.SharedTensor
    def __init__(self, accepted: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ..., progress: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ..., result_header: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., result_chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., done: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ..., estimate: _Optional[_Union[Estimate, _Mapping]] = ..., result_shared: _Optional[_Union[_tensor_pb2.SharedTensor, _Mapping]] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("fraction", "partitions_used", "partitions_total", "confidence", "seed", "values")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_USED_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    partitions_used: int
    partitions_total: int
    confidence: float
    seed: int
    values: _containers.RepeatedCompositeFieldContainer[EstimatedValue]
    def __init__(self, fraction: _Optional[float] = ..., partitions_used: _Optional[int] = ..., partitions_total: _Optional[int] = ..., confidence: _Optional[float] = ..., seed: _Optional[int] = ..., values: _Optional[_Iterable[_Union[EstimatedValue, _Mapping]]] = ...) -> None: ...

class EstimatedValue(_message.Message):
    __slots__ = ("header", "data", "bound")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    header: _tensor_pb2.TensorHeader
    data: bytes
    bound: bytes
    def __init__(self, header: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., bound: _Optional[bytes] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("spec", "chunks")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    spec: _job_pb2.JobSpec
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class RunJobResponse(_message.Message):
    __slots__ = ("job", "result_headers", "result_chunks")
    JOB_FIELD_NUMBER: _ClassVar[int]
    RESULT_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.JobStatus
    result_headers: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorHeader]
    result_chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, job: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ..., result_headers: _Optional[_Iterable[_Union[_tensor_pb2.TensorHeader, _Mapping]]] = ..., result_chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.JobStatus, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.JobStatus
    def __init__(self, job: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("agents", "jobs_running", "jobs_total", "metrics_address", "dashboard_address", "host_id")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    JOBS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    jobs_running: int
    jobs_total: int
    metrics_address: str
    dashboard_address: str
    host_id: str
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ..., jobs_running: _Optional[int] = ..., jobs_total: _Optional[int] = ..., metrics_address: _Optional[str] = ..., dashboard_address: _Optional[str] = ..., host_id: _Optional[str] = ...) -> None: ...

class GetJobTraceRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobTraceResponse(_message.Message):
    __slots__ = ("job", "partitions")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.JobStatus
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionTrace]
    def __init__(self, job: _Optional[_Union[_job_pb2.JobStatus, _Mapping]] = ..., partitions: _Optional[_Iterable[_Union[PartitionTrace, _Mapping]]] = ...) -> None: ...

class PartitionTrace(_message.Message):
    __slots__ = ("partition", "attempt", "agent_id", "device", "queued_at", "sent_at", "started_at", "finished_at", "received_at", "rows", "outcome")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    partition: int
    attempt: int
    agent_id: str
    device: str
    queued_at: float
    sent_at: float
    started_at: float
    finished_at: float
    received_at: float
    rows: int
    outcome: str
    def __init__(self, partition: _Optional[int] = ..., attempt: _Optional[int] = ..., agent_id: _Optional[str] = ..., device: _Optional[str] = ..., queued_at: _Optional[float] = ..., sent_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., received_at: _Optional[float] = ..., rows: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("name", "kind", "description", "memory_bytes", "ops", "throughput")
    class ThroughputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    description: str
    memory_bytes: int
    ops: _containers.RepeatedScalarFieldContainer[str]
    throughput: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., ops: _Optional[_Iterable[str]] = ..., throughput: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "name", "address", "devices", "credits", "in_flight", "last_heartbeat_age_seconds", "partitions_done", "metrics_address")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    address: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    credits: int
    in_flight: int
    last_heartbeat_age_seconds: float
    partitions_done: int
    metrics_address: str
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., credits: _Optional[int] = ..., in_flight: _Optional[int] = ..., last_heartbeat_age_seconds: _Optional[float] = ..., partitions_done: _Optional[int] = ..., metrics_address: _Optional[str] = ...) -> None: ...
