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
    assert not memfds(os.getpid())
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
    assert sorted(ds.info.placement.values()) == [2, 2]
    ref = streamed.put("streamed-put", x, replace=True)
    for op in ("sum", "min", "max", "var"):
        assert np.array_equal(shared.run(op, ds)[op], shared.run(op, ref)[op]), op
    assert sent_to_agents(shared) - sent == x.nbytes  # the streamed put only: jobs ship nothing
    assert cluster_memfd_bytes(own) >= before + x.nbytes  # the agents' partitions are views of it
    shared.drop("shm-put")
    shared.drop("streamed-put")
    # The agents dropped their views and the coordinator wrote its copy: no memfd of the put is left.
    wait_for(lambda: cluster_memfd_bytes(own) <= before, "no memfd of the put left in the cluster", timeout=60)


def test_the_coordinator_holds_no_copy_of_a_put_from_shared_memory(own, rng):
    """The coordinator's private memory (RssAnon in /proc/PID/status, sampled every few ms while the
    put runs) grows by far less than the array: it maps the client's memfd, and the agents map
    theirs. The streamed put beside it shows the measure sees a copy when there is one."""
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
    assert shared_growth < 48 << 20, f"the coordinator's private memory grew by {shared_growth >> 20} MiB"
    assert streamed_growth > x.nbytes // 2, f"the streamed put grew it by {streamed_growth >> 20} MiB only"


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
