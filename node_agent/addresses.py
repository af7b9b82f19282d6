"""Which address an agent listens on and which one it gives the coordinator to dial.

On one machine both are 127.0.0.1. On many hosts the coordinator must dial each agent at an address
it can reach, never 127.0.0.1 and never a wildcard: by default an agent listens on, and advertises,
the local address its host uses to reach the coordinator (the kernel's route choice, found by
connecting a UDP socket, which sends nothing).
"""
from __future__ import annotations

import ipaddress
import socket

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def split(address: str) -> tuple[str, str]:
    """host:port -> (host, port), keeping IPv6 brackets off the host."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def join(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def route_source(peer: str) -> str:
    """The local address the kernel would use to reach host `peer` (127.0.0.1 for loopback)."""
    host, port = split(peer)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, int(port or 9), type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"  # unresolvable now: the join will fail and say so; stay private meanwhile


def listen_address(listen: str | None, coordinator: str) -> str:
    """--listen as given, else the route source towards the coordinator on a free port."""
    return listen or join(route_source(coordinator), 0)


def advertise_address(advertise: str | None, listen: str, port: int, coordinator: str) -> str:
    """--advertise as given, else the listen host (or, for a wildcard, the route source) and the bound port."""
    if advertise:
        return advertise
    host, _ = split(listen)
    if host in WILDCARDS:
        host = route_source(coordinator)
    return join(host, port)


def is_loopback(address: str) -> bool:
    host, _ = split(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
