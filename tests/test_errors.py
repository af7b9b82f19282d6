"""Bad input gets INVALID_ARGUMENT naming the problem, and the servers stay up."""
import grpc
import numpy as np
import pytest

from lepton import wire
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc, job_pb2, tensor_pb2
from waits import wait_for


@pytest.fixture(scope="module")
def stub(clusters):
    channel = clusters[2].channel()
    yield pb_grpc.CoordinatorServiceStub(channel)
    channel.close()


def submit(stub, op, header, chunks, params=None):
    spec = job_pb2.JobSpec(op=op, params=wire.encode_params(params or {}),
                           inputs=[job_pb2.JobInput(name="x", tensor=header)])
    requests = [pb.SubmitJobRequest(spec=spec)] + [pb.SubmitJobRequest(chunk=c) for c in chunks]
    return list(stub.SubmitJob(iter(requests), timeout=30))


def valid(x):
    x = wire.little_endian(x)
    return wire.header("x", x), list(wire.chunks([x]))


X = np.arange(600_000, dtype=np.float32)  # 2.4 MB: three chunks


def chunk(offset, data):
    return tensor_pb2.TensorChunk(tensor_index=0, offset=offset, data=data)


CASES = {
    "unknown op": ("nope", *valid(X), {}, "unknown op 'nope'"),
    "dtype unset": ("sum", tensor_pb2.TensorHeader(name="x", shape=[4], total_bytes=16), [], {}, "dtype 0 is not set"),
    "byte count": ("sum", tensor_pb2.TensorHeader(name="x", dtype=1, shape=[4], total_bytes=20), [], {}, "needs 16"),
    "dtype unsupported": ("sum", *valid(X[:1000].astype(np.float16)), {}, "dtype float16"),
    "chunks out of order": ("sum", valid(X)[0], valid(X)[1][::-1], {}, "expected 0"),
    "chunks overlapping": ("sum", valid(X)[0], [valid(X)[1][0], valid(X)[1][0]], {}, "expected 1048576"),
    "chunk past the end": ("sum", valid(X)[0], [chunk(0, bytes(X.nbytes + 1))], {}, "past its total_bytes"),
    "short stream": ("sum", valid(X)[0], valid(X)[1][:1], {}, "stream ended after 1048576"),
    "corrupt bytes": ("sum", valid(X)[0], [chunk(c.offset, bytes(len(c.data))) for c in valid(X)[1]], {},
                      "checksum mismatch"),
    "histogram without bins": ("histogram", *valid(X), {}, "needs 'bins'"),
    "histogram without range": ("histogram", *valid(X), {"bins": 4}, "needs 'range'"),
    "empty input for min": ("min", *valid(np.zeros(0, np.float32)), {}, "needs at least one row"),
    "empty input for mean": ("mean", *valid(np.zeros((0, 3), np.float64)), {}, "needs at least one row"),
    "unknown parameter": ("sum", *valid(X), {"axis": 1}, "unknown parameter"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_invalid_argument(stub, clusters, case):
    op, header, chunks, params, message = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        submit(stub, op, header, chunks, params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert message in info.value.details()
    # ...and the cluster still serves correct results.
    assert clusters[2].client().sum(np.ones(10, np.float32)) == 10


def test_first_message_must_be_the_spec(stub):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.SubmitJob(iter([pb.SubmitJobRequest(chunk=chunk(0, b"x"))]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec" in info.value.details()


def test_unknown_job_and_oversized_job(stub, clusters):
    with pytest.raises(grpc.RpcError) as info:
        stub.GetJob(pb.GetJobRequest(job_id="job-999999"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no job" in info.value.details()
    huge = tensor_pb2.TensorHeader(name="x", dtype=1, shape=[1 << 40], total_bytes=4 << 40)
    with pytest.raises(grpc.RpcError) as info:
        submit(stub, "sum", huge, [])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-job-bytes" in info.value.details()


def test_no_agents_is_unavailable_with_a_hint():
    import lepton

    with lepton.LocalCluster(agents=0) as cluster:
        with pytest.raises(lepton.LeptonError) as info:
            cluster.client().sum(np.ones(4))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and "lepton agent" in info.value.details


def test_cancel_stops_a_job(clusters):
    import lepton

    client = clusters[1].client()
    x = np.zeros(50_000_000, dtype=np.float32)  # 200 MB: takes about a second to stream
    job = client.submit("sum", x)
    job_id = job.job_id
    job.cancel()
    with pytest.raises(lepton.LeptonError) as info:
        job.result(timeout=30)
    assert info.value.code == grpc.StatusCode.CANCELLED
    assert client.job(job_id).state == job_pb2.JOB_STATE_CANCELLED
    assert client.sum(np.ones(3, np.float32)) == 3


def test_memory_limit_of_active_jobs_is_resource_exhausted():
    import lepton

    with lepton.LocalCluster(agents=1, coordinator_args=["--max-active-mib", "10"],
                             agent_args=["--test-delay", "0.2"]) as cluster:
        # Streamed: the limit is on input the coordinator holds in its own heap (inputs in shared
        # memory stay in the client's memfd, tests/test_shared_memory.py).
        client = cluster.client(shared_memory=False)
        first = client.submit("sum", np.ones(1_000_000), partitions=20)  # 8 MB, held while it runs
        assert first.job_id
        with pytest.raises(lepton.LeptonError) as info:
            client.sum(np.ones(500_000))  # 4 MB more: over 10 MiB
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-active-mib" in info.value.details
        assert first.result()["sum"] == 1_000_000
        assert client.sum(np.ones(500_000)) == 500_000  # room again


def test_no_result_before_the_input_is_verified(stub):
    """Every partition may be done before the stream ends; the checksum still decides."""
    header, chunks = valid(X)
    chunks[-1] = chunk(chunks[-1].offset, bytes(len(chunks[-1].data)))  # corrupt the last chunk
    spec = job_pb2.JobSpec(op="sum", inputs=[job_pb2.JobInput(name="x", tensor=header)])
    accepted, finished = [], []

    def requests():
        yield pb.SubmitJobRequest(spec=spec)
        for c in chunks:
            yield pb.SubmitJobRequest(chunk=c)

        def all_done():
            if not accepted:
                return None
            status = stub.GetJob(pb.GetJobRequest(job_id=accepted[0]), timeout=10).job
            return status if 0 < status.partitions_total == status.partitions_done else None

        try:  # end the stream only once every partition is done
            finished.append(wait_for(all_done, "every partition to be done"))
        except AssertionError:
            pass  # `assert finished` below says so, once the stream has ended

    seen = []
    with pytest.raises(grpc.RpcError) as info:
        for response in stub.SubmitJob(requests(), timeout=90):
            seen.append(response.WhichOneof("event"))
            if response.HasField("accepted"):
                accepted.append(response.accepted.job_id)
    assert finished, f"the partitions never all finished: {seen}"
    assert "done" not in seen and "result_header" not in seen  # no result before the checksum
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "checksum" in info.value.details()


def test_an_op_no_device_offers_is_failed_precondition_with_advice(tmp_path):
    import lepton
    from opencl_devices import usable_opencl_device

    cl_device, spec = usable_opencl_device()
    from lepton.backends.opencl import OpenCLDevice, ProgramCache, export_binaries, reductions

    # An OpenCL device running prebuilt binaries offers only the ops they cover: here the float sum.
    device = OpenCLDevice(cl_device, "export", cache=ProgramCache(tmp_path / "cache"), calibrate=False)
    try:
        sum_variant = reductions.variant(device, "sum", np.float32, "flat")
        manifest = export_binaries(device, [sum_variant], tmp_path / "binaries")
    finally:
        device.close()
    with lepton.LocalCluster(agents=1, devices=f"{spec}@{manifest}") as cluster:
        with pytest.raises(lepton.LeptonError) as info:
            cluster.client().topk(np.arange(10.0), k=2)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "topk" in info.value.details and "lepton devices" in info.value.details
