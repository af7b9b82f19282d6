"""Tensors and params on the wire (ARCHITECTURE.md §7): a header, then ordered raw byte chunks.

Shared by the client and the servicers: arrays go out as `TensorHeader` + `TensorChunk`s of at most
CHUNK_BYTES, and come back through `TensorAssembler`, which checks every byte count, offset and
checksum and turns the bytes into arrays with `numpy.frombuffer` (no per-element Python).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import crc32c
import numpy as np

from lepton.errors import InvalidInput, ResourceExhausted
from lepton.contract import DeviceInfo, TensorMeta
from lepton.v1 import coordinator_service_pb2, job_pb2, tensor_pb2

CHUNK_BYTES = 1 << 20  # 1 MiB: fast on loopback, far below every client's 4 MiB message limit
# Pre-framed chunks (framed_chunks): measured fastest on loopback (benchmarks/peers, W7), and a
# message of FRAME_BYTES plus its few bytes of framing stays under gRPC's default 4 MiB limit.
FRAME_BYTES = 2 << 20

_DTYPES = {
    tensor_pb2.DATA_TYPE_FLOAT32: "<f4", tensor_pb2.DATA_TYPE_FLOAT64: "<f8",
    tensor_pb2.DATA_TYPE_INT32: "<i4", tensor_pb2.DATA_TYPE_INT64: "<i8",
    tensor_pb2.DATA_TYPE_INT8: "<i1", tensor_pb2.DATA_TYPE_UINT8: "<u1",
    tensor_pb2.DATA_TYPE_INT16: "<i2", tensor_pb2.DATA_TYPE_UINT16: "<u2",
    tensor_pb2.DATA_TYPE_UINT32: "<u4", tensor_pb2.DATA_TYPE_UINT64: "<u8",
    tensor_pb2.DATA_TYPE_FLOAT16: "<f2", tensor_pb2.DATA_TYPE_BOOL: "|b1",
}
_ENUMS = {np.dtype(v): k for k, v in _DTYPES.items()}


def dtype_enum(dtype: np.dtype) -> int:
    try:
        return _ENUMS[np.dtype(dtype).newbyteorder("<")]
    except KeyError:
        raise InvalidInput(f"dtype {dtype} cannot be sent; supported: "
                           f"{', '.join(str(np.dtype(d)) for d in _DTYPES.values())}") from None


def little_endian(array: np.ndarray) -> np.ndarray:
    """C-order, little-endian view or copy of `array`."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _bytes_of(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")


def checksum(array: np.ndarray) -> int:
    """CRC-32C of a little-endian contiguous array's bytes."""
    return crc32c.crc32c(_bytes_of(array))


def header(name: str, array: np.ndarray, checksum: bool = True) -> tensor_pb2.TensorHeader:
    """Header of a little-endian contiguous array (see `little_endian`); without `checksum` no CRC (for
    bytes in shared memory, which cross no wire)."""
    h = tensor_pb2.TensorHeader(name=name, dtype=dtype_enum(array.dtype), shape=array.shape, total_bytes=array.nbytes)
    if checksum:
        h.crc32c = crc32c.crc32c(_bytes_of(array))
    return h


def chunks(arrays: Iterable[np.ndarray]) -> Iterator[tensor_pb2.TensorChunk]:
    """The chunks of each array in turn, tensor_index counting from 0."""
    for index, array in enumerate(arrays):
        data = _bytes_of(array)
        for offset in range(0, len(data), CHUNK_BYTES):
            yield tensor_pb2.TensorChunk(tensor_index=index, offset=offset,
                                         data=bytes(data[offset:offset + CHUNK_BYTES]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Every streaming request (SubmitJob, PutDataset, RunTask, CacheTensors) carries its TensorChunk as
# field 2: tag (2 << 3) | length-delimited.
_CHUNK_FIELD = b"\x12"


def framed_chunks(arrays: Iterable[np.ndarray], chunk_bytes: int = FRAME_BYTES) -> Iterator[bytes]:
    """`chunks`, already serialized as requests `{chunk: TensorChunk}` for a stub whose request
    serializer is None: each message is built with one copy of its bytes (protobuf would make two,
    and a TensorChunk object per chunk), and the chunks can be bigger (FRAME_BYTES)."""
    for index, array in enumerate(arrays):
        data = _bytes_of(array)
        for offset in range(0, len(data), chunk_bytes):
            piece = data[offset:offset + chunk_bytes]
            fields = (b"\x08" + _varint(index) if index else b"") + (b"\x10" + _varint(offset) if offset else b"")
            fields += b"\x1a" + _varint(len(piece))
            yield b"".join((_CHUNK_FIELD, _varint(len(fields) + len(piece)), fields, piece))


class RawChunk:
    """A TensorChunk parsed by hand (`parse_chunk_request`): `data` is a view of the received message."""

    __slots__ = ("tensor_index", "offset", "data")

    def __init__(self, tensor_index: int, offset: int, data: memoryview):
        self.tensor_index, self.offset, self.data = tensor_index, offset, data


class ChunkRequest:
    """A streaming request that carries only its chunk (field 2), as `framed_chunks` writes them;
    answers what servicers ask of a parsed request."""

    __slots__ = ("chunk",)

    def __init__(self, chunk: RawChunk):
        self.chunk = chunk

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return name == "chunk"

    def WhichOneof(self, group: str) -> str:  # noqa: N802
        return "chunk"


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError if the bytes end inside it."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _parse_chunk(data: bytes) -> ChunkRequest | None:
    """A message of exactly one chunk field holding tensor_index, offset and data, or None (anything
    else, even if valid protobuf: the generated parser decides then)."""
    try:
        if data[:1] != _CHUNK_FIELD:
            return None
        length, at = _read_varint(data, 1)
        if at + length != len(data):
            return None
        index = offset = 0
        piece = memoryview(b"")
        while at < len(data):
            tag, at = _read_varint(data, at)
            if tag == 0x08:
                index, at = _read_varint(data, at)
            elif tag == 0x10:
                offset, at = _read_varint(data, at)
            elif tag == 0x1A:
                size, at = _read_varint(data, at)
                if at + size > len(data):
                    return None
                piece, at = memoryview(data)[at:at + size], at + size
            else:
                return None
        if index >= 1 << 32 or offset >= 1 << 63:  # (what protobuf would truncate or make negative)
            return None
        return ChunkRequest(RawChunk(index, offset, piece))
    except IndexError:
        return None


def chunk_request_parser(message_type):
    """A request deserializer for a stream of `message_type` (PutDatasetRequest, CacheTensorsRequest,
    RunTaskRequest, ...): chunk messages are parsed by hand, their data a view of the received bytes
    (protobuf copies a chunk's bytes once to parse and again at each access of `data`); every other
    message, and any chunk not framed as `framed_chunks` frames it, by `message_type.FromString`."""
    parse = message_type.FromString

    def deserialize(data: bytes):
        return _parse_chunk(data) or parse(data)
    return deserialize


def meta(h: tensor_pb2.TensorHeader) -> TensorMeta:
    """Validate a header alone: known dtype, sane shape, byte count consistent with both."""
    if h.dtype not in _DTYPES:
        raise InvalidInput(f"tensor {h.name!r}: dtype {h.dtype} is not set or unknown; "
                           f"set it to one of the DataType values")
    if any(d < 0 for d in h.shape):
        raise InvalidInput(f"tensor {h.name!r}: shape {list(h.shape)} has a negative dimension")
    m = TensorMeta(np.dtype(_DTYPES[h.dtype]), tuple(int(d) for d in h.shape))
    if h.total_bytes != m.nbytes:
        raise InvalidInput(f"tensor {h.name!r}: total_bytes is {h.total_bytes} but shape {list(h.shape)} "
                           f"of {m.dtype} needs {m.nbytes}")
    return m


class TensorAssembler:
    """Receives the chunks of the tensors that `headers` declare, in order, into arrays."""

    def __init__(self, headers: list[tensor_pb2.TensorHeader], max_bytes: int | None = None, shared=()):
        """`shared`: indices of tensors whose bytes are not received but adopted (`adopt`: views of
        shared memory); they take none of this process's memory, so `max_bytes` leaves them out."""
        self.headers = list(headers)
        self.metas = [meta(h) for h in self.headers]
        self.shared = set(shared)
        total = self.heap_bytes
        if max_bytes is not None and total > max_bytes:
            raise ResourceExhausted(f"the tensors total {total} bytes; this server accepts at most {max_bytes} "
                                    f"per request (raise --max-job-bytes, or load the data in parts)")
        self._buffers = [None if i in self.shared else np.empty(m.nbytes, dtype=np.uint8)
                         for i, m in enumerate(self.metas)]
        self.received = [0] * len(self.metas)
        self._crc = [0] * len(self.metas)
        self._files: dict[int, object] = {}  # tensor -> the ReceiveBuffer its chunks are written to

    @property
    def bytes_total(self) -> int:
        return sum(m.nbytes for m in self.metas)

    @property
    def heap_bytes(self) -> int:
        """Bytes this assembler allocates: the tensors that arrive as chunks."""
        return sum(m.nbytes for i, m in enumerate(self.metas) if i not in self.shared)

    def adopt(self, i: int, data: np.ndarray) -> None:
        """Tensor i's bytes are `data` (a uint8 view of shared memory), complete. Not checksummed: they
        never crossed a wire, and the memory they lie in is sealed against writes."""
        if i not in self.shared or data.nbytes != self.metas[i].nbytes:
            raise InvalidInput(f"tensor {self.headers[i].name!r}: shared memory of {data.nbytes} bytes for "
                               f"{self.metas[i].nbytes}")
        self._buffers[i], self.received[i], self._crc[i] = data, data.nbytes, None

    def receive_into(self, i: int, file) -> None:
        """Write tensor i's chunks into `file` (a sharedmem.ReceiveBuffer of its size) as they arrive,
        its `map` being the tensor's bytes; before any chunk."""
        if i in self.shared or self.received[i] or file.size != self.metas[i].nbytes:
            raise ValueError(f"tensor {i} cannot be received into a buffer of {file.size} bytes now")
        self._buffers[i], self._files[i] = file.map, file

    @property
    def bytes_received(self) -> int:
        return sum(self.received)

    def add(self, chunk: tensor_pb2.TensorChunk) -> None:
        i = chunk.tensor_index
        if i >= len(self.metas):
            raise InvalidInput(f"chunk names tensor_index {i}, but only {len(self.metas)} tensor(s) were declared")
        data = chunk.data  # (once: protobuf makes a new bytes object at each access of a bytes field)
        name, size = self.headers[i].name, len(data)
        if i in self.shared:
            raise InvalidInput(f"tensor {name!r} lies in shared memory: no chunks may follow for it")
        if chunk.offset != self.received[i]:
            raise InvalidInput(f"tensor {name!r}: chunk at offset {chunk.offset}, expected {self.received[i]} "
                               f"(chunks must arrive in order, without gaps or overlaps)")
        if chunk.offset + size > self.metas[i].nbytes:
            raise InvalidInput(f"tensor {name!r}: chunk ends at byte {chunk.offset + size}, past its "
                               f"total_bytes {self.metas[i].nbytes}")
        if i in self._files:
            self._files[i].write(data, chunk.offset)
        else:
            self._buffers[i][chunk.offset:chunk.offset + size] = np.frombuffer(data, dtype=np.uint8)
        self._crc[i] = crc32c.crc32c(data, self._crc[i])
        self.received[i] += size

    def rows_received(self, i: int) -> int:
        """Whole rows (along axis 0) of tensor i that have arrived."""
        m = self.metas[i]
        row_bytes = m.nbytes // m.shape[0] if m.shape and m.shape[0] else 0
        return m.shape[0] if row_bytes == 0 else self.received[i] // row_bytes

    def complete(self) -> bool:
        return all(r == m.nbytes for r, m in zip(self.received, self.metas))

    def array(self, i: int) -> np.ndarray:
        """Tensor i as an array (its rows arrived so far are valid)."""
        m = self.metas[i]
        return self._buffers[i].view(m.dtype).reshape(m.shape)

    def finish(self) -> dict[str, np.ndarray]:
        """Check every byte arrived and matches its checksum; return the arrays by name."""
        return {h.name: a for h, a in zip(self.headers, self.finish_list())}

    def finish_list(self) -> list[np.ndarray]:
        """`finish`, as a list in header order (for streams whose names repeat)."""
        for h, m, got, crc in zip(self.headers, self.metas, self.received, self._crc):
            if got != m.nbytes:
                raise InvalidInput(f"tensor {h.name!r}: stream ended after {got} of {m.nbytes} bytes")
            if h.HasField("crc32c") and crc is not None and crc != h.crc32c:
                raise InvalidInput(f"tensor {h.name!r}: checksum mismatch (crc32c {crc:#010x}, header says "
                                   f"{h.crc32c:#010x}); the data was corrupted or the header is wrong")
        return [self.array(i) for i in range(len(self.headers))]


def encode_params(params: dict[str, Any]) -> dict[str, job_pb2.Param]:
    out = {}
    for key, value in params.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = job_pb2.Param(bool_value=bool(value))
        elif isinstance(value, (int, np.integer)):
            out[key] = job_pb2.Param(int_value=int(value))
        elif isinstance(value, (float, np.floating)):
            out[key] = job_pb2.Param(float_value=float(value))
        elif isinstance(value, str):
            out[key] = job_pb2.Param(string_value=value)
        else:
            values = np.asarray(value)
            if values.ndim != 1 or values.dtype.kind not in "iuf":
                raise InvalidInput(f"parameter {key!r}: expected a number, string, bool or 1-D list of numbers; "
                                   f"got {value!r}")
            if values.dtype.kind == "f":
                out[key] = job_pb2.Param(float_list=job_pb2.FloatList(values=values.tolist()))
            else:
                out[key] = job_pb2.Param(int_list=job_pb2.IntList(values=values.tolist()))
    return out


def decode_params(params) -> dict[str, Any]:
    out = {}
    for key, p in params.items():
        kind = p.WhichOneof("value")
        if kind is None:
            raise InvalidInput(f"parameter {key!r} has no value")
        value = getattr(p, kind)
        out[key] = list(value.values) if kind in ("int_list", "float_list") else value
    return out


def device_to_proto(info: DeviceInfo) -> coordinator_service_pb2.DeviceInfo:
    return coordinator_service_pb2.DeviceInfo(name=info.name, kind=info.kind, description=info.description,
                                              memory_bytes=info.memory_bytes, ops=info.ops,
                                              throughput=info.throughput)


def device_from_proto(message) -> DeviceInfo:
    return DeviceInfo(message.name, message.kind, message.description, message.memory_bytes, list(message.ops),
                      dict(message.throughput))
