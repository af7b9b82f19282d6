"""Who may call what: TLS credentials, bearer tokens, the one server interceptor, and the limits.

This module holds the light half (flags, Credentials, the exposure check: no gRPC, so that the
CLI's parser stays cheap); lepton.security the half that needs gRPC.

Three secrets, each one flag (and one environment variable) away:
  - the client token (--token, LEPTON_TOKEN): every CoordinatorService call; an optional read-only
    token (--read-token) reaches only the methods in READ_METHODS;
  - the join token (--join-token, LEPTON_JOIN_TOKEN): agents present it to join the coordinator, and
    the coordinator presents it to its agents (the per-cluster secret) where mutual TLS is off;
  - certificates (--tls-cert, --tls-key, --tls-ca): TLS on every port. An agent with TLS requires a
    client certificate from its caller and obeys only the coordinator's (common name COORDINATOR_CN);
    a coordinator with --mtls requires one from every caller and lets agents (common name
    AGENT_CN_PREFIX...) join by their certificate alone. `lepton certs` issues such names.

A credential that is not configured is not required: a coordinator on loopback with no token is open,
as is LocalCluster's with `token=""`. Beyond loopback `check_exposure` refuses to start that way.
Tokens are compared in constant time and never logged; callers are told only UNAUTHENTICATED.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from lepton.logs import event

log = logging.getLogger("lepton.security")

COORDINATOR_CN = "lepton-coordinator"
AGENT_CN_PREFIX = "lepton-agent"
# CoordinatorService methods a read-only token reaches (status, jobs, traces, listings); every other
# method, a new one included, needs the full token.
READ_METHODS = {"GetJob", "ListJobs", "GetClusterStatus", "GetJobTrace", "ListDatasets"}
FULL, READ, JOIN, COORDINATOR, PEER = "full", "read", "join", "coordinator", "peer"
MAX_MESSAGE_BYTES = 8 << 20  # the wire's chunks are 1 MiB; specs and headers are far smaller


def _read(path_or_pem) -> bytes | None:
    """PEM bytes from a path, or the PEM itself (bytes, or text starting with -----BEGIN)."""
    if not path_or_pem:
        return None
    if isinstance(path_or_pem, bytes):
        return path_or_pem
    text = str(path_or_pem)
    return text.encode() if text.lstrip().startswith("-----BEGIN") else Path(text).expanduser().read_bytes()


def read_token(token: str | None = None, token_file: str | None = None) -> str:
    """The token given, else the first line of token_file, else LEPTON_TOKEN / LEPTON_TOKEN_FILE."""
    if token is None and token_file is None:
        token, token_file = os.environ.get("LEPTON_TOKEN"), os.environ.get("LEPTON_TOKEN_FILE")
    if token:
        return token.strip()
    if token_file:
        return Path(token_file).expanduser().read_text().strip()
    return ""


@dataclass(frozen=True)
class Credentials:
    """What one server process holds: its certificate, the CA it trusts, the tokens it accepts."""
    tls_cert: str = ""  # paths (the metrics endpoint needs files)
    tls_key: str = ""
    tls_ca: str = ""
    mtls: bool = False
    token: str = field(default="", repr=False)
    read_token: str = field(default="", repr=False)
    join_token: str = field(default="", repr=False)
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def channel(self, address: str):
        """A channel to a cluster peer (coordinator to agent, agent to coordinator): this process's
        certificate as the client certificate, and the join token as the per-cluster secret."""
        from lepton.security import channel

        return channel(address, token=self.join_token, tls=bool(self.tls or self.tls_ca), tls_ca=self.tls_ca,
                       tls_cert=self.tls_cert if self.tls else None, tls_key=self.tls_key if self.tls else None)


def add_server_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """--tls-cert, --tls-key, --tls-ca, --token/--token-file, --join-token, --insecure (and env)."""
    env = os.environ.get
    group = parser.add_argument_group("security (see `lepton certs --help`)")
    group.add_argument("--tls-cert", default=env("LEPTON_TLS_CERT", ""),
                       help="this server's certificate (PEM); with --tls-key turns on TLS [LEPTON_TLS_CERT]")
    group.add_argument("--tls-key", default=env("LEPTON_TLS_KEY", ""), help="its private key [LEPTON_TLS_KEY]")
    group.add_argument("--tls-ca", default=env("LEPTON_TLS_CA", ""),
                       help="the cluster CA: checks the peers' certificates [LEPTON_TLS_CA]")
    group.add_argument("--join-token", default=env("LEPTON_JOIN_TOKEN", ""),
                       help="the cluster's join credential for agents [LEPTON_JOIN_TOKEN]")
    group.add_argument("--join-token-file", default=env("LEPTON_JOIN_TOKEN_FILE", ""),
                       help="read the join token from this file [LEPTON_JOIN_TOKEN_FILE]")
    if role == "coordinator":
        group.add_argument("--token", default=env("LEPTON_TOKEN", ""),
                           help="the bearer token clients must present [LEPTON_TOKEN]")
        group.add_argument("--token-file", default=env("LEPTON_TOKEN_FILE", ""),
                           help="read the client token from this file [LEPTON_TOKEN_FILE]")
        group.add_argument("--read-token", default=env("LEPTON_READ_TOKEN", ""),
                           help="an extra token for status, jobs and traces only [LEPTON_READ_TOKEN]")
        group.add_argument("--mtls", action="store_true", default=env("LEPTON_MTLS", "") not in ("", "0"),
                           help="require a client certificate signed by --tls-ca from every caller; agents "
                                "then join by certificate (1 turns it on) [LEPTON_MTLS]")
    group.add_argument("--insecure", action="store_true", default=env("LEPTON_INSECURE", "") not in ("", "0"),
                       help="serve beyond loopback without TLS or tokens (a trusted network only) "
                            "(1 turns it on) [LEPTON_INSECURE]")


def credentials_from_args(args: argparse.Namespace, role: str) -> Credentials:
    join = args.join_token or (Path(args.join_token_file).read_text().strip() if args.join_token_file else "")
    token = read_token(getattr(args, "token", "") or "", getattr(args, "token_file", "") or "") \
        if role == "coordinator" else ""
    creds = Credentials(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                        mtls=getattr(args, "mtls", False) or (role == "agent" and bool(args.tls_cert)),
                        token=token, read_token=getattr(args, "read_token", "") or "", join_token=join,
                        insecure=args.insecure)
    if bool(creds.tls_cert) != bool(creds.tls_key):
        raise SystemExit(f"lepton {role}: --tls-cert and --tls-key go together")
    if creds.mtls and not (creds.tls and creds.tls_ca):
        raise SystemExit(f"lepton {role}: mutual TLS needs --tls-cert, --tls-key and --tls-ca")
    return creds


# -- secure by default ---------------------------------------------------------------------
def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "" (every interface), or a name that may resolve anywhere


SETUP = """\
Set it up in two steps:
  lepton certs ./certs --agents N --host THIS_HOST    # a CA, certificates and tokens
  lepton {role} ... --tls-cert ./certs/{cert}.pem --tls-key ./certs/{cert}.key --tls-ca ./certs/ca.pem \\
      {tokens}
(the README's "Security" section has the full two-machine recipe). On a network you trust completely,
--insecure serves without them."""


def check_exposure(role: str, creds: Credentials, *addresses: str, plain_http: tuple[str, ...] = ()) -> None:
    """Refuse to serve beyond loopback without TLS and tokens (SystemExit saying how), unless --insecure.
    plain_http: endpoints that serve HTTP without TLS whatever creds say (the dashboard): loopback only."""
    open_http = [a for a in plain_http if a and a != "off" and not is_loopback(a)]
    if open_http and not creds.insecure:
        raise SystemExit(f"lepton {role}: refusing to serve plain HTTP on {', '.join(open_http)}: keep it on "
                         f"loopback and reach it through `ssh -L`, or pass --insecure")
    on = {True: "on", False: "off"}
    event(log, "security.config", role=role, tls=on[creds.tls], mtls=on[creds.mtls], client_token=on[bool(creds.token)],
          read_token=on[bool(creds.read_token)], join_token=on[bool(creds.join_token)])  # whether, never what
    exposed = [a for a in addresses if a and a != "off" and not is_loopback(a)]
    missing = []
    if not creds.tls:
        missing.append("TLS (--tls-cert, --tls-key)")
    if role == "coordinator" and not creds.token:
        missing.append("a client token (--token or --token-file)")
    if not creds.join_token and not creds.mtls:
        missing.append("a join token (--join-token)")
    if not exposed or not missing:
        return
    if creds.insecure:
        log.warning("event=security.insecure role=%s listen=%s missing=\"%s\" -- anyone who can reach these "
                    "ports can use this %s", role, ",".join(exposed), "; ".join(missing), role)
        return
    tokens = ("--token-file ./certs/token --join-token-file ./certs/join-token" if role == "coordinator"
              else "--join-token-file ./certs/join-token")
    cert = "coordinator" if role == "coordinator" else "agent-1"
    needs = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
    raise SystemExit(f"lepton {role}: refusing to listen on {', '.join(exposed)} without {needs}: "
                     f"anyone who can reach the port could run jobs, read their data"
                     f"{' and join fake agents' if role == 'coordinator' else ' and plant cached tensors'}.\n"
                     + SETUP.format(role=role, cert=cert, tokens=tokens))


