"""A real cluster on this machine: a coordinator and agents as subprocesses on loopback.

    with lepton.LocalCluster(agents=2) as cluster:
        print(cluster.client().sum(x))

Its processes end with the process that started them, even one killed outright (lepton.lifecycle);
`detach=True` asks for a cluster that outlives its starter (`lepton up --detach`).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from lepton import lifecycle
from lepton import security
from lepton.client import Client, LeptonError

# Security settings a cluster's processes must not inherit from the caller's environment.
_SECURITY_ENV = ("LEPTON_TOKEN", "LEPTON_TOKEN_FILE", "LEPTON_READ_TOKEN", "LEPTON_JOIN_TOKEN", "LEPTON_JOIN_TOKEN_FILE",
                 "LEPTON_TLS_CERT", "LEPTON_TLS_KEY", "LEPTON_TLS_CA", "LEPTON_MTLS", "LEPTON_INSECURE")


class LocalCluster:
    def __init__(self, agents: int = 2, devices: str | list[str] = "numpy", *, coordinator_args: list[str] = (),
                 agent_args: list[str] = (), env: dict[str, str] | None = None, startup_timeout: float = 60,
                 detach: bool = False, token: str | None = None, tls: bool = False, mtls: bool = True,
                 ha: bool = False, throttle: float | list[float] = 1):
        """ha: a private etcd and two coordinators, one leading, sharing a data folder; `address`
        then names both ("a,b"), and clients and agents follow the leader. token: the client token (None: a random one per cluster, which `client()` carries; "": no
        tokens at all, the open loopback of old). tls: a throw-away CA and certificates, and TLS on
        every port; agents then obey the coordinator's certificate, and with mtls the coordinator too
        requires one from every caller (clients present the client certificate). throttle: each agent's
        devices run that many times slower (`lepton agent --throttle`), one factor for all or one per agent."""
        per_agent = [devices] * agents if isinstance(devices, str) else list(devices)
        throttles = [throttle] * agents if isinstance(throttle, (int, float)) else list(throttle)
        if len(per_agent) != agents or len(throttles) != agents:
            raise ValueError(f"devices lists {len(per_agent)} specs and throttle {len(throttles)} factors "
                             f"for {agents} agents")
        self._devices, self._agent_args = per_agent, list(agent_args)
        self._throttles = throttles
        self._coordinator_args = list(coordinator_args)
        # Each agent's BLAS runs on one thread, however many agents there are (Dask's workers do the
        # same). Bigger pools on one machine oversubscribe its cores and spin (a Gram of 8M x 32 ran
        # 37x slower than NumPy so), and a share of the cores per agent would make results depend on
        # the number of agents: OpenBLAS's Haswell kernels, which it also runs on AMD Zen 5, round
        # float32 products differently on 1 thread than on 2. More cores per agent: `numpy:N`.
        blas = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        self._timeout = startup_timeout
        self.detach = detach
        # A detached cluster keeps its logs after this process is gone.
        self._dir = None if detach else tempfile.TemporaryDirectory(prefix="lepton-")
        self.log_dir = Path(tempfile.mkdtemp(prefix="lepton-") if detach else self._dir.name)
        self.token = secrets.token_urlsafe(32) if token is None else token
        self.join_token = secrets.token_urlsafe(32) if self.token else ""
        self.token_file = self.log_dir / "token"  # for `lepton --token-file` (0600, gone with the cluster)
        self.token_file.touch(mode=0o600)
        self.token_file.write_text(self.token)
        base = {k: v for k, v in os.environ.items() if k not in _SECURITY_ENV}
        secure = {"LEPTON_TOKEN": self.token, "LEPTON_JOIN_TOKEN": self.join_token}  # env: not in `ps`
        self.certs: Path | None = None
        self.mtls = tls and mtls
        if tls:
            from lepton import certs

            self._ca = certs.make_ca("Lepton LocalCluster CA")
            self.certs = certs.create(self.log_dir / "certs", agents=0, ca=self._ca)
            secure.update(LEPTON_TLS_CA=str(self.certs / "ca.pem"))
        self._env = {**base, **secure, **(env or {})}
        self._agent_env = {**blas, **self._env}  # what the caller set wins
        self.ha = ha
        self.etcd = None  # lepton.etcd_process.EtcdProcess, with ha
        self.coordinator: subprocess.Popen | None = None  # the first; with ha, `coordinators` has both
        self.coordinators: list[subprocess.Popen] = []
        self.addresses: list[str] = []  # the coordinators', in `coordinators` order
        self.agents: list[subprocess.Popen] = []
        self.address = ""
        self._clients: list[Client] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        env = {**(env or self._env), **lifecycle.child_env(self.detach)}  # die with us, unless detached
        return subprocess.Popen([sys.executable, "-m", "lepton", *args], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _start_coordinator(self, listen: str, args: list[str] = (), index: int = 0) -> None:
        name = f"coordinator-{index}" if self.ha else "coordinator"
        ready = self.log_dir / f"{name}.address"
        ready.unlink(missing_ok=True)
        env = {**self._env, **self._tls_env("coordinator"), **({"LEPTON_MTLS": "1"} if self.mtls else {})}
        # Its datasets' copies in a folder of the cluster's own, so that a restarted one finds them
        # (and, with ha, that the standby shares). (Not for a detached plain cluster: its folder
        # outlives it, and its copies would stay for ever.)
        mine = (self.ha or not self.detach) and "--data-dir" not in self._coordinator_args
        data = ["--data-dir", str(self.log_dir / "data")] if mine else []
        ha = ["--etcd", self.etcd.url] if self.ha else []
        process = self._spawn(name, ["coordinator", "--listen", listen, "--ready-file", str(ready), *data, *ha,
                                     *self._coordinator_args, *args], env)
        if index < len(self.coordinators):  # (before the wait, which watches the coordinators)
            self.coordinators[index] = process
        else:
            self.coordinators.append(process)
            self.addresses.append("")
        self._wait(lambda: ready.exists(), [process], name)
        self.addresses[index] = ready.read_text()
        self.coordinator, self.address = self.coordinators[0], ",".join(self.addresses)

    def kill_coordinator(self, sig: int = signal.SIGKILL, index: int = 0) -> None:
        """Stop coordinator `index` with `sig` (default: SIGKILL, a crash); start_coordinator brings it back."""
        os.killpg(self.coordinators[index].pid, sig)
        self.coordinators[index].wait(timeout=60)

    def start_coordinator(self, args: list[str] = (), index: int = 0) -> None:
        """Start coordinator `index` again on the same address and data folder (with `args` besides
        the cluster's); the agents rejoin by themselves (wait_for_agents)."""
        self._start_coordinator(self.addresses[index], list(args), index)

    def restart_coordinator(self, sig: int = signal.SIGKILL, args: list[str] = (), index: int = 0) -> None:
        self.kill_coordinator(sig, index)
        self.start_coordinator(args, index)

    def start(self) -> None:
        if self.ha:
            from lepton.etcd_process import EtcdProcess

            self.etcd = EtcdProcess(self.log_dir, timeout=self._timeout, detach=self.detach)
        for index in range(2 if self.ha else 1):
            self._start_coordinator("127.0.0.1:0", index=index)
        try:
            for devices, throttle in zip(self._devices, self._throttles):
                self.add_agent(devices, ["--throttle", f"{throttle:g}"] if throttle != 1 else [], wait=False)
            self.wait_for_agents(len(self._devices), self.agents)
        except BaseException:
            self.close()
            raise

    def add_agent(self, devices: str = "numpy", args: list[str] = (), wait: bool = True) -> subprocess.Popen:
        """Start one more agent; with wait, return once it has joined."""
        joined = len(self._probe().cluster_status().agents)
        env = {**self._agent_env, **self._tls_env(f"agent-{len(self.agents) + 1}")}
        process = self._spawn(f"agent-{len(self.agents)}", ["agent", "--coordinator", self.address, "--device",
                                                             devices, *self._agent_args, *args], env)
        self.agents.append(process)
        if wait:
            self.wait_for_agents(joined + 1, [process])
        return process

    def wait_for_agents(self, count: int, watch: list[subprocess.Popen] = ()) -> None:
        """Wait until `count` agents have joined; fail early if a watched process dies."""
        def joined() -> bool:
            try:
                return len(self._probe().cluster_status().agents) >= count
            except LeptonError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                return False  # a restarted coordinator: the probe's channel reconnects

        self._wait(joined, list(watch), f"{count} agent(s) to join")

    def _wait(self, condition, watch: list[subprocess.Popen], what: str) -> None:
        end = time.monotonic() + self._timeout
        while time.monotonic() < end:
            if condition():
                return
            # (with ha, one coordinator may die: that is what the standby is for)
            dead = [p for p in watch if p.poll() is not None] + (
                self.coordinators if all(p.poll() is not None for p in self.coordinators) else [])
            if dead:
                raise RuntimeError(f"a lepton process exited with {dead[0].returncode} while waiting for {what}:\n"
                                   f"{self.logs()}")
            time.sleep(0.05)
        raise TimeoutError(f"timed out after {self._timeout}s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def kill_agent(self, index: int, sig: int = signal.SIGKILL) -> None:
        process = self.agents[index]
        os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def _tls_env(self, name: str) -> dict[str, str]:
        """A certificate of its own for the process `name` ("coordinator", "agent-N", "client")."""
        if not self.certs:
            return {}
        from lepton import certs

        cert, key = self.certs / f"{name}.pem", self.certs / f"{name}.key"
        if not cert.exists():
            common_name = {"coordinator": security.COORDINATOR_CN, "client": "lepton-client"}.get(
                name, f"{security.AGENT_CN_PREFIX}-{name.rpartition('-')[2]}")
            certs.write_pair(self.certs, name, common_name, self._ca)
        return {"LEPTON_TLS_CERT": str(cert), "LEPTON_TLS_KEY": str(key)}

    def credentials(self) -> dict:
        """What a client of this cluster presents: Client(address, **cluster.credentials())."""
        tls = self._tls_env("client") if self.mtls else {}
        return {"token": self.token, "tls": bool(self.certs), "tls_ca": self._env.get("LEPTON_TLS_CA"),
                "tls_cert": tls.get("LEPTON_TLS_CERT"), "tls_key": tls.get("LEPTON_TLS_KEY")}

    def channel(self, address: str | None = None, peer: bool = False):
        """A raw gRPC channel to the coordinator (or `address`) with a client's credentials; with
        peer, with the coordinator's own (the join token, its certificate): what agents obey."""
        if not peer:
            return security.channel(address or self.address, **self.credentials())
        tls = self._tls_env("coordinator")
        return security.channel(address or self.address, token=self.join_token, tls=bool(self.certs),
                                tls_ca=self._env.get("LEPTON_TLS_CA"), tls_cert=tls.get("LEPTON_TLS_CERT"),
                                tls_key=tls.get("LEPTON_TLS_KEY"))

    def _probe(self) -> Client:
        if not self._clients:
            # No retries of its own: its callers poll, watching the processes meanwhile.
            self._clients.append(Client(self.address, timeout=5, retry_for=0, **self.credentials()))
        return self._clients[0]

    @property
    def dashboard_url(self) -> str:
        """The coordinator's live dashboard ('' when it serves none)."""
        address = self._probe().cluster_status().dashboard_address
        if not address:
            return ""
        return f"http://{address}/" + (f"?token={self.token}" if self.token else "")

    def client(self, timeout: float | None = None, **options) -> Client:
        """A client of the cluster; `options` go to Client (shared_memory=False, say)."""
        client = Client(self.address, timeout, **self.credentials(), **options)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def close(self, timeout: float = 15) -> None:
        """Stop every process: SIGTERM, and SIGKILL for any still running `timeout` seconds later."""
        self.close_clients()
        processes = [p for p in [*self.agents, *self.coordinators] if p.poll() is None]
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.etcd is not None:
            self.etcd.stop()
        if self._dir is not None:
            self._dir.cleanup()


__all__ = ["LocalCluster", "LeptonError"]
