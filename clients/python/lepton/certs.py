"""`lepton certs DIR`: a development CA, certificates for a coordinator, N agents and a client, and tokens.

    DIR/ca.pem, ca.key                  the cluster CA (keep ca.key off the cluster machines)
    DIR/coordinator.pem, .key           common name lepton-coordinator
    DIR/agent-1.pem, .key ...           common names lepton-agent-1 ...
    DIR/client.pem, .key                common name lepton-client (for --mtls coordinators)
    DIR/token, DIR/join-token           random bearer tokens (0600)

Every server certificate names localhost, 127.0.0.1, ::1 and each --host, and serves as a client
certificate too (the coordinator dials its agents with it). The common names are what the servers
check (lepton.security): agents obey only lepton-coordinator. ECDSA P-256, valid for a year.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lepton.credentials import AGENT_CN_PREFIX, COORDINATOR_CN

VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lepton development CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in ["localhost", "127.0.0.1", "::1", *hosts]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return list(dict.fromkeys(names))


def make_ca(common_name: str = "Lepton development CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key, ca_cert, common_name: str, hosts: list[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for common_name, for server and client use, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_pair(out: Path, file: str, common_name: str, ca, hosts: list[str] = ()) -> tuple[Path, Path]:
    """out/file.pem and out/file.key for common_name, signed by ca = (key, certificate)."""
    cert, key = issue(*ca, common_name, list(hosts))
    _write(out / f"{file}.pem", cert)
    _write(out / f"{file}.key", key, private=True)
    return out / f"{file}.pem", out / f"{file}.key"


def agent_names(index: int) -> tuple[str, str]:
    """(file name, common name) of agent `index` (from 1)."""
    return f"agent-{index}", f"{AGENT_CN_PREFIX}-{index}"


def create(directory: str | Path, agents: int = 1, hosts: list[str] = (), ca_name: str = "Lepton development CA",
           ca=None) -> Path:
    """Write the CA, the certificates and the tokens into directory (created); returns it.
    ca: an existing (key, certificate) to sign with instead of a new one."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca or make_ca(ca_name)
    _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    names = {"coordinator": COORDINATOR_CN, "client": "lepton-client", **dict(agent_names(i) for i in range(1, agents + 1))}
    for file, common_name in names.items():
        write_pair(out, file, common_name, (ca_key, ca_cert), hosts)
    for file in ("token", "join-token"):
        _write(out / file, (secrets.token_urlsafe(32) + "\n").encode(), private=True)
    return out


def run(args) -> int:
    out = create(args.directory, args.agents, args.host)
    print(f"wrote a development CA, certificates for a coordinator, {args.agents} agent(s) and a client, and "
          f"tokens to {out}/ (keep ca.key, *.key and the tokens private)")
    return 0
