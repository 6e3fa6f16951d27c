"""The ssh config as OpenSSH reads it (clusterctl/transport/ssh_config.py) and the endpoints
resolved from it: Include, Match, HostName/User/Port aliases, IdentitiesOnly, ProxyJump chains,
ProxyCommand; and multi-hop chains through the Connector (fake connections: no network)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from clusterctl.config.loader import load_text
from clusterctl.transport import ssh
from clusterctl.transport.ssh import (
    BastionFailed,
    Connector,
    Endpoint,
    KnownHosts,
    SSHError,
    gateway_key,
    resolve_endpoints,
)
from clusterctl.transport.ssh_config import (
    SSHConfigError,
    SSHConfigFile,
    expand_proxy_command,
    parse_jump,
)
from tests.unit.test_ssh_bastion import FakeConnect


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    return path


def _cluster(tmp_path: Path, config: Path | str, hosts: str, ssh_extra: str = ""):
    key = tmp_path / "k"
    key.write_text("not read")
    return load_text(
        f"ssh:\n  config_file: '{config}'\n  identity_file: {key}\n{ssh_extra}hosts:\n{hosts}", str(tmp_path / "c.yaml")
    )


def _eps(tmp_path: Path, config_text: str, hosts: str, ssh_extra: str = "") -> dict[str, Endpoint]:
    conf = _write(tmp_path / "ssh" / "config", config_text)
    return resolve_endpoints(_cluster(tmp_path, conf, hosts, ssh_extra))


def _chain(ep: Endpoint) -> list[str]:
    """The hops in front of ep, nearest first, as name=user@address:port."""
    out = []
    while ep.bastion is not None:
        ep = ep.bastion
        out.append(f"{ep.name.removeprefix('bastion ')}={ep.user}@{ep.address}:{ep.port}")
    return out


# -- Include -----------------------------------------------------------------------------------


def test_include_globs_relative_to_the_top_files_folder_sorted_and_nested(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    top = tmp_path / "ssh" / "config"
    _write(top, """\
        Include conf.d/*.conf nothing-matches-*.conf
        Include ~/extra.conf
        Host *
          User fallback
        """)  # fmt: skip
    _write(tmp_path / "ssh" / "conf.d" / "20-web.conf", """\
        Include nested/*.conf
        Host web
          User second
          Port 2022
        """)  # fmt: skip
    _write(tmp_path / "ssh" / "conf.d" / "10-web.conf", "Host web\n  User first\n  HostName 10.0.0.5\n")
    _write(tmp_path / "ssh" / "conf.d" / "notes.txt", "Host web\n  User never\n")
    # Relative to the top file's folder at any depth (OpenSSH: ~/.ssh), not to conf.d/.
    _write(tmp_path / "ssh" / "nested" / "db.conf", "Host db\n  HostName 10.0.0.6\n")
    _write(tmp_path / "ssh" / "conf.d" / "nested" / "db.conf", "Host db\n  HostName 10.9.9.9\n")
    _write(tmp_path / "home" / "extra.conf", "Host cache\n  Port 2200\n")
    conf = SSHConfigFile.load(top)
    web = conf.lookup("web")
    assert (web.hostname, web.user, web.port) == ("10.0.0.5", "first", 2022)  # 10- before 20-
    assert conf.lookup("db").hostname == "10.0.0.6"
    assert conf.lookup("cache").port == 2200
    assert conf.lookup("other").user == "fallback"


def test_include_inside_a_host_block_applies_only_within_it(tmp_path):
    top = _write(tmp_path / "ssh" / "config", """\
        Host web
          Include web.conf
          Port 2200
        Host *
          IdentityFile /keys/default
        """)  # fmt: skip
    _write(tmp_path / "ssh" / "web.conf", """\
        User ops
        Host *
          IdentityFile /keys/web
        Match host 10.0.0.*
          IdentitiesOnly yes
        """)  # fmt: skip
    conf = SSHConfigFile.load(top)
    web = conf.lookup("web")
    # The included lines, its own Host * and the rest of the outer block apply to web...
    assert (web.user, web.port, web.identity_files) == ("ops", 2200, ("/keys/web", "/keys/default"))
    assert web.identities_only is False  # its Match also needs HostName 10.0.0.*
    # ...and to nothing else.
    db = conf.lookup("db")
    assert (db.user, db.port, db.identity_files, db.identities_only) == (None, None, ("/keys/default",), False)


def test_include_inside_a_match_block(tmp_path):
    top = _write(tmp_path / "ssh" / "config", "Host *.lan\n  HostName 10.0.0.9\nMatch host 10.0.0.*\n  Include lan.conf\n")
    _write(tmp_path / "ssh" / "lan.conf", "User lan\nHost db.*\n  Port 2201\n")
    conf = SSHConfigFile.load(top)
    assert (conf.lookup("db.lan").user, conf.lookup("db.lan").port) == ("lan", 2201)
    assert (conf.lookup("web.lan").user, conf.lookup("web.lan").port) == ("lan", None)
    assert (conf.lookup("db.wan").user, conf.lookup("db.wan").port) == (None, None)


def test_include_cycles_depth_and_unreadable_files_are_one_line_naming_the_file(tmp_path):
    d = tmp_path / "ssh"
    a = _write(d / "a.conf", "Host x\n  Include b.conf\n")
    b = _write(d / "b.conf", "# b\nInclude a.conf\n")
    with pytest.raises(SSHConfigError) as err:
        SSHConfigFile.load(a)
    assert str(err.value) == f"{b}:2: Include cycle: {a} -> {b} -> {a}"
    self_loop = _write(d / "self.conf", "Include self.conf\n")
    with pytest.raises(SSHConfigError, match=r"self.conf:1: Include cycle: .*self.conf -> .*self.conf$"):
        SSHConfigFile.load(self_loop)
    for i in range(20):  # no cycle, but deeper than OpenSSH's 16
        _write(d / f"deep{i}.conf", f"Include deep{i + 1}.conf\n")
    _write(d / "deep20.conf", "User deep\n")
    with pytest.raises(SSHConfigError, match=r"deep16.conf:1: Include nested more than 16 deep"):
        SSHConfigFile.load(d / "deep0.conf")
    (d / "adir").mkdir()
    top = _write(d / "top.conf", "Host *\n  Include adir\n")
    with pytest.raises(SSHConfigError) as err:
        SSHConfigFile.load(top)
    assert str(err.value) == f"{top}:2: cannot read {d / 'adir'}: it is a directory"
    binary = d / "binary.conf"
    binary.write_bytes(b"User \xff\xfe\n")
    binary.chmod(0o644)
    _write(top, "Include binary.conf\n")
    with pytest.raises(SSHConfigError, match=rf"^{top}:1: cannot read {binary}: .*utf-8"):
        SSHConfigFile.load(top)
    writable = _write(d / "writable.conf", "ProxyCommand nc evil 22\n")
    writable.chmod(0o666)
    _write(top, "Include writable.conf\n")
    with pytest.raises(SSHConfigError) as err:
        SSHConfigFile.load(top)
    assert str(err.value) == f"{top}:1: bad owner or permissions on {writable} (others can write it; OpenSSH refuses it too)"
    assert "\n" not in str(err.value)


def test_bad_lines_and_unsupported_match_are_errors_with_file_and_line(tmp_path):
    top = tmp_path / "ssh" / "config"
    for text, says in [
        ("Host a\n  Port\n", "config:2: cannot parse 'Port'"),
        ("Match localnetwork 10.0.0.0/8\n  User x\n", "config:1: Match localnetwork is not supported"),
        ("Match host\n", "config:1: Match host needs an argument"),
        ("Match all host a\n", "config:1: Match all cannot be combined with other criteria"),
        ("Host 'unclosed\n", "config:1: cannot parse Host"),
    ]:
        _write(top, text)
        with pytest.raises(SSHConfigError) as err:
            SSHConfigFile.load(top)
        assert str(err.value).startswith(f"{top.parent}/{says}"), err.value


def test_the_cluster_files_config_file_missing_default_or_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    hosts = "  - {name: node1, address: 10.0.0.1}\n"
    assert resolve_endpoints(_cluster(tmp_path, "~/.ssh/config", hosts))["node1"].address == "10.0.0.1"
    with pytest.raises(SSHConfigError, match=r"c.yaml:2: ssh.config_file: ssh config not found: .*/nowhere"):
        resolve_endpoints(_cluster(tmp_path, tmp_path / "nowhere", hosts))
    # Relative to the cluster file, like identity_file.
    _write(tmp_path / "conf" / "ssh", "Host node1\n  User rel\n")
    assert resolve_endpoints(_cluster(tmp_path, "conf/ssh", hosts))["node1"].user == "rel"


# -- HostName, User, Port, Match, IdentitiesOnly --------------------------------------------------


def test_aliases_with_hostname_user_port_and_the_files_precedence(tmp_path):
    eps = _eps(tmp_path, """\
        Host web
          HostName 10.0.0.5
          User admin
          Port 2222
          IdentityFile /keys/web
        Host 10.0.0.7
          User byaddress
        Host *
          User everyone
        """, (
        "  - {name: web, address: web}\n"                      # HostName from the config
        "  - {name: db, address: 10.0.0.6, user: dba, port: 2200}\n"  # the file's own values win
        "  - {name: cache, address: 10.0.0.7}\n"               # looked up by address (name says nothing)
    ), ssh_extra="  port: 2020\n")  # fmt: skip
    web, db, cache = eps["web"], eps["db"], eps["cache"]
    assert (web.address, web.user, web.port, web.identity_files) == ("10.0.0.5", "admin", 2222, ("/keys/web",))
    assert (db.address, db.user, db.port) == ("10.0.0.6", "dba", 2200)
    assert db.identity_files == (str(tmp_path / "k"),)  # the ssh: default after the config
    # Host * says something for every name, so `cache` is its own answer (as OpenSSH would see it).
    assert (cache.user, cache.port) == ("everyone", 2020)


def test_match_host_originalhost_and_all(tmp_path):
    eps = _eps(tmp_path, """\
        Host web
          HostName 10.1.0.5
        Host db
          HostName 10.1.0.6
        Match host 10.1.0.*
          User inside
          Port 2201
        Match originalhost db !host 10.1.0.5
          IdentityFile /keys/db
        Match all
          User everyone
          IdentitiesOnly yes
        """, "  - {name: web, address: web}\n  - {name: other, address: 10.2.0.1}\n")  # fmt: skip
    assert (eps["web"].address, eps["web"].user, eps["web"].port) == ("10.1.0.5", "inside", 2201)
    assert (eps["other"].user, eps["other"].port, eps["other"].identities_only) == ("everyone", 22, True)
    conf = SSHConfigFile.load(tmp_path / "ssh" / "config")
    db = conf.lookup("db")
    assert (db.hostname, db.user, db.identity_files) == ("10.1.0.6", "inside", ("/keys/db",))
    assert conf.lookup("web").identity_files == ()


def test_identities_only_turns_off_the_agent_and_other_keys(tmp_path):
    eps = _eps(tmp_path, "Host strict\n  IdentitiesOnly yes\n", (
        "  - {name: strict, address: 10.0.0.1}\n  - {name: loose, address: 10.0.0.2}\n"
    ))  # fmt: skip
    known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    assert eps["strict"].identities_only and not eps["loose"].identities_only
    strict = ssh._connection(eps["strict"], known).connect_kwargs
    assert (strict["allow_agent"], strict["look_for_keys"], strict["key_filename"]) == (False, False, [str(tmp_path / "k")])
    no_file = ssh._connection(Endpoint("x", "10.0.0.3", identities_only=True), known).connect_kwargs
    assert (no_file["allow_agent"], no_file["look_for_keys"]) == (False, True)  # the default key files only
    loose = ssh._connection(eps["loose"], known).connect_kwargs
    assert "allow_agent" not in loose and "look_for_keys" not in loose
    # Two otherwise equal bastions differ when one of them may not use the agent.
    assert gateway_key(eps["strict"]) != gateway_key(Endpoint("x", "10.0.0.1", identity_files=eps["strict"].identity_files))


# -- ProxyJump -----------------------------------------------------------------------------------


def test_proxyjump_chain_a_b_c_each_hop_looked_up_in_the_config(tmp_path):
    eps = _eps(tmp_path, """\
        Host target
          HostName 10.3.0.1
          ProxyJump a,b,c
        Host a
          HostName 198.51.100.1
          User ja
          Port 2201
          IdentityFile /keys/a
        Host b
          HostName 10.1.0.1
          ProxyJump elsewhere
        Host c
          HostName 10.2.0.1
          IdentitiesOnly yes
        """, "  - {name: target, address: target}\n")  # fmt: skip
    t = eps["target"]
    # target via c, c via b, b via a (b's own ProxyJump is the chain's, as with ssh -J a,b,c).
    assert _chain(t) == ["c=root@10.2.0.1:22", "b=root@10.1.0.1:22", "a=ja@198.51.100.1:2201"]
    assert t.label == "root@10.3.0.1 via root@10.2.0.1 via root@10.1.0.1 via ja@198.51.100.1:2201"
    a = t.bastion.bastion.bastion
    assert a.identity_files == ("/keys/a",) and a.bastion is None
    # Hops the config gives no key get the file's ssh.identity_file; c keeps IdentitiesOnly.
    assert t.bastion.identity_files == (str(tmp_path / "k"),) and t.bastion.identities_only


def test_a_hop_with_its_own_proxyjump_and_proxyjump_none(tmp_path):
    eps = _eps(tmp_path, """\
        Host deep
          HostName 10.3.0.1
          ProxyJump inner
        Host inner
          HostName 10.2.0.1
          ProxyJump outer
        Host outer
          HostName 198.51.100.1
          ProxyJump none
        Host direct
          ProxyJump none
        Host *
          ProxyJump outer
        """, (
        "  - {name: deep, address: deep}\n"
        "  - {name: direct, address: 10.0.0.1}\n"
        "  - {name: anyhost, address: 10.0.0.2}\n"
        "  - {name: two, address: 10.0.0.3, bastion: {address: inner, user: two}}\n"
    ))  # fmt: skip
    assert _chain(eps["deep"]) == ["inner=root@10.2.0.1:22", "outer=root@198.51.100.1:22"]
    assert eps["direct"].bastion is None
    assert _chain(eps["anyhost"]) == ["outer=root@198.51.100.1:22"]
    # A `bastion:` in the cluster file wins over the config's ProxyJump for that host; the
    # bastion (a name looked up in the config) keeps its own ProxyJump.
    assert _chain(eps["two"]) == ["inner=two@10.2.0.1:22", "outer=root@198.51.100.1:22"]


def test_user_host_port_hops(tmp_path):
    eps = _eps(tmp_path, """\
        Host target
          ProxyJump ops@a:2201,[fe80::1]:2222,ssh://u@c:23,b
        Host a
          HostName 198.51.100.1
          User ignored
          Port 9999
        Host b
          User bee
        """, "  - {name: target, address: 10.9.0.1}\n")  # fmt: skip
    assert _chain(eps["target"]) == ["b=bee@b:22", "c=u@c:23", "fe80::1=root@fe80::1:2222", "a=ops@198.51.100.1:2201"]
    assert parse_jump("2001:db8::1", "w").host == "2001:db8::1"
    assert parse_jump("me@host", "w") == parse_jump("ssh://me@host/", "w")
    for bad in ["a:", "a:x", "a:70000", "bad host", "a;b", "[fe80::1", "x y@a", "@a"]:
        with pytest.raises(SSHConfigError, match="ProxyJump"):
            parse_jump(bad, "w")


def test_proxyjump_loops_and_too_many_hops_are_errors(tmp_path):
    with pytest.raises(SSHConfigError) as err:
        _eps(tmp_path, "Host jump\n  HostName 10.0.0.1\nHost *\n  ProxyJump jump\n", "  - {name: node1, address: 10.0.1.1}\n")
    assert "ProxyJump loop: node1 -> jump -> jump (a jump host caught by a wider Host block needs its own 'ProxyJump none')" in str(err.value)
    with pytest.raises(SSHConfigError, match="ProxyJump loop: a -> b -> a"):
        _eps(tmp_path, "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "  - {name: a, address: 10.0.1.1}\n")
    hops = "\n".join(f"Host h{i}\n  ProxyJump h{i + 1}" for i in range(20))
    with pytest.raises(SSHConfigError, match="more than 16 jump hosts"):
        _eps(tmp_path, f"Host x\n  ProxyJump h0\n{hops}\n", "  - {name: x, address: 10.0.1.1}\n")
    with pytest.raises(SSHConfigError, match="empty hop"):
        _eps(tmp_path, "Host x\n  ProxyJump a,,b\n", "  - {name: x, address: 10.0.1.1}\n")


# -- ProxyCommand --------------------------------------------------------------------------------


def test_proxycommand_tokens_quoted_and_the_first_of_proxyjump_or_proxycommand_wins(tmp_path):
    eps = _eps(tmp_path, """\
        Host pc
          HostName 10.0.0.5
          User ops
          Port 2200
          ProxyCommand ssh -W %h:%p -l %r gw # %n 100%%
          ProxyJump ignored
        Host pj
          ProxyJump gw
          ProxyCommand ignored
        Host gw
          ProxyCommand none
        Host nopc
          ProxyCommand none
        Host *
          ProxyCommand nc %h %p
        """, (
        "  - {name: pc, address: pc}\n"
        "  - {name: pj, address: 10.0.0.6}\n"
        "  - {name: nopc, address: 10.0.0.7}\n"
        "  - {name: other, address: 10.0.0.8, port: 2022}\n"
        "  - {name: viafile, address: 10.0.0.9, bastion: 'jump@198.51.100.9'}\n"
    ))  # fmt: skip
    assert eps["pc"].proxy_command == "ssh -W 10.0.0.5:2200 -l ops gw # pc 100%"
    assert eps["pc"].bastion is None and eps["pc"].label == "ops@10.0.0.5:2200 via ProxyCommand"
    assert eps["pj"].proxy_command is None and eps["pj"].bastion.address == "gw"
    assert eps["pj"].bastion.proxy_command is None  # `ProxyCommand none` came first for gw
    assert eps["nopc"].proxy_command is None
    assert eps["other"].proxy_command == "nc 10.0.0.8 2022"
    # A bastion from the cluster file wins over the host's ProxyCommand; the bastion itself
    # (looked up in the config) gets the catch-all ProxyCommand, tokens expanded for it.
    assert eps["viafile"].proxy_command is None
    assert eps["viafile"].bastion.proxy_command == "nc 198.51.100.9 22"


def test_proxycommand_values_are_quoted_for_the_shell():
    line = expand_proxy_command("connect %h %p %r %n", host="a b", port=22, user="u;rm -rf /", alias="$(x)")
    assert line == "connect 'a b' 22 'u;rm -rf /' '$(x)'"
    with pytest.raises(SSHConfigError, match=r"unknown token %C"):
        expand_proxy_command("nc %C", host="h", port=22, user="u", alias="a")
    with pytest.raises(SSHConfigError, match=r"unknown token a lone %"):
        expand_proxy_command("nc %h %", host="h", port=22, user="u", alias="a")


def test_a_proxycommand_that_fails_is_one_line_with_its_stderr(tmp_path):
    known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    ep = Endpoint("node1", "10.0.0.1", connect_timeout=5, proxy_command="sh -c 'echo no route to 10.0.0.1 >&2; exit 3'")
    with pytest.raises(SSHError) as err:
        ssh._connect(ep, known)
    assert str(err.value) == "cannot reach root@10.0.0.1 via ProxyCommand: ProxyCommand exited with code 3: no route to 10.0.0.1"


# -- multi-hop through the Connector -------------------------------------------------------------


def test_multi_hop_chains_share_each_hop_and_open_each_through_its_front(tmp_path):
    known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    a = Endpoint("bastion a", "198.51.100.1")
    b = Endpoint("bastion b", "10.1.0.1", bastion=a)
    c = Endpoint("bastion c", "10.2.0.1", bastion=b)
    hosts = [Endpoint("h1", "10.3.0.1", bastion=c), Endpoint("h2", "10.3.0.2", bastion=c),
             Endpoint("h3", "10.2.0.9", bastion=b)]  # fmt: skip
    fake = FakeConnect()
    connector = Connector(known, connect=fake)
    sessions = [connector.open(h) for h in hosts]
    # One connection per hop, however many hosts are behind it.
    assert [addr for addr, _ in fake.calls] == ["198.51.100.1", "10.1.0.1", "10.2.0.1", "10.3.0.1", "10.3.0.2", "10.2.0.9"]
    conn = {addr: fake.opened[addr][0] for addr in ("198.51.100.1", "10.1.0.1", "10.2.0.1")}
    assert conn["198.51.100.1"].sock is None
    # Each hop is opened on a channel of its front hop's connection.
    assert conn["10.1.0.1"].sock.dest == ("10.1.0.1", 22)
    assert [ch[1] for ch in conn["198.51.100.1"].transport.channels] == [("10.1.0.1", 22)]
    assert [ch[1] for ch in conn["10.1.0.1"].transport.channels] == [("10.2.0.1", 22), ("10.2.0.9", 22)]
    assert [ch[1] for ch in conn["10.2.0.1"].transport.channels] == [("10.3.0.1", 22), ("10.3.0.2", 22)]
    for s in sessions:
        s.close()
    closed: list[str] = []
    for addr, c_ in conn.items():
        c_.close = lambda addr=addr, c_=c_: (closed.append(addr), setattr(c_.transport, "active", False))
    connector.close()
    assert closed == ["10.2.0.1", "10.1.0.1", "198.51.100.1"]  # the innermost hop first


def test_a_failed_middle_hop_is_one_line_naming_every_host_behind_it(tmp_path):
    import paramiko

    known = KnownHosts(tmp_path / "known_hosts", accept_new=False)
    a = Endpoint("bastion a", "198.51.100.1")
    b = Endpoint("bastion b", "10.1.0.1", bastion=a)
    c = Endpoint("bastion c", "10.2.0.1", bastion=b)
    key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else paramiko.RSAKey.generate(1024)
    fake = FakeConnect(fail={"10.1.0.1": paramiko.BadHostKeyException("10.1.0.1", key, key)})
    connector = Connector(known, connect=fake)
    for host in (Endpoint("h1", "10.3.0.1", bastion=c), Endpoint("h2", "10.2.0.9", bastion=b)):
        with pytest.raises(BastionFailed, match="^skipped: bastion b failed$"):
            connector.open(host)
    with pytest.raises(BastionFailed):
        connector.open(Endpoint("h3", "10.3.0.3", bastion=c))
    (line,) = connector.failures
    assert line.startswith("bastion b (root@10.1.0.1 via root@198.51.100.1): host key for root@10.1.0.1 via root@198.51.100.1 CHANGED")
    assert line.endswith("; skipped the hosts behind it: h1, h2, h3")
    assert [addr for addr, _ in fake.calls] == ["198.51.100.1", "10.1.0.1"]  # b tried once, c never
    connector.close()


def test_the_proxycommand_socket_reads_like_a_socket_and_is_reaped_when_closed():
    proxy = ssh._ProxyCommand("printf %s 'abc def'")  # through sh -c 'exec ...', as OpenSSH runs it
    proxy.settimeout(5)
    got = b""
    while chunk := proxy.recv(1024):  # b"" at the end (paramiko's own recv would spin there)
        got += chunk
    assert got == b"abc def"
    proxy.close()
    assert proxy.closed and proxy.process.returncode is not None
    sleeper = ssh._ProxyCommand("sleep 30")
    sleeper.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sleeper.recv(10)
    sleeper.close()
    assert sleeper.process.returncode is not None
