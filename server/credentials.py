"""Certificates and keys for a TLS deployment on one host: a CA, the SuperLink's, each site's.

Made with ``cryptography`` (a dependency of Flower). The SuperLink's certificate names
``127.0.0.1`` and ``localhost`` besides any other host: the SuperLink's own executor connects
to it over loopback, and without those names a run stays pending with no error. A site's
key is an EC P-384 pair in OpenSSH format, what ``flower-supernode
--auth-supernode-private-key`` reads and ``flwr supernode register`` takes. Files are
written atomically and readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.io import atomic_write_bytes

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
"""Names the SuperLink's certificate always carries (its executor dials 127.0.0.1)."""
VALIDITY = datetime.timedelta(days=30)
CURVE = ec.SECP384R1


@dataclass(frozen=True)
class ServerCredentials:
    """The files of the SuperLink's TLS: the CA certificate, its certificate and key."""

    ca_certificate: Path
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private_key: Path
    public_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_server_credentials(folder: Path, hosts: Sequence[str] = ()) -> ServerCredentials:
    """A fresh CA and a SuperLink certificate it signed, for ``hosts`` and loopback.

    Args:
        folder: where ``ca.crt``, ``server.pem`` and ``server.key`` are written.
        hosts: further DNS names or IP addresses the SuperLink is reached by.

    Returns:
        The three paths.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = _name("csfl-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(CURVE())
    names = list(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("superlink"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_alternative_name(h) for h in names]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    credentials = ServerCredentials(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    atomic_write_bytes(credentials.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(credentials.certificate, server.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(credentials.private_key, _pem_key(server_key))
    return credentials


def write_node_key(folder: Path, name: str) -> NodeKey:
    """A fresh EC P-384 key pair for one SuperNode: ``NAME_key`` and ``NAME_key.pub``."""
    key = ec.generate_private_key(CURVE())
    pair = NodeKey(folder / f"{name}_key", folder / f"{name}_key.pub")
    atomic_write_bytes(
        pair.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    atomic_write_bytes(pair.public_key, public + f" {name}\n".encode())
    return pair
