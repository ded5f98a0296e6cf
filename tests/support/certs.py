"""Test PKI generated with ``cryptography``: CAs, server and client certificates, PEM files.

EC P-256 keys keep generation fast (a few ms each). ``make_pki(directory)`` writes a complete
set for mTLS tests; ``issue`` makes more (another CA, an expired cert, a rotated server cert).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM encoded."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """Write ``name.crt`` and ``name.key`` into ``directory``; return their paths."""
        cert_path = os.path.join(directory, f"{name}.crt")
        key_path = os.path.join(directory, f"{name}.key")
        with open(cert_path, "wb") as f:
            f.write(self.cert_pem)
        with open(key_path, "wb") as f:
            f.write(self.key_pem)
        return cert_path, key_path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    return Issued(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert,
        key,
    )


def make_ca(common_name: str = "meshkit test CA") -> Issued:
    """A self-signed CA valid from an hour ago for ten days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    client: bool = False,
    expired: bool = False,
) -> Issued:
    """A leaf certificate signed by ``ca`` (server or client usage; optionally expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        not_before = _now() - datetime.timedelta(days=3)
        not_after = _now() - datetime.timedelta(days=1)
    else:
        not_before = _now() - datetime.timedelta(hours=1)
        not_after = _now() + datetime.timedelta(days=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _pem(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    """Paths of a written test PKI (all PEM)."""

    directory: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    expired_client_cert: str
    expired_client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str
    authorities: tuple[Issued, Issued]

    @staticmethod
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


def server_cert(ca: Issued, common_name: str = "meshkit-server") -> Issued:
    """A server certificate for ``localhost`` and ``127.0.0.1``."""
    return issue(ca, common_name, dns_names=("localhost",), ips=("127.0.0.1",))


def make_pki(directory: str) -> Pki:
    """CA, server cert (localhost/127.0.0.1), client cert, expired client cert, and a client
    cert from another CA, written into ``directory``."""
    ca = make_ca("meshkit test CA")
    other = make_ca("meshkit other CA")
    ca_path = os.path.join(directory, "ca.crt")
    other_ca_path = os.path.join(directory, "other-ca.crt")
    with open(ca_path, "wb") as f:
        f.write(ca.cert_pem)
    with open(other_ca_path, "wb") as f:
        f.write(other.cert_pem)
    server_crt, server_key = server_cert(ca).write(directory, "server")
    client_crt, client_key = issue(ca, "client", client=True).write(directory, "client")
    expired_crt, expired_key = issue(ca, "expired", client=True, expired=True).write(
        directory, "expired"
    )
    other_crt, other_key = issue(other, "intruder", client=True).write(directory, "other-client")
    return Pki(
        directory,
        ca_path,
        server_crt,
        server_key,
        client_crt,
        client_key,
        expired_crt,
        expired_key,
        other_ca_path,
        other_crt,
        other_key,
        (ca, other),
    )
