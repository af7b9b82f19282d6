"""The Python client: submit jobs, follow their progress, fetch results.

    with lepton.Client("127.0.0.1:50051") as client:
        total = client.sum(x)
        job = client.submit("histogram", x, bins=64, range=[0, 1])
        for status in job:            # progress while it runs
            print(status.partitions_done, "/", status.partitions_total)
        counts = job.result()["counts"]
        for estimate in client.sum(x, early=True):   # running estimates, then the exact sum
            print(estimate.fraction, estimate.value, "+-", estimate.bound)
"""
from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import grpc
import numpy as np

from lepton import failover, security, sharedmem, wire
from lepton.errors import LeptonError
from lepton.retry import IDEMPOTENT, Backoff, retrying, unavailable
from lepton.tuning import keep_large_buffers_in_heap
from lepton.v1 import coordinator_service_pb2 as pb, coordinator_service_pb2_grpc as pb_grpc, job_pb2, tensor_pb2

SCHEMES = {"row_blocks": job_pb2.PARTITION_SCHEME_ROW_BLOCKS, "hash": job_pb2.PARTITION_SCHEME_HASH,
           "round_robin": job_pb2.PARTITION_SCHEME_ROUND_ROBIN}
STATES = {v: k.removeprefix("JOB_STATE_") for k, v in job_pb2.JobState.items()}
SMALL_JOB_BYTES = 1 << 20  # jobs with at most this much input go in one RunJob call


def _partitioning(scheme: str, count: int, target_bytes: int, key_column: int) -> job_pb2.Partitioning:
    if scheme not in SCHEMES:
        raise ValueError(f"partitioning must be one of {sorted(SCHEMES)}; got {scheme!r}")
    return job_pb2.Partitioning(scheme=SCHEMES[scheme], count=count, target_bytes=target_bytes,
                                key_column=key_column)


@dataclass(frozen=True)
class Early:
    """What early answers to send (`submit(..., early=Early(...))`; `early=True` takes these defaults)."""

    confidence: float = 0.95  # of the bounds: the exact result lies within value +- bound this often
    every: float = 0.05  # at least this fraction of the rows between two estimates
    interval: float = 0.1  # at least this many seconds between two estimates
    seed: int = 0  # of the random order partitions are handed out in; 0: the coordinator picks one

    def message(self) -> job_pb2.EarlyAnswers:
        return job_pb2.EarlyAnswers(confidence=self.confidence, min_fraction_step=self.every,
                                    min_interval_seconds=self.interval, seed=self.seed)


@dataclass(frozen=True)
class Estimate:
    """A running estimate of a job's result, or (`final`) the exact result itself.

    `values` and `bounds` are by result name; `value` and `bound` are those of `name` (the first
    value when unset), scalars for a 1-D input. The exact result lies within value +- bound with
    probability about `confidence`; bound is inf while too few partitions are in, None for values
    that have none (min and max are running values, histogram counts scaled), and 0 once final.
    """

    values: dict[str, np.ndarray]
    bounds: dict[str, np.ndarray]
    fraction: float  # of the rows behind it: rises from estimate to estimate, 1 when final
    partitions_used: int
    partitions_total: int
    confidence: float
    seed: int  # of the random order the partitions went out in
    final: bool = False
    name: str | None = None

    @property
    def value(self):
        return _scalar(self.values[self.name or next(iter(self.values))])

    @property
    def bound(self):
        bound = self.bounds.get(self.name or next(iter(self.values)))
        return None if bound is None else _scalar(bound)

    @property
    def interval(self) -> tuple | None:
        """(low, high) of `value`, or None without a bound."""
        bound = self.bound
        return None if bound is None else (self.value - bound, self.value + bound)


def _estimate(message) -> Estimate:
    values, bounds = {}, {}
    for item in message.values:
        meta = wire.meta(item.header)
        if len(item.data) != meta.nbytes or len(item.bound) not in (0, 8 * int(np.prod(meta.shape))):
            raise LeptonError(f"estimate of {item.header.name!r}: its bytes do not match its header")
        values[item.header.name] = np.frombuffer(item.data, dtype=meta.dtype).reshape(meta.shape)
        if item.bound:
            bounds[item.header.name] = np.frombuffer(item.bound, dtype="<f8").reshape(meta.shape)
    return Estimate(values, bounds, message.fraction, message.partitions_used, message.partitions_total,
                    message.confidence, message.seed)


def _spec(op: str, inputs, partitioning: str, partitions: int, target_bytes: int, key_column: int, label: str,
          params: dict, early: bool | Early = False, shared=None) -> tuple[job_pb2.JobSpec, dict[str, np.ndarray]]:
    """The job spec, and the arrays to send (a Dataset or a dataset's name goes by name); with `shared`
    (a function of an array to a SharedArrays holding it) they go in shared memory instead."""
    if inputs is None:
        inputs = {}
    elif not isinstance(inputs, Mapping):
        inputs = {"x": inputs}
    arrays = {name: wire.little_endian(a) for name, a in inputs.items() if not isinstance(a, (Dataset, str))}
    resident = {name: getattr(a, "name", a) for name, a in inputs.items() if isinstance(a, (Dataset, str))}
    if shared is None:
        tensors = [job_pb2.JobInput(name=n, tensor=wire.header(n, a)) for n, a in arrays.items()]
    else:  # one memfd per input: an agent that caches a whole input (weights) pins only its own memory
        tensors = [job_pb2.JobInput(name=n, shared=tensor_pb2.SharedTensor(
                       tensor=wire.header(n, a, checksum=False), buffer=tensor_pb2.SharedBuffer(**shared(a).buffer(0))))
                   for n, a in arrays.items()]
    spec = job_pb2.JobSpec(
        op=op, params=wire.encode_params(params), label=label,
        inputs=tensors + [job_pb2.JobInput(name=n, dataset=d) for n, d in resident.items()],
        partitioning=_partitioning(partitioning, partitions, target_bytes, key_column))
    if early:
        spec.early.CopyFrom((Early() if early is True else early).message())
    return spec, arrays


def _input_bytes(inputs) -> int:
    """Bytes of the arrays a job ships (datasets go by name)."""
    values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    return sum(np.asarray(a).nbytes for a in values if a is not None and not isinstance(a, (Dataset, str)))


def state_name(status: job_pb2.JobStatus) -> str:
    return STATES.get(status.state, "UNSPECIFIED")


class Job:
    """A submitted job. Its events are read in the background; iterate for progress.

    With `resubmit` (a Backoff), a job whose call fails with UNAVAILABLE (its coordinator went away)
    is submitted again, from its inputs, until the backoff's budget is spent; `resubmits` counts how
    often. A resubmitted job has a new job_id. With `follow` (lepton.failover, through the client),
    a call that no coordinator answered (a standby turned it away, or it could not connect) goes
    again to where the leader is, as no submission at all."""

    def __init__(self, call_factory, requests, resubmit: Backoff | None = None,
                 on_estimate: Callable[[Estimate], None] | None = None, follow=None,
                 result_memory: sharedmem.ResultMemory | None = None):
        """requests() makes the job's request stream (once per submission); follow(error, attempt,
        started) says whether an unanswered call may go again; result_memory is the memfd the spec
        offers for the result (the coordinator may put it there: `result_shared`)."""
        self._result_memory = result_memory
        self._events: queue.Queue = queue.Queue()
        self._estimates: list[Estimate] = []  # as they arrived; the last one final once the job succeeded
        self._estimated = threading.Condition()
        self._on_estimate = on_estimate
        self._accepted = threading.Event()
        self._done = threading.Event()
        self._cancelled = False
        self.status: job_pb2.JobStatus | None = None
        self._result: dict[str, np.ndarray] | None = None
        self._error: LeptonError | None = None
        self._call_factory, self._requests, self._resubmit = call_factory, requests, resubmit
        self._follow, self._answered = follow, False  # whether the current call got any response
        self.resubmits = 0
        self._on_done: list = []  # called once the job ended (closing its shared memory)
        self._call = call_factory(requests())
        self._cancel_rpc = None
        threading.Thread(target=self._read, name="lepton-job", daemon=True).start()

    @property
    def job_id(self) -> str | None:
        """The coordinator's id, once it accepted the job (None if it refused it)."""
        self._accepted.wait()
        return self.status.job_id if self.status else None

    def _read(self) -> None:
        started, attempt = time.monotonic(), 0  # of following the leader, since the last answered call
        while True:
            try:
                self._read_once()
                return
            except grpc.RpcError as exc:
                if self._answered:
                    started, attempt = time.monotonic(), 0
                if (not self._answered and not self._cancelled and self._follow is not None
                        and self._follow(exc, attempt, started)):
                    attempt += 1  # nothing ran: not a resubmission
                elif (self._resubmit is None or self._cancelled or not unavailable(exc)
                        or not self._resubmit.pause() or self._cancelled):
                    self._error = LeptonError.from_rpc(exc)
                    break
                else:
                    self.resubmits += 1
                self._answered = False
                self._call = self._call_factory(self._requests())
            except Exception as exc:  # noqa: BLE001 - surface anything else through result()
                self._error = LeptonError(repr(exc))
                break
        self._finish()

    def _finish(self) -> None:
        self._accepted.set()
        with self._estimated:
            self._done.set()
            self._estimated.notify_all()
        self._events.put(None)
        for callback in self._on_done:  # after: freeing a large memfd takes a while
            callback()

    def _read_once(self) -> None:
        """Read one submission's events and result (RpcError if the call fails)."""
        headers, assembler, shared = [], None, {}
        for response in self._call:
            self._answered = True
            kind = response.WhichOneof("event")
            if kind in ("accepted", "progress", "done"):
                self.status = getattr(response, kind)
                self._accepted.set()
                self._events.put(self.status)
            elif kind == "result_header":
                headers.append(response.result_header)
            elif kind == "result_chunk":
                assembler = assembler or wire.TensorAssembler(headers)
                assembler.add(response.result_chunk)
            elif kind == "estimate":
                self._add_estimate(_estimate(response.estimate))
            elif kind == "result_shared":  # written into our own memfd, sealed: mapped, not copied
                shared[response.result_shared.tensor.name] = self._map_result(response.result_shared)
        assembler = assembler or wire.TensorAssembler(headers)
        self._result = {**shared, **assembler.finish()}
        self._add_estimate(self._final_estimate())
        self._finish()

    def _map_result(self, message) -> np.ndarray:
        if self._result_memory is None:
            raise LeptonError("the coordinator placed a result in shared memory, but this job offered none")
        meta = wire.meta(message.tensor)
        return self._result_memory.array(message.buffer, meta.dtype, meta.shape)

    def _add_estimate(self, estimate: Estimate) -> None:
        with self._estimated:
            self._estimates.append(estimate)
            self._estimated.notify_all()
        if self._on_estimate is not None:
            self._on_estimate(estimate)

    def _final_estimate(self) -> Estimate:
        """The exact result as the last estimate: bound 0, fraction 1."""
        last = self._estimates[-1] if self._estimates else None
        total = self.status.partitions_total if self.status else 0
        return Estimate(dict(self._result), {k: np.zeros(np.shape(v)) for k, v in self._result.items()}, 1.0,
                        total, total, 1.0, last.seed if last else 0, final=True)

    def estimates(self, name: str | None = None) -> Iterator[Estimate]:
        """Every estimate, from the first (whenever you start), ending with the exact result
        (`final`); raises LeptonError then if the job failed. `name` picks the result that
        `Estimate.value` and `.bound` show. A job submitted without early gives the final one only."""
        seen = 0
        while True:
            with self._estimated:
                while seen == len(self._estimates) and not self._done.is_set():
                    self._estimated.wait()
                if seen == len(self._estimates):
                    break
                estimate = self._estimates[seen]
            seen += 1
            yield dataclasses.replace(estimate, name=name) if name else estimate
        if self._error:
            raise self._error

    def __iter__(self) -> Iterator[job_pb2.JobStatus]:
        """Statuses (accepted, progress, done) not yet seen by any iterator, until the job ends.

        The one end-of-stream sentinel goes back on the queue for the next iterator, so a second
        iteration (or a second thread) ends too instead of waiting for ever."""
        while (status := self._events.get()) is not None:
            yield status
        self._events.put(None)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> dict[str, np.ndarray]:
        """The named result arrays; raises LeptonError if the job failed or was cancelled."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job not done after {timeout}s")
        if self._error:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Ask the coordinator to cancel the job; result() then raises CANCELLED."""
        self._cancelled = True  # and it is not submitted again
        if self.status and self._cancel_rpc:
            try:
                self._cancel_rpc(pb.CancelJobRequest(job_id=self.status.job_id), timeout=5)
            except grpc.RpcError:
                pass
        self._call.cancel()


class Dataset:
    """A dataset resident in the cluster; pass it wherever an input array goes."""

    def __init__(self, info):
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.info.shape)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, shape={self.shape}, partitions={self.info.partitions})"


def _csr(a) -> tuple[dict[str, np.ndarray], int]:
    """The three CSR inputs and the column count of a scipy-like matrix or a 4-tuple."""
    indptr, indices, data, shape = (a.indptr, a.indices, a.data, a.shape) if hasattr(a, "indptr") else a
    return {"a_indptr": np.asarray(indptr, dtype=np.int64), "a_indices": np.asarray(indices),
            "a_data": np.asarray(data)}, int(shape[1])


def _sparse_input(a) -> dict:
    """A resident sparse dataset goes by name (as input "a"); a matrix goes as its three arrays."""
    return {"a": a} if isinstance(a, (Dataset, str)) else _csr(a)[0]


def _sparse_cols(a) -> dict:
    return {} if isinstance(a, (Dataset, str)) else {"a_cols": _csr(a)[1]}


def _scalar(array: np.ndarray):
    return array[()] if array.ndim == 0 else array


class Client:
    def __init__(self, address: str | list[str] = "127.0.0.1:50051", timeout: float | None = None, *,
                 token: str | None = None, tls_ca=None, tls_cert=None, tls_key=None, tls: bool | None = None,
                 retry_for: float = 30.0, resubmit_on_unavailable: bool = False, failover_timeout: float = 30,
                 shared_memory: bool = True):
        """address: one coordinator, or every coordinator of a highly available cluster ("a:1,b:2" or
        a list): calls follow the leader by themselves, for up to failover_timeout seconds each
        (lepton.failover). token: the coordinator's client token (else LEPTON_TOKEN, or the file LEPTON_TOKEN_FILE).
        TLS when tls, or when a CA or a certificate is given (else LEPTON_TLS_CA, LEPTON_TLS_CERT,
        LEPTON_TLS_KEY; LEPTON_TLS=1 for the system's roots); the server's certificate is always
        checked. tls_cert and tls_key (paths or PEM) are the client certificate for --mtls.

        retry_for: seconds for which calls that are safe to repeat (lepton.retry.IDEMPOTENT: status,
        listings, health, cancel) are retried while the coordinator is UNAVAILABLE, with backoff and
        jitter (0: never). resubmit_on_unavailable: a job that fails with UNAVAILABLE (its coordinator
        crashed or restarted) is submitted again within the same budget, resident datasets by name.
        shared_memory: inputs over 1 MiB go in shared memory when the coordinator is on this host
        (lepton.sharedmem; False, or LEPTON_SHARED_MEMORY=0, always streams them)."""
        self.address = address if isinstance(address, str) else ",".join(address)
        self.timeout = timeout
        self._shared_memory: bool | None = None if shared_memory and sharedmem.enabled() else False
        self.retry_for, self.resubmit_on_unavailable = retry_for, resubmit_on_unavailable
        keep_large_buffers_in_heap()
        env = os.environ.get
        tls_ca, tls_cert = tls_ca or env("LEPTON_TLS_CA"), tls_cert or env("LEPTON_TLS_CERT")
        tls_key = tls_key or env("LEPTON_TLS_KEY")
        if tls is None and env("LEPTON_TLS", "") not in ("", "0"):
            tls = True
        token = security.read_token(token)
        self._coordinators = failover.Coordinators(
            address, lambda a: security.channel(a, token=token, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert,
                                                tls_key=tls_key), patience=failover_timeout)
        self._bind(self._coordinators.channel())

    def _bind(self, channel: grpc.Channel) -> None:
        """Make the stubs on `channel` (tests wrap it in interceptors and bind again)."""
        self._channel = channel
        self._stub = pb_grpc.CoordinatorServiceStub(self._channel)
        # The streaming calls take requests serialized by hand (wire.framed_chunks: one copy per chunk).
        service = "/lepton.v1.CoordinatorService/"
        self._submit_raw = self._channel.stream_stream(service + "SubmitJob", request_serializer=None,
                                                       response_deserializer=pb.SubmitJobResponse.FromString)
        self._put_raw = self._channel.stream_unary(service + "PutDataset", request_serializer=None,
                                                   response_deserializer=pb.PutDatasetResponse.FromString)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        self._coordinators.close()

    def _follow(self, exc: grpc.RpcError, address: str, attempt: int, started: float) -> bool:
        """After a call to `address` failed: whether it may go again, now to where the leader is."""
        if not self._coordinators.follow(exc, address, attempt, started):
            return False
        if self._coordinators.channel() is not self._channel:
            self._bind(self._coordinators.channel())
        return True

    def _call(self, invoke):
        """invoke() makes one call with the current stubs; it goes again while it follows the leader
        (a call no coordinator answered: any call may, as none of it ran)."""
        started, attempt = time.monotonic(), 0
        while True:
            address = self._coordinators.current
            try:
                return invoke()
            except grpc.RpcError as exc:
                if not self._follow(exc, address, attempt, started):
                    raise
                attempt += 1

    def _unary(self, name: str, request, stub=None):
        """One unary call of method `name` (of stub(channel), else CoordinatorService), following the
        leader, and retried on UNAVAILABLE if it is IDEMPOTENT."""
        def call():
            return self._call(lambda: getattr(stub(self._channel) if stub else self._stub, name)(
                request, timeout=self.timeout or 30))
        try:
            return retrying(call, self.retry_for) if name in IDEMPOTENT else call()
        except grpc.RpcError as exc:
            raise LeptonError.from_rpc(exc) from None

    # Offer a memfd for large row-block results when on the coordinator's host (with shared_memory);
    # False: they stream, as to a client elsewhere (benchmarks/bench_shared_results.py compares).
    offer_result_memory = True

    def _resubmit(self) -> Backoff | None:
        return Backoff(self.retry_for) if self.resubmit_on_unavailable else None

    def _share(self, nbytes: int):
        """SharedArrays if `nbytes` of input should go in shared memory (the coordinator is on this
        host, asked once), else None."""
        if self._shared_memory is None:
            try:
                here = self._unary("GetClusterStatus", pb.GetClusterStatusRequest()).host_id
            except LeptonError:
                here = ""
            self._shared_memory = bool(here) and here == sharedmem.host_id()
        return sharedmem.SharedArrays if self._shared_memory and nbytes > SMALL_JOB_BYTES else None

    def _refused_shared(self, error: LeptonError | None) -> bool:
        """The coordinator could not open our shared memory: stream from now on."""
        if error is not None and sharedmem.UNAVAILABLE in (error.details or ""):
            self._shared_memory = False
            return True
        return False

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, op: str, inputs: np.ndarray | Mapping[str, np.ndarray] | None = None, *,
               partitioning: str = "row_blocks", partitions: int = 0, target_bytes: int = 0,
               key_column: int = 0, label: str = "", timeout: float | None = None, early: bool | Early = False,
               on_estimate: Callable[[Estimate], None] | None = None, **params: Any) -> Job:
        """Submit `op` on `inputs` (one array is named "x"); returns at once with a Job.

        An input may be a `Dataset` (or a dataset's name as a string): it is resident on the agents
        and nothing is shipped for it. `early` (True or an `Early`) asks for running estimates of a
        reduction's result: `job.estimates()` yields them, and `on_estimate` is called with each
        (on the job's reader thread).
        """
        share = self._share(_input_bytes(inputs))
        memory = []

        def shared(array):
            memory.append(share([array]))
            return memory[-1]

        spec, arrays = _spec(op, inputs, partitioning, partitions, target_bytes, key_column, label, params, early,
                             shared if share else None)
        # On the coordinator's host, offer an empty memfd for the result: a large row-block result is
        # then written there by the agents and mapped here instead of streamed (coordinator/results.py).
        result_memory = sharedmem.ResultMemory() if self._shared_memory and self.offer_result_memory and not early else None
        if result_memory is not None:
            spec.result_buffer.CopyFrom(tensor_pb2.SharedBuffer(**result_memory.buffer()))

        def requests():
            yield pb.SubmitJobRequest(spec=spec).SerializeToString()
            if not memory:
                yield from wire.framed_chunks(arrays.values())

        address = self._coordinators.current

        def call(r):
            nonlocal address
            address = self._coordinators.current
            return self._submit_raw(r, timeout=timeout or self.timeout)

        job = Job(call, requests, self._resubmit(), on_estimate,
                  follow=lambda exc, attempt, started: self._follow(exc, address, attempt, started),
                  result_memory=result_memory)
        job._cancel_rpc = lambda request, timeout: self._stub.CancelJob(request, timeout=timeout)
        if result_memory is not None:  # (a mapping of the result outlives the descriptor)
            job._on_done.append(result_memory.close)
            if job._done.is_set():
                result_memory.close()
        if memory:  # the coordinator maps them while it accepts the job; ours go once the job ends
            job._on_done.extend(m.close for m in memory)
            if job._done.is_set():  # (it ended before the callbacks were in)
                for m in memory:
                    m.close()
            job._accepted.wait()
            if job.status is None and self._refused_shared(job._error):
                job._done.wait()
                return self.submit(op, inputs, partitioning=partitioning, partitions=partitions,
                                   target_bytes=target_bytes, key_column=key_column, label=label, timeout=timeout,
                                   early=early, on_estimate=on_estimate, **params)
        return job

    def run(self, op: str, inputs=None, *, partitioning: str = "row_blocks", partitions: int = 0,
            target_bytes: int = 0, key_column: int = 0, label: str = "", timeout: float | None = None,
            **params: Any) -> dict[str, np.ndarray]:
        """Submit and wait: the named results. A job with at most 1 MiB of input takes one round trip
        (RunJob: no stream, no thread); a larger one, or one whose result is too big for one message,
        streams (SubmitJob)."""
        if _input_bytes(inputs) <= SMALL_JOB_BYTES:  # (a large job's spec is built once, by submit)
            spec, arrays = _spec(op, inputs, partitioning, partitions, target_bytes, key_column, label, params)
            request = pb.RunJobRequest(spec=spec, chunks=wire.chunks(arrays.values()))

            def run_job():
                return self._call(lambda: self._stub.RunJob(request, timeout=timeout or self.timeout))

            try:
                response = retrying(run_job, self.retry_for) if self.resubmit_on_unavailable else run_job()
            except grpc.RpcError as exc:
                # UNIMPLEMENTED: an older coordinator; RESOURCE_EXHAUSTED: the result needs a stream.
                if exc.code() not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise LeptonError.from_rpc(exc) from None
            else:
                assembler = wire.TensorAssembler(response.result_headers)
                for chunk in response.result_chunks:
                    assembler.add(chunk)
                return assembler.finish()
        return self.submit(op, inputs, partitioning=partitioning, partitions=partitions, target_bytes=target_bytes,
                           key_column=key_column, label=label, timeout=timeout, **params).result()

    # The reductions take early=True (or an Early): they then return an iterator of Estimates, the
    # last of which is the exact result (Job.estimates).
    def _reduce(self, op: str, x, name: str, early, kw):
        if early:
            return self.submit(op, x, early=early, **kw).estimates(name)
        return _scalar(self.run(op, x, **kw)[name])

    def sum(self, x, early: bool | Early = False, **kw):
        return self._reduce("sum", x, "sum", early, kw)

    def min(self, x, early: bool | Early = False, **kw):
        return self._reduce("min", x, "min", early, kw)

    def max(self, x, early: bool | Early = False, **kw):
        return self._reduce("max", x, "max", early, kw)

    def mean(self, x, early: bool | Early = False, **kw):
        return self._reduce("mean", x, "mean", early, kw)

    def var(self, x, ddof: int = 0, early: bool | Early = False, **kw):
        return self._reduce("var", x, "var", early, {"ddof": ddof, **kw})

    def count(self, x, early: bool | Early = False, **kw):
        return self._reduce("count", x, "count", early, kw)

    def describe(self, x, ddof: int = 0, early: bool | Early = False, stats=None, **kw):
        """sum, min, max, mean, var (with `ddof`) and count along axis 0, in one pass (one job); with
        early, an iterator of Estimates holding all six. `stats`: some of those names only, a list or
        "sum,min,max" (sum, min and max skip the centred pass that mean and var take)."""
        if stats is not None:
            kw["stats"] = stats if isinstance(stats, str) else ",".join(stats)  # (params carry no list of strings)
        if early:
            return self.submit("describe", x, ddof=ddof, early=early, **kw).estimates()
        return {k: _scalar(v) for k, v in self.run("describe", x, ddof=ddof, **kw).items()}

    def histogram(self, x, bins: int | None = None, range=None, edges=None, early: bool | Early = False, **kw):
        """(counts, edges), as numpy.histogram; give bins with range, or edges. With early, an
        iterator of Estimates of the counts (scaled up from the rows seen), the last the exact
        result (its values hold the edges too)."""
        params = {k: v for k, v in (("bins", bins), ("range", range), ("edges", edges)) if v is not None}
        if early:
            return self.submit("histogram", x, early=early, **params, **kw).estimates("counts")
        out = self.run("histogram", x, **params, **kw)
        return out["counts"], out["edges"]

    # -- the op catalog ----------------------------------------------------------------------
    def matmul(self, a, b, plan: str = "auto", **kw) -> np.ndarray:
        """a @ b; plan "rows" (b cached on agents), "inner" (split k, add) or "auto" (by shape)."""
        return self.run("matmul", {"a": a, "b": b}, plan=plan, **kw)["c"]

    def linear(self, x, w, b, activation: str = "none", **kw) -> np.ndarray:
        return self.run("linear", {"x": x, "w": w, "b": b}, activation=activation, **kw)["y"]

    def mlp(self, x, layers, activation: str = "relu", output: str = "none", **kw) -> np.ndarray:
        """Inference through `layers`, a list of (weights, bias); hidden `activation`, last `output`."""
        inputs = {"x": x}
        for i, (w, b) in enumerate(layers):
            inputs[f"w{i}"], inputs[f"b{i}"] = w, b
        return self.run("mlp", inputs, activation=activation, output=output, **kw)["y"]

    def qmatmul(self, x, w=None, *, w_q=None, w_scale=None, **kw) -> dict[str, np.ndarray]:
        """x @ w with int8 weights: float w (quantized by the service; the result reports the error
        against float32) or int8 w_q with per-column w_scale."""
        inputs = {"x": x, **({"w": w} if w is not None else {}), **({"w_q": w_q} if w_q is not None else {}),
                  **({"w_scale": w_scale} if w_scale is not None else {})}
        return {k: _scalar(v) for k, v in self.run("qmatmul", inputs, **kw).items()}

    def gram(self, x, y=None, **kw) -> dict[str, np.ndarray]:
        return self.run("gram", {"x": x, **({"y": y} if y is not None else {})}, **kw)

    def lstsq(self, x, y, ridge: float = 0.0, **kw) -> np.ndarray:
        return self.run("lstsq", {"x": x, "y": y}, ridge=float(ridge), **kw)["coef"]

    def pca(self, x, k: int, **kw) -> dict[str, np.ndarray]:
        return self.run("pca", x, k=k, **kw)

    def topk(self, x, k: int, largest: bool = True, **kw) -> tuple[np.ndarray, np.ndarray]:
        out = self.run("topk", x, k=k, largest=largest, **kw)
        return out["values"], out["indices"]

    def kmeans(self, x, k: int | None = None, centroids=None, max_iter: int = 50, tol: float = 1e-4,
               seed: int = 0, **kw) -> dict[str, np.ndarray]:
        """Lloyd's k-means; k-means++ on a sample unless initial `centroids` are given."""
        inputs = {"x": x, **({"centroids": centroids} if centroids is not None else {})}
        params = {"max_iter": max_iter, "tol": float(tol), "seed": seed, **({"k": k} if k is not None else {})}
        return {k_: _scalar(v) for k_, v in self.run("kmeans", inputs, **params, **kw).items()}

    def spmm(self, a, x, **kw) -> np.ndarray:
        """a @ x for a CSR matrix `a` (scipy.sparse, (indptr, indices, data, shape), or a sparse Dataset)."""
        return self.run("spmm", {**_sparse_input(a), "x": x}, **_sparse_cols(a), **kw)["y"]

    def gcn_layer(self, a, x, w, activation: str = "relu", **kw) -> np.ndarray:
        """act(Â x w) with Â the symmetrically normalised adjacency (self loops added)."""
        return self.run("gcn_layer", {**_sparse_input(a), "x": x, "w": w}, **_sparse_cols(a),
                        activation=activation, **kw)["y"]

    # -- datasets ----------------------------------------------------------------------------
    def put(self, name: str, array, *, partitioning: str = "row_blocks", partitions: int = 0,
            target_bytes: int = 0, key_column: int = 0, replace: bool = False, durable: bool = False,
            for_op: str = "") -> Dataset:
        """Load `array` into the cluster once; its partitions stay resident on the agents.

        It returns once the partitions are placed; the coordinator's copy on its disk follows
        (`Dataset.info.saved`). With `durable=True` it returns only once that copy is on the disk
        (flushed, as are the folder's entries): from then on the dataset survives a crash of the
        coordinator and of every agent. The wait can be longer than the placing (1 GiB took 5 s to
        write and under 2 to place on the benchmark machine).

        `array` may be a sparse CSR matrix (scipy.sparse, or (indptr, indices, data, shape)): ops then
        name it as one input (client.spmm(dataset, x)), partitioned by rows balanced by non-zeros.

        The partitions go to the agents in one contiguous block each, sized by the agents' measured
        speeds where they clearly differ: for `for_op` (the op its jobs will mostly run) once every
        agent was measured for it, else over every op measured so far.
        """
        spec = pb.DatasetSpec(name=name, replace=replace, durable=durable, placement_op=for_op,
                              partitioning=_partitioning(partitioning, partitions, target_bytes, key_column))
        if hasattr(array, "indptr") or isinstance(array, tuple):
            parts, cols = _csr(array)
            arrays = [wire.little_endian(parts[n]) for n in ("a_indptr", "a_indices", "a_data")]
            spec.csr.CopyFrom(pb.CsrMatrix(indptr=wire.header("indptr", arrays[0]),
                                           indices=wire.header("indices", arrays[1]),
                                           data=wire.header("data", arrays[2]), cols=cols))
        else:
            arrays = [wire.little_endian(array)]
            share = self._share(arrays[0].nbytes)
            if share:  # in shared memory: the coordinator and the agents on this host map it
                with share(arrays) as memory:
                    spec.tensor.CopyFrom(wire.header("x", arrays[0], checksum=False))
                    spec.shared.CopyFrom(tensor_pb2.SharedBuffer(**memory.buffer(0)))
                    try:
                        return self._put(spec, [])
                    except LeptonError as exc:
                        if not self._refused_shared(exc):
                            raise
                spec.ClearField("shared")
            spec.tensor.CopyFrom(wire.header("x", arrays[0]))
        return self._put(spec, arrays)

    def _put(self, spec, arrays) -> Dataset:
        def requests():
            yield pb.PutDatasetRequest(spec=spec).SerializeToString()
            yield from wire.framed_chunks(arrays)

        try:
            reply = self._call(lambda: self._put_raw(requests(), timeout=self.timeout))
        except grpc.RpcError as exc:
            raise LeptonError.from_rpc(exc) from None
        return Dataset(reply.dataset)

    def datasets(self) -> list[Dataset]:
        return [Dataset(d) for d in self._unary("ListDatasets", pb.ListDatasetsRequest()).datasets]

    def drop(self, name: str) -> None:
        self._unary("DropDataset", pb.DropDatasetRequest(name=name))

    # -- cluster -----------------------------------------------------------------------------
    def job(self, job_id: str) -> job_pb2.JobStatus:
        return self._unary("GetJob", pb.GetJobRequest(job_id=job_id)).job

    def jobs(self, limit: int = 100) -> list[job_pb2.JobStatus]:
        return list(self._unary("ListJobs", pb.ListJobsRequest(limit=limit)).jobs)

    def cancel(self, job_id: str) -> job_pb2.JobStatus:
        return self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id)).job

    def cluster_status(self) -> pb.GetClusterStatusResponse:
        return self._unary("GetClusterStatus", pb.GetClusterStatusRequest())

    def health(self, service: str = "") -> str:
        """The server's grpc.health.v1 status ("SERVING", "NOT_SERVING", ...) for `service` ("" = all)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = self._unary("Check", health_pb2.HealthCheckRequest(service=service), health_pb2_grpc.HealthStub)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def leader(self) -> str:
        """Who leads, as the first (current) coordinator address says, without following it: that
        address itself if it answers as a leader (a coordinator without --etcd leads alone), the
        address a standby names, or "" from a standby that knows of none yet."""
        address = self._coordinators.current
        try:
            self._stub.GetClusterStatus(pb.GetClusterStatusRequest(), timeout=self.timeout or 30)
            return address
        except grpc.RpcError as exc:
            standby, leader = failover.standby_answer(exc)
            if standby:
                return leader
            raise LeptonError.from_rpc(exc) from None

    def trace(self, job_id: str) -> pb.GetJobTraceResponse:
        """Per-partition timings of a job (see `lepton trace`)."""
        return self._unary("GetJobTrace", pb.GetJobTraceRequest(job_id=job_id))
