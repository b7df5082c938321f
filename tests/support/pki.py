"""A throwaway certificate authority for TLS tests: a CA, a service certificate for the names given (server and
client use, like the chart's Certificate) and a client-only certificate, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "cag-internal"  # the name every test server certificate carries
VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


def make_pki(folder: Path, *, dns_names: tuple[str, ...] = (SERVER_NAME,), ips: tuple[str, ...] = ()) -> Pki:
    """A CA of its own in `folder`, a server certificate valid for `dns_names` and `ips`, a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {folder.name}")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    pki = Pki(*(folder / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")))
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # The server certificate is a service's, which also dials other services with it (the chart's Certificate).
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    _leaf(ca, ca_key, "server", both, sans, pki.server_cert_file, pki.server_key_file)
    _leaf(ca, ca_key, "client", [ExtendedKeyUsageOID.CLIENT_AUTH], [], pki.client_cert_file, pki.client_key_file)
    return pki


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    cert_file: Path,
    key_file: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), ca.subject, key.public_key()
    ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
