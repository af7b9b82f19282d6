from lepton.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PartitionScheme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTITION_SCHEME_UNSPECIFIED: _ClassVar[PartitionScheme]
    PARTITION_SCHEME_ROW_BLOCKS: _ClassVar[PartitionScheme]
    PARTITION_SCHEME_HASH: _ClassVar[PartitionScheme]
    PARTITION_SCHEME_ROUND_ROBIN: _ClassVar[PartitionScheme]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_ACCEPTED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
PARTITION_SCHEME_UNSPECIFIED: PartitionScheme
PARTITION_SCHEME_ROW_BLOCKS: PartitionScheme
PARTITION_SCHEME_HASH: PartitionScheme
PARTITION_SCHEME_ROUND_ROBIN: PartitionScheme
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_ACCEPTED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Param(_message.Message):
    __slots__ = ("int_value", "float_value", "string_value", "bool_value", "int_list", "float_list")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_LIST_FIELD_NUMBER: _ClassVar[int]
    FLOAT_LIST_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    string_value: str
    bool_value: bool
    int_list: IntList
    float_list: FloatList
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., int_list: _Optional[_Union[IntList, _Mapping]] = ..., float_list: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Partitioning(_message.Message):
    __slots__ = ("scheme", "count", "target_bytes", "key_column")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    KEY_COLUMN_FIELD_NUMBER: _ClassVar[int]
    scheme: PartitionScheme
    count: int
    target_bytes: int
    key_column: int
    def __init__(self, scheme: _Optional[_Union[PartitionScheme, str]] = ..., count: _Optional[int] = ..., target_bytes: _Optional[int] = ..., key_column: _Optional[int] = ...) -> None: ...

class JobInput(_message.Message):
    __slots__ = ("name", "tensor", "dataset", "shared")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: _tensor_pb2.TensorHeader
    dataset: str
    shared: _tensor_pb2.SharedTensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[_tensor_pb2.TensorHeader, _Mapping]] = ..., dataset: _Optional[str] = ..., shared: _Optional[_Union[_tensor_pb2.SharedTensor, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("op", "params", "inputs", "partitioning", "label", "early", "result_buffer")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Param
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Param, _Mapping]] = ...) -> None: ...
    OP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONING_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    RESULT_BUFFER_FIELD_NUMBER: _ClassVar[int]
    op: str
    params: _containers.MessageMap[str, Param]
    inputs: _containers.RepeatedCompositeFieldContainer[JobInput]
    partitioning: Partitioning
    label: str
    early: EarlyAnswers
    result_buffer: _tensor_pb2.SharedBuffer
    def __init__(self, op: _Optional[str] = ..., params: _Optional[_Mapping[str, Param]] = ..., inputs: _Optional[_Iterable[_Union[JobInput, _Mapping]]] = ..., partitioning: _Optional[_Union[Partitioning, _Mapping]] = ..., label: _Optional[str] = ..., early: _Optional[_Union[EarlyAnswers, _Mapping]] = ..., result_buffer: _Optional[_Union[_tensor_pb2.SharedBuffer, _Mapping]] = ...) -> None: ...

class EarlyAnswers(_message.Message):
    __slots__ = ("confidence", "min_fraction_step", "min_interval_seconds", "seed")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_FRACTION_STEP_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    min_fraction_step: float
    min_interval_seconds: float
    seed: int
    def __init__(self, confidence: _Optional[float] = ..., min_fraction_step: _Optional[float] = ..., min_interval_seconds: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "op", "label", "state", "bytes_received", "bytes_total", "partitions_done", "partitions_total", "submitted_at", "finished_at", "error_code", "error_message", "retries", "iteration")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    op: str
    label: str
    state: JobState
    bytes_received: int
    bytes_total: int
    partitions_done: int
    partitions_total: int
    submitted_at: float
    finished_at: float
    error_code: str
    error_message: str
    retries: int
    iteration: int
    def __init__(self, job_id: _Optional[str] = ..., op: _Optional[str] = ..., label: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., bytes_received: _Optional[int] = ..., bytes_total: _Optional[int] = ..., partitions_done: _Optional[int] = ..., partitions_total: _Optional[int] = ..., submitted_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., retries: _Optional[int] = ..., iteration: _Optional[int] = ...) -> None: ...
