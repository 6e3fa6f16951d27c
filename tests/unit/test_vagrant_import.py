"""The Vagrant importer (clusterctl/inventory), the Vagrantfile and the inventory/ examples.

`vagrant ssh-config` output is a recording (tests/fixtures/vagrant-ssh-config.txt, a 3-machine
VirtualBox lab). import_vagrant runs a fake `vagrant` script put first on PATH, so the real
subprocess path is exercised; only the Vagrantfile tests need the real Vagrant.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from clusterctl.config.loader import load_text
from clusterctl.config.models import ClusterFile
from clusterctl.errors import ConfigError, UserError
from clusterctl.inventory.cli import app
from clusterctl.schedule.servers import choose_servers
from clusterctl.inventory.vagrant import (
    PLAN_FILE_NAME,
    SSHConfigError,
    VagrantHost,
    cluster_file_from_vagrant,
    import_vagrant,
    parse_ssh_config,
    read_private_addresses,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "vagrant-ssh-config.txt"
VAGRANTFILE = ROOT / "vagrant" / "Vagrantfile"
RECORDED_DIR = "/home/dev/src/clusterctl/vagrant"  # the lab folder in the recording
PLAN = {"node1": "192.168.56.11", "node2": "192.168.56.12", "node3": "192.168.56.13"}

NOT_READY_STDERR = """\
The provider for this Vagrant-managed machine is reporting that it
is not yet ready for SSH. Depending on your provider this can carry
different meanings. Make sure your machine is created and running and
try again. Additionally, check the output of `vagrant status` to verify
that the machine is in the state that you expect. If you continue to
get this error message, please view the documentation for the provider
you're using.
"""


def recorded() -> str:
    return FIXTURE.read_text()


def render_for(lab: Path) -> str:
    """The recording as Vagrant would print it for a lab in `lab` (quoted when it has a space)."""
    out = []
    for line in recorded().splitlines():
        if line.strip().startswith("IdentityFile "):
            path = line.split(None, 1)[1].replace(RECORDED_DIR, str(lab))
            line = f'  IdentityFile "{path}"' if " " in path else f"  IdentityFile {path}"
        out.append(line)
    return "\n".join(out) + "\n"


def write_plan(lab: Path, plan: dict[str, str] = PLAN) -> None:
    hosts = [{"name": n, "private_address": a} for n, a in plan.items()]
    (lab / PLAN_FILE_NAME).write_text(json.dumps({"version": 1, "hosts": hosts}))


def fake_vagrant(bin_dir: Path, stdout: str = "", stderr: str = "", rc: int = 0) -> Path:
    """An executable `vagrant` that logs its cwd and args, then prints canned output."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "out.txt").write_text(stdout)
    (bin_dir / "err.txt").write_text(stderr)
    script = bin_dir / "vagrant"
    script.write_text(
        "#!/bin/sh\n"
        "PATH=/usr/bin:/bin\n"
        f'printf "%s\\n" "$PWD" "$@" > "{bin_dir}/calls.txt"\n'
        f'cat "{bin_dir}/out.txt"\n'
        f'cat "{bin_dir}/err.txt" >&2\n'
        f"exit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A running 3-machine lab: Vagrantfile, keys, plan, and `vagrant` on PATH."""
    return make_lab(tmp_path / "vagrant", tmp_path / "bin", monkeypatch)


def make_lab(lab: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lab.mkdir(parents=True)
    shutil.copy(VAGRANTFILE, lab / "Vagrantfile")
    for name in PLAN:
        key = lab / ".vagrant" / "machines" / name / "virtualbox" / "private_key"
        key.parent.mkdir(parents=True)
        key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    write_plan(lab)
    fake_vagrant(bin_dir, stdout=render_for(lab))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return lab


# --- parse_ssh_config ------------------------------------------------------------------------


def test_parse_recorded_output() -> None:
    hosts = parse_ssh_config(recorded())
    assert [h.name for h in hosts] == ["node1", "node2", "node3"]
    assert [h.port for h in hosts] == [2222, 2200, 2201]
    assert {h.hostname for h in hosts} == {"127.0.0.1"}
    assert {h.user for h in hosts} == {"vagrant"}
    assert hosts[1].identity_file == f"{RECORDED_DIR}/.vagrant/machines/node2/virtualbox/private_key"
    assert hosts[0].proxy_command is None


def test_parse_quoted_paths_equals_signs_case_and_comments() -> None:
    text = (
        "==> vagrant: A new version of Vagrant is available\n"
        "# comment\n"
        "Host web-1\n"
        "  hostname=192.168.121.57\n"
        "  USER deploy\n"
        "  port = 22\r\n"
        '  IdentityFile "/home/dev/my lab/.vagrant/machines/web-1/libvirt/private_key"\n'
        "  IdentityFile /home/dev/.vagrant.d/insecure_private_key\n"
        "  ForwardAgent yes\n"
        "\n"
        "Host db\n"
    )
    web, db = parse_ssh_config(text)
    assert web == VagrantHost(
        name="web-1",
        hostname="192.168.121.57",
        user="deploy",
        port=22,
        identity_files=(
            "/home/dev/my lab/.vagrant/machines/web-1/libvirt/private_key",
            "/home/dev/.vagrant.d/insecure_private_key",
        ),
    )
    assert web.identity_file.endswith("web-1/libvirt/private_key")
    # As with ssh: HostName defaults to the Host name, Port to 22.
    assert (db.hostname, db.port, db.user, db.identity_file) == ("db", 22, None, None)


def test_parse_empty_output() -> None:
    assert parse_ssh_config("") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Host a\n  Port 22x\n", "line 2: invalid Port '22x'"),
        ("Host a\n  Port 70000\n", "line 2: invalid Port"),
        ("Host a\nHost a\n", "line 2: host 'a' appears twice (also line 1)"),
        ("Host a b\n", "line 1: expected one name after Host"),
        ("Host a\n  HostName\n", "line 2: not a 'Keyword value' line"),
        ("Host a\n  !!!\n", "line 2: not a 'Keyword value' line"),
    ],
)
def test_parse_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(SSHConfigError) as info:
        parse_ssh_config(text)
    assert isinstance(info.value, UserError)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- cluster_file_from_vagrant ---------------------------------------------------------------


def test_cluster_file_from_recording() -> None:
    data = cluster_file_from_vagrant(parse_ssh_config(recorded()), PLAN)
    spec = ClusterFile.model_validate(data)
    assert data["name"] == "vagrant"
    assert data["ssh"] == {"user": "vagrant"}
    node2 = spec.host("node2")
    assert (node2.address, node2.port, node2.cluster_address) == ("127.0.0.1", 2200, "192.168.56.12")
    assert node2.user is None  # from ssh defaults
    assert node2.identity_file == f"{RECORDED_DIR}/.vagrant/machines/node2/virtualbox/private_key"
    assert [h.roles for h in spec.hosts] == [None] * 3  # clusterctl chooses: 3 servers for 3 hosts
    assert choose_servers(spec.hosts).servers == ("node1", "node2", "node3")
    assert node2.labels == {"provider": "vagrant", "hypervisor": "virtualbox"}


def test_cluster_file_relative_identity_files() -> None:
    data = cluster_file_from_vagrant(
        parse_ssh_config(recorded()), PLAN, relative_to=Path("/home/dev/src/clusterctl/inventory")
    )
    assert data["hosts"][0]["identity_file"] == "../vagrant/.vagrant/machines/node1/virtualbox/private_key"


def test_cluster_file_users_differ() -> None:
    hosts = [VagrantHost("a", "10.0.0.1", user="vagrant"), VagrantHost("b", "10.0.0.2", user="debian")]
    data = cluster_file_from_vagrant(hosts, {"a": "192.168.56.11", "b": "192.168.56.12"})
    assert "ssh" not in data
    assert [h["user"] for h in data["hosts"]] == ["vagrant", "debian"]
    assert "identity_file" not in data["hosts"][0]
    assert data["hosts"][0]["labels"] == {"provider": "vagrant"}
    ClusterFile.model_validate(data)


@pytest.mark.parametrize(("count", "servers"), [(1, 1), (2, 1), (3, 3), (4, 3), (7, 5)])
def test_imported_files_leave_the_servers_to_the_default(count: int, servers: int) -> None:
    hosts = [VagrantHost(f"node{i}", "127.0.0.1", user="vagrant", port=2200 + i) for i in range(1, count + 1)]
    data = cluster_file_from_vagrant(hosts, {h.name: f"192.168.56.{10 + i}" for i, h in enumerate(hosts, 1)})
    assert all("roles" not in h for h in data["hosts"])
    chosen = choose_servers(ClusterFile.model_validate(data).hosts)
    assert chosen.servers == tuple(f"node{i}" for i in range(1, servers + 1))


def test_cluster_file_needs_every_private_address() -> None:
    hosts = parse_ssh_config(recorded())
    with pytest.raises(UserError, match=r"no private address planned for node3: .* lists node1, node2; .*CLUSTERCTL_"):
        cluster_file_from_vagrant(hosts, {"node1": "192.168.56.11", "node2": "192.168.56.12"})


def test_cluster_file_needs_hosts() -> None:
    with pytest.raises(UserError, match="listed no machines.*vagrant up"):
        cluster_file_from_vagrant([], PLAN)


def test_cluster_file_refuses_proxy_command() -> None:
    host = VagrantHost("node1", "192.168.121.5", proxy_command="ssh -W %h:%p kvm-host")
    with pytest.raises(UserError, match="node1: .*ProxyCommand"):
        cluster_file_from_vagrant([host], PLAN)


# --- read_private_addresses ------------------------------------------------------------------


def test_read_private_addresses(tmp_path: Path) -> None:
    write_plan(tmp_path)
    assert read_private_addresses(tmp_path) == PLAN


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found; the Vagrantfile in"),
        ("{", "not valid JSON (line 1)"),
        ("[]", "expected an object with a 'hosts' list"),
        ('{"hosts": [{"private_address": "192.168.56.11"}]}', "hosts[0] needs a 'name' string"),
        ('{"hosts": [{"name": "node1", "private_address": "192.168.56.300"}]}', "hosts[0] (node1): invalid private_address"),
    ],
)
def test_read_private_addresses_errors(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / PLAN_FILE_NAME).write_text(content)
    with pytest.raises(UserError) as info:
        read_private_addresses(tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- import_vagrant --------------------------------------------------------------------------


def test_import_runs_ssh_config_in_the_lab(lab: Path) -> None:
    text = import_vagrant(lab)
    calls = (lab.parent / "bin" / "calls.txt").read_text().splitlines()
    assert calls == [str(lab), "ssh-config"]
    assert text.startswith("# Made by `clusterctl inventory from-vagrant`")
    cluster = load_text(text, "imported.yaml")
    assert [(h.name, h.address, h.port, h.cluster_address) for h in cluster.hosts] == [
        ("node1", "127.0.0.1", 2222, "192.168.56.11"),
        ("node2", "127.0.0.1", 2200, "192.168.56.12"),
        ("node3", "127.0.0.1", 2201, "192.168.56.13"),
    ]
    assert cluster.hosts[0].identity_file == str(lab / ".vagrant/machines/node1/virtualbox/private_key")


def test_import_with_injected_runner(lab: Path) -> None:
    seen: list[tuple[list[str], dict]] = []

    def runner(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0, stdout=render_for(lab), stderr="")

    import_vagrant(lab, runner=runner)
    (argv, kwargs), = seen
    assert Path(argv[0]).name == "vagrant" and argv[1:] == ["ssh-config"]
    assert kwargs["cwd"] == str(lab) and kwargs["timeout"] and kwargs["check"] is False


def test_import_path_with_space_is_quoted_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab(tmp_path / "my lab" / "vagrant", tmp_path / "bin", monkeypatch)
    assert 'IdentityFile "' in render_for(lab)
    cluster = load_text(import_vagrant(lab), "x.yaml")
    assert cluster.hosts[2].identity_file == str(lab / ".vagrant/machines/node3/virtualbox/private_key")


def test_import_validates_identity_files(lab: Path) -> None:
    (lab / ".vagrant/machines/node2/virtualbox/private_key").unlink()
    with pytest.raises(ConfigError, match=r"hosts\[1\]\.identity_file: identity file not found"):
        import_vagrant(lab)


def test_import_example_matches_inventory_vagrant_yaml(lab: Path) -> None:
    """inventory/vagrant.yaml is exactly what `from-vagrant -o inventory/vagrant.yaml` writes."""
    output = lab.parent / "inventory" / "vagrant.yaml"
    output.parent.mkdir()
    text = import_vagrant(lab, output=output)
    assert text == (ROOT / "inventory" / "vagrant.yaml").read_text()
    assert "identity_file: ../vagrant/.vagrant/machines/node1/virtualbox/private_key" in text
    output.write_text(text)
    assert load_text(text, str(output), output).hosts[0].port == 2222


def test_import_no_vagrantfile(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no Vagrantfile there \(use --dir"):
        import_vagrant(tmp_path)


def test_import_vagrant_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Vagrantfile").write_text("")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UserError, match=r"^vagrant is not installed \(no `vagrant` on PATH\)"):
        import_vagrant(tmp_path)


def test_import_ssh_config_not_ready(lab: Path) -> None:
    fake_vagrant(lab.parent / "bin", stderr=NOT_READY_STDERR, rc=1)
    with pytest.raises(UserError) as info:
        import_vagrant(lab)
    message = str(info.value)
    assert message.startswith(f"vagrant ssh-config failed in {lab} (exit 1): you're using.")
    assert f"run `vagrant up` in {lab}" in message
    assert "\n" not in message


def test_import_ssh_config_fails_with_last_stderr_line(lab: Path) -> None:
    fake_vagrant(lab.parent / "bin", stderr="Bringing things up\n\nNo usable default provider could be found.\n\n", rc=1)
    with pytest.raises(UserError, match=r"\(exit 1\): No usable default provider could be found\.$"):
        import_vagrant(lab)


def test_import_ssh_config_timeout(lab: Path) -> None:
    def runner(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, 120)

    with pytest.raises(UserError, match="did not finish in 120s"):
        import_vagrant(lab, runner=runner)


def test_import_no_machines_running(lab: Path) -> None:
    fake_vagrant(lab.parent / "bin", stdout="")
    with pytest.raises(UserError, match="listed no machines"):
        import_vagrant(lab)


def test_import_plan_missing(lab: Path) -> None:
    (lab / PLAN_FILE_NAME).unlink()
    with pytest.raises(UserError, match=re.escape(f"{lab / PLAN_FILE_NAME}: not found")):
        import_vagrant(lab)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_prints_yaml(lab: Path) -> None:
    result = CliRunner().invoke(app, ["from-vagrant", "--dir", str(lab)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["hosts"][0]["cluster_address"] == "192.168.56.11"


def test_cli_writes_output(lab: Path) -> None:
    output = lab.parent / "cluster.yaml"
    result = CliRunner().invoke(app, ["from-vagrant", "--dir", str(lab), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(output)
    data = yaml.safe_load(output.read_text())
    assert data["hosts"][0]["identity_file"] == "vagrant/.vagrant/machines/node1/virtualbox/private_key"


def test_cli_output_folder_missing(lab: Path) -> None:
    output = lab.parent / "no-such-folder" / "cluster.yaml"
    result = CliRunner().invoke(app, ["from-vagrant", "--dir", str(lab), "-o", str(output)])
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{output}: cannot write: its folder does not exist"


def test_cli_write_error(lab: Path) -> None:
    output = lab.parent / "cluster.yaml"
    output.mkdir()  # a folder where the file should go
    result = CliRunner().invoke(app, ["from-vagrant", "--dir", str(lab), "-o", str(output)])
    assert isinstance(result.exception, UserError)
    assert str(result.exception).startswith(f"{output}: cannot write: Is a directory")


def test_cli_errors_reach_main_as_one_line(tmp_path: Path) -> None:
    """Mounted as `clusterctl inventory`: main() prints the UserError as one line, exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "clusterctl", "inventory", "from-vagrant", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"error: {tmp_path}: no Vagrantfile there (use --dir to name the folder with the lab's Vagrantfile)"


# --- inventory/ examples ---------------------------------------------------------------------


def load_with_keys(path: Path, tmp_path: Path):
    """Load an example with every identity_file pointed at a stand-in key that exists."""
    key = tmp_path / "key"
    key.write_text("stand-in\n")
    text = re.sub(r"(identity_file:\s*)\S+", lambda m: m.group(1) + str(key), path.read_text())
    return load_text(text, str(path), path)


def test_example_multicloud(tmp_path: Path) -> None:
    cluster = load_with_keys(ROOT / "inventory" / "multicloud.yaml", tmp_path)
    providers = {h.labels["provider"]: h.labels["region"] for h in cluster.hosts}
    assert providers == {"hetzner": "fsn1", "aws": "eu-central-1"}
    per_provider: dict[str, set[str]] = {}
    for h in cluster.hosts:
        assert h.cluster_address and h.bastion is not None and not isinstance(h.bastion, str)
        per_provider.setdefault(h.labels["provider"], set()).add(h.bastion.address)
    assert per_provider == {"hetzner": {"bastion-fsn1.example.net"}, "aws": {"bastion-euc1.example.net"}}
    # hz-fsn1-3's roles say client; the default picks 3 servers for 5 hosts, over both providers.
    assert cluster.spec.host("hz-fsn1-3").roles == ("client",)
    assert choose_servers(cluster.hosts, cluster.spec.consul.servers_spread).servers == ("hz-fsn1-1", "hz-fsn1-2", "aws-euc1-1")
    # The worked example: hello spread over both providers, report pinned by its constraints.
    from clusterctl.schedule.placement import place

    placed = place(cluster.spec.services, cluster.hosts, {h.name for h in cluster.hosts})
    assert placed.hosts_of == {"hello": ("hz-fsn1-1", "aws-euc1-1"), "report": ("hz-fsn1-3",)}
    # The mesh across both providers: Consul and the services talk over it.
    from clusterctl.network.addresses import over_mesh

    assert cluster.spec.network.driver == "wireguard" and over_mesh(cluster)


def test_example_vagrant(tmp_path: Path) -> None:
    cluster = load_with_keys(ROOT / "inventory" / "vagrant.yaml", tmp_path)
    assert [h.cluster_address for h in cluster.hosts] == list(PLAN.values())


@pytest.mark.parametrize("name", ["vagrant.yaml", "multicloud.yaml"])
def test_examples_validate_as_written(name: str) -> None:
    ClusterFile.model_validate(yaml.safe_load((ROOT / "inventory" / name).read_text()))


# --- vagrant/Vagrantfile (needs Vagrant) -------------------------------------------------------
# scripts/setup.sh installs Debian's vagrant, so in CI (CI set) these tests run: a missing vagrant
# fails them there; elsewhere they skip.


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def vagrant() -> str:
    path = shutil.which("vagrant")
    if path is None:
        message = "vagrant is not installed (scripts/setup.sh installs it: apt-get install vagrant)"
        if in_ci():
            pytest.fail(message + "; in CI the Vagrantfile tests must run")
        pytest.skip(message)
    return path


def vagrant_validate(vagrant: str, folder: Path, *args: str, vagrantfile: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    (folder / "Vagrantfile").write_text(vagrantfile if vagrantfile is not None else VAGRANTFILE.read_text())
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERCTL_")}
    full_env.update(VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1", **env)
    return subprocess.run(
        [vagrant, "validate", *args], cwd=folder, env=full_env, capture_output=True, text=True, timeout=120
    )


def with_virtualbox(tmp_path: Path) -> dict[str, str]:
    """PATH for a plain `vagrant validate`, which validates the default provider's block
    (VirtualBox) and first asks the provider whether it is usable: where VirtualBox is not
    installed (CI, containers), a stand-in VBoxManage that answers only `--version` makes it so.
    No VM is made; a bad key in the provider block still fails (test below)."""
    if shutil.which("VBoxManage"):
        return {}
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "VBoxManage"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo 7.0.6r155176; exit 0; }\necho "stand-in VBoxManage: $*" >&2; exit 1\n')
    fake.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_vagrantfile_validates(vagrant: str, tmp_path: Path) -> None:
    """Plain `vagrant validate`: the whole file, the VirtualBox provider's settings included."""
    proc = vagrant_validate(vagrant, tmp_path, **with_virtualbox(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "validated successfully" in proc.stdout
    assert read_private_addresses(tmp_path) == PLAN


def test_vagrantfile_validation_checks_the_provider_block(vagrant: str, tmp_path: Path) -> None:
    text = VAGRANTFILE.read_text().replace("vb.linked_clone = true", "vb.linked_clone = true\n    vb.memroy = 512")
    proc = vagrant_validate(vagrant, tmp_path, vagrantfile=text, **with_virtualbox(tmp_path))
    assert proc.returncode != 0
    assert "VirtualBox Provider" in proc.stderr and "memroy" in proc.stderr


def test_vagrantfile_validates_ignoring_provider_and_writes_plan(vagrant: str, tmp_path: Path) -> None:
    proc = vagrant_validate(vagrant, tmp_path, "--ignore-provider")
    assert proc.returncode == 0, proc.stderr
    assert read_private_addresses(tmp_path) == PLAN


def test_vagrantfile_env_overrides(vagrant: str, tmp_path: Path) -> None:
    proc = vagrant_validate(vagrant, tmp_path, "--ignore-provider", CLUSTERCTL_HOSTS="5", CLUSTERCTL_FIRST_ADDRESS="10.77.0.101")
    assert proc.returncode == 0, proc.stderr
    assert read_private_addresses(tmp_path) == {f"node{i}": f"10.77.0.{100 + i}" for i in range(1, 6)}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLUSTERCTL_HOSTS": "three"}, "CLUSTERCTL_HOSTS must be a whole number from 1 to 50"),
        ({"CLUSTERCTL_HOSTS": "0"}, "CLUSTERCTL_HOSTS must be a whole number from 1 to 50"),
        ({"CLUSTERCTL_FIRST_ADDRESS": "fd00::1"}, "CLUSTERCTL_FIRST_ADDRESS must be an IPv4 address"),
        ({"CLUSTERCTL_FIRST_ADDRESS": "192.168.56"}, "CLUSTERCTL_FIRST_ADDRESS must be an IPv4 address"),
        ({"CLUSTERCTL_HOSTS": "4", "CLUSTERCTL_FIRST_ADDRESS": "192.168.56.252"}, "do not fit in one /24"),
    ],
)
def test_vagrantfile_refuses_bad_env(vagrant: str, tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = vagrant_validate(vagrant, tmp_path, "--ignore-provider", **env)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / PLAN_FILE_NAME).exists()
