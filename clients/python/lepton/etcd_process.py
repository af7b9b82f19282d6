"""A private etcd server on loopback, for a local highly available cluster (`lepton up --ha`,
LocalCluster(ha=True)) and its tests. It needs the `etcd` binary (Debian: etcd-server). With `tls`
(ca, cert, key: PEM paths, as `lepton certs` writes them) it serves https only and requires a
client certificate signed by that CA (etcd's --client-cert-auth)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from lepton import lifecycle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdProcess:
    def __init__(self, directory: Path, timeout: float = 30, detach: bool = False,
                 tls: tuple[str, str, str] | None = None):
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.path.exists(binary):
            raise FileNotFoundError("high availability needs etcd: apt-get install etcd-server (or put etcd on PATH)")
        client, peer = _free_port(), _free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._context = None
        secure = []
        if tls:
            ca, cert, key = map(str, tls)
            secure = ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
            self._context = ssl.create_default_context(cafile=ca)
            self._context.load_cert_chain(cert, key)
        self._log = open(Path(directory) / "etcd.log", "ab")
        self.process = subprocess.Popen(
            [binary, "--name", "lepton", "--data-dir", str(Path(directory) / "etcd"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"lepton={peer_url}", "--logger", "zap", "--log-level", "warn", *secure],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            # etcd cannot watch its starter as Lepton's processes do (lepton.lifecycle): the kernel ends it.
            preexec_fn=None if detach or threading.current_thread() is not threading.main_thread()
            else lambda: lifecycle._set_pdeathsig(signal.SIGTERM))
        end = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see {directory}/etcd.log")
            if time.monotonic() > end:
                self.stop()
                raise TimeoutError(f"etcd was not healthy after {timeout}s; see {directory}/etcd.log")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1, context=self._context) as reply:
                return json.load(reply).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
