"""The MPI device on a 2-rank pool, driven directly (no cluster).

Each test starts this file as a driver script (the `__main__` part below) under mpiexec, or as plain
Python with 'mpi:2' so the device re-execs it under mpiexec itself. Every process of a run carries a
unique LEPTON_TEST_TAG in its environment; hydra puts each rank in its own session, so cleanup finds
them by that tag rather than by process group.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from lepton.backends.ops import REGISTRY, TensorMeta
from lepton.backends.ops.base import Op

HERE = os.path.abspath(__file__)
BIN = os.path.dirname(sys.executable)
MPIEXEC = os.path.join(BIN, "mpiexec")

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- test ops (registered on every rank)

class _TestOp(Op):
    def validate(self, inputs, params):
        return dict(params)

    def finalize(self, partial, params):
        return partial


class Boom(_TestOp):
    """Fails on the rank whose rows hold a negative value."""

    name = "test_boom"

    def reference(self, inputs, params):
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"n": np.int64(len(inputs["x"]))}

    def merge(self, left, right):
        return {"n": left["n"] + right["n"]}


class Slow(_TestOp):
    """Sleeps on the rank whose rows hold a positive value (rank 0 itself stays quick)."""

    name = "test_slow"

    def reference(self, inputs, params):
        if (inputs["x"] > 0).any():
            print(json.dumps({"in_kernel": os.getpid()}), flush=True)  # mpiexec forwards it to the test
            time.sleep(params["seconds"])
        return {"n": np.int64(len(inputs["x"]))}

    def merge(self, left, right):
        return {"n": left["n"] + right["n"]}


class Exit(_TestOp):
    """The rank whose rows hold a positive value exits mid-kernel (no signal: a crash in Python)."""

    name = "test_exit"

    def reference(self, inputs, params):
        if (inputs["x"] > 0).any():
            time.sleep(0.2)
            os._exit(3)
        return {"n": np.int64(len(inputs["x"]))}

    def merge(self, left, right):
        return {"n": left["n"] + right["n"]}


class RowDot(_TestOp):
    """x @ w per row: a whole input broadcast to every rank and a bulky, order-sensitive partial."""

    name = "test_rowdot"
    whole_inputs = ("w",)
    order_sensitive = True

    def reference(self, inputs, params):
        return {"y": inputs["x"] @ inputs["w"]}

    def merge(self, left, right):
        return {"y": np.concatenate([left["y"], right["y"]])}


def register_test_ops() -> None:
    for op in (Boom(), Slow(), Exit(), RowDot()):
        REGISTRY[op.name] = op


# ---------------------------------------------------------------- checks against NumPy

sys.path.insert(0, os.path.dirname(HERE))  # tests/, also when this file runs as the driver
from references import assert_matches  # noqa: E402
from waits import wait_for  # noqa: E402


def cases():
    """(name, x, raw params) for every reduction op, dtype and shape; NaN in a float column.

    (1, 2) leaves rank 1 without rows: its partial is the empty one.
    """
    rng = np.random.default_rng(7)
    for dtype in ("float32", "float64", "int32", "int64"):
        for shape in ((10_001,), (4_099, 3), (1, 2)):
            x = (rng.standard_normal(shape) * 1000).astype(dtype)
            clean = x.copy()
            if dtype.startswith("float") and x.ndim == 2 and len(x) > 1:
                x[5, 1] = np.nan
            for name in ("sum", "min", "max", "count", "mean", "var"):
                yield name, x, {}
            yield "histogram", clean, {"bins": 64, "range": [-3000.0, 3000.0]}


def check_all_ops(device) -> int:
    checks = 0
    for name, x, raw in cases():
        op = REGISTRY[name]
        params = op.validate({"x": TensorMeta(x.dtype, x.shape)}, raw)
        got = op.finalize(device.run(op, {"x": x}, params), params)
        reference = op.finalize(op.reference({"x": x}, params), params)
        assert_matches(name, x, got, **raw)
        checks += 1
        if name in ("min", "max", "count", "histogram"):  # bitwise the NumPy device's answer
            assert all(np.array_equal(got[k], reference[k], equal_nan=True) for k in reference), name
    # Read-only, non-contiguous and big-endian inputs, a whole input and an order-sensitive partial.
    x = np.frombuffer(np.arange(4_000, dtype=np.float64).tobytes(), np.float64).reshape(1_000, 4)[:, ::2]
    assert device.run(REGISTRY["sum"], {"x": x}, {})["sum"].tolist() == x.sum(axis=0).tolist()
    big = np.arange(999, dtype=">i4")
    assert device.run(REGISTRY["max"], {"x": big}, {})["max"] == 998
    w = np.random.default_rng(1).standard_normal((4, 3))
    x = np.random.default_rng(2).standard_normal((1_001, 4))
    assert np.array_equal(device.run(REGISTRY["test_rowdot"], {"x": x, "w": w}, {})["y"], x @ w)
    # Bitwise repeatable: a fixed split and a fixed combine order.
    x = np.random.default_rng(3).standard_normal(1 << 20).astype(np.float32)
    sums = {device.run(REGISTRY["sum"], {"x": x}, {})["sum"].tobytes() for _ in range(5)}
    assert len(sums) == 1
    return checks + 4


def _same(got: dict, want: dict) -> bool:
    """Bitwise equal partials: the same keys, dtypes, shapes and bytes."""
    return got.keys() == want.keys() and all(
        np.asarray(got[k]).dtype == np.asarray(want[k]).dtype and np.shape(got[k]) == np.shape(want[k])
        and np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes() for k in want)


def bitwise_cases():
    """(label, op name, inputs, params) for ops with inexact merges, sized in blocks of the op
    (about 4 MiB each): one row, one block, fewer blocks than ranks, and more blocks than ranks
    (split unevenly), for plain rows (zero-copy scatter) and matmul.inner's columns of A (packed)."""
    from lepton.backends.blocks import block_rows

    rng = np.random.default_rng(21)
    per_block = block_rows(REGISTRY["sum"], {"x": np.empty((1_000, 16), np.float32)})
    for blocks in (None, 1, 2, 4, 7):
        rows = 1 if blocks is None else (blocks - 1) * per_block + per_block // 3 + 1
        x = rng.standard_normal((rows, 16)).astype(np.float32) * 100 + 3
        for name in ("sum", "var", "gram"):
            op = REGISTRY[name]
            yield f"{name} {blocks} blocks", name, {"x": x}, op.validate({"x": TensorMeta(x.dtype, x.shape)}, {})
    x = rng.standard_normal(3 * (4 << 20) // 4 + 17).astype(np.float32)  # 1-D: 4 blocks
    yield "sum 1-D", "sum", {"x": x}, {}
    y = rng.standard_normal((len(x), 2)).astype(np.float32)
    yield "gram with y", "gram", {"x": x[:, None].copy(), "y": y}, {}
    a = rng.standard_normal((16, 90_000)).astype(np.float32)  # 3 blocks of A's columns and B's rows
    b = rng.standard_normal((90_000, 12)).astype(np.float32)
    yield "matmul.inner", "matmul.inner", {"a": a, "b": b}, {"plan": "inner"}
    x = rng.standard_normal((300_000, 4))  # 3 blocks; row offsets seed the sample
    params = {"k": 3, "seed": 1, "rows": 1_000_000, "phase": "sample", "row_offset": 5_000, "max_iter": 5,
              "tol": 0.0, "iterations": 0}
    yield "kmeans sample", "kmeans", {"x": x}, params
    yield "kmeans step", "kmeans", {"x": x, "centroids": rng.standard_normal((3, 4))}, {**params, "phase": "step"}


def check_bitwise(device) -> list[str]:
    """Labels of the cases where the pool's partial is not bitwise the NumPy device's; exact ops with
    row offsets and CSR shares too."""
    from lepton.backends.numpy_device import NumpyDevice

    numpy_device, wrong = NumpyDevice(), []
    for label, name, inputs, params in bitwise_cases():
        op = REGISTRY[name]
        if not _same(device.run(op, inputs, params), numpy_device.run(op, inputs, params)):
            wrong.append(label)
    rng = np.random.default_rng(22)
    x = rng.integers(-50, 50, (3_001, 3))  # many ties; indices count from the partition's row offset
    params = {"k": 7, "largest": True, "row_offset": 100}
    if not _same(device.run(REGISTRY["topk"], {"x": x}, params), numpy_device.run(REGISTRY["topk"], {"x": x}, params)):
        wrong.append("topk")
    n = 501
    dense = np.where(rng.random((n, n)) < 0.02, rng.random((n, n)), 0)
    dense[7] = 0  # an empty row
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum((dense != 0).sum(axis=1))]).astype(np.int64)
    csr = {"a_indptr": indptr, "a_indices": cols.astype(np.int32), "a_data": dense[rows, cols]}
    x = rng.standard_normal((n, 8))
    y = device.run(REGISTRY["spmm"], {**csr, "x": x}, {"a_cols": n})["y"]
    if not np.array_equal(y, numpy_device.run(REGISTRY["spmm"], {**csr, "x": x}, {"a_cols": n})["y"]):
        wrong.append("spmm")
    gcn, w = REGISTRY["gcn_layer"], rng.standard_normal((8, 4))
    whole = gcn.prepare({**csr, "x": x, "w": w}, {})
    whole["w"].flags.writeable = False  # whole inputs may arrive read-only
    lo, hi = indptr[100], indptr[300]  # a partition of rows [100, 300)
    part = {"a_indptr": indptr[100:301] - lo, "a_indices": csr["a_indices"][lo:hi], "a_data": csr["a_data"][lo:hi]}
    params = {"a_cols": n, "activation": "relu", "row_offset": 100}
    got, want = device.run(gcn, {**part, **whole}, params)["y"], numpy_device.run(gcn, {**part, **whole}, params)["y"]
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-12, atol=1e-12):  # BLAS rows: not bitwise
        wrong.append("gcn_layer")
    return wrong


# ---------------------------------------------------------------- the driver (rank 0 prints JSON)

def _count_pickled_bytes() -> list[int]:
    """Sizes of everything pickled or unpickled from here on, by the pool (its `pickle`) and by
    mpi4py's object methods (comm.scatter, comm.gather, ...): the bytes that do not go as raw buffers."""
    import pickle

    from mpi4py import MPI

    import lepton.backends.mpi.pool as pool

    sizes: list[int] = []

    def dumps(obj, *args, **kwargs):
        blob = pickle.dumps(obj, *args, **kwargs)
        sizes.append(len(blob))
        return blob

    def loads(blob, *args, **kwargs):
        sizes.append(len(blob))
        return pickle.loads(blob, *args, **kwargs)

    pool.pickle = type("CountingPickle", (), {"dumps": staticmethod(dumps), "loads": staticmethod(loads)})
    MPI.pickle.__init__(dumps, loads)
    return sizes


def check_pickled_bytes(device, pickled: list[int]) -> dict:
    """Bytes pickled per partition, for a small and a 256x bigger input: the split input goes by
    Iscatterv, the whole input by Ibcast and the bulky partial by Igatherv, all as raw bytes."""
    from lepton.backends.numpy_device import NumpyDevice

    rng, per_size = np.random.default_rng(5), {}
    w = rng.standard_normal((16, 3))
    for rows in (4_096, 1 << 20):  # 512 KiB and 128 MiB of x; y is 3/16 of it
        x = rng.standard_normal((rows, 16))
        for name, inputs in (("sum", {"x": x}), ("test_rowdot", {"x": x, "w": w})):
            del pickled[:]
            got = device.run(REGISTRY[name], inputs, {})
            per_size[f"{name} {x.nbytes}"] = sum(pickled)
            want = NumpyDevice().run(REGISTRY["sum"], inputs, {}) if name == "sum" else {"y": x @ w}
            assert _same(got, want), name  # the workers' shares really arrived and came back, bitwise
    return per_size


def driver(mode: str, spec: str) -> None:
    from lepton.backends.discovery import open_devices
    from lepton.errors import LeptonError, Unavailable

    register_test_ops()
    pickled = _count_pickled_bytes() if mode == "pickles" else []
    [device] = open_devices([spec])  # ranks 1..N-1 never return from here
    say = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
    if mode == "ops":
        say(checks=check_all_ops(device), size=device.comm.size)
    elif mode == "pickles":
        say(pickled=check_pickled_bytes(device, pickled), size=device.comm.size)
    elif mode == "bitwise":
        say(wrong=check_bitwise(device), size=device.comm.size)
    elif mode == "boom":
        x = np.arange(-10, 90, dtype=np.float64)[::-1].copy()  # negatives only in the last rows: rank 1
        try:
            device.run(REGISTRY["test_boom"], {"x": x}, {})
            say(error=None)
        except LeptonError as exc:
            after = int(device.run(REGISTRY["count"], {"x": x}, {})["count"])  # the pool stays usable
            say(error=str(exc), type=type(exc).__name__, code=exc.code.name, after=after)
    elif mode == "exit":
        start = time.monotonic()
        results = []
        for op in ("test_exit", "sum"):  # the failing run, then the device staying failed
            try:
                device.run(REGISTRY[op], {"x": np.repeat([0.0, 1.0], 5)}, {})
                results.append("ok")
            except Unavailable as exc:
                results.append(str(exc))
        say(results=results, seconds=time.monotonic() - start, description=device.description)
    elif mode == "slow":  # a long partition; the test kills a worker meanwhile
        say(ready=True, rank0=os.getpid(), workers=list(device.worker_pids.values()))
        try:
            device.run(REGISTRY["test_slow"], {"x": np.repeat([0.0, 1.0], 5)}, {"seconds": 30.0})
            say(result="ok")
        except Unavailable as exc:
            say(result=str(exc))
    elif mode == "serve":  # like the agent: stop on SIGTERM/SIGINT, close the device, exit
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        device.on_failure = lambda reason: (say(failed=reason), stop.set())
        device.run(REGISTRY["sum"], {"x": np.ones(100)}, {})
        say(ready=True, rank0=os.getpid(), workers=list(device.worker_pids.values()), size=device.comm.size)
        stop.wait()
        device.close()
        say(closed=True)


# ---------------------------------------------------------------- pytest side

def _tagged(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries `tag`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"LEPTON_TEST_TAG={tag}".encode() in f.read().split(b"\0"):
                        with open(f"/proc/{entry}/stat") as s:
                            if s.read().rpartition(")")[2].split()[0] != "Z":
                                pids.append(int(entry))
            except OSError:
                pass
    return pids


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Run:
    """A driver run; its processes are found by tag and killed in teardown."""

    def __init__(self, tag: str, argv: list[str], env: dict | None = None):
        self.tag, self.stderr = tag, []
        self.lines: queue.Queue = queue.Queue()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {}), "LEPTON_TEST_TAG": tag})
        # Readers in threads: a timeout on a blocked read, and stderr can never fill its pipe.
        threading.Thread(target=lambda: [self.lines.put(t) for t in self.proc.stdout] + [self.lines.put("")],
                         daemon=True).start()
        self._stderr_reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self._stderr_reader.start()

    def line(self, timeout: float = 20) -> dict:
        """The next JSON line rank 0 prints."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                text = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                text = ""
            if not text:
                raise AssertionError(f"no result from the driver; stderr:\n{''.join(self.stderr)}")
            if text.startswith("{"):
                return json.loads(text)

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        """Exit status and stderr once the launched process (mpiexec, after a re-exec) ends."""
        code = self.proc.wait(timeout=timeout)
        self._stderr_reader.join(timeout)  # the pipe's end: everything it wrote has been read
        return code, "".join(self.stderr)

    def kill(self) -> None:
        for pid in _tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def launch():
    runs: list[Run] = []

    def start(mode: str, spec: str = "mpi:2", mpiexec: list[str] | None = None, env: dict | None = None) -> Run:
        argv = [sys.executable, HERE, mode, spec]
        run = Run(uuid.uuid4().hex, (mpiexec or []) + argv, env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()
        assert _gone(run.tag, 5), "stray processes left"


def _gone(tag: str, within: float) -> bool:
    """Whether every process tagged `tag` ends within `within` s (a bound with a meaning: shorter
    than the 30 s a test kernel sleeps, so a pool that waited for its kernel would miss it)."""
    try:
        wait_for(lambda: not _tagged(tag), f"the processes tagged {tag} to end", within)
        return True
    except AssertionError:
        return False


def test_specs_and_the_mpiexec_command_line(monkeypatch, tmp_path):
    from lepton.backends.discovery import open_devices
    from lepton.errors import FailedPrecondition, InvalidInput
    from lepton.backends.mpi import launch

    for var in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "HYDI_CONTROL_FD",
                "LEPTON_MPI_HOSTFILE", "LEPTON_MPI_LAUNCHED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FailedPrecondition, match="needs to run under mpiexec"):
        open_devices(["mpi"])
    for bad in ("0", "x", "2@/no/such/hostfile"):
        with pytest.raises(InvalidInput):
            launch.parse_spec(bad)
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost\n")
    assert launch.parse_spec(f"3@{hosts}") == (3, str(hosts))
    monkeypatch.setenv("LEPTON_MPI_HOSTFILE", str(hosts))
    assert launch.parse_spec("3") == (3, str(hosts))
    command = launch.mpiexec_command(3, str(hosts))
    assert command[0] == MPIEXEC and command[command.index("-n") + 1] == "3"
    assert command[command.index("-f") + 1] == str(hosts) and "-disable-auto-cleanup" in command
    assert command[command.index("-n") + 2:] == [sys.executable, *sys.orig_argv[1:]]
    monkeypatch.setenv("LEPTON_MPI_LAUNCHED", "3")  # we already re-exec'd, yet no MPI environment
    with pytest.raises(FailedPrecondition, match="no MPI environment"):
        launch.relaunch(3, None)


def test_every_reduction_matches_numpy_under_mpiexec(launch):
    run = launch("ops", "mpi", mpiexec=[MPIEXEC, "-n", "2"])
    result = run.line()
    assert result == {"size": 2, "checks": 4 * 3 * 7 + 4}
    assert run.finish()[0] == 0


def test_partials_are_bitwise_the_numpy_devices_on_3_ranks(launch):
    """The pool cuts partitions on the canonical block boundaries (backends/blocks.py) and folds the
    same block tree, so its partials are the NumPy device's bit for bit; on 3 ranks, some partitions
    have fewer blocks than ranks."""
    run = launch("bitwise", "mpi", mpiexec=[MPIEXEC, "-n", "3"])
    assert run.line(timeout=45) == {"wrong": [], "size": 3}
    assert run.finish()[0] == 0


def test_bulk_data_is_never_pickled(launch):
    """README: each partition is split across the ranks by Scatterv of raw buffers, never pickled.
    What is pickled (the header, the partials' tree metadata) stays a few KiB, the same for a 512 KiB
    input as for a 128 MiB one; pickling any input share, whole input or partial would add megabytes."""
    run = launch("pickles")
    result = run.line(timeout=45)
    print(result)
    assert result["size"] == 2
    small = {key.split()[0]: n for key, n in result["pickled"].items() if key.endswith(f" {4_096 * 16 * 8}")}
    big = {key.split()[0]: n for key, n in result["pickled"].items() if key.endswith(f" {(1 << 20) * 16 * 8}")}
    assert small.keys() == big.keys() == {"sum", "test_rowdot"}
    for name in small:
        assert 0 < big[name] < 4096, (name, big[name])  # some pickle was seen: the counter works
        assert abs(big[name] - small[name]) < 1024, (name, small[name], big[name])  # bigger ints, a tree node
    assert run.finish()[0] == 0


def test_mpi_n_splits_the_cores_between_the_ranks_blas_pools(launch):
    """README: several agents on one machine split its cores between their BLAS pools, and mpi:N
    does it for its ranks: each rank gets OPENBLAS_NUM_THREADS (the cores when unset) // N."""
    run = launch("serve", "mpi:2", env={"OPENBLAS_NUM_THREADS": "8", "OMP_NUM_THREADS": "7"})
    ready = run.line()
    assert ready["size"] == 2
    for pid in [ready["rank0"], *ready["workers"]]:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        for var in (b"OPENBLAS_NUM_THREADS", b"OMP_NUM_THREADS", b"MKL_NUM_THREADS"):
            assert env.get(var) == b"4", (pid, var, env.get(var))
    run.proc.send_signal(signal.SIGTERM)
    assert _gone(run.tag, 30)


def test_mpi_n_relaunches_itself_with_a_hostfile(launch, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost\nlocalhost\n")  # two slots on one machine stand in for two hosts
    run = launch("ops", f"mpi:2@{hosts}")
    assert run.line()["size"] == 2
    assert run.finish()[0] == 0


def test_hostfile_from_the_environment(launch, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost\nlocalhost\n")
    run = launch("serve", "mpi:2", env={"LEPTON_MPI_HOSTFILE": str(hosts)})
    assert run.line()["size"] == 2
    run.proc.send_signal(signal.SIGTERM)
    assert _gone(run.tag, 5)


def test_rank_count_must_match_mpiexec(launch):
    run = launch("ops", "mpi:3", mpiexec=[MPIEXEC, "-n", "2"])
    code, err = run.finish()
    assert code != 0 and "mpiexec started 2 ranks" in err


def test_kernel_exception_on_a_worker_fails_the_partition_and_the_pool_stays_usable(launch):
    run = launch("boom")
    result = run.line()
    assert result["type"] == "KernelError" and result["code"] == "INTERNAL"
    assert "rank 1 of 2" in result["error"] and "ValueError: negative input" in result["error"]
    assert result["after"] == 100
    assert run.finish()[0] == 0


def test_worker_exiting_mid_job_gives_unavailable_not_a_hang(launch):
    run = launch("exit")
    result = run.line()
    first, second = result["results"]
    assert "stays failed" in first and ("exited" in first or "died" in first), first
    assert "stays failed" in second  # and it answered at all (within run.line's deadline): no hang
    assert "FAILED" in result["description"]
    assert _gone(run.tag, 10)


def test_worker_killed_by_a_signal_takes_the_pool_down_without_hanging(launch):
    # Hydra's proxy SIGKILLs every rank it started when one of them dies by a signal, whatever
    # -disable-auto-cleanup says: rank 0 (the agent) goes too, and the coordinator reschedules.
    run = launch("slow")
    ready = run.line()
    assert run.line() == {"in_kernel": ready["workers"][0]}  # mid-partition: it sleeps 30 s in its kernel
    os.kill(ready["workers"][0], signal.SIGKILL)
    assert _gone(run.tag, 10)
    assert run.finish()[0] != 0


@pytest.mark.parametrize("target", ["mpiexec", "rank0"])
def test_sigterm_stops_every_rank_within_seconds(launch, target):
    run = launch("serve")
    ready = run.line()
    assert len(_tagged(run.tag)) >= 4  # mpiexec, hydra's proxy, two ranks
    # mpiexec: what `kill <agent pid>` hits after mpi:N re-exec'd (hydra forwards it to every rank);
    # rank0: the agent process alone, as under a manual mpiexec.
    os.kill(run.proc.pid if target == "mpiexec" else ready["rank0"], signal.SIGTERM)
    assert _gone(run.tag, 30)


def test_sigterm_to_a_worker_alone_fails_the_idle_device(launch):
    run = launch("serve")
    ready = run.line()
    os.kill(ready["workers"][0], signal.SIGTERM)  # no STOP follows: it leaves after its grace
    assert "exited" in run.line()["failed"]  # on_failure, from hydra's SIGUSR1, with no job running
    assert run.line() == {"closed": True}
    assert _gone(run.tag, 5)


def test_killed_rank0_takes_the_workers_down(launch):
    run = launch("serve")
    ready = run.line()
    os.kill(ready["rank0"], signal.SIGKILL)
    assert _gone(run.tag, 8)


@pytest.mark.slow  # 10 s of measuring
def test_idle_pool_uses_little_cpu(launch):
    run = launch("serve")
    ready = run.line()
    time.sleep(0.5)  # let start-up settle
    pids = _tagged(run.tag)
    before = {pid: _cpu_seconds(pid) for pid in pids}
    time.sleep(10)
    used = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
    print(f"idle CPU over 10 s: workers {[used[p] for p in ready['workers']]} s, "
          f"rank 0 {used[ready['rank0']]} s, all {len(pids)} processes {sum(used.values()):.3f} s")
    assert sum(used[p] for p in ready["workers"]) + used[ready["rank0"]] < 0.5
    assert sum(used.values()) < 0.5


if __name__ == "__main__":
    driver(sys.argv[1], sys.argv[2])
