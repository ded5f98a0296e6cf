"""Workload certificates with SPIFFE IDs (URI SANs), as cert-manager issues them per
service account, signed by a :func:`tests.support.certs.make_ca` CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.certs import Issued, _pem, make_ca


def spiffe_id(namespace: str, service_account: str, trust_domain: str = "cluster.local") -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def issue_workload(
    ca: Issued,
    uris: tuple[str, ...],
    *,
    dns_names: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    common_name: str = "workload",
) -> Issued:
    """A client-and-server certificate signed by ``ca`` whose SANs are ``uris`` (URI),
    ``dns_names`` and ``ips``; no SAN extension when all are empty."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _pem(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class WorkloadPki:
    """A CA, a server certificate for the inbound listener, and client certificates by
    name (``"<name>.crt"``/``"<name>.key"`` files in ``directory``)."""

    directory: str
    ca: Issued
    ca_path: str
    server_cert: str
    server_key: str

    def client(self, name: str, *uris: str, dns_names: tuple[str, ...] = ()) -> tuple[str, str]:
        """Write a client certificate with URI SANs ``uris``; its (cert, key) paths."""
        return issue_workload(self.ca, uris, dns_names=dns_names, common_name=name).write(
            self.directory, name
        )


#: The SPIFFE ID of the inbound listener's own certificate in :func:`make_workload_pki`.
SERVER_ID = "spiffe://cluster.local/ns/prod/sa/api"


def make_workload_pki(directory: str) -> WorkloadPki:
    """A CA and an inbound server certificate in ``directory``: a workload certificate of
    its own (:data:`SERVER_ID`), valid for ``localhost`` and ``127.0.0.1`` too."""
    ca = make_ca("meshkit workload CA")
    ca_path = os.path.join(directory, "workload-ca.crt")
    with open(ca_path, "wb") as f:
        f.write(ca.cert_pem)
    served = issue_workload(
        ca, (SERVER_ID,), dns_names=("localhost",), ips=("127.0.0.1",), common_name="inbound"
    )
    cert, key = served.write(directory, "inbound")
    return WorkloadPki(directory, ca, ca_path, cert, key)
