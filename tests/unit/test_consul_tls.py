"""Consul's RPC TLS from the operator's side: the CA settled after the probe (never a new one
over a cluster that runs TLS), certificates by role, and the steps a running cluster takes."""

from __future__ import annotations

import pytest
from cryptography import x509

from clusterctl.commands import consul as build
from clusterctl.phases.base import Context
from clusterctl.phases.consul import ConsulPhase
from clusterctl.phases.consul_tls import CA_FILE_ON_HOST, target_stage, tls_inputs
from clusterctl.secrets import SecretError
from tests.unit.test_consul_plan import INPUTS, ctx_for, facts_for


def _agent(stage: int | None, mode: str = "server") -> dict:
    tls = "" if stage is None else f",clusterctl.consul.tls={stage}"
    return {"ID": "x", "Names": build.CONTAINER, "Image": "i", "State": "running",
            "Labels": f"clusterctl.cluster=c1,clusterctl.role=consul,clusterctl.consul.mode={mode}{tls}"}  # fmt: skip


def _ctx(stages: dict[str, int | None], outside=frozenset()):
    base = ctx_for()
    addresses = {h.name: h.address for h in base.cluster.hosts}
    facts = {n: facts_for(addresses[n], [_agent(stages[n])] if n in stages else []) for n in addresses}
    return Context(base.cluster, facts, INPUTS, outside=outside)


@pytest.mark.parametrize(
    ("stages", "want"),
    [
        ({}, 3),  # a new cluster starts verified
        ({"n1": 3, "n2": 3, "n3": 3}, 3),
        ({"n1": None, "n2": None, "n3": None}, 1),  # from before TLS: certificates first
        ({"n1": 1, "n2": None, "n3": 1}, 1),  # mid-roll: finish the step everyone is on
        ({"n1": 1, "n2": 1, "n3": 1}, 2),
        ({"n1": 3, "n2": 2, "n3": 3}, 3),
    ],
)
def test_a_running_cluster_moves_one_step_at_a_time(stages, want):
    assert target_stage(_ctx(stages)) == want


def test_a_host_run_never_outruns_the_hosts_left_out():
    assert target_stage(_ctx({"n1": 1, "n2": 1}, outside=frozenset({"n3"}))) == 1


def test_an_old_agent_is_rolled_onto_certificates_still_speaking_plain():
    ctx = _ctx({"n1": None, "n2": None, "n3": None})
    cmds = ConsulPhase().plan(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])
    run = next(c for c in cmds if c.argv[:2] == ("docker", "run"))
    assert "clusterctl.consul.tls=1" in run.argv
    assert ConsulPhase().rolling(ctx, ctx.cluster.hosts[0], ctx.facts["n1"])


def test_the_ca_is_made_once_and_certificates_follow_roles(tmp_path):
    ctx = _ctx({})
    inputs = tls_inputs(ctx, tmp_path, dry_run=False)
    assert (tmp_path / "tls" / "ca.pem").exists()
    ca = x509.load_pem_x509_certificate(inputs.tls.ca_cert)
    names = {n: x509.load_pem_x509_certificate(c.cert_pem).subject.rfc4514_string() for n, c in inputs.tls.agents.items()}
    assert names == {"n1": "CN=server.dc1.consul", "n2": "CN=server.dc1.consul", "n3": "CN=server.dc1.consul", "w1": "CN=client.dc1.consul"}
    for c in inputs.tls.agents.values():
        x509.load_pem_x509_certificate(c.cert_pem).verify_directly_issued_by(ca)
    again = tls_inputs(ctx, tmp_path, dry_run=False)
    assert again.tls == inputs.tls and again.tls.agents == inputs.tls.agents  # kept: hosts see no change
    assert "PRIVATE" not in repr(again)


def test_a_dry_run_makes_nothing(tmp_path):
    inputs = tls_inputs(_ctx({}), tmp_path, dry_run=True)
    assert inputs.tls.agents and not (tmp_path / "tls").exists()


def test_no_new_ca_over_a_cluster_that_runs_tls(tmp_path):
    ctx = _ctx({"n1": 3})
    facts = dict(ctx.facts)
    facts["n1"] = facts_for("10.0.0.1", [_agent(3)], {CA_FILE_ON_HOST: "ab" * 32})
    with pytest.raises(SecretError, match=r"runs Consul with TLS on n1 but its CA .*tls/ca.pem is missing: .*secrets import"):
        tls_inputs(Context(ctx.cluster, facts, INPUTS), tmp_path, dry_run=False)
    assert not (tmp_path / "tls").exists()
