"""A cluster file from a running Vagrant lab (vagrant/Vagrantfile).

Two sources, because neither says everything:

* `vagrant ssh-config` says how SSH reaches each machine: HostName (with VirtualBox always
  127.0.0.1 and a forwarded Port, so the port matters), User and IdentityFile. That becomes
  each host's `address`, `port`, `user` and `identity_file`.
* The private network address the cluster should talk on is not in that output. The project's
  Vagrantfile writes its plan, {"hosts": [{"name", "private_address"}]}, to
  `.clusterctl-hosts.json` beside itself every time Vagrant loads it -- including the
  `vagrant ssh-config` run below, so the plan read afterwards matches the machines listed.
  That becomes each host's `cluster_address`. (Asking each machine with `vagrant ssh NAME -c
  "ip -4 -o addr show"` would work with any Vagrantfile but costs one slow Vagrant start per
  host, and must guess which interface is the private one; VirtualBox's NAT interface is
  10.0.2.15 on every machine, so it must never be taken for the cluster address.)

parse_ssh_config and cluster_file_from_vagrant are pure; import_vagrant runs Vagrant (through
an injectable runner) and returns YAML text that has passed the cluster file loader.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from clusterctl.errors import UserError

PLAN_FILE_NAME = ".clusterctl-hosts.json"
SSH_CONFIG_TIMEOUT = 120.0

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class SSHConfigError(UserError):
    """`vagrant ssh-config` output that cannot be read."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"vagrant ssh-config output, line {line}: {message}")


@dataclass(frozen=True)
class VagrantHost:
    """One `Host` block of `vagrant ssh-config` output."""

    name: str
    hostname: str
    user: str | None = None
    port: int = 22
    identity_files: tuple[str, ...] = ()
    proxy_command: str | None = None

    @property
    def identity_file(self) -> str | None:
        """The key clusterctl uses: the first one, as ssh would try it first."""
        return self.identity_files[0] if self.identity_files else None


_KEYWORD_RE = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(?P<value>.*)$")


def _unquote(value: str) -> str:
    # Vagrant quotes an IdentityFile that contains a space: IdentityFile "/home/a b/key".
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_ssh_config(text: str) -> list[VagrantHost]:
    """Host blocks of `vagrant ssh-config` output, in order.

    Keywords are case-insensitive and may be written `Key value` or `Key=value`, as in OpenSSH.
    Lines before the first Host are ignored (Vagrant may print notices such as "==> vagrant:
    ..." there); keywords clusterctl does not use (StrictHostKeyChecking, LogLevel, ...) are
    skipped. HostName defaults to the Host name and Port to 22, as with ssh itself.
    """
    hosts: list[VagrantHost] = []
    current: dict[str, Any] | None = None
    seen: dict[str, int] = {}

    def finish() -> None:
        if current is None:
            return
        hosts.append(
            VagrantHost(
                name=current["name"],
                hostname=current.get("hostname", current["name"]),
                user=current.get("user"),
                port=current.get("port", 22),
                identity_files=tuple(current["identity_files"]),
                proxy_command=current.get("proxy_command"),
            )
        )

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEYWORD_RE.match(line)
        if match is None:
            if current is None:
                continue
            raise SSHConfigError(number, f"not a 'Keyword value' line: {line[:80]!r}")
        key, value = match.group("key").lower(), match.group("value").strip()
        if key == "host":
            finish()
            names = value.split()
            if len(names) != 1:
                raise SSHConfigError(number, f"expected one name after Host, got {value[:80]!r}")
            name = _unquote(names[0])
            if name in seen:
                raise SSHConfigError(number, f"host {name!r} appears twice (also line {seen[name]})")
            seen[name] = number
            current = {"name": name, "identity_files": []}
            continue
        if current is None:
            continue
        if not value:
            raise SSHConfigError(number, f"{match.group('key')} has no value")
        if key == "hostname":
            current["hostname"] = _unquote(value)
        elif key == "user":
            current["user"] = _unquote(value)
        elif key == "port":
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise SSHConfigError(number, f"invalid Port {value[:20]!r}")
            current["port"] = int(value)
        elif key == "identityfile":
            current["identity_files"].append(_unquote(value))
        elif key == "proxycommand":
            current["proxy_command"] = value
    finish()
    return hosts


def _machine_provider(identity_file: str) -> str | None:
    """'virtualbox' from .../.vagrant/machines/node1/virtualbox/private_key, else None."""
    parts = PurePath(identity_file).parts
    if len(parts) >= 5 and parts[-5:-3] == (".vagrant", "machines") and parts[-1] == "private_key":
        return parts[-2]
    return None


def cluster_file_from_vagrant(
    hosts: Sequence[VagrantHost],
    private_addresses: Mapping[str, str],
    *,
    name: str = "vagrant",
    relative_to: Path | None = None,
) -> dict[str, Any]:
    """A cluster-file mapping: address/port/user/key from ssh-config, cluster_address from the plan.

    relative_to: write identity files relative to this folder (the cluster file's own folder,
    which is what the loader resolves them against); otherwise they stay as Vagrant printed them.
    """
    if not hosts:
        raise UserError("vagrant ssh-config listed no machines; start them with `vagrant up`")
    missing = [h.name for h in hosts if h.name not in private_addresses]
    if missing:
        raise UserError(
            f"no private address planned for {', '.join(missing)}: the Vagrantfile's plan "
            f"({PLAN_FILE_NAME}) lists {', '.join(sorted(private_addresses)) or 'no hosts'}; "
            "run the import with the same CLUSTERCTL_* variables as `vagrant up`"
        )
    for h in hosts:
        if h.proxy_command:
            raise UserError(f"{h.name}: Vagrant reaches it through a ProxyCommand, which a cluster file cannot express")

    users = {h.user for h in hosts}
    common_user = users.pop() if len(users) == 1 else None
    out_hosts: list[dict[str, Any]] = []
    # No roles: clusterctl chooses the servers (clusterctl/schedule/servers.py).
    for h in hosts:
        entry: dict[str, Any] = {"name": h.name, "address": h.hostname, "port": h.port}
        if h.user is not None and common_user is None:
            entry["user"] = h.user
        if h.identity_file:
            key = h.identity_file
            if relative_to is not None and os.path.isabs(key):
                try:
                    key = os.path.relpath(key, relative_to)
                except ValueError:  # another drive on Windows
                    pass
            entry["identity_file"] = key
        entry["cluster_address"] = private_addresses[h.name]
        labels = {"provider": "vagrant"}
        machine_provider = _machine_provider(h.identity_file) if h.identity_file else None
        if machine_provider:
            labels["hypervisor"] = machine_provider
        entry["labels"] = labels
        out_hosts.append(entry)

    data: dict[str, Any] = {"name": name}
    if common_user is not None:
        data["ssh"] = {"user": common_user}
    data["hosts"] = out_hosts
    return data


def read_private_addresses(vagrant_dir: Path) -> dict[str, str]:
    """name -> private address, from the plan the Vagrantfile writes beside itself."""
    path = Path(vagrant_dir) / PLAN_FILE_NAME
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: not found; the Vagrantfile in {vagrant_dir} does not write its address plan "
            "(use clusterctl's vagrant/Vagrantfile)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    entries = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected an object with a 'hosts' list")
    addresses: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{path}: hosts[{i}] needs a 'name' string")
        host_name, address = entry["name"], entry.get("private_address")
        try:
            addresses[host_name] = str(ipaddress.ip_address(address))  # type: ignore[arg-type]
        except ValueError:
            raise UserError(f"{path}: hosts[{i}] ({host_name}): invalid private_address {address!r}") from None
    return addresses


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_ssh_config(vagrant_dir: Path, runner: Runner = subprocess.run) -> str:
    """stdout of `vagrant ssh-config` in vagrant_dir; every failure as one UserError line."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        raise UserError("vagrant is not installed (no `vagrant` on PATH); install it or write the cluster file by hand")
    argv = [vagrant, "ssh-config"]
    try:
        proc = runner(argv, cwd=str(vagrant_dir), capture_output=True, text=True, timeout=SSH_CONFIG_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"vagrant ssh-config in {vagrant_dir} did not finish in {SSH_CONFIG_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise UserError(f"cannot run {vagrant}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        detail = _last_line(proc.stderr) or _last_line(proc.stdout) or "no error output"
        hint = ""
        if "not yet ready for SSH" in (proc.stderr or ""):
            hint = f" (are the machines up? run `vagrant up` in {vagrant_dir})"
        raise UserError(f"vagrant ssh-config failed in {vagrant_dir} (exit {proc.returncode}): {detail}{hint}")
    return proc.stdout or ""


def import_vagrant(vagrant_dir: Path, runner: Runner = subprocess.run, *, output: Path | None = None) -> str:
    """YAML text of a cluster file for the running machines of the Vagrant lab in vagrant_dir.

    output: where the text will be written, if anywhere; identity files are then written
    relative to its folder and the text is validated as that file. The text is always checked
    with the cluster file loader (identity files included) before it is returned.
    """
    import yaml

    from clusterctl.config.loader import load_text

    vagrant_dir = Path(vagrant_dir)
    if not (vagrant_dir / "Vagrantfile").is_file():
        raise UserError(f"{vagrant_dir}: no Vagrantfile there (use --dir to name the folder with the lab's Vagrantfile)")
    if output is not None and not Path(os.path.abspath(output)).parent.is_dir():
        raise UserError(f"{output}: cannot write: its folder does not exist")
    hosts = parse_ssh_config(run_ssh_config(vagrant_dir, runner))
    # Read after ssh-config: loading the Vagrantfile for it has just rewritten the plan.
    private = read_private_addresses(vagrant_dir)
    relative_to = Path(os.path.abspath(output)).parent if output is not None else None
    data = cluster_file_from_vagrant(hosts, private, relative_to=relative_to)
    header = (
        "# Made by `clusterctl inventory from-vagrant`. Forwarded ports and keys change when the\n"
        "# machines are recreated: import again after `vagrant destroy` / `vagrant up`.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    file = str(output) if output is not None else f"<vagrant ssh-config in {vagrant_dir}>"
    load_text(text, file, Path(os.path.abspath(output)) if output is not None else vagrant_dir / "clusterctl.yaml")
    return text
