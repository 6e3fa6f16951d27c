"""Consul's ACLs on the operator's side (phases/consul_acl.py): the step agents move to, the
agent's ACL settings, the tokens made once, and a settled cluster costing no call to Consul."""

import json
from dataclasses import replace
import stat
from contextlib import contextmanager

import pytest

from clusterctl.commands import consul as build
from clusterctl.config.loader import load_text
from clusterctl.facts.parser import parse_probe_output
from clusterctl.phases.base import Context, Inputs
from clusterctl.phases.consul_acl import (
    MANAGEMENT_TOKEN,
    RECORD,
    ACLMaterial,
    _record,
    acl_inputs,
    servers_to_start,
    settle,
    target_acl_stage,
)
from clusterctl.secrets import SecretError
from tests.unit.test_consul_plan import FIXTURE

FILE = """
name: c1
hosts:
  - {name: n1, address: 10.0.0.1}
  - {name: n2, address: 10.0.0.2}
services:
  - {name: web, image: nginx:1.25, port: 8080}
"""


def facts(acl=None, running=True, cid="c0ffee"):
    data = json.loads(FIXTURE.read_text())
    if acl is not False:
        labels = "clusterctl.cluster=c1,clusterctl.role=consul,clusterctl.consul.mode=server"
        labels += "" if acl is None else f",clusterctl.consul.acl={acl}"
        data["docker"]["containers"] = [{"ID": cid, "Names": build.CONTAINER, "Image": "x", "State": "running" if running else "exited",
                                         "Labels": labels}]  # fmt: skip
    else:
        data["docker"]["containers"] = []
    return parse_probe_output(json.dumps(data))


def ctx_for(inputs=None, outside=frozenset(), **by_host):
    cluster = load_text(FILE, "c.yaml")
    return Context(cluster, {n: f for n, f in by_host.items()}, inputs or Inputs(), outside=outside)


@pytest.mark.parametrize(
    "stages,settled,expected",
    [
        ((False, False), False, build.ACL_FINAL),  # a new cluster starts at deny
        ((None, None), False, 1),  # agents from before ACLs: turn them on at allow first
        ((0, 1), True, 1),  # one step a pass
        ((1, 1), False, 1),  # deny only once Consul holds every token
        ((1, 1), True, build.ACL_FINAL),
        ((1, 2), True, build.ACL_FINAL),
        ((2, 2), False, build.ACL_FINAL),
    ],
)
def test_the_step_agents_move_to(stages, settled, expected):
    inputs = Inputs(acl=ACLMaterial(settled=settled))
    ctx = ctx_for(inputs, n1=facts(stages[0]), n2=facts(stages[1]))
    assert target_acl_stage(ctx) == expected


def test_a_host_run_never_outruns_the_hosts_left_out():
    ctx = ctx_for(Inputs(acl=ACLMaterial(settled=True)), outside=frozenset({"n2"}), n1=facts(1))
    assert target_acl_stage(ctx) == 1


def test_acl_settings_by_step():
    allow = json.loads(build.acl_config(1, None))["acl"]
    assert allow["enabled"] and allow["default_policy"] == "allow" and "tokens" not in allow
    deny = json.loads(build.acl_config(2, "t0k"))["acl"]
    assert deny["default_policy"] == "deny" and deny["down_policy"] == "extend-cache"
    assert deny["enable_token_persistence"] and deny["tokens"] == {"agent": "t0k"}
    with pytest.raises(ValueError):
        build.acl_config(2, None)


def test_tokens_are_made_once_0600_and_a_dry_run_makes_none(tmp_path):
    ctx = ctx_for(n1=facts(False), n2=facts(False))
    dry = acl_inputs(ctx, tmp_path / "dry", dry_run=True)
    assert not (tmp_path / "dry").exists() and dry.acl.settled
    first = acl_inputs(ctx, tmp_path, dry_run=False).acl
    again = acl_inputs(ctx, tmp_path, dry_run=False).acl
    assert set(first.agents) == {"n1", "n2"} and set(first.services) == {"web"}
    assert dict(first.agents) == dict(again.agents) and first.agents["n1"] != first.agents["n2"]
    assert first.management is None and not first.settled
    path = tmp_path / "acl" / "agent-n1.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == first.agents["n1"]
    assert first.agents["n1"] not in repr(first) and first.services["web"] not in repr(Inputs(acl=first))


def test_a_malformed_token_file_is_one_line(tmp_path):
    (tmp_path / "acl").mkdir(mode=0o700)
    (tmp_path / MANAGEMENT_TOKEN).write_text("hunter2\n")
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    with pytest.raises(SecretError, match=r"acl/management.token: not a Consul ACL token \(a UUID\)"):
        acl_inputs(ctx, tmp_path, dry_run=False)


def _unreachable(asked: list[str]):
    """An open_api whose every agent is unreachable, noting whom it was asked for."""

    @contextmanager
    def open_api(name):
        asked.append(name)
        raise ConnectionError("no route")
        yield

    return open_api


def _never(name):
    raise AssertionError(f"Consul was asked (via {name}) though nothing needed settling")


def test_a_settled_cluster_is_not_asked_again_and_any_change_asks(tmp_path):
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False), outside=ctx.outside)
    (tmp_path / RECORD).write_text(_record(ctx, ctx.inputs.acl))
    assert settle(ctx, _never, tmp_path, dry_run=False).acl.settled
    # An agent replaced (another container) or a dry run: asked again / never asked.
    restarted = Context(ctx.cluster, {"n1": facts(2, cid="0ther"), "n2": ctx.facts["n2"]}, ctx.inputs)
    assert settle(restarted, _never, tmp_path, dry_run=True) is restarted.inputs
    asked: list[str] = []
    unreachable = _unreachable(asked)
    with pytest.raises(SecretError, match="could not reach any agent of cluster 'c1'"):
        settle(restarted, unreachable, tmp_path, dry_run=False)
    assert asked == ["n1", "n2"]


def test_agents_without_acls_are_not_settled_yet(tmp_path):
    ctx = ctx_for(n1=facts(None), n2=facts(False))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    assert settle(ctx, _never, tmp_path, dry_run=False) is ctx.inputs


def test_a_server_that_should_run_and_does_not_defers_the_settle_to_a_later_pass(tmp_path):
    """A run that failed halfway left one of two servers stopped: the cluster may have no leader
    until the consul phase starts it; the settle waits for a later pass (no Consul call, no
    refusal) instead of refusing the run that would start it."""
    ctx = ctx_for(n1=facts(2), n2=facts(2, running=False))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    assert servers_to_start(ctx) == ["n2"]
    out = settle(ctx, _never, tmp_path, dry_run=False)
    assert out is ctx.inputs and not out.acl.settled
    running = ctx_for(n1=facts(2), n2=facts(2))
    assert servers_to_start(running) == []


def test_an_agent_whose_token_consul_lost_is_settled_again(tmp_path):
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    (tmp_path / RECORD).write_text(_record(ctx, ctx.inputs.acl))
    from dataclasses import replace

    lost = replace(ctx.facts["n2"], docker=replace(ctx.facts["n2"].docker, consul_token_missing=True))
    ctx = Context(ctx.cluster, {"n1": ctx.facts["n1"], "n2": lost}, ctx.inputs)
    asked: list[str] = []
    unreachable = _unreachable(asked)
    with pytest.raises(SecretError):
        settle(ctx, unreachable, tmp_path, dry_run=False)
    assert asked


class FakeConsul:
    """Consul's ACL endpoints as settle uses them, in memory: one cluster behind every agent."""

    def __init__(self):
        import consul

        self.exc = consul
        self.tokens: dict[str, str] = {}  # secret -> description
        self.policies: dict[str, str] = {}
        self.resynced: list[tuple[str, str, str, str]] = []  # (agent, type, secret, auth token)
        self.bootstrapped = False
        self.synced: set[str] = set()

    def api(self, agent: str):
        fake = self

        class NS:
            pass

        api = NS()
        api.status = NS()
        api.status.leader = lambda: "10.0.0.1:8300"
        api.acl = NS()
        api.acl.bootstrap = self._bootstrap
        api.acl.policy = NS()
        api.acl.policy.list = lambda token: [{"Name": n, "ID": i} for n, i in fake.policies.items()]
        api.acl.policy.create = lambda name, **kw: {"ID": fake.policies.setdefault(name, f"p{len(fake.policies)}")}
        api.acl.policy.update = lambda *a, **kw: None
        api.acl.token = NS()
        api.acl.token.update = lambda *a, **kw: None
        api.acl.token.read_self = self._read_self
        api.acl.token.create = lambda token, secret_id, description, **kw: fake.tokens.__setitem__(secret_id, description)
        api.catalog = NS()
        # An agent whose own sync reached the catalog: its node has tagged addresses (`synced`).
        api.catalog.node = lambda node, token: (1, {"Node": {"Node": node, "TaggedAddresses": {"lan": "10.0.0.1"} if node in fake.synced else None}})
        api.agent = NS()
        api.agent.token = NS()
        api.agent.token.set = lambda kind, secret, token: fake.resynced.append((agent, kind, secret, str(token)))
        return api

    def _bootstrap(self):
        if self.bootstrapped:
            raise self.exc.ACLPermissionDenied("ACL bootstrap no longer allowed")
        self.bootstrapped = True
        self.tokens["0a0a0a0a-0000-4000-8000-000000000001"] = "management"
        return {"SecretID": "0a0a0a0a-0000-4000-8000-000000000001"}

    def _read_self(self, token):
        if str(token) not in self.tokens:
            raise self.exc.ACLPermissionDenied("ACL not found")
        return {}

    def open_api(self, name):
        @contextmanager
        def opened():
            yield self.api(name)

        return opened()


def test_agents_whose_tokens_were_just_made_are_told_to_sync_at_once(tmp_path):
    """A new cluster: each agent ran with a token Consul did not know yet (its first catalog
    sync failed, the next would come 15-30 s later): once the tokens exist, every such agent has
    its default token set to "" through its own API, with the management token."""
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    fake = FakeConsul()
    out = settle(ctx, fake.open_api, tmp_path, dry_run=False)
    assert out.acl.settled and "token of agent n2 made" in out.notes[-1]
    management = (tmp_path / MANAGEMENT_TOKEN).read_text().strip()
    assert sorted(fake.resynced) == [("n1", "default", "", management), ("n2", "default", "", management)]
    # Their probes could not read raft (their tokens did not exist): probed again before the phase plans.
    assert ctx.facts["n1"].docker.consul_voters is None and out.reprobe == {"n1", "n2"}
    # Settled (the record matches): no call at all, so no sync either.
    fake.resynced.clear()
    ctx = Context(ctx.cluster, ctx.facts, replace(out, reprobe=frozenset()))  # as the manager leaves it
    assert settle(ctx, _never, tmp_path, dry_run=False).acl.settled
    # Tokens Consul holds already (a changed record, nothing made): no agent is told to sync.
    (tmp_path / RECORD).write_text("{}")
    again = settle(ctx, fake.open_api, tmp_path, dry_run=False)
    assert fake.resynced == [] and again.reprobe == frozenset()


def test_an_agent_whose_own_sync_reached_the_catalog_is_not_told_to_sync_again(tmp_path):
    """Its first sync came after the tokens were made: a full sync asked now would only wait out
    Consul's stagger and hold back the services' sync."""
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    fake = FakeConsul()
    fake.synced = {"n1"}
    settle(ctx, fake.open_api, tmp_path, dry_run=False)
    assert [agent for agent, *_ in fake.resynced] == ["n2"]


def test_an_agent_that_cannot_be_told_to_sync_does_not_stop_the_run(tmp_path):
    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    fake = FakeConsul()
    calls: list[str] = []

    def open_api(name):
        calls.append(name)
        if len(calls) > 1:  # the settling agent answers; the sync requests meet a closed tunnel
            raise ConnectionError("tunnel closed")
        return fake.open_api(name)

    assert settle(ctx, open_api, tmp_path, dry_run=False).acl.settled
    assert sorted(calls[1:]) == ["n1", "n2"]


def test_the_clusters_lock_held_elsewhere_is_not_taken_for_an_unreachable_agent(tmp_path):
    """open_api takes the cluster's lock first (the manager's locked_api): another run holding
    it stops the settle at once, not after trying every agent."""
    from clusterctl.errors import LockHeld

    ctx = ctx_for(n1=facts(2), n2=facts(2))
    ctx = Context(ctx.cluster, ctx.facts, acl_inputs(ctx, tmp_path, dry_run=False))
    asked: list[str] = []

    @contextmanager
    def open_api(name):
        asked.append(name)
        raise LockHeld("cluster 'c1' is busy")
        yield

    with pytest.raises(LockHeld):
        settle(ctx, open_api, tmp_path, dry_run=False)
    assert asked == ["n1"]
