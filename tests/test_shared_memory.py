"""Shared memory on one host (lepton/sharedmem.py, ARCHITECTURE.md §7): a client's inputs and puts over
1 MiB go in a sealed memfd that the coordinator and the agents on its host map, instead of streaming.

Every result is compared bitwise with the same job streamed (shared_memory=False), which is the path
every other client takes: the partitions, the aggregation tree and the kernels are the same, only
where the bytes come from differs. Byte counters say which path ran; /proc says what is left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import lepton
from lepton import sharedmem, wire
from lepton.errors import FailedPrecondition
from lepton.v1 import coordinator_service_pb2 as pb, job_pb2, tensor_pb2
from waits import wait_for

pytestmark = pytest.mark.skipif(not sharedmem.enabled(), reason="needs Linux memfds and /proc")


def metric(address: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def sent_to_agents(client) -> float:
    return metric(client.cluster_status().metrics_address, "lepton_agent_bytes_sent_total")


def mapped_by_agents(client) -> float:
    return sum(metric(a.metrics_address, "lepton_agent_shared_input_bytes_total")
               for a in client.cluster_status().agents)


def memfds(pid: int) -> list[str]:
    """Lepton memfds process `pid` holds open or maps."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("/memfd:lepton-"):
                found.append(link)
        found += [line.split()[-2] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                  if "/memfd:lepton-" in line]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def memfd_names(pid: int) -> set[str]:
    """The Lepton memfds process `pid` holds or maps, each once (a mapping holds a descriptor too)."""
    return {m.split()[0] for m in memfds(pid)}


def memfd_bytes(pid: int) -> int:
    """Bytes of Lepton memfds process `pid` maps."""
    total = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "/memfd:lepton-" in line:
            start, end = line.split()[0].split("-")
            total += int(end, 16) - int(start, 16)
    return total


def cluster_memfd_bytes(cluster) -> int:
    return sum(memfd_bytes(p.pid) for p in [cluster.coordinator, *cluster.agents] if p.poll() is None)


def cluster_memfds(cluster) -> list[str]:
    return [f"{name}: {m}" for name, p in [("coordinator", cluster.coordinator),
                                          *((f"agent {i}", a) for i, a in enumerate(cluster.agents))]
            if p.poll() is None for m in memfds(p.pid)]


def no_memfd_left(cluster, timeout: float = 60) -> None:
    try:
        wait_for(lambda: not cluster_memfds(cluster), "no memfd left in the cluster", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still held: {cluster_memfds(cluster)}") from None


def shm_files_mapped(cluster) -> list[str]:
    """Files under /dev/shm that a process of the cluster maps (Lepton makes none)."""
    return [line.split()[-1] for p in [cluster.coordinator, *cluster.agents] if p.poll() is None
            for line in Path(f"/proc/{p.pid}/maps").read_text().splitlines() if "/dev/shm/" in line]


@pytest.fixture(scope="module")
def own():
    with lepton.LocalCluster(agents=2) as cluster:
        yield cluster


def test_jobs_from_shared_memory_are_bitwise_the_streamed_ones(own, rng):
    shared, streamed = own.client(timeout=300), own.client(timeout=300, shared_memory=False)
    x = rng.standard_normal((600_000, 8)).astype(np.float32)  # 19 MiB: 3 partitions of 8 MiB
    b = rng.standard_normal((8, 16)).astype(np.float32)
    indptr = np.arange(0, 2 * 300_001, 2, dtype=np.int64)  # 300k rows of 2 non-zeros
    first = rng.integers(0, 500, size=300_000)
    indices = np.stack([first, first + 1 + rng.integers(0, 499, size=300_000)], axis=1).reshape(-1).astype(np.int32)
    values = rng.standard_normal(600_000).astype(np.float32)
    dense = rng.standard_normal((1000, 32)).astype(np.float32)

    def jobs(client):
        return {"describe": client.describe(x), "gram": client.gram(x)["xtx"], "matmul": client.matmul(x, b),
                "spmm": client.spmm((indptr, indices, values, (300_000, 1000)), dense)}

    sent, mapped = sent_to_agents(shared), mapped_by_agents(shared)
    ours = jobs(shared)
    # The inputs went by where they lie, not as bytes; all but the CSR row offsets, which each run
    # rebases to its first row (a copy of 8 bytes a row).
    assert sent_to_agents(shared) - sent <= indptr.nbytes + (64 << 10)
    assert mapped_by_agents(shared) - mapped >= x.nbytes * 3 + values.nbytes
    # Afterwards no process holds a memfd: the agents cached no whole input (b, dense) that they can
    # map again for nothing, and dropped every view when their tasks ended (the device threads too,
    # which ran the last partitions).
    no_memfd_left(own)
    # This process maps only its two large row-block results (matmul, spmm: written in place into
    # memfds of its own, test_row_block_results_...); no input memfd is left.
    assert len(memfd_names(os.getpid())) == 2
    theirs = jobs(streamed)
    assert sent_to_agents(shared) - sent >= x.nbytes * 3  # the streamed jobs did ship them
    for name in ours:
        for a, b_ in zip(ours[name].values() if isinstance(ours[name], dict) else [ours[name]],
                         theirs[name].values() if isinstance(theirs[name], dict) else [theirs[name]]):
            assert np.array_equal(a, b_), name  # bitwise: same partitions, same tree, same kernels
    # And right: sums within 1e-5 of sum |x| (float32 blocks, float64 partials), extremes exact.
    x64 = x.astype(np.float64)
    assert np.all(np.abs(ours["describe"]["sum"] - x64.sum(axis=0)) <= 1e-5 * np.abs(x64).sum(axis=0))
    assert np.array_equal(ours["describe"]["max"], x.max(axis=0))
    assert np.allclose(ours["gram"], x64.T @ x64, rtol=1e-4, atol=1e-4 * np.abs(x64).sum())
    assert np.allclose(ours["matmul"], x64 @ b, rtol=1e-4, atol=1e-4)
    rows = np.repeat(np.arange(300_000), 2)
    expected = np.zeros((300_000, 32))
    np.add.at(expected, rows, values[:, None].astype(np.float64) * dense[indices])
    assert np.allclose(ours["spmm"], expected, atol=1e-4)


def test_a_put_from_shared_memory_is_resident_and_bitwise_the_streamed_one(own, rng):
    shared, streamed = own.client(timeout=300), own.client(timeout=300, shared_memory=False)
    x = rng.standard_normal((2_000_000, 4)).astype(np.float32)  # 32 MiB, 4 partitions
    sent, mapped = sent_to_agents(shared), mapped_by_agents(shared)
    before = cluster_memfd_bytes(own)  # (the agents may still cache the whole inputs of other tests)
    ds = shared.put("shm-put", x, replace=True)
    assert sent_to_agents(shared) - sent == 0 and mapped_by_agents(shared) - mapped == x.nbytes
    assert len(ds.info.placement) == 2 and sum(ds.info.placement.values()) == 4, ds.info.placement
    # Streamed to the coordinator, the rows land in a memfd of its own (sharedmem.ReceiveBuffer) that
    # the agents on its host map once it is whole: no byte goes to them either.
    ref = streamed.put("streamed-put", x, replace=True)
    assert len(ref.info.placement) == 2 and sum(ref.info.placement.values()) == 4, ref.info.placement
    assert sent_to_agents(shared) - sent == 0 and mapped_by_agents(shared) - mapped == 2 * x.nbytes
    for op in ("sum", "min", "max", "var"):
        assert np.array_equal(shared.run(op, ds)[op], shared.run(op, ref)[op]), op
    assert sent_to_agents(shared) - sent == 0  # jobs ship nothing
    assert cluster_memfd_bytes(own) >= before + x.nbytes  # the agents' partitions are views of it
    shared.drop("shm-put")
    shared.drop("streamed-put")
    # The agents dropped their views and the coordinator wrote its copy: no memfd of the put is left.
    wait_for(lambda: cluster_memfd_bytes(own) <= before, "no memfd of the put left in the cluster", timeout=60)


def test_the_coordinator_holds_no_copy_of_a_put_from_shared_memory(own, rng):
    """The coordinator's private memory (RssAnon in /proc/PID/status, sampled every few ms while the
    put runs) grows by far less than the array: it maps the client's memfd, and the agents map
    theirs. A streamed put lands in a memfd of the coordinator's (its agents are on its host), so it
    does not grow either; the streamed job beside them, whose input the coordinator holds in its
    own memory, shows the measure sees a copy when there is one."""
    client, streamed = own.client(timeout=300), own.client(timeout=300, shared_memory=False)
    x = rng.standard_normal(64 << 20, dtype=np.float32)  # 256 MiB
    pid = own.coordinator.pid

    def anon_growth(put) -> int:
        def rss() -> int:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) << 10
            raise AssertionError("no RssAnon")
        base, peak, done = rss(), [0], threading.Event()

        def sample():
            while not done.wait(0.003):
                peak[0] = max(peak[0], rss())
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            put()
        finally:
            done.set()
            sampler.join()
        return max(peak[0], rss()) - base

    shared_growth = anon_growth(lambda: client.put("rss-shared", x, replace=True))
    client.drop("rss-shared")
    streamed_growth = anon_growth(lambda: streamed.put("rss-streamed", x, replace=True))
    client.drop("rss-streamed")
    job_growth = anon_growth(lambda: streamed.sum(x))
    assert shared_growth < 48 << 20, f"the coordinator's private memory grew by {shared_growth >> 20} MiB"
    assert streamed_growth < 48 << 20, f"a streamed put grew it by {streamed_growth >> 20} MiB"
    assert job_growth > x.nbytes // 2, f"the streamed job grew it by {job_growth >> 20} MiB only"


CLIENT = """
import sys, numpy as np, lepton
client = lepton.Client(sys.argv[1], token=sys.argv[2], timeout=600)
x = np.ones((1 << 24, 4), dtype=np.float32)  # 256 MiB
job = client.submit("sum", x, partitions=64)
print("submitted", flush=True)
job.result()
"""


def test_a_client_killed_mid_job_leaves_no_shared_memory(tmp_path):
    """Whoever dies, the memfd goes with the last process holding it: nothing is named in /dev/shm
    (other programs' files there, MPI's say, come and go: only Lepton's processes are looked at)."""
    with lepton.LocalCluster(agents=2, agent_args=["--test-delay", "0.05:0.1"]) as cluster:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, cluster.address, cluster.token], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "LEPTON_TOKEN": ""})
        try:
            assert proc.stdout.readline().strip() == "submitted"
            wait_for(lambda: cluster_memfds(cluster), "the cluster to map the input", timeout=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        # The coordinator sees the call end, cancels the job and closes its descriptor; the agents'
        # views go with their tasks.
        no_memfd_left(cluster, timeout=120)
        assert not shm_files_mapped(cluster)
        assert cluster.client(timeout=60).sum(np.ones(10)) == 10  # and the cluster still works
    assert not [n for n in os.listdir("/dev/shm") if "lepton" in n]


def test_an_agent_killed_mid_put_from_shared_memory_loses_nothing(rng):
    x = rng.standard_normal((4_000_000, 4)).astype(np.float32)  # 64 MiB, 8 partitions
    with lepton.LocalCluster(agents=2) as cluster:
        client = cluster.client(timeout=300)
        # SIGKILL the second agent as soon as it maps anything: the put goes on without it.
        agent = cluster.agents[1]
        killer = threading.Thread(target=lambda: wait_for(lambda: memfds(agent.pid), "the agent to map", timeout=60,
                                                          every=0.001) and agent.send_signal(signal.SIGKILL))
        killer.start()
        ds = client.put("killed", x, partitions=8)
        killer.join()
        agent.wait(30)
        total = client.sum(ds)  # partitions the dead agent held are sent again from the coordinator's copy
        x64 = x.astype(np.float64)
        assert np.all(np.abs(total - x64.sum(axis=0)) <= 1e-5 * np.abs(x64).sum(axis=0))
        assert np.array_equal(total, cluster.client(timeout=300, shared_memory=False).sum(x, partitions=8))
        client.drop("killed")
        no_memfd_left(cluster)


def test_a_receive_buffer_is_handed_on_only_whole_and_sealed():
    """A streamed put's ReceiveBuffer: found by the registry (so the put knows its partitions will go
    by reference) but not handed on while it fills; once its last byte is written it is sealed like
    a client's memfd (nothing can write, shrink or grow it), a receiver opens it, and it is handed on."""
    data = np.arange(3 << 18, dtype=np.float32)  # 3 MiB
    raw = data.view(np.uint8)
    buffer = sharedmem.registry.add(sharedmem.ReceiveBuffer(data.nbytes))
    try:
        view = buffer.map[:4096]
        buffer.write(raw[:2 << 20], 0)
        assert sharedmem.registry.locate(view) is None and sharedmem.registry.locate(view, filling=True)
        with pytest.raises(FailedPrecondition, match="not sealed"):
            sharedmem.SharedFile(sharedmem.host_id(), os.getpid(), buffer.fd, buffer.name)
        buffer.write(raw[2 << 20:], 2 << 20)
        assert buffer.sealed and sharedmem.registry.locate(view)["name"] == buffer.name
        assert np.array_equal(buffer.map.view(np.float32), data)
        import fcntl
        assert fcntl.fcntl(buffer.fd, fcntl.F_GET_SEALS) & sharedmem.SEALS == sharedmem.SEALS
        with pytest.raises(PermissionError):
            os.pwrite(buffer.fd, b"x", 0)
        opened = sharedmem.SharedFile(sharedmem.host_id(), os.getpid(), buffer.fd, buffer.name)
        assert np.array_equal(opened.view(0, data.nbytes).view(np.float32), data)
        opened.close()
    finally:
        buffer.close()
    assert sharedmem.registry.locate(view) is None


def test_a_bad_streamed_put_is_invalid_argument_and_leaves_no_memfd(own, rng):
    """A streamed put into a ReceiveBuffer (read ahead of the checks on a thread of its own) that goes
    wrong answers INVALID_ARGUMENT saying what: a checksum that does not match the bytes, a stream
    that ends short, a message other than a chunk after the spec. No dataset is left, and no memfd."""
    client = own.client(timeout=60, shared_memory=False)
    x = rng.standard_normal(1 << 22).astype(np.float32)  # 16 MiB: 2 partitions, 8 frames
    frames = list(wire.framed_chunks([x]))
    good, wrong = wire.header("x", x), wire.header("x", x)
    wrong.crc32c ^= 1
    spec = pb.PutDatasetRequest(spec=pb.DatasetSpec(name="bad-put")).SerializeToString()
    before = cluster_memfd_bytes(own)
    for message, header, sent in (("checksum mismatch", wrong, frames),
                                  ("stream ended after", good, frames[:-1]),
                                  ("only chunks may follow", good, frames[:3] + [spec] + frames[3:])):
        first = pb.PutDatasetRequest(spec=pb.DatasetSpec(name="bad-put", tensor=header)).SerializeToString()
        with pytest.raises(grpc.RpcError) as raised:
            client._put_raw(iter([first, *sent]), timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        assert message in raised.value.details()
    assert "bad-put" not in [d.info.name for d in client.datasets()]
    # (10 s: a reference cycle through the error's traceback once kept the put's memfd until a GC, 28 s)
    wait_for(lambda: cluster_memfd_bytes(own) <= before, "no memfd of the failed puts left", timeout=10)


def test_only_sealed_lepton_memfds_are_opened(tmp_path):
    """A receiver opens nothing but a sealed memfd of the name it was told: not a file, not an
    unsealed memfd, not another memfd of the right process."""
    host, pid = sharedmem.host_id(), os.getpid()
    secret = tmp_path / "secret"
    secret.write_bytes(b"k" * 4096)
    fd = os.open(secret, os.O_RDONLY)
    unsealed = os.memfd_create("lepton-" + "0" * 32, os.MFD_CLOEXEC)
    os.ftruncate(unsealed, 4096)
    with sharedmem.SharedArrays([np.arange(1000.0)]) as good:
        try:
            for bad_fd, name in ((fd, "lepton-" + "0" * 32), (unsealed, "lepton-" + "0" * 32),
                                 (good.fd, "lepton-" + "1" * 32), (good.fd, "../etc/passwd")):
                with pytest.raises(FailedPrecondition, match=sharedmem.UNAVAILABLE):
                    sharedmem.SharedFile(host, pid, bad_fd, name)
            with pytest.raises(FailedPrecondition, match="another host"):
                sharedmem.SharedFile("elsewhere:1", pid, good.fd, good.name)
            opened = sharedmem.SharedFile(host, pid, good.fd, good.name)
            assert np.array_equal(opened.view(0, 8000).view(np.float64), np.arange(1000.0))
            with pytest.raises(FailedPrecondition, match="outside"):
                opened.view(4096, 8192)
            opened.close()
        finally:
            os.close(fd)
            os.close(unsealed)


def test_a_job_naming_a_file_instead_of_shared_memory_gets_nothing_of_it(own, tmp_path):
    """The coordinator refuses a SharedBuffer that is not a sealed Lepton memfd: FAILED_PRECONDITION,
    saying shared memory is unavailable, and the file's bytes are never read into a job."""
    secret = tmp_path / "secret"
    secret.write_bytes(np.full(1 << 19, 7.0).tobytes())  # 4 MiB of sevens
    fd = os.open(secret, os.O_RDONLY)
    try:
        header = tensor_pb2.TensorHeader(name="x", dtype=tensor_pb2.DATA_TYPE_FLOAT64, shape=[1 << 19],
                                         total_bytes=4 << 20)
        buffer = tensor_pb2.SharedBuffer(host_id=sharedmem.host_id(), pid=os.getpid(), fd=fd,
                                         name="lepton-" + "0" * 32)
        spec = job_pb2.JobSpec(op="sum", inputs=[job_pb2.JobInput(name="x", shared=tensor_pb2.SharedTensor(
            tensor=header, buffer=buffer))])
        client = own.client(timeout=60)
        with pytest.raises(grpc.RpcError) as raised:
            for _ in client._stub.SubmitJob(iter([pb.SubmitJobRequest(spec=spec)]), timeout=60):
                pass
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert sharedmem.UNAVAILABLE in raised.value.details()
    finally:
        os.close(fd)


def test_a_client_elsewhere_streams(own, rng, monkeypatch):
    """A client whose host differs from the coordinator's never offers shared memory, and one whose
    shared memory the coordinator cannot open falls back to streaming, with the same result."""
    x = rng.standard_normal(1 << 20).astype(np.float32)
    expected = own.client(timeout=60, shared_memory=False).sum(x)
    client = own.client(timeout=60)
    monkeypatch.setattr(sharedmem, "_host_id", "another-host:1")  # this process now seems elsewhere
    assert client._share(x.nbytes) is None and np.array_equal(client.sum(x), expected)
    monkeypatch.undo()
    refused = own.client(timeout=60)
    refused._shared_memory = True  # as if the host ids matched, but the coordinator cannot open it:
    monkeypatch.setattr(sharedmem.SharedArrays, "buffer", lambda self, i: {
        "host_id": sharedmem.host_id(), "pid": self.pid, "fd": 999_999, "name": self.name, "offset": 0})
    assert np.array_equal(refused.sum(x), expected)
    assert refused._shared_memory is False


# -- results written in place (coordinator/results.py) ---------------------------------------------

def result_counters(client) -> dict[str, float]:
    """The coordinator's result byte counters: handed over in the client's memfd, streamed to clients,
    and partial bytes received from agents."""
    address = client.cluster_status().metrics_address
    return {"shared": metric(address, "lepton_result_shared_bytes_total"),
            "streamed": metric(address, "lepton_result_bytes_total"),
            "from_agents": metric(address, "lepton_agent_bytes_received_total")}


def written_by_agents(client) -> list[float]:
    return [metric(a.metrics_address, "lepton_agent_shared_result_bytes_total") for a in client.cluster_status().agents]


def grown(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def graph(rng, rows: int = 300_000, cols: int = 1000):
    """A CSR matrix of `rows` rows of 2 sorted non-zeros each, as the (indptr, indices, data, shape) input."""
    first = rng.integers(0, cols // 2, size=rows)
    indices = np.stack([first, first + 1 + rng.integers(0, cols // 2 - 1, size=rows)], axis=1).reshape(-1)
    return (np.arange(0, 2 * rows + 1, 2, dtype=np.int64), indices.astype(np.int32),
            rng.standard_normal(2 * rows).astype(np.float32), (rows, cols))


def test_row_block_results_are_written_in_place_bitwise_the_streamed_ones(own, rng):
    """matmul, linear and spmm results over 1 MiB: the agents write their rows into the client's own
    memfd and the client maps it (copy-on-write); not a byte of them travels, and the arrays are
    bitwise those of the same jobs streamed, and NumPy's within float32 rounding."""
    shared, streamed = own.client(timeout=300), own.client(timeout=300, shared_memory=False)
    a = rng.standard_normal((300_000, 16)).astype(np.float32)  # 18 MiB: 3 partitions
    w = rng.standard_normal((16, 24)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    csr, dense = graph(rng), rng.standard_normal((1000, 32)).astype(np.float32)

    def jobs(client):
        return {"matmul": client.matmul(a, w), "linear": client.linear(a, w, bias, activation="relu"),
                "spmm": client.spmm(csr, dense)}

    before = result_counters(shared)
    ours = jobs(shared)
    moved = grown(before, result_counters(shared))
    nbytes = sum(r.nbytes for r in ours.values())
    assert moved["shared"] == nbytes and moved["streamed"] == 0
    assert moved["from_agents"] < 64 << 10  # the partials said "written", nothing more
    assert sum(written_by_agents(shared)) >= nbytes
    no_memfd_left(own)  # the coordinator and the agents closed theirs; this process maps its results
    assert len(memfd_names(os.getpid())) == 3
    theirs = jobs(streamed)
    assert grown(before, result_counters(shared))["streamed"] >= nbytes
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name]), name
    a64 = a.astype(np.float64)
    assert np.allclose(ours["matmul"], a64 @ w, rtol=1e-4, atol=1e-4)
    assert np.allclose(ours["linear"], np.maximum(a64 @ w + bias, 0), rtol=1e-4, atol=1e-4)
    indptr, indices, values, (rows, _) = csr
    expected = np.zeros((rows, 32))
    np.add.at(expected, np.repeat(np.arange(rows), 2), values[:, None].astype(np.float64) * dense[indices])
    assert np.allclose(ours["spmm"], expected, atol=1e-4)
    # The array is the caller's to change, like a streamed one; its pages are then its own.
    ours["matmul"][0, 0] += 1
    assert ours["matmul"][0, 0] == theirs["matmul"][0, 0] + 1
    del ours  # and the memory goes with the arrays
    assert not memfds(os.getpid())


def test_each_partition_is_written_once_and_nothing_after_the_seal(tmp_path):
    """The claims (sharedmem.ResultFile.claim_write): the first writer of a partition wins and a later
    one (a speculative copy, a retry) writes nothing over it; a writer killed half-way, still holding
    the partition's lock, leaves it to the next one; once sealed, no writer can change a byte."""
    host, pid, page = sharedmem.host_id(), os.getpid(), 4096
    memory = sharedmem.ResultMemory()
    first = sharedmem.ResultFile(host, pid, memory.fd, memory.name, fresh=True)
    first.resize(page + 3 * page)  # claims, then 3 partitions of one page of float32 each
    late = sharedmem.ResultFile(host, pid, memory.fd, memory.name)  # another writer: its own open file
    with pytest.raises(FailedPrecondition, match="not empty"):
        sharedmem.ResultFile(host, pid, memory.fd, memory.name, fresh=True)
    ones, twos = np.full(1024, 1.0, np.float32), np.full(1024, 2.0, np.float32)
    assert first.claim_write(0, page, ones) is True
    assert late.claim_write(0, page, twos) is False  # written before: nothing written over it
    # A writer that took partition 1's lock, wrote half its rows and stopped (then dies).
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, struct, sys
fd = os.open("/proc/{pid}/fd/{memory.fd}", os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack({sharedmem._FLOCK!r}, fcntl.F_WRLCK, 0, 1, 1, 0))
os.pwrite(fd, b"\\xff" * 2048, {2 * page})
print("locked", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert late.claim_write(1, 2 * page, twos) is None  # busy: its rows are not there
    finally:
        holder.kill()
        holder.wait(30)
    assert late.claim_write(1, 2 * page, twos) is True  # the dead writer's lock went with it
    assert late.claim_write(2, 3 * page, twos) is True
    assert first.seal()
    with pytest.raises(PermissionError):
        os.pwrite(late.fd, b"\x00", page)  # a straggler's raw write fails
    assert late.claim_write(2, 3 * page, ones) is False
    result = memory.array(tensor_pb2.SharedBuffer(**{**memory.buffer(), "offset": page}), np.dtype(np.float32), (3, 1024))
    assert np.array_equal(result, np.stack([ones, twos, twos]))
    result[0, 0] = 7  # copy-on-write: the memfd keeps its bytes
    assert np.frombuffer(os.pread(late.fd, 4, page), np.float32)[0] == 1.0
    for f in (first, late, memory):
        f.close()


def test_an_agent_killed_mid_job_leaves_a_whole_shared_result(rng):
    a = rng.standard_normal((400_000, 8)).astype(np.float32)  # 12 MiB in 32 partitions
    w = rng.standard_normal((8, 16)).astype(np.float32)  # 24 MiB out
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", "0.05:0.15"]) as cluster:
        client = cluster.client(timeout=300)
        before = result_counters(client)
        job = client.submit("matmul", {"a": a, "b": w}, partitions=32)
        wait_for(lambda: job.status is not None and job.status.partitions_done >= 8, "a quarter of the partitions")
        cluster.kill_agent(1)
        got = job.result()["c"]
        assert job.status.partitions_done == 32
        assert grown(before, result_counters(client))["shared"] == got.nbytes  # it was written in place
        expected = cluster.client(timeout=300, shared_memory=False).matmul(a, w, partitions=32)
        assert np.array_equal(got, expected)  # bitwise: retried partitions were written whole, once
        assert np.allclose(got, a.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)
        no_memfd_left(cluster)


def test_rows_from_an_agent_without_shared_memory_are_written_by_the_coordinator(rng):
    """One agent writes in place, the other cannot (LEPTON_SHARED_MEMORY=0: as if on another host) and
    sends its rows; the coordinator writes those into the same memfd, and the result is still handed
    over in place, bitwise the streamed one. A client that offers no memfd gets it streamed."""
    a = rng.standard_normal((200_000, 8)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    with lepton.LocalCluster(agents=1, agent_args=["--test-delay", "0.02:0.05"]) as cluster:
        cluster._agent_env = {**cluster._agent_env, "LEPTON_SHARED_MEMORY": "0"}
        cluster.add_agent()
        client = cluster.client(timeout=300)
        before, written = result_counters(client), sum(written_by_agents(client))
        got = client.matmul(a, w, partitions=16)
        moved = grown(before, result_counters(client))
        assert moved["shared"] == got.nbytes and moved["streamed"] == 0
        assert 0 < sum(written_by_agents(client)) - written < got.nbytes  # one agent wrote its share...
        assert moved["from_agents"] > 0  # ...the other sent its rows
        expected = cluster.client(timeout=300, shared_memory=False).matmul(a, w, partitions=16)
        assert np.array_equal(got, expected)
        no_memfd_left(cluster)


def test_a_stopped_agent_overtaken_by_speculation_changes_no_row_when_it_resumes(rng):
    """An agent SIGSTOPped mid-job, holding its runs' result memfd open: the job finishes without it
    (speculative copies, then its removal), and the memfd is sealed; when it resumes, its late
    partitions write nothing (claimed before, and sealed), so the client's array keeps its bits."""
    a = rng.standard_normal((400_000, 8)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    with lepton.LocalCluster(agents=3, agent_args=["--test-delay", "0.05:0.15"]) as cluster:
        client = cluster.client(timeout=300)
        job = client.submit("matmul", {"a": a, "b": w}, partitions=32)
        wait_for(lambda: job.status is not None and job.status.partitions_done >= 8, "a quarter of the partitions")
        stopped = cluster.agents[0]
        stopped.send_signal(signal.SIGSTOP)
        try:
            got = job.result()["c"]  # while the agent is still stopped
            snapshot = got.copy()
        finally:
            stopped.send_signal(signal.SIGCONT)
        wait_for(lambda: len(client.cluster_status().agents) == 3, "the resumed agent to rejoin")
        no_memfd_left(cluster)  # its late tasks ended and closed the memfd
        assert np.array_equal(got, snapshot)
        assert np.array_equal(got, cluster.client(timeout=300, shared_memory=False).matmul(a, w, partitions=32))


def test_a_shared_whole_input_is_copied_once_per_agent_for_all_of_a_jobs_runs(rng):
    """A whole input over 1 MiB in shared memory (SpMM's x) is copied into each agent's memory by the
    job's first run there and taken from that copy by its later runs (node_agent/copies.py: a private
    copy gets huge pages, the mapping did not), instead of being mapped by every run; the product is
    bitwise the streamed job's and SciPy's within float32 rounding."""
    # Partitions of 0.25 MiB: until both agents are measured a run holds at most half a credit's
    # bytes, so the job takes several runs per agent (runs in place are sized by the placement after).
    with lepton.LocalCluster(agents=2, coordinator_args=["--target-partition-mib", "0.25"]) as cluster:
        shared, streamed = cluster.client(timeout=300), cluster.client(timeout=300, shared_memory=False)
        indptr, indices, values, shape = csr = graph(rng, rows=200_000, cols=8192)
        x = rng.standard_normal((8192, 64)).astype(np.float32)  # 2 MiB
        mapped = mapped_by_agents(shared)
        ours = shared.spmm(csr, x)
        runs = {(p.agent_id, p.sent_at) for p in shared.trace(shared.jobs(limit=1)[0].job_id).partitions}
        # More runs than agents: a copy per run would map more than the two copies allowed below.
        assert len(runs) >= 3, f"{len(runs)} runs: too few for the test to tell one copy per agent from one per run"
        # Each run maps its rows of the matrix; x was mapped (and copied) once per agent, not once per run.
        assert mapped_by_agents(shared) - mapped - indices.nbytes - values.nbytes <= 2 * x.nbytes
        theirs = streamed.spmm(csr, x)
        assert np.array_equal(ours, theirs)
        expected = np.zeros((shape[0], 64))
        np.add.at(expected, np.repeat(np.arange(shape[0]), 2), values[:, None].astype(np.float64) * x[indices])
        assert np.allclose(ours, expected, atol=1e-4)
        no_memfd_left(cluster)  # the copies hold no memfd: the client's goes when its job ends


def test_whole_copies_are_read_once_and_kept_under_their_budget():
    """node_agent/copies.py without a network: a key is read once (its other tasks wait for that
    read), the least recently used copies go beyond the budget, and an input over the budget is not
    copied at all (the caller maps it)."""
    from lepton.agent.copies import WholeCopies

    copies, reads = WholeCopies(5 << 20), []

    def get(job, mib=2):
        def read():
            reads.append(job)
            return np.full(mib << 18, mib, np.float32)  # mib MiB
        return copies.get((job, "x"), mib << 20, read)

    first = [None] * 4
    threads = [threading.Thread(target=lambda j=j: first.__setitem__(j, get("job-1"))) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == ["job-1"] and all(a is first[0] for a in first) and not first[0].flags.writeable
    get("job-2")
    get("job-1")  # used again: job-2's is now the oldest
    get("job-3")
    assert reads == ["job-1", "job-2", "job-3"] and copies.bytes <= 5 << 20 and len(copies) == 2
    get("job-1")
    assert reads == ["job-1", "job-2", "job-3"]  # still kept
    assert get("job-4", mib=8) is None and reads[-1] == "job-3" and len(copies) == 2
