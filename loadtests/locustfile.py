"""Locust scenarios against a Lepton coordinator (``--host`` is its gRPC address).

Run them through ``loadtests/run``, which starts a local cluster first; or by hand against any
coordinator:

    locust -f loadtests/locustfile.py --headless --host 127.0.0.1:50051 -u 8 -r 8 -t 30s Mix

Scenarios (pick a User class by name, or filter tasks with ``--tags``):

| class            | tag(s)        | what each request is                                               |
| ---------------- | ------------- | ------------------------------------------------------------------ |
| SmallJobs        | small         | ``sum`` of 1K float32 (4 KB streamed): per-job overhead            |
| MediumReductions | medium        | ``mean`` or ``var`` of 1M float32 (4 MiB streamed in 1 MiB chunks)  |
| DatasetJobs      | dataset       | ``mean`` of a 16 MiB dataset resident on the agents (no input sent) |
| Mix              | all, + status | weights 6 small : 2 medium : 1 dataset : 1 GetClusterStatus        |

Users are closed-loop (no think time): each submits its next job as soon as the last one finished,
so ``-u`` is the number of jobs in flight. Every result is checked against NumPy; a wrong or
unreadable result is reported as a failure of type ``verify``.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import gevent
import grpc
import numpy as np
from grpc_user import GrpcUser, name
from locust import constant, events, stats, tag

from lepton import security, wire
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc, job_pb2

log = logging.getLogger("lepton.loadtest")

SMALL_ROWS = 1024                 # sum of 1K float32
MEDIUM_ROWS = 1 << 20             # 4 MiB of float32
DATASET_ROWS = 4 << 20            # 16 MiB of float32, put once, then used by every dataset job
JOB_TIMEOUT = float(os.environ.get("LEPTON_LOADTEST_JOB_TIMEOUT", 30))  # a hung call fails, visibly
DATASET_SKIPPED = "dataset scenario skipped"  # loadtests/run looks for this in the log


# -- shared inputs (read-only, made once per process, shared by all users) ---------------------
class _Inputs:
    def __init__(self):
        rng = np.random.default_rng(20240611)
        self.small = [rng.random(SMALL_ROWS, dtype=np.float32) for _ in range(8)]
        self.small_sum = [float(np.sum(x, dtype=np.float64)) for x in self.small]
        self.medium = rng.standard_normal(MEDIUM_ROWS, dtype=np.float32) * 3 + 1
        self.medium_expected = {"mean": float(np.mean(self.medium, dtype=np.float64)),
                                "var": float(np.var(self.medium, dtype=np.float64))}
        self._dataset: np.ndarray | None = None

    @property
    def dataset(self) -> np.ndarray:
        if self._dataset is None:
            self._dataset = np.random.default_rng(7).random(DATASET_ROWS, dtype=np.float32)
        return self._dataset


_inputs: _Inputs | None = None
_inputs_lock = threading.Lock()


def inputs() -> _Inputs:
    global _inputs
    with _inputs_lock:
        if _inputs is None:
            _inputs = _Inputs()
        return _inputs


# -- one job through the intercepted stub --------------------------------------------------------
def report_failure(user: GrpcUser, label: str, message: str) -> None:
    """A failure that is not a gRPC error (wrong result, bad frames): counted like any other."""
    user.environment.events.request.fire(request_type="verify", name=label, response_time=0, response_length=0,
                                         response=None, context={}, exception=AssertionError(message))


def run_job(user: GrpcUser, label: str, op: str, arrays: dict[str, np.ndarray] | None = None, *,
            job_inputs: list[job_pb2.JobInput] = (), **params) -> dict[str, np.ndarray] | None:
    """Submit `op` on `arrays` (streamed) plus `job_inputs` (e.g. dataset references); the result or None.

    The call is reported by the interceptor under `label`; a gRPC error returns None (already
    reported), anything wrong with the result frames is reported here.
    """
    arrays = {n: wire.little_endian(a) for n, a in (arrays or {}).items()}
    spec = job_pb2.JobSpec(op=op, params=wire.encode_params(params), label=f"loadtest {label}",
                           inputs=[*job_inputs, *(job_pb2.JobInput(name=n, tensor=wire.header(n, a))
                                                  for n, a in arrays.items())])

    def requests():
        yield pb.SubmitJobRequest(spec=spec)
        for chunk in wire.chunks(arrays.values()):
            yield pb.SubmitJobRequest(chunk=chunk)

    call = user.stub.SubmitJob(requests(), timeout=JOB_TIMEOUT, metadata=name(label))
    headers, assembler = [], None
    try:
        for response in call:
            kind = response.WhichOneof("event")
            if kind == "result_header":
                headers.append(response.result_header)
            elif kind == "result_chunk":
                assembler = assembler or wire.TensorAssembler(headers)
                assembler.add(response.result_chunk)
        return (assembler or wire.TensorAssembler(headers)).finish()
    except grpc.RpcError:
        return None
    except Exception as exc:  # noqa: BLE001 - a malformed result is a failure of the service
        call.cancel()
        report_failure(user, label, f"bad result frames: {exc!r}")
        return None


def check(user: GrpcUser, label: str, result: dict | None, key: str, expected: float, rtol: float = 1e-5) -> None:
    if result is None:
        return
    got = result.get(key)
    if got is None or got.shape != () or not np.isclose(float(got), expected, rtol=rtol, atol=0):
        report_failure(user, label, f"{key} = {got!r}, NumPy says {expected!r}")


# -- tasks ----------------------------------------------------------------------------------------
@tag("small")
def small_sum(user: "LeptonUser") -> None:
    data = inputs()
    i = user.counter % len(data.small)
    user.counter += 1
    check(user, "sum 1K f32", run_job(user, "sum 1K f32", "sum", {"x": data.small[i]}), "sum", data.small_sum[i])


@tag("medium")
def medium_reduction(user: "LeptonUser") -> None:
    data = inputs()
    op = ("mean", "var")[user.counter % 2]
    user.counter += 1
    label = f"{op} 4 MiB f32"
    check(user, label, run_job(user, label, op, {"x": data.medium}), op, data.medium_expected[op])


@tag("status")
def cluster_status(user: "LeptonUser") -> None:
    """A unary call: the coordinator's view of its agents."""
    try:
        response = user.stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=10, metadata=name("GetClusterStatus"))
    except grpc.RpcError:
        return
    if not response.agents:
        report_failure(user, "GetClusterStatus", "the coordinator lists no agents")


# Resident datasets: each Locust process puts one 16 MiB dataset (PutDataset, not reported: it is
# setup, not load), every dataset job names it, and it is dropped when the test stops. A coordinator
# without datasets (no PutDataset on the stub, or UNIMPLEMENTED from an older server reached with
# --address) makes the scenario skip itself: DATASET_SKIPPED is logged once and the users run their
# other tasks (Mix) or idle (DatasetJobs), so nothing is reported and nothing fails.
class _Datasets:
    """Process-wide: is the dataset API offered, and the dataset this process put."""

    def __init__(self):
        self.lock = threading.Lock()
        self.skip_reason: str | None = None
        self.name: str | None = None
        self.expected_mean = 0.0


_datasets = _Datasets()


def _put_dataset_requests(dataset_name: str, array: np.ndarray):
    yield pb.PutDatasetRequest(spec=pb.DatasetSpec(name=dataset_name, tensor=wire.header("x", array), replace=True))
    for chunk in wire.chunks([array]):
        yield pb.PutDatasetRequest(chunk=chunk)


def _ensure_dataset(user: "LeptonUser") -> bool:
    """True once this process's dataset is resident; False if datasets are not offered (logged once)
    or the upload failed (reported; the next dataset task tries again)."""
    state = _datasets
    with state.lock:
        if state.name is not None or state.skip_reason is not None:
            return state.name is not None
        if not hasattr(user.raw_stub, "PutDataset"):
            state.skip_reason = "the lepton.v1 CoordinatorService stub has no PutDataset method"
        else:
            dataset_name, array = f"loadtest-{os.getpid()}", inputs().dataset
            try:
                user.raw_stub.PutDataset(_put_dataset_requests(dataset_name, array), timeout=JOB_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    report_failure(user, "PutDataset", f"{exc.code().name}: {exc.details()}")
                    return False
                state.skip_reason = f"the coordinator answers PutDataset with UNIMPLEMENTED ({exc.details()})"
            else:
                state.expected_mean = float(np.mean(array, dtype=np.float64))
                state.name = dataset_name
                return True
        log.warning("%s: %s", DATASET_SKIPPED, state.skip_reason)
        return False


@events.test_stop.add_listener
def _drop_dataset(environment, **_kwargs) -> None:
    """Leave nothing behind on a long-lived coordinator (--address)."""
    state = _datasets
    if state.name is not None:
        try:
            channel = security.channel(environment.host, token=security.read_token())
            pb_grpc.CoordinatorServiceStub(channel).DropDataset(pb.DropDatasetRequest(name=state.name), timeout=10)
            channel.close()
        except grpc.RpcError as exc:
            log.warning("could not drop dataset %s: %s", state.name, exc.code().name)
        state.name = None


def datasets_offered(user: "LeptonUser") -> bool:
    _ensure_dataset(user)
    return _datasets.skip_reason is None


@tag("dataset")
def dataset_job(user: "LeptonUser") -> None:
    if not _ensure_dataset(user):
        if _datasets.skip_reason is None:
            time.sleep(1)  # the upload failed (reported): do not hammer the coordinator with retries
        return
    label = "mean dataset 16 MiB f32"
    job_input = job_pb2.JobInput(name="x", dataset=_datasets.name)
    check(user, label, run_job(user, label, "mean", job_inputs=[job_input]), "mean", _datasets.expected_mean)


def _idle(user: "LeptonUser") -> None:
    time.sleep(1)  # nothing to do (datasets not offered): wait instead of spinning


@events.quitting.add_listener
def _final_csv(environment, **_kwargs) -> None:
    """Locust rewrites its CSV files once a second and not again at exit, so they would miss the last
    second and the requests finished during --stop-timeout: wait for one more write (users are
    stopped by now, so it holds the final figures)."""
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.3)


# -- users ---------------------------------------------------------------------------------------
class LeptonUser(GrpcUser):
    abstract = True
    stub_class = pb_grpc.CoordinatorServiceStub
    wait_time = constant(0)
    channel_options = [("grpc.max_receive_message_length", 64 << 20)]

    def on_start(self) -> None:
        self.counter = 0
        inputs()  # make the shared arrays before the first timed request
        if dataset_job in self.tasks and not datasets_offered(self):
            others = [t for t in self.tasks if t is not dataset_job]
            self.tasks = others or [_idle]


class SmallJobs(LeptonUser):
    tasks = [small_sum]


class MediumReductions(LeptonUser):
    tasks = [medium_reduction]


class DatasetJobs(LeptonUser):
    tasks = [dataset_job]


class Mix(LeptonUser):
    tasks = {small_sum: 6, medium_reduction: 2, dataset_job: 1, cluster_status: 1}
