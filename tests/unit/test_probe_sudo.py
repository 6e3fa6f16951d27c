"""The whole probe run in a local shell as if by a user other than root (a stand-in `id`), with a
stand-in `sudo` that notes what it runs: what only root may read goes through `sudo -n`."""

import os
import shutil
import subprocess
from pathlib import Path

from clusterctl.facts.parser import parse_probe_output

PROBE = Path(__file__).parent.parent.parent / "clusterctl" / "facts" / "probe.sh"


def _probe(tmp_path: Path, sudo_works: bool) -> tuple[str, list[str]]:
    """The probe's output, and the reads of find and cat as "NAME root|user ARGS..."."""
    log = tmp_path / "log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # One line per call (an awk program's newlines as spaces).
    noting = '#!/bin/sh\nprintf "%s\\n" "{name} ${{AS_ROOT:-user}} $(echo "$*" | tr "\\n" " ")" >>"$LOG"\nexec {real} "$@"\n'
    stand_ins = {
        "id": f'#!/bin/sh\nif [ "$1" = -u ]; then echo 1000; else exec {shutil.which("id")} "$@"; fi\n',
        # sudo -n CMD...: runs CMD as "root" (AS_ROOT=root), or refuses as a password would.
        "sudo": '#!/bin/sh\n[ "$1" = -n ] && shift\nAS_ROOT=root exec "$@"\n' if sudo_works else "#!/bin/sh\nexit 1\n",
        "docker": "#!/bin/sh\nexit 1\n",
        "iptables": "#!/bin/sh\nexit 1\n",
        "find": noting.format(name="find", real=shutil.which("find")),
        "cat": noting.format(name="cat", real=shutil.which("cat")),
        "awk": noting.format(name="awk", real=shutil.which("awk")),
        # Docker's API: noted, and no engine answers (the CLI's stand-in fails as well).
        "curl": '#!/bin/sh\necho "curl ${AS_ROOT:-user} $*" >>"$LOG"\nexit 7\n',
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log))
    env.pop("AS_ROOT", None)
    out = subprocess.run(["sh", str(PROBE)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout, [r for r in log.read_text().splitlines() if r.strip()] if log.exists() else []


def test_root_only_reads_go_through_sudo(tmp_path):
    out, reads = _probe(tmp_path, sudo_works=True)
    facts = parse_probe_output(out)
    assert facts.uid == 1000 and facts.sudo == "sudo -n"
    assert any(r.startswith("find root /etc/clusterctl ") for r in reads), reads
    assert any(r.startswith("awk root ") and r.rstrip().endswith(" /etc/docker/daemon.json") for r in reads), reads
    assert any(r.startswith("curl root ") and "--unix-socket /var/run/docker.sock" in r for r in reads), reads
    assert not [r for r in reads if r.split()[1] == "user" and ("/etc/clusterctl" in r or "/etc/docker" in r)], reads


def test_without_sudo_the_probe_reads_what_it_can(tmp_path):
    out, reads = _probe(tmp_path, sudo_works=False)
    facts = parse_probe_output(out)
    assert facts.uid == 1000 and facts.sudo is None and facts.docker.info == {}
    assert any(r.startswith("find user /etc/clusterctl ") for r in reads), reads
