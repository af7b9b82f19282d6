from lepton.v1 import coordinator_service_pb2 as _coordinator_service_pb2
from lepton.v1 import job_pb2 as _job_pb2
from lepton.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JoinClusterRequest(_message.Message):
    __slots__ = ("name", "address", "devices", "credits", "metrics_address", "resident", "host_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    devices: _containers.RepeatedCompositeFieldContainer[_coordinator_service_pb2.DeviceInfo]
    credits: int
    metrics_address: str
    resident: _containers.RepeatedCompositeFieldContainer[ResidentDataset]
    host_id: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_coordinator_service_pb2.DeviceInfo, _Mapping]]] = ..., credits: _Optional[int] = ..., metrics_address: _Optional[str] = ..., resident: _Optional[_Iterable[_Union[ResidentDataset, _Mapping]]] = ..., host_id: _Optional[str] = ...) -> None: ...

class ResidentDataset(_message.Message):
    __slots__ = ("name", "version", "part", "ranges")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    part: str
    ranges: _containers.RepeatedCompositeFieldContainer[PartitionRange]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., part: _Optional[str] = ..., ranges: _Optional[_Iterable[_Union[PartitionRange, _Mapping]]] = ...) -> None: ...

class PartitionRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class JoinClusterResponse(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval_seconds", "stale_prefixes")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STALE_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval_seconds: float
    stale_prefixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ..., stale_prefixes: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "devices")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    devices: _containers.RepeatedCompositeFieldContainer[_coordinator_service_pb2.DeviceInfo]
    def __init__(self, agent_id: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_coordinator_service_pb2.DeviceInfo, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class LeaveClusterRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class LeaveClusterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheTensorsRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CacheTensorsHeader
    chunk: _tensor_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[CacheTensorsHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class CacheTensorsHeader(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TaskInput]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TaskInput, _Mapping]]] = ...) -> None: ...

class CacheTensorsResponse(_message.Message):
    __slots__ = ("kept",)
    KEPT_FIELD_NUMBER: _ClassVar[int]
    kept: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kept: _Optional[_Iterable[str]] = ...) -> None: ...

class DropCachedRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class DropCachedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Task(_message.Message):
    __slots__ = ("job_id", "op", "params", "first_partition", "partition_count", "tree_arity", "partitions", "whole_inputs", "run_inputs", "row_splits", "result")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _job_pb2.Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_job_pb2.Param, _Mapping]] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FIRST_PARTITION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    TREE_ARITY_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    RUN_INPUTS_FIELD_NUMBER: _ClassVar[int]
    ROW_SPLITS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    op: str
    params: _containers.MessageMap[str, _job_pb2.Param]
    first_partition: int
    partition_count: int
    tree_arity: int
    partitions: _containers.RepeatedCompositeFieldContainer[TaskPartition]
    whole_inputs: _containers.RepeatedCompositeFieldContainer[TaskInput]
    run_inputs: _containers.RepeatedCompositeFieldContainer[TaskInput]
    row_splits: _containers.RepeatedScalarFieldContainer[int]
    result: ResultBuffer
    def __init__(self, job_id: _Optional[str] = ..., op: _Optional[str] = ..., params: _Optional[_Mapping[str, _job_pb2.Param]] = ..., first_partition: _Optional[int] = ..., partition_count: _Optional[int] = ..., tree_arity: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[TaskPartition, _Mapping]]] = ..., whole_inputs: _Optional[_Iterable[_Union[TaskInput, _Mapping]]] = ..., run_inputs: _Optional[_Iterable[_Union[TaskInput, _Mapping]]] = ..., row_splits: _Optional[_Iterable[int]] = ..., result: _Optional[_Union[ResultBuffer, _Mapping]] = ...) -> None: ...

class ResultBuffer(_message.Message):
    __slots__ = ("buffer", "tensor", "claims_offset")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    buffer: _tensor_pb2.SharedBuffer
    tensor: _tensor_pb2.TensorHeader
    claims_offset: int
    def __init__(self, buffer: _Optional[_Union[_tensor_pb2.SharedBuffer, _Mapping]] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., claims_offset: _Optional[int] = ...) -> None: ...

class TaskPartition(_message.Message):
    __slots__ = ("inputs", "row_offset")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TaskInput]
    row_offset: int
    def __init__(self, inputs: _Optional[_Iterable[_Union[TaskInput, _Mapping]]] = ..., row_offset: _Optional[int] = ...) -> None: ...

class TaskInput(_message.Message):
    __slots__ = ("tensor", "cache_key", "by_reference", "shared")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    BY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    tensor: _tensor_pb2.TensorHeader
    cache_key: str
    by_reference: bool
    shared: _tensor_pb2.SharedBuffer
    def __init__(self, tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., cache_key: _Optional[str] = ..., by_reference: _Optional[bool] = ..., shared: _Optional[_Union[_tensor_pb2.SharedBuffer, _Mapping]] = ...) -> None: ...

class RunTaskRequest(_message.Message):
    __slots__ = ("task", "chunk")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    chunk: _tensor_pb2.TensorChunk
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class PartialHeader(_message.Message):
    __slots__ = ("range_start", "range_end", "tensors", "timings", "chunks", "written")
    RANGE_START_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    range_start: int
    range_end: int
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorHeader]
    timings: _containers.RepeatedCompositeFieldContainer[PartitionTiming]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    written: bool
    def __init__(self, range_start: _Optional[int] = ..., range_end: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.TensorHeader, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[PartitionTiming, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ..., written: _Optional[bool] = ...) -> None: ...

class PartitionTiming(_message.Message):
    __slots__ = ("partition", "device", "started_at", "finished_at")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    device: str
    started_at: float
    finished_at: float
    def __init__(self, partition: _Optional[int] = ..., device: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ...) -> None: ...

class RunSmallTaskRequest(_message.Message):
    __slots__ = ("task", "chunks")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("timings",)
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    timings: _containers.RepeatedCompositeFieldContainer[PartitionTiming]
    def __init__(self, timings: _Optional[_Iterable[_Union[PartitionTiming, _Mapping]]] = ...) -> None: ...

class RunSmallTaskResponse(_message.Message):
    __slots__ = ("partial", "chunk", "progress")
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    partial: PartialHeader
    chunk: _tensor_pb2.TensorChunk
    progress: TaskProgress
    def __init__(self, partial: _Optional[_Union[PartialHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ...) -> None: ...

class RunTaskResponse(_message.Message):
    __slots__ = ("partial", "chunk", "progress")
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    partial: PartialHeader
    chunk: _tensor_pb2.TensorChunk
    progress: TaskProgress
    def __init__(self, partial: _Optional[_Union[PartialHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.TensorChunk, _Mapping]] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ...) -> None: ...
