"""Malformed and adversarial request streams for every Lepton RPC, for tests/test_fuzz.py.

Three kinds, drawn from one seeded `random.Random` so a failure can be replayed:
  - random bytes as the serialized request;
  - random messages built by walking the request's protobuf descriptor (every field type, NaN and
    Inf doubles, negative and huge integers, strings up to 1 MB, nested messages to a depth limit),
    serialized with unknown fields appended now and then;
  - valid streams with one mutation: specs with lying sizes, chunks past the end or overlapping,
    dtype and shape mismatches, many tiny chunks, NaN and Inf data, names of 1 MB.
Each input is (service, method, [serialized request, ...]); a unary call gets the first request.
"""
from __future__ import annotations

import math
import random
import struct
from typing import Iterator

import numpy as np
from google.protobuf import descriptor as d

from lepton import wire
from lepton.v1 import agent_service_pb2 as agent_pb, coordinator_service_pb2 as coord_pb, job_pb2, tensor_pb2

MAX_DEPTH = 4
# What one random message may hold. Unbounded, repeated nested fields multiply (200 devices of 200
# throughputs of 1 MB names...) into messages of 300 MB that took seconds each to build, so the
# fuzzer spent nine tenths of its time in this module, and that the servers' 8 MiB limit turned
# away before any servicer saw them. Under the bound one input in a few still carries a 1 MB name.
MAX_VALUES, MAX_BYTES = 2000, 3 << 20
Input = tuple[str, str, list[bytes]]

INTS = [0, 1, -1, 2, 7, 2**31 - 1, -2**31, 2**62, -2**62, 10**9]
FLOATS = [0.0, -0.0, 1.0, -1.5, math.nan, math.inf, -math.inf, 1e308, 5e-324]


def _string(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.05:
        return "n" * (1 << 20)  # a name of 1 MB
    if kind < 0.25:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind < 0.35:
        return rng.choice(["sum", "var", "matmul", "kmeans", "histogram", "topk", "x", "a", "ds:", "blob:"])
    return "".join(rng.choice("abcxyz019:._-/ \x00\n") for _ in range(rng.randrange(0, 20)))


def _scalar(field: d.FieldDescriptor, rng: random.Random):
    t = field.type
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return rng.choice(FLOATS) if rng.random() < 0.6 else rng.uniform(-1e6, 1e6)
    if t == d.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == d.FieldDescriptor.TYPE_STRING:
        return _string(rng)
    if t == d.FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 3, 17, 4096, 1 << 16]))
    if t == d.FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return rng.choice(values + [99, -1])
    unsigned = t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED32,
                     d.FieldDescriptor.TYPE_FIXED64)
    bits = 32 if t in (d.FieldDescriptor.TYPE_INT32, d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_SINT32,
                       d.FieldDescriptor.TYPE_FIXED32, d.FieldDescriptor.TYPE_SFIXED32) else 64
    value = rng.choice(INTS) if rng.random() < 0.7 else rng.randrange(-2**20, 2**20)
    if unsigned:
        value = abs(value) % (1 << bits)
    else:
        value = max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, value))
    return value


class Budget:
    """The values and bytes a random message may still take (MAX_VALUES, MAX_BYTES)."""

    def __init__(self):
        self.values, self.bytes = MAX_VALUES, MAX_BYTES

    def take(self, value) -> bool:
        """Whether `value` still fits; it is counted if so."""
        size = len(value) if isinstance(value, (str, bytes)) else 8
        if self.values <= 0 or size > self.bytes:
            return False
        self.values, self.bytes = self.values - 1, self.bytes - size
        return True


def random_message(cls, rng: random.Random, depth: int = 0, budget: Budget | None = None):
    """A message of type `cls` with random values in a random subset of its fields, within `budget`."""
    message = cls()
    budget = budget or Budget()
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.4 or budget.values <= 0:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(message, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(rng.randrange(0, 3)):
                key = _string(rng)[:50]
                if value_field.message_type is not None:
                    if depth < MAX_DEPTH and budget.take(key):
                        target[key].CopyFrom(random_message(target[key].__class__, rng, depth + 1, budget))
                else:
                    value = _scalar(value_field, rng)
                    if budget.take(key) and budget.take(value):
                        target[key] = value
            continue
        repeated = field.is_repeated
        count = rng.choice([1, 2, 5, 200]) if repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= MAX_DEPTH or not budget.take(b""):
                    break
                sub = random_message(getattr(message, field.name).__class__ if not repeated else
                                     type(getattr(message, field.name).add()), rng, depth + 1, budget)
                if repeated:
                    getattr(message, field.name)[-1].CopyFrom(sub)
                else:
                    getattr(message, field.name).CopyFrom(sub)
                continue
            value = _scalar(field, rng)
            if not budget.take(value):
                break
            if repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
    return message


def unknown_fields(rng: random.Random) -> bytes:
    """Fields no Lepton message declares: varint, fixed64 and length-delimited, under big tags."""
    tag = rng.randrange(1000, 1 << 20)
    kind = rng.choice([0, 1, 2])
    key = _varint(tag << 3 | kind)
    if kind == 0:
        return key + _varint(rng.randrange(1 << 60))
    if kind == 1:
        return key + struct.pack("<d", rng.choice(FLOATS))
    body = rng.randbytes(rng.randrange(0, 64))
    return key + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- valid streams, then one mutation ---------------------------------------------------------
def _job(array: np.ndarray, op: str = "sum", name: str = "x", params=None):
    array = wire.little_endian(array)
    spec = job_pb2.JobSpec(op=op, params=wire.encode_params(params or {}),
                           inputs=[job_pb2.JobInput(name=name, tensor=wire.header(name, array))])
    return spec, list(wire.chunks([array]))


def mutated_submit(rng: random.Random) -> list[bytes]:
    x = rng.choice([np.arange(1000, dtype=np.float32), np.full((50, 3), np.nan), np.array([np.inf, -np.inf, 1.0]),
                    np.zeros(0, np.float64), np.arange(12, dtype=np.int64).reshape(3, 4)])
    op = rng.choice(["sum", "var", "histogram", "topk", "matmul", "kmeans", "nope", ""])
    params = rng.choice([{}, {"bins": 4, "range": [0.0, 1.0]}, {"k": -3}, {"k": 10**9}, {"bins": 0}])
    spec, chunks = _job(x, op, params=params)
    mutation = rng.randrange(9)
    header = spec.inputs[0].tensor
    if mutation == 0:
        header.total_bytes = header.total_bytes * rng.choice([2, 1000]) + rng.randrange(1, 9)  # lying size
    elif mutation == 1:
        header.shape[:] = [rng.choice([1, 7, 2**40, -5])]  # shape against bytes
    elif mutation == 2:
        header.dtype = rng.choice([tensor_pb2.DATA_TYPE_INT8, tensor_pb2.DATA_TYPE_BOOL, 0, 77])
    elif mutation == 3 and chunks:
        chunks[-1].offset += rng.choice([1, 4096, 1 << 40])  # past the end, or a gap
    elif mutation == 4 and chunks:
        chunks.append(chunks[-1])  # an overlap
    elif mutation == 5:  # many tiny chunks
        raw = bytes(chunks[0].data) if chunks else b""
        chunks = [tensor_pb2.TensorChunk(tensor_index=0, offset=i, data=raw[i:i + 1]) for i in range(len(raw))]
    elif mutation == 6 and chunks:
        chunks[0].tensor_index = rng.choice([1, 99, 2**31])
    elif mutation == 7:
        spec.inputs[0].name = "x" * (1 << 20)
    elif mutation == 8:
        header.crc32c = rng.randrange(1 << 32)
    messages = [coord_pb.SubmitJobRequest(spec=spec).SerializeToString()]
    messages += [coord_pb.SubmitJobRequest(chunk=c).SerializeToString() for c in chunks]
    if rng.random() < 0.2:
        messages.insert(1, coord_pb.SubmitJobRequest(spec=spec).SerializeToString())  # a second spec
    return messages


def mutated_put(rng: random.Random) -> list[bytes]:
    x = rng.choice([np.arange(400, dtype=np.float32).reshape(100, 4), np.full(10, np.nan), np.zeros(0)])
    x = wire.little_endian(x)
    spec = coord_pb.DatasetSpec(name=rng.choice(["fz", "bad name!", "", "d" * (1 << 20), "../../etc"]),
                                tensor=wire.header("x", x), replace=rng.random() < 0.5)
    chunks = list(wire.chunks([x]))
    if rng.random() < 0.5:
        spec.tensor.total_bytes += rng.choice([1, 8, 1 << 30])
    if chunks and rng.random() < 0.3:
        chunks[-1].offset = -chunks[-1].offset - 1
    return [coord_pb.PutDatasetRequest(spec=spec).SerializeToString()] + \
        [coord_pb.PutDatasetRequest(chunk=c).SerializeToString() for c in chunks]


def mutated_run_task(rng: random.Random) -> list[bytes]:
    x = wire.little_endian(rng.choice([np.arange(64, dtype=np.float64), np.full(8, np.inf, np.float32)]))
    task = agent_pb.Task(job_id="fz", op=rng.choice(["sum", "var", "matmul", "nope"]),
                         first_partition=rng.choice([0, 5, -1, 2**31 - 1]),
                         partition_count=rng.choice([1, 4, 0, -2]), tree_arity=rng.choice([8, 1, 0, -1]),
                         partitions=[agent_pb.TaskPartition(inputs=[agent_pb.TaskInput(
                             tensor=wire.header("x", x), cache_key=rng.choice(["", "k", "ds:a:1:0"]),
                             by_reference=rng.random() < 0.3)], row_offset=rng.choice([0, -9, 2**62]))])
    chunks = list(wire.chunks([x]))
    if rng.random() < 0.4:
        task.partitions[0].inputs[0].tensor.total_bytes *= 3
    return [agent_pb.RunTaskRequest(task=task).SerializeToString()] + \
        [agent_pb.RunTaskRequest(chunk=c).SerializeToString() for c in chunks[:rng.randrange(0, 3)]]


def mutated_cache(rng: random.Random) -> list[bytes]:
    x = wire.little_endian(np.arange(rng.choice([0, 10, 1000]), dtype=np.int32))
    header = agent_pb.CacheTensorsHeader(tensors=[agent_pb.TaskInput(tensor=wire.header("w", x),
                                                                     cache_key=_string(rng)[:100])])
    chunks = list(wire.chunks([x]))
    if rng.random() < 0.5:
        header.tensors[0].tensor.total_bytes += rng.choice([4, 1 << 33])
    return [agent_pb.CacheTensorsRequest(header=header).SerializeToString()] + \
        [agent_pb.CacheTensorsRequest(chunk=c).SerializeToString() for c in chunks]


MUTATED = {("lepton.v1.CoordinatorService", "SubmitJob"): mutated_submit,
           ("lepton.v1.CoordinatorService", "PutDataset"): mutated_put,
           ("lepton.v1.AgentService", "RunTask"): mutated_run_task,
           ("lepton.v1.AgentService", "CacheTensors"): mutated_cache}

FILES = [coord_pb.DESCRIPTOR, agent_pb.DESCRIPTOR]


def methods(services: set[str]) -> list[tuple[str, d.MethodDescriptor]]:
    """Every method of the named services, found by walking the descriptors."""
    return [(service.full_name, method) for file in FILES for service in file.services_by_name.values()
            if service.full_name in services for method in service.methods]


def inputs(rng: random.Random, services: set[str]) -> Iterator[Input]:
    """An endless, reproducible stream of fuzz inputs for `services`."""
    from google.protobuf import message_factory

    table = methods(services)
    while True:
        service, method = rng.choice(table)
        kind = rng.random()
        if kind < 0.15:
            requests = [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 4))]
        elif kind < 0.6 or (service, method.name) not in MUTATED:
            cls = message_factory.GetMessageClass(method.input_type)
            count = rng.randrange(1, 5) if method.client_streaming else 1
            requests = [random_message(cls, rng).SerializeToString() + (unknown_fields(rng) if rng.random() < 0.3
                                                                         else b"") for _ in range(count)]
        else:
            requests = MUTATED[(service, method.name)](rng)
        yield service, method, requests
