"""The cluster's CA and agent certificates (clusterctl/pki.py), and the one-stdin secret bundle."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clusterctl.commands.consul import tls_config
from clusterctl.commands.files import write_secrets
from clusterctl.errors import UserError
from clusterctl.pki import RENEW_BEFORE, ClusterPKI, fits, issue, make_ca


def test_agent_certificates_are_what_consul_checks():
    ca = make_ca("prod")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role in ("server", "client"):
        made = issue(ca, role, "dc1")
        cert = x509.load_pem_x509_certificate(made.cert_pem)
        cert.verify_directly_issued_by(ca.cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{role}.dc1.consul"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"{role}.dc1.consul" in sans.get_values_for_type(x509.DNSName) and "localhost" in sans.get_values_for_type(x509.DNSName)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert "PRIVATE KEY" not in repr(made) and "PRIVATE KEY" not in repr(ca)


def test_a_kept_certificate_fits_only_its_ca_role_datacenter_and_time():
    ca, other = make_ca("prod"), make_ca("prod")
    made = issue(ca, "server", "dc1")
    assert fits(made.cert_pem, ca, "server", "dc1")
    assert not fits(made.cert_pem, other, "server", "dc1")
    assert not fits(made.cert_pem, ca, "client", "dc1") and not fits(made.cert_pem, ca, "server", "dc2")
    late = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365) - RENEW_BEFORE + dt.timedelta(days=1)
    assert not fits(made.cert_pem, ca, "server", "dc1", now=late)
    assert not fits(b"not a certificate", ca, "server", "dc1")


def test_the_state_dir_keeps_the_ca_and_reuses_certificates(tmp_path):
    from clusterctl.secrets import install

    pki = ClusterPKI(tmp_path, "prod", install)
    assert pki.ca(create=False) is None
    ca = pki.ca(create=True)
    assert pki.ca(create=False) == ca and pki.ca(create=True) == ca  # made once
    assert stat.S_IMODE(os.stat(tmp_path / "tls" / "ca.pem").st_mode) == 0o600
    first = pki.agent(ca, "node1", "server", "dc1")
    assert pki.agent(ca, "node1", "server", "dc1") == first  # same files: the host sees no change
    assert pki.agent(ca, "node1", "client", "dc1") != first  # a new role, a new certificate
    (tmp_path / "tls" / "ca.pem").write_bytes(b"")
    with pytest.raises(UserError, match="ca.pem: not a certificate and its key"):
        pki.ca(create=False)


def test_tls_steps_turn_verification_on_one_side_at_a_time():
    import json

    steps = [json.loads(tls_config(s)) for s in (1, 2, 3)]
    assert [(d["verify_outgoing"], d["verify_server_hostname"], d["verify_incoming"]) for d in steps] == [
        (False, False, False), (True, True, False), (True, True, True),
    ]  # fmt: skip
    assert all(d["ca_file"].startswith("/consul/config/") for d in steps)


def test_write_secrets_puts_every_file_in_place_0600_from_one_stdin(tmp_path):
    target = tmp_path / "etc" / "consul"
    cmd = write_secrets(str(target), {"agent-key.pem": b"KEY", "gossip.json": b'{"encrypt": "k"}'})
    assert "KEY" not in cmd.display() and "agent-key.pem" in cmd.display()
    chunks: list[bytes] = []
    cmd.stdin.write_to(chunks.append)
    proc = subprocess.run(list(cmd.argv), input=b"".join(chunks), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["agent-key.pem", "gossip.json"]
    assert (target / "agent-key.pem").read_bytes() == b"KEY"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in target.iterdir())
    with pytest.raises(ValueError):
        write_secrets(str(target), {"../x": b""})
