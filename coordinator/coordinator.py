"""The coordinator as plain Python: validation at the edge, planning, job table, cluster view.

The gRPC servicer (coordinator/server.py) translates messages and calls this class.
"""
from __future__ import annotations

import bisect
import collections
import itertools
import logging
import queue
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from lepton.errors import FailedPrecondition, InvalidInput, LeptonError, NotFound, ResourceExhausted, Unavailable
from lepton.backends.numpy_device import physical_memory
from lepton.backends.ops import TensorMeta, get_op, sparse
from lepton.coordinator import planner, results
from lepton.coordinator.agent_link import AgentLink
from lepton.coordinator.datasets import CSR_PARTS, DatasetStore
from lepton.coordinator.early import EarlyAnswers, EarlyOptions
from lepton.coordinator.inline import INLINE_BYTES, InlineRunner
from lepton.coordinator.intake import SMALL_JOB_BYTES, read_ahead
from lepton.coordinator.jobs import Job, JobRecord, JobState
from lepton.coordinator.membership import Membership
from lepton.coordinator.scheduler import Scheduler
from lepton.coordinator import store as store_records
from lepton.coordinator.store import MemoryStore, WriteBehind
from lepton.contract import DeviceInfo
from lepton.logs import event
from lepton import sharedmem
from lepton.tuning import IdleTrim
from lepton.wire import TensorAssembler

log = logging.getLogger("lepton.coordinator")


@dataclass
class Config:
    tree_arity: int = 8
    target_partition_bytes: int = 8 << 20
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    max_job_bytes: int = 16 << 30
    max_active_bytes: int = 0  # input bytes of all unfinished jobs together; 0: half the memory
    max_attempts: int = 3
    agent_wait: float = 30.0
    history: int = 1000
    data_dir: str = ""  # where dataset copies live; empty: a temporary folder
    steal_backlog: int = 16
    placement: str = "speed"  # lepton.coordinator.placement: "speed" or "credits"
    max_agents: int = 1024  # registered at once; JoinCluster beyond it gets RESOURCE_EXHAUSTED
    test_save_delay: float = 0.0  # tests: a dataset copy's writer pauses before it flushes each file
    inline_bytes: int = INLINE_BYTES  # tiny jobs of at most this many bytes run here (coordinator/inline.py); 0: never


def adopt_shared(inputs: TensorAssembler, shared: dict) -> list:
    """Open the client's memfds that `shared` (header index -> SharedBuffer) names and make their
    bytes those of `inputs`; returns the opened files, registered so that agents on this host get
    views of them by reference (lepton.sharedmem), to be closed when the data is no longer sent."""
    files, by_name = [], {}
    try:
        for i, buffer in shared.items():
            f = by_name.get(buffer.name)
            if f is None:
                f = by_name[buffer.name] = sharedmem.SharedFile(buffer.host_id, buffer.pid, buffer.fd, buffer.name)
                files.append(sharedmem.registry.add(f))
            inputs.adopt(i, f.view(buffer.offset, inputs.metas[i].nbytes))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def deposed_message(reason: str, leader: str) -> str:
    """What a job's client is told when the coordinator running it lost the lead (UNAVAILABLE)."""
    where = f"the leader is now {leader}" if leader else "no other coordinator was seen leading yet"
    return (f"this coordinator lost the leadership ({reason}); {where}: resubmit the job (a client given "
            f"every coordinator's address follows the leader)")


class Coordinator:
    def __init__(self, config: Config | None = None, dial=None, store=None):
        """dial(address) -> grpc.Channel opens the links to agents (lepton.security.Credentials.channel).
        store keeps the metadata a successor loads (lepton.coordinator.store; default: in memory). A
        coordinator given one is a standby until `take_over`: it reads nothing back before then."""
        self.config = config or Config()
        # A standby runs no job (its gate turns calls away; this catches those that passed it as it
        # stepped down): True from the start with a store that a leader fills, and after `step_down`.
        self.standby = store is not None
        # Whether the lead is still ours (main.py: the leadership's `leading`), asked before a result
        # goes out; and who leads instead, as last seen.
        self.leads, self.leader = (lambda: True), (lambda: "")
        self.store = store or MemoryStore()
        # Job records lag behind, off the jobs' path, where writes cost a round trip (etcd).
        self._job_store = self.store if store is None else WriteBehind(store, self._write_failed)
        self.membership = Membership(self.config.heartbeat_timeout, lambda a: AgentLink(a, dial(a) if dial else None),
                                     on_change=lambda: self.scheduler.notify(),
                                     on_remove=self._agent_removed, max_agents=self.config.max_agents,
                                     on_join=lambda agent: self._store(store_records.AGENTS, agent.id,
                                                                       store_records.agent_record(agent)))
        self.scheduler = Scheduler(self.membership, self.config.max_attempts, self.config.agent_wait,
                                   self.config.steal_backlog, self.config.target_partition_bytes,
                                   self.config.placement)
        self.inline = InlineRunner(self.membership, self.config.inline_bytes)
        self._tmp = None if self.config.data_dir else tempfile.TemporaryDirectory(prefix="lepton-data-")
        self.datasets = DatasetStore(Path(self.config.data_dir or self._tmp.name), self.config.test_save_delay,
                                     reload=store is None, on_saved=self._dataset_saved,
                                     on_dropped=lambda d: self._unstore(store_records.DATASETS, d.name))
        self._jobs: dict[str, Job] = {}
        self._records: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="membership", daemon=True)
        self._reaper.start()

    def submit(self, op_name: str, params: dict, headers: list, scheme: planner.Scheme, count: int,
               target_bytes: int, key_column: int, label: str, deadline: float | None,
               dataset_inputs: dict[str, str] | None = None, early: EarlyOptions | None = None,
               shared: dict | None = None, result_buffer=None) -> Job:
        """Validate and plan a job whose `headers` inputs stream and `dataset_inputs` (input name ->
        dataset name) are resident; with `early`, it sends running estimates (coordinator/early.py);
        `shared` (index into headers -> SharedBuffer) are the inputs that lie in the client's shared
        memory instead of streaming."""
        op = get_op(op_name)
        datasets = {}  # op input name -> (dataset, part): a sparse dataset stands for three inputs
        sparse_cols = {}  # job input name -> the column count its put checked the indices against
        for name, dataset_name in (dataset_inputs or {}).items():
            dataset = self.datasets.get(dataset_name)
            datasets.update({n: (dataset, part) for n, part in dataset.inputs(name).items()})
            if dataset.sparse:
                params.setdefault(f"{name}_cols", dataset.cols)
                sparse_cols[name] = dataset.cols
        names = [h.name for h in headers] + list(datasets)
        if len(set(names)) != len(names):
            raise InvalidInput(f"input names must be unique; got {names}")
        op.check_inputs(names)
        inputs = TensorAssembler(headers, max_bytes=self.config.max_job_bytes, shared=shared or {})
        metas = {**dict(zip([h.name for h in headers], inputs.metas)),
                 **{n: TensorMeta(d.arrays[part].dtype, d.arrays[part].shape) for n, (d, part) in datasets.items()}}
        op = op.resolve(metas, params)
        params = op.validate(metas, params)
        if datasets:
            plan = self._dataset_plan(op, datasets, names)
        else:
            plan = planner.plan(op, metas, scheme, count, target_bytes or self.config.target_partition_bytes,
                                key_column)
        answers = EarlyAnswers(op, params, early.checked(), plan.count, op_name) if early else None
        self._check_capacity(op.name)
        self._check_memory(inputs.heap_bytes)
        files = adopt_shared(inputs, shared or {})
        job = Job(f"job-{self.membership.incarnation}-{next(self._ids)}", op, params, label, inputs, plan,
                  self.config.tree_arity, deadline, datasets, answers)
        # Every input a dataset, and each a sparse matrix whose put checked its values for the column
        # count this job names: end_input need not read them again (check_csr_values over W3's 16M
        # non-zeros was 25% of the coordinator's samples per job). Another `a_cols` is checked anew;
        # a dense dataset's values were never checked (no op checks dense values yet).
        job.data_checked = bool(dataset_inputs) and len(sparse_cols) == len(dataset_inputs) and all(
            params.get(f"{name}_cols") == cols for name, cols in sparse_cols.items())
        job.result_memory = results.offer(op, metas, params, plan, result_buffer, early is not None)
        job.shared_files = files + [job.result_memory] * (job.result_memory is not None)  # closed by `finished`
        job.on_finish = lambda: self._store(store_records.JOBS, job.id, store_records.job_record(job.record))
        with self._lock:
            if self.standby:
                for f in files:
                    f.close()
                raise Unavailable("this coordinator no longer leads; retry: the client follows the new leader")
            self._store(store_records.JOBS, job.id, store_records.job_record(job.record))
            self._jobs[job.id] = job
            self._records[job.id] = job.record
            self._evict()
        # A small job's one line is its job.finished (a log line costs ~50 µs, a small job ~1 ms).
        event(log, "job.accepted", level=logging.DEBUG if inputs.bytes_total <= SMALL_JOB_BYTES else logging.INFO,
              job=job.id, op=op.name, bytes=inputs.bytes_total, partitions=plan.count, scheme=plan.scheme.value)
        self.scheduler.add(job)
        return job

    def _evict(self) -> None:
        """Forget the oldest finished jobs beyond `history` (under `_lock`). Active jobs always stay:
        their records are how GetJob, CancelJob and the memory limit find them."""
        excess = len(self._records) - self.config.history
        if excess <= 0:
            return
        victims = []
        for job_id, record in self._records.items():  # oldest first: usually the first is final
            if record.state.final:
                victims.append(job_id)
                if len(victims) == excess:
                    break
        for job_id in victims:
            del self._records[job_id]
            self._jobs.pop(job_id, None)
            self._unstore(store_records.JOBS, job_id)

    @staticmethod
    def _dataset_plan(op, datasets: dict, names: list[str]) -> planner.Plan:
        """A job on datasets uses their partitioning: every split input must be one, all cut alike."""
        outside = [n for n in datasets if n not in op.split_inputs]
        if outside:
            raise InvalidInput(f"input(s) {outside} of op {op.name!r} are used whole; only split inputs "
                               f"{list(op.split_inputs)} can be datasets")
        streamed = [n for n in op.split_inputs if n in names and n not in datasets]
        if streamed:
            raise InvalidInput(f"split inputs {streamed} must be datasets too, partitioned like the others")
        (first, _), *others = datasets.values()
        for other, _ in others:
            if not np.array_equal(other.row_splits, first.row_splits):
                raise InvalidInput(f"datasets {first.name!r} and {other.name!r} are partitioned differently")
        return planner.Plan(planner.Scheme.ROW_BLOCKS, first.partitions, first.shape[0], row_splits=first.row_splits)

    # -- agents ------------------------------------------------------------------------------
    def join(self, name: str, address: str, devices: list, credits: int, metrics_address: str = "",
             resident=()) -> tuple:
        """Register an agent with the dataset partitions it already holds (`resident`, as
        DatasetStore.adopt takes them): those of datasets in the catalog count as placed there and
        are never sent again. Returns the agent and the key prefixes it must drop (stale versions)."""
        stale = []

        def adopt(agent) -> None:
            keys, dropped = self.datasets.adopt(agent.id, resident)
            agent.link.cached.update(keys)
            stale.extend(dropped)
            if keys or dropped:
                event(log, "agent.resident", agent=agent.id, partitions=len(keys), stale=len(dropped))

        return self.membership.join(name, address, devices, credits, metrics_address, prepare=adopt), stale

    # -- datasets ----------------------------------------------------------------------------
    def put_dataset(self, name: str, headers: list, chunks, scheme: planner.Scheme, count: int, target_bytes: int,
                    key_column: int, replace: bool, cols: int | None = None, shared=None, durable: bool = False,
                    timeout: float | None = None, placement_op: str = ""):
        """Receive an array (one header) or a CSR matrix (indptr, indices, data headers and `cols`), keep
        the coordinator's copy, place its partitions on the agents.

        Dense row blocks are placed while they stream in: each partition goes to its agent as soon
        as its last row arrives, so receiving and placing overlap instead of taking turns. A dense
        array in the client's shared memory (`shared`, a SharedBuffer) arrives all at once; agents on
        this host map their partitions from it, and it serves as the copy until the file is written.
        durable: return only once the copy is on the disk (waiting at most `timeout` s for it).
        placement_op: the op whose measured speeds size the agents' blocks (`place`)."""
        if placement_op:
            get_op(placement_op)  # an unknown op is InvalidInput, before any byte is read
        self.datasets.check_new(name, replace)
        if shared is not None and cols is not None:
            raise InvalidInput("a sparse dataset's parts stream as chunks; only a dense one may lie in shared memory")
        inputs = TensorAssembler(headers, max_bytes=self.config.max_job_bytes, shared={0: shared} if shared else {})
        files = adopt_shared(inputs, {0: shared} if shared else {})
        if shared is None and cols is None and scheme is planner.Scheme.ROW_BLOCKS and inputs.metas[0].nbytes and any(
                a.link.same_host for a in self.membership.agents()):
            # Streamed rows land in a memfd of ours: agents on this host map their partitions from it
            # as they fill (no second stream, no copy of theirs), and it is the copy until the file is.
            try:
                receiving = sharedmem.registry.add(sharedmem.ReceiveBuffer(inputs.metas[0].nbytes))
            except OSError as exc:  # no memfd (descriptors, memory): the rows go to the agents as bytes
                event(log, "dataset.no_shared_memory", level=logging.WARNING, dataset=name, error=str(exc))
            else:
                inputs.receive_into(0, receiving)
                files.append(receiving)
        try:
            dataset = self._put_dataset(name, inputs, chunks, scheme, count, target_bytes, key_column, replace, cols,
                                        placement_op)
            if durable:
                self.datasets.wait_saved(dataset, timeout)
            return dataset
        finally:
            for f in files:  # the agents opened theirs: later misses stream from the copy
                f.close()

    def _put_dataset(self, name, inputs, chunks, scheme, count, target_bytes, key_column, replace, cols,
                     placement_op=""):
        target = target_bytes or self.config.target_partition_bytes
        if cols is None:
            meta = inputs.metas[0]
            if not meta.shape:
                raise InvalidInput("a dataset needs at least one dimension (its rows are partitioned)")
            plan = planner.plan(planner.ROWS, {"x": meta}, scheme, count, target, key_column)
        else:
            metas = dict(zip(sparse.CSR, inputs.metas))
            sparse.check_csr(sparse.SPMM, metas, {"a_cols": cols})
            if scheme is not planner.Scheme.ROW_BLOCKS:
                raise InvalidInput("a sparse dataset is partitioned in row blocks balanced by non-zeros; "
                                   "leave partitioning.scheme unset or ROW_BLOCKS")
            plan = planner.plan(sparse.SPMM, metas, scheme, count, target)
        if cols is None and scheme is planner.Scheme.ROW_BLOCKS:
            dataset = self.datasets.new(name, {"x": inputs.array(0)}, plan.row_splits)
            try:
                ahead = read_ahead(chunks, name=f"put-{name}")
                try:
                    self.place(dataset, ready=self._arrived_partitions(inputs, ahead, plan.row_splits),
                               op=placement_op)
                finally:
                    ahead.close()  # (on a failure too: its thread stops now, not when a GC frees the traceback)
                inputs.finish_list()  # every byte in, checksums right
                dataset, old = self.datasets.add(dataset, replace)
            except BaseException:
                self.datasets.abandon(dataset)
                self._forget_keys(dataset)
                raise
        else:
            for chunk in chunks:
                inputs.add(chunk)
            arrays = inputs.finish_list()
            if cols is None:
                parts = {"x": arrays[0][plan.order(arrays)]}
            else:
                parts = dict(zip(sparse.CSR, arrays))
                sparse.check_csr_values(sparse.SPMM, parts, cols)
                plan.balance(sparse.SPMM.row_weights(parts))
                parts = {part: parts[f"a_{part}"] for part in CSR_PARTS}
            dataset, old = self.datasets.create(name, parts, plan.row_splits, replace, cols)
            self.place(dataset, op=placement_op)
            if dataset.saved.is_set():  # saved while placing: store the placement too
                self._dataset_saved(dataset)
        if old is not None:  # (its copy on disk goes once the new one is whole: DatasetStore.add)
            self._forget_keys(old)
        event(log, "dataset.loaded", dataset=name, bytes=dataset.nbytes, partitions=dataset.partitions,
              agents=len(set(dataset.placement.values())))
        return dataset

    @staticmethod
    def _arrived_partitions(inputs: TensorAssembler, chunks, row_splits: np.ndarray):
        """Read the chunks of one tensor, yielding each partition once all its rows are in."""
        done = 0
        for chunk in chunks:
            inputs.add(chunk)
            rows = inputs.rows_received(0)
            while done < len(row_splits) - 1 and row_splits[done + 1] <= rows:
                yield done
                done += 1
        yield from range(done, len(row_splits) - 1)  # (a short stream fails in finish_list)

    PLACE_BATCH_BYTES = 16 << 20  # one CacheTensors call per ~16 MiB of an agent's partitions

    def place(self, dataset, ready=None, op: str = "") -> None:
        """Spread the partitions over the agents in contiguous blocks, one per agent, sized by the
        placement (by measured speed: `SpeedPlacement.blocks`): a job's run is a contiguous range of
        partitions resident on one agent, so round-robin homes made every run a single partition,
        each paying a run's fixed cost (bench_hetero's traces); `op`: whose speeds size them.
        `ready` yields partitions as their rows arrive (default: all of them, now); each agent's thread sends its
        share in calls of about PLACE_BATCH_BYTES while the rest still streams in."""
        agents = sorted(self.membership.agents(), key=lambda a: a.id)
        ready = range(dataset.partitions) if ready is None else ready
        if not agents:
            for _ in ready:
                pass  # jobs will place them as they run
            return

        def send(agent, partitions):
            items = [(dataset.key(p, part), part, array) for p in partitions for part, array in dataset.share(p).items()]
            try:
                kept = set(agent.link.cache_tensors(items, timeout=600))
            except (grpc.RpcError, LeptonError) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else exc.code
                event(log, "dataset.place_failed", level=logging.WARNING, dataset=dataset.name, agent=agent.id,
                      code=code.name)
                return
            agent.link.cached.update(kept)
            for p in partitions:
                if all(dataset.key(p, part) in kept for part in dataset.arrays):
                    dataset.placement[p] = agent.id

        def sender(agent, todo: queue.Queue):
            batch, size = [], 0
            while (p := todo.get()) is not None or batch:
                if p is not None:
                    batch.append(p)
                    # Bytes that go by where they lie in shared memory cost a call nothing. (A streamed
                    # put's ReceiveBuffer is handed on once complete: the end of the stream, the last batch.)
                    size += sum(a.nbytes for a in dataset.share(p).values()
                                if not (agent.link.same_host and sharedmem.registry.locate(a, filling=True)))
                if batch and (p is None or size >= self.PLACE_BATCH_BYTES):
                    send(agent, batch)
                    batch, size = [], 0
                if p is None:
                    return

        queues = {agent: queue.Queue() for agent in agents}
        threads = [threading.Thread(target=sender, args=item, name=f"place-{item[0].id}") for item in queues.items()]
        for t in threads:
            t.start()
        # Block i ends at bounds[i]: partition p goes to the first agent whose block ends past it.
        bounds = list(itertools.accumulate(self.scheduler.placement.blocks(agents, dataset.partitions, op)))
        try:
            for p in ready:
                queues[agents[bisect.bisect_right(bounds, p)]].put(p)
        finally:
            for q in queues.values():
                q.put(None)
            for t in threads:
                t.join()

    def drop_dataset(self, name: str) -> None:
        self._forget_keys(self.datasets.drop(name))

    def _forget_keys(self, dataset) -> None:
        """Drop the dataset's partitions from the agents' caches (and from what we believe they hold)."""
        for agent in self.membership.agents():
            agent.link.cached.drop_prefix(dataset.prefix)
            agent.link.drop_cached(dataset.prefix)

    def _check_memory(self, incoming: int) -> None:
        limit = self.config.max_active_bytes or physical_memory() // 2
        with self._lock:
            active = sum(j.record.bytes_total for j in self._jobs.values() if not j.state.final)
        if active + incoming > limit:
            raise ResourceExhausted(f"the coordinator holds {active >> 20} MiB of unfinished jobs' input and this job "
                                    f"adds {incoming >> 20} MiB, over its {limit >> 20} MiB limit: retry when jobs "
                                    f"finish, load the data once with client.put, or raise --max-active-mib")

    def _check_capacity(self, op_name: str) -> None:
        agents = self.membership.agents()
        if not agents:
            raise Unavailable("no agents have joined this coordinator; start one with "
                              "`lepton agent --coordinator ADDRESS --device numpy`")
        if not any(op_name in a.ops for a in agents):
            offered = sorted({op for a in agents for op in a.ops})
            raise FailedPrecondition(f"no agent's devices offer op {op_name!r}; the cluster offers {offered}. Start an "
                                     f"agent whose devices run it (`lepton devices` lists what a machine has; "
                                     f"the numpy device runs every op)")

    def finished(self, job: Job) -> None:
        """The job's stream is over: drop the data it still holds (the record stays)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        for f in getattr(job, "shared_files", ()):
            f.close()
        if not job.state.final:
            self.scheduler.end(job, "CANCELLED", "the client went away")
        job.result = None

    def cancel(self, job_id: str) -> JobRecord:
        record = self.record(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            self.scheduler.end(job, "CANCELLED", "cancelled by request")
        return record

    def fail(self, job: Job, code: str, message: str) -> None:
        self.scheduler.end(job, code, message)

    def record(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id)
        if record is None:
            if job_id.startswith("job-") and not job_id.startswith(f"job-{self.membership.incarnation}-"):
                raise NotFound(f"no job {job_id!r}: it is not one of this coordinator's (job-"
                               f"{self.membership.incarnation}-N); a coordinator that restarted forgets its jobs")
            raise NotFound(f"no job {job_id!r} (the coordinator keeps the last {self.config.history} jobs)")
        return record

    def records(self, limit: int) -> list[JobRecord]:
        with self._lock:
            return list(reversed(self._records.values()))[:limit]

    # -- the metadata store ------------------------------------------------------------------
    def _store(self, kind: str, key: str, value: dict | None) -> None:
        """Write one record (None: delete it); a failure is logged, not raised: the work it describes
        goes on, and a store that refuses a fenced write has already told the leadership (which stops us)."""
        store = self._job_store if kind == store_records.JOBS else self.store
        try:
            store.put(kind, key, value) if value is not None else store.delete(kind, key)
        except Exception as exc:  # noqa: BLE001 - etcd unreachable, or no longer ours
            self._write_failed(exc, 1)

    def _unstore(self, kind: str, key: str) -> None:
        self._store(kind, key, None)

    @staticmethod
    def _write_failed(exc: Exception, count: int) -> None:
        event(log, "store.write_failed", level=logging.WARNING, records=count, error=f"{type(exc).__name__}: {exc}")

    def _dataset_saved(self, dataset) -> None:
        self._store(store_records.DATASETS, dataset.name, store_records.dataset_record(dataset))

    def _agent_removed(self, agent) -> None:
        self.scheduler.on_agent_removed(agent)
        self._unstore(store_records.AGENTS, agent.id)

    def take_over(self) -> None:
        """Load what the previous leader left (a standby calls this on being elected): the agents
        from the store (they count as just seen, keeping their ids), the datasets from their copies
        in the shared data folder (as a restarted coordinator does) with the placement the store
        recorded, and the job records. Jobs that were running are lost with their leader: their
        records end FAILED with UNAVAILABLE, and their clients resubmit them. (A coordinator that led
        before and stepped down loads it all afresh: step_down forgot its own.)"""
        for record in self.store.load(store_records.AGENTS).values():
            self.membership.restore(record["id"], record["name"], record["address"],
                                    [DeviceInfo(**d) for d in record["devices"]], record["credits"],
                                    record["metrics_address"])
        agents = {a.id: a for a in self.membership.agents()}
        self.datasets.reload()
        for record in self.store.load(store_records.DATASETS).values():
            try:
                dataset = self.datasets.get(record["name"])
            except NotFound:
                dataset = None
            if dataset is None or dataset.version != record["version"]:
                continue  # its copy never became whole, or was replaced: the folder is the truth
            for partition, agent_id in record["placement"].items():  # by reference; a miss is resent
                if agent_id in agents:
                    dataset.placement[int(partition)] = agent_id
                    agents[agent_id].link.cached.update(dataset.key(int(partition), part) for part in dataset.arrays)
        records = sorted(self.store.load(store_records.JOBS).values(), key=lambda r: r["submitted_at"])
        for fields in records[-self.config.history:]:
            record = JobRecord(**{k: v for k, v in fields.items() if k != "state"}, state=JobState[fields["state"]])
            if not record.state.final:
                record.state, record.finished_at = JobState.FAILED, time.time()
                record.error_code = "UNAVAILABLE"
                record.error_message = "the coordinator that ran it was lost; resubmit the job"
                self._store(store_records.JOBS, record.job_id, store_records.job_record(record))
            with self._lock:
                self._records[record.job_id] = record
        self.standby = False
        event(log, "coordinator.took_over", agents=len(agents), datasets=len(self.datasets.all()),
              jobs=len(records))

    def deposed(self) -> str:
        """"" while we may answer as the leader; else why not, for the client (UNAVAILABLE)."""
        if self.leads():
            return ""
        return deposed_message("its etcd lease lapsed before the result went out", self.leader())

    def step_down(self, reason: str, leader: str) -> None:
        """The lead was lost (lepton.coordinator.leadership has closed the gate already): fail every
        job with UNAVAILABLE naming the new leader, so that clients resubmit there, and forget the
        agents and the job records. What was written to the store stays as written; what was still
        queued behind is dropped (the successor's records are the truth now). `take_over` loads it
        all back if this coordinator is elected again."""
        with self._lock:
            self.standby = True
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._records.clear()
        if self._job_store is not self.store:
            self._job_store.discard()
        message = deposed_message(reason, leader)
        for job in jobs:
            self.scheduler.end(job, "UNAVAILABLE", message)
        for agent in self.membership.agents():
            self.scheduler.on_agent_removed(agent)  # its runs stopped, its measured speed forgotten
        self.membership.forget_all()
        event(log, "coordinator.stepped_down", jobs=len(jobs), leader=leader or "unknown")

    def _reap(self) -> None:
        trim = IdleTrim()
        while not self._stop.wait(self.config.heartbeat_interval / 2):
            if self.standby:
                continue  # a standby's agents are the leader's to expire
            self.membership.expire()
            with self._lock:
                busy = any(not job.state.final for job in self._jobs.values())
            trim.poll(busy, time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.scheduler.end(job, "UNAVAILABLE", "the coordinator is shutting down")
        self.scheduler.stop()
        if self._job_store is not self.store:
            self._job_store.close()  # the jobs' final records, while we still lead
        for agent in self.membership.agents():
            agent.link.close()
        if self._tmp is not None:
            self._tmp.cleanup()
