"""A sum over 10^8 float32 values streams through with no gRPC message over 4 MiB."""
import grpc
import numpy as np
import pytest

from lepton.client import Client
from references import assert_matches

FOUR_MIB = 4 << 20


class MessageSizes(grpc.StreamStreamClientInterceptor):
    """Records the largest message each way on the client's streams."""

    def __init__(self):
        self.sent = self.received = 0

    def intercept_stream_stream(self, continuation, details, requests):
        def measured(messages):
            for m in messages:  # messages, or requests the client framed by hand (bytes)
                self.sent = max(self.sent, len(m) if isinstance(m, bytes) else m.ByteSize())
                yield m
        call = continuation(details, measured(requests))
        interceptor = self

        class Measured:
            def __iter__(self):
                for m in call:
                    interceptor.received = max(interceptor.received, m.ByteSize())
                    yield m

            def __getattr__(self, name):
                return getattr(call, name)
        return Measured()


@pytest.mark.slow  # about 15 s: 400 MB through the cluster
def test_sum_of_1e8_float32_streams_in_small_messages(clusters):
    x = np.random.default_rng(1).random(100_000_000, dtype=np.float32)
    sizes = MessageSizes()
    client = clusters[2].client(timeout=300, shared_memory=False)  # streamed: the messages are the point
    # Servers and this client keep gRPC's default 4 MiB receive limit: a bigger message would fail.
    client._bind(grpc.intercept_channel(client._channel, sizes))
    job = client.submit("sum", x)
    total = job.result()["sum"]
    assert_matches("sum", x, {"sum": total})
    assert job.status.partitions_total >= 40  # 400 MB in 8 MiB partitions
    assert 1 << 20 < sizes.sent < FOUR_MIB and sizes.received < FOUR_MIB
    client.close()
