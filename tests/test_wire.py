"""Tensors on the wire: every dtype and shape round-trips, and every malformed stream is refused."""
import numpy as np
import pytest

from lepton.errors import InvalidInput, ResourceExhausted
from lepton import wire
from lepton.v1 import tensor_pb2


def roundtrip(arrays):
    arrays = [wire.little_endian(a) for a in arrays]
    assembler = wire.TensorAssembler([wire.header(f"t{i}", a) for i, a in enumerate(arrays)])
    for chunk in wire.chunks(arrays):
        assert len(chunk.data) <= wire.CHUNK_BYTES
        assembler.add(chunk)
    return list(assembler.finish().values())


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "int8", "uint8", "float16", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 0, 3), ((3 << 20) // 8 + 5,)])
def test_roundtrip(dtype, shape):
    a = (np.arange(int(np.prod(shape))).reshape(shape) % 7).astype(dtype)
    (b,) = roundtrip([a])
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_big_endian_input_arrives_little_endian():
    a = np.arange(10, dtype=">f8")
    (b,) = roundtrip([a])
    assert b.dtype == np.dtype("<f8") and np.array_equal(a, b)


def test_chunks_are_at_most_one_mib():
    a = np.zeros(5 << 20, dtype=np.uint8)
    sizes = [len(c.data) for c in wire.chunks([a])]
    assert max(sizes) == wire.CHUNK_BYTES and sum(sizes) == a.nbytes


def _stream(a=None):
    a = np.arange(1 << 19, dtype=np.float32) if a is None else a  # 2 MiB: two chunks
    return wire.TensorAssembler([wire.header("x", a)]), list(wire.chunks([a]))


@pytest.mark.parametrize("mutate, message", [
    (lambda c: [c[1], c[0]], "expected 0"),                        # out of order
    (lambda c: [c[0], c[0]], "expected 1048576"),                  # overlapping (repeated)
    (lambda c: [c[0], tensor_pb2.TensorChunk(tensor_index=0, offset=c[1].offset, data=c[1].data + b"x")],
     "past its total_bytes"),
    (lambda c: [tensor_pb2.TensorChunk(tensor_index=3, offset=0, data=b"x")], "tensor_index 3"),
])
def test_bad_chunks_are_refused(mutate, message):
    assembler, chunks = _stream()
    with pytest.raises(InvalidInput, match=message):
        for chunk in mutate(chunks):
            assembler.add(chunk)


def test_truncated_stream_and_bad_checksum_are_refused():
    assembler, chunks = _stream()
    assembler.add(chunks[0])
    with pytest.raises(InvalidInput, match="stream ended after"):
        assembler.finish()
    assembler, chunks = _stream()
    for chunk in chunks:
        assembler.add(tensor_pb2.TensorChunk(tensor_index=0, offset=chunk.offset, data=bytes(len(chunk.data))))
    with pytest.raises(InvalidInput, match="checksum mismatch"):
        assembler.finish()


@pytest.mark.parametrize("header, message", [
    (tensor_pb2.TensorHeader(name="x", dtype=0, shape=[4], total_bytes=16), "dtype 0 is not set"),
    (tensor_pb2.TensorHeader(name="x", dtype=1, shape=[4], total_bytes=15), "needs 16"),
    (tensor_pb2.TensorHeader(name="x", dtype=1, shape=[-1], total_bytes=0), "negative"),
])
def test_bad_headers_are_refused(header, message):
    with pytest.raises(InvalidInput, match=message):
        wire.TensorAssembler([header])


def test_size_limit_is_resource_exhausted():
    header = wire.header("x", np.zeros(100, dtype=np.float64))
    with pytest.raises(ResourceExhausted, match="at most 100"):
        wire.TensorAssembler([header], max_bytes=100)


def test_params_roundtrip():
    params = {"bins": 5, "range": [0.0, 1.5], "edges": [1, 2, 3], "flag": True, "name": "a", "scale": 0.5, "none": []}
    assert wire.decode_params(wire.encode_params(params)) == params


def test_checksum_is_optional_for_other_clients():
    a = np.arange(10, dtype=np.int64)
    h = wire.header("x", a)
    h.ClearField("crc32c")
    assembler = wire.TensorAssembler([h])
    for chunk in wire.chunks([a]):
        assembler.add(chunk)
    assert np.array_equal(assembler.finish()["x"], a)


def test_framed_chunks_parse_by_hand_as_protobuf_parses_them():
    """The servers' hand parser of chunk messages (wire.chunk_request_parser) reads what the generated
    parser reads from every frame framed_chunks writes (first chunk: no index or offset fields; an
    empty tensor; a later tensor), as a view without a copy; any other message goes to protobuf,
    and one that does not parse still raises protobuf's error (the servers answer INVALID_ARGUMENT)."""
    from google.protobuf.message import DecodeError
    from lepton.v1 import coordinator_service_pb2 as pb

    parse = wire.chunk_request_parser(pb.PutDatasetRequest)
    a = np.arange(5 << 20, dtype=np.uint8)
    frames = list(wire.framed_chunks([a[:5], np.zeros(0, np.uint8), a, a[:3]]))
    assert len(frames) == 1 + 3 + 1
    for frame in frames:
        got, want = parse(frame), pb.PutDatasetRequest.FromString(frame)
        assert isinstance(got, wire.ChunkRequest) and got.HasField("chunk") and not got.HasField("spec")
        assert isinstance(got.chunk.data, memoryview)
        assert (got.chunk.tensor_index, got.chunk.offset, bytes(got.chunk.data)) == (
            want.chunk.tensor_index, want.chunk.offset, want.chunk.data)
    spec = pb.PutDatasetRequest(spec=pb.DatasetSpec(name="x")).SerializeToString()
    assert isinstance(parse(spec), pb.PutDatasetRequest) and parse(spec).spec.name == "x"
    # A chunk whose tensor_index does not fit uint32: protobuf's reading (truncated), not ours.
    odd = pb.PutDatasetRequest.FromString(b"\x12\x08\x08" + bytes([0xFF] * 4) + b"\x1f\x1a\x00")
    assert parse(b"\x12\x08\x08" + bytes([0xFF] * 4) + b"\x1f\x1a\x00").chunk.tensor_index == odd.chunk.tensor_index
    for bad in (frames[0][:-1], frames[2][:3], b"\x12", b"\x12\x05\x08\x01\x10\x02\x7f"):
        with pytest.raises(DecodeError):
            parse(bad)


def test_hand_parsed_chunks_assemble_and_are_checked_like_any():
    from lepton.v1 import coordinator_service_pb2 as pb

    parse = wire.chunk_request_parser(pb.PutDatasetRequest)
    a = np.random.default_rng(1).standard_normal(3 << 18).astype(np.float32)  # 3 MiB: two frames
    assembler = wire.TensorAssembler([wire.header("x", a)])
    for frame in wire.framed_chunks([a]):
        assembler.add(parse(frame).chunk)
    assert np.array_equal(assembler.finish()["x"], a)
    bad = wire.TensorAssembler([wire.header("x", a + 1)])
    for frame in wire.framed_chunks([a]):
        bad.add(parse(frame).chunk)
    with pytest.raises(InvalidInput, match="checksum mismatch"):
        bad.finish()
