"""The cluster's certificate authority for Consul's RPC TLS, with the `cryptography` library.

The CA is made once and kept in the operator's state dir (its key 0600, never sent to a host).
Each agent gets a key and certificate of its own, shaped as `consul tls cert create` makes them:
servers `server.<dc>.consul`, clients `client.<dc>.consul` (verify_server_hostname checks that
a server really is one), both with localhost and 127.0.0.1, for server and client auth. They are
kept beside the CA and reused while valid, so a converged host sees the same files (no restart);
a certificate is renewed when it has less than RENEW_BEFORE left or no longer fits.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clusterctl.errors import UserError

CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CA:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key


def make_ca(cluster: str) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"clusterctl {cluster} Consul agent CA")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(_pem_cert(cert), _pem_key(key))


def agent_name(role: str, datacenter: str) -> str:
    """What verify_server_hostname expects of a server: server.<dc>.consul."""
    return f"{role}.{datacenter}.consul"


@dataclass(frozen=True)
class AgentCert:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def issue(ca: CA, role: str, datacenter: str, days: int = CERT_DAYS) -> AgentCert:
    key = ec.generate_private_key(ec.SECP256R1())
    name = agent_name(role, datacenter)
    now = _now()
    ca_cert = ca.cert
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca._key(), hashes.SHA256())
    )
    return AgentCert(_pem_cert(cert), _pem_key(key))


def fits(cert_pem: bytes, ca: CA, role: str, datacenter: str, now: dt.datetime | None = None) -> bool:
    """Whether a kept certificate can stay: issued by this CA, for this role and datacenter,
    and not within RENEW_BEFORE of expiring."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    when = now or _now()
    return bool(names) and names[0].value == agent_name(role, datacenter) and cert.not_valid_after_utc - when > RENEW_BEFORE


def _split(data: bytes, path: Path) -> tuple[bytes, bytes]:
    """A kept file: the certificate's PEM block, then its key's."""
    cert_end = data.find(b"-----END CERTIFICATE-----")
    key_start = data.find(b"-----BEGIN PRIVATE KEY-----")
    if cert_end < 0 or key_start < cert_end:
        raise UserError(f"{path}: not a certificate and its key; restore it (clusterctl secrets import) or remove it")
    cut = cert_end + len(b"-----END CERTIFICATE-----\n")
    return data[:cut], data[key_start:]


class ClusterPKI:
    """The CA and the agents' certificates kept in a cluster's state dir, under tls/: one file
    each, certificate and key together (so they are written, and replaced, as one), 0600,
    written by `install(path, data, replace)` (secrets.py: atomic, the first writer wins)."""

    def __init__(self, directory: Path, cluster: str, install) -> None:  # noqa: ANN001 - secrets.install
        self.dir = directory / "tls"
        self.cluster = cluster
        self._install = install

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.pem"

    def _read(self, path: Path) -> tuple[bytes, bytes] | None:
        if not path.exists():
            return None
        return _split(path.read_bytes(), path)

    def ca(self, create: bool) -> CA | None:
        kept = self._read(self.ca_path)
        if kept is None and create:
            made = make_ca(self.cluster)
            self._install(self.ca_path, made.cert_pem + made.key_pem, False)  # a racing run's CA may win
            kept = self._read(self.ca_path)
        return CA(*kept) if kept is not None else None

    def agent(self, ca: CA, host: str, role: str, datacenter: str) -> AgentCert:
        """The host's kept certificate, or a new one when there is none or it no longer fits."""
        path = self.dir / f"agent-{host}.pem"
        kept = self._read(path)
        if kept is not None and fits(kept[0], ca, role, datacenter):
            return AgentCert(*kept)
        made = issue(ca, role, datacenter)
        self._install(path, made.cert_pem + made.key_pem, True)
        return made
