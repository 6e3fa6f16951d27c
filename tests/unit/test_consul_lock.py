"""The cluster's lock in Consul (lock.consul_lock) against a stand-in py-consul client: whether
it had to wait, a leaderless cluster (no lock can be held: the run goes on with the operator's
flock), and a refusal naming the holder."""

from contextlib import contextmanager

import pytest

from clusterctl.errors import LockHeld
from clusterctl.lock import consul_lock


class NS:
    pass


def _api(leader="10.0.0.1:8300", create_fails=False, acquire=(True,)):
    """A client whose session.create fails (as without a leader) or works, and whose KV acquire
    answers in turn from `acquire` (the last one again)."""
    api, calls = NS(), []
    answers = list(acquire)
    api.status = NS()
    api.status.leader = lambda: leader
    api.session = NS()

    def create(**kw):
        calls.append("create")
        if create_fails:
            raise create_fails
        return "s1"

    api.session.create = create
    api.session.renew = lambda s: None
    api.session.destroy = lambda s: calls.append("destroy")
    api.kv = NS()

    def put(key, value, acquire):
        calls.append("acquire")
        return answers.pop(0) if len(answers) > 1 else answers[0]

    api.kv.put = put
    api.kv.get = lambda key: (1, {"Value": b'{"what": "clusterctl up (the other)"}'})
    return api, calls


def _open(api):
    @contextmanager
    def open_api(host, token):
        yield api

    return open_api


def test_a_lock_taken_at_once_did_not_wait_and_one_taken_after_a_release_did(monkeypatch):
    monkeypatch.setattr("clusterctl.lock.time.sleep", lambda s: None)
    api, calls = _api()
    with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5) as waited:
        assert waited is False
    assert calls == ["create", "acquire", "destroy"]
    api, calls = _api(acquire=(False, True))
    with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5) as waited:
        assert waited is True


def test_a_cluster_without_a_leader_holds_no_lock_and_the_run_goes_on():
    api, calls = _api(leader="", create_fails=ConnectionError("tunnel closed"))
    with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5) as waited:
        assert waited is False
    assert "acquire" not in calls


def test_a_leader_named_but_gone_holds_no_lock_either():
    """Servers stopped a moment ago: the agent still names a leader that no longer answers."""
    import consul

    api, calls = _api(create_fails=ConnectionError("tunnel closed"))

    def gone(key):
        raise consul.ConsulException("500 rpc error making call: stream closed")

    api.kv.get = gone
    with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5) as waited:
        assert waited is False


def test_a_server_error_on_the_session_holds_no_lock():
    """The agent answered 500 (a write the servers cannot take): the run goes on and heals."""
    import consul

    api, calls = _api(create_fails=consul.ConsulException("500 rpc error making call: stream closed"))
    with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5) as waited:
        assert waited is False and "acquire" not in calls


def test_agents_with_a_leader_that_refuse_the_session_are_one_line():
    import consul

    api, _ = _api(create_fails=consul.ACLPermissionDenied("Permission denied"))
    with pytest.raises(LockHeld, match="its lock in Consul cannot be taken"):
        with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=5):
            pass


def test_a_lock_held_past_the_wait_names_its_holder(monkeypatch):
    monkeypatch.setattr("clusterctl.lock.time.sleep", lambda s: None)
    api, _ = _api(acquire=(False,))
    with pytest.raises(LockHeld, match=r"is busy: 'clusterctl up \(the other\)' holds it"):
        with consul_lock("c1", ["n1"], _open(api), "t", "up", wait=0):
            pass
