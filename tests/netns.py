"""Hosts on one machine for tests: each host is a Linux network namespace with its own address.

Every host gets a veth pair whose far end sits on a bridge inside a "switch" namespace of its own,
so hosts reach one another at their addresses while nothing is added to the machine's own network
(no interface of the root namespace gets an address; the traffic never leaves the namespaces).
Faults are applied to one host's link: `cut` takes it down, `restore` brings it back, `netem` adds
delay and loss with `tc netem`. Kernels built without the netem qdisc get the same faults another
way: `drop` loses a fraction of a host's outgoing packets with an iptables `statistic` rule, and
`delay_relay` puts tests/delay_relay.py (a TCP relay holding every segment for a delay, each way) in
front of a host's server. Needs root and `ip netns`; `unavailable()` says why not, for skips.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

SUBNET = "10.213.7"  # private, and only ever inside these namespaces


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"lepton-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netem_unavailable() -> str | None:
    """Why `tc netem` cannot shape links here (some kernels are built without sch_netem), or None."""
    why = unavailable()
    if why:
        return why
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is not installed"
    probe = f"lepton-netem-{os.getpid()}"
    _ip("netns", "add", probe)
    try:
        _ip("link", "set", "lo", "up", ns=probe)
        done = subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True)
        return None if done.returncode == 0 else f"this kernel has no netem qdisc: {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)


def drop_unavailable() -> str | None:
    """Why iptables cannot drop a random fraction of packets here, or None."""
    why = unavailable()
    if why:
        return why
    if shutil.which("iptables") is None:
        return "the `iptables` command is not installed"
    probe = f"lepton-drop-{os.getpid()}"
    _ip("netns", "add", probe)
    try:
        done = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-A", "OUTPUT", "-m", "statistic",
                               "--mode", "random", "--probability", "0.01", "-j", "DROP"],
                              capture_output=True, text=True)
        return None if done.returncode == 0 else f"iptables cannot drop at random: {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)


class Hosts:
    """A set of namespaced hosts; use as a context manager so every namespace goes at the end."""

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or f"lep{os.getpid() % 100000}"
        self.switch = f"{self.prefix}-sw"
        self.addresses: dict[str, str] = {}
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "Hosts":
        self._add_namespace(self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", ns=name)

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def add(self, host: str) -> str:
        """Make a host; returns its address."""
        ns, index = self.namespace(host), len(self.addresses) + 1
        self._add_namespace(ns)
        inside, outside = f"v{index}", f"{self.prefix[-6:]}p{index}"
        _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", self.switch)
        _ip("link", "set", outside, "master", "br0", ns=self.switch)
        _ip("link", "set", outside, "up", ns=self.switch)
        address = f"{SUBNET}.{index}"
        _ip("addr", "add", f"{address}/24", "dev", inside, ns=ns)
        _ip("link", "set", inside, "up", ns=ns)
        self.addresses[host] = address
        return address

    def _link(self, host: str) -> str:
        return f"v{list(self.addresses).index(host) + 1}"

    def popen(self, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process on `host` (kill it yourself, or let close() do it)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace(host), *argv], **kwargs)
        self._processes.append(process)
        return process

    def run(self, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.namespace(host), *argv], **kwargs)

    def python(self, host: str, args: list[str], **kwargs) -> subprocess.Popen:
        return self.popen(host, [sys.executable, *args], **kwargs)

    def cut(self, host: str) -> None:
        _ip("link", "set", self._link(host), "down", ns=self.namespace(host))

    def restore(self, host: str) -> None:
        _ip("link", "set", self._link(host), "up", ns=self.namespace(host))

    def netem(self, host: str, spec: str = "delay 50ms loss 1%") -> None:
        subprocess.run(["tc", "-n", self.namespace(host), "qdisc", "replace", "dev", self._link(host), "root",
                        "netem", *spec.split()], check=True, capture_output=True, text=True)

    def drop(self, host: str, probability: float) -> None:
        """Lose each packet `host` sends on its link with this probability (iptables `statistic`)."""
        self.run(host, ["iptables", "-A", "OUTPUT", "-o", self._link(host), "-m", "statistic", "--mode", "random",
                        "--probability", str(probability), "-j", "DROP"], check=True, capture_output=True, text=True)

    def dropped(self, host: str) -> int:
        """Packets the `drop` rule of `host` has lost so far."""
        listing = self.run(host, ["iptables", "-L", "OUTPUT", "-v", "-x", "-n"], check=True, capture_output=True,
                           text=True).stdout
        return sum(int(line.split()[0]) for line in listing.splitlines() if "statistic" in line)

    def delay_relay(self, host: str, port: int, target: str, delay: float) -> str:
        """Start tests/delay_relay.py on `host`, at its address and `port`, relaying to `target` (a server
        on the host's loopback) with `delay` seconds each way; returns the relay's address once it listens."""
        relay = self.python(host, [os.path.join(os.path.dirname(__file__), "delay_relay.py"),
                                   f"{self.addresses[host]}:{port}", target, str(delay)],
                            stdout=subprocess.PIPE, text=True)
        line = relay.stdout.readline().strip()
        if line != "listening":
            raise RuntimeError(f"the delay relay on {host} did not start (exit {relay.poll()})")
        return f"{self.addresses[host]}:{port}"

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._processes.clear()
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)  # its veth ends go with it
        self._namespaces.clear()
