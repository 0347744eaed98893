"""TLS material for a cluster (``taskbus auth init --tls HOST,...``): a private CA and one
certificate for the servers, valid for every host name given, for client and route TLS.

Made with ``cryptography``; keys are ECDSA P-256, written 0600. A deployment with its own PKI
uses its own files instead: nats-server's ``tls {}`` blocks only need the paths.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.authority import write_private

VALID_DAYS = 825  # the longest validity clients still accept for a server certificate


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def make_tls(directory: Path, hosts: list[str]) -> dict[str, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server-key.pem`` under ``directory``."""
    hosts = list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Taskbus CA"))
        .issuer_name(_name("Taskbus CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server-key.pem",
        "ca_key": directory / "ca-key.pem",
    }
    write_private(files["ca"], ca.public_bytes(serialization.Encoding.PEM).decode())
    write_private(files["cert"], cert.public_bytes(serialization.Encoding.PEM).decode())
    write_private(files["key"], _pem_key(key))
    write_private(files["ca_key"], _pem_key(ca_key))
    return files
