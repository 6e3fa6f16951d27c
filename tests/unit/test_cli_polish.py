"""What users of such tools expect (issue 13): --version, shell completion, CLUSTERCTL_FILE, flags
shown as flags in --help, and a final table that never cuts a host name or a status."""

import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

from clusterctl import cli
from clusterctl.phases.manager import CHANGED, FAILED, OK, PLANNED, HostReport, RunReport, Step
from clusterctl.report.render import print_table, report_dict, report_json

# This checkout's clusterctl, whatever the current folder of the command (tests below run in tmp_path).
ROOT = Path(__file__).resolve().parents[2]


def _clusterctl(*args, cwd, env=None):
    base = {"CLUSTERCTL_STATE_DIR": str(Path(cwd) / "state"), "PATH": "/usr/bin:/bin:/usr/local/bin", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "clusterctl", *args], cwd=cwd, capture_output=True, text=True, env={**base, **(env or {})})


def _commands(group, path=()):
    """(path, click command) of every command under group."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


# --version


def test_version_prints_the_installed_distributions_version_and_exits_0(tmp_path):
    proc = _clusterctl("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"clusterctl {importlib.metadata.version('clusterctl')}\n"


def test_version_falls_back_to_the_packages_own_when_the_distribution_is_not_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    import clusterctl

    assert cli._version() == clusterctl.__version__


# Shell completion, and start-up kept cheap: the heavy modules are imported by the commands that use them.

# Not pydantic: typer imports it itself to read a command's options (typer._adapters).
HEAVY = ("paramiko", "fabric", "invoke", "docker", "consul", "yaml", "ruamel", "cryptography")
WHAT_IS_IMPORTED = """\
import sys
sys.argv = ["clusterctl", *sys.argv[1:]]
from clusterctl.cli import main
try:
    main()
except SystemExit:
    pass
print("IMPORTED", *sorted(m for m in sys.modules if m.split(".")[0] in {heavy} or m.startswith("clusterctl.phases")))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["up", "--help"], []])
def test_help_version_and_completion_import_none_of_the_heavy_modules(tmp_path, args):
    code = WHAT_IS_IMPORTED.format(heavy=set(HEAVY))
    env = {"CLUSTERCTL_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if not args:  # what the shell runs on <Tab> after `clusterctl up --`
        env |= {"_CLUSTERCTL_COMPLETE": "complete_bash", "COMP_WORDS": "clusterctl up --", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.stdout.splitlines()[-1] == "IMPORTED", proc.stdout + proc.stderr


def test_help_offers_completion_and_no_arguments_still_print_the_help(tmp_path):
    assert {"--install-completion", "--show-completion", "--version"} <= set(_clusterctl("--help", cwd=tmp_path).stdout.split())
    proc = _clusterctl(cwd=tmp_path)
    assert proc.returncode == 2  # as before completion: click's exit for a help nobody asked for
    assert "Usage: clusterctl [OPTIONS] COMMAND" in proc.stdout and "up" in proc.stdout.split()


def test_the_completion_script_names_clusterctl_also_when_run_as_python_m(tmp_path):
    # The test hook makes --show-completion take the shell (no detection from this process's parents).
    proc = _clusterctl("--show-completion", "bash", cwd=tmp_path, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "_CLUSTERCTL_COMPLETE=complete_bash" in proc.stdout
    assert proc.stdout.rstrip().endswith("complete -o default -F _clusterctl_completion clusterctl")


@pytest.mark.parametrize(
    ("words", "expected"),
    [("clusterctl u", {"up", "ui"}), ("clusterctl up --dr", {"--dry-run"}), ("clusterctl secrets ex", {"export"}), ("clusterctl image b", {"build"})],
)
def test_tab_completes_commands_and_options(tmp_path, words, expected):
    env = {"_CLUSTERCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    proc = _clusterctl(cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == expected


# CLUSTERCTL_FILE

# A file `validate` refuses naming its key: which file a command used shows in its error.
BAD_FILE = "hosts:\n  - {{name: a, address: 127.0.0.1, port: 1, {key}: 1}}\n"
FILE_COMMANDS = [
    ("up",), ("plan",), ("rollback",), ("down",), ("logs",), ("exec",), ("status",), ("validate",), ("place",),
    ("secrets", "export"), ("secrets", "import"),
]  # fmt: skip


def test_every_command_taking_a_cluster_file_reads_it_from_clusterctl_file():
    commands = dict(_commands(get_command(cli.app)))
    for path in FILE_COMMANDS:
        (file,) = [p for p in commands[path].params if p.name == "file"]
        assert file.opts == ["--file", "-f"] and file.envvar == "CLUSTERCTL_FILE", path


def test_the_help_says_the_order(tmp_path):
    help_text = " ".join(_clusterctl("plan", "--help", cwd=tmp_path).stdout.split())
    assert "Without -f: $CLUSTERCTL_FILE, else ./clusterctl.yaml, else the local lab 'default'." in help_text


def test_f_comes_before_clusterctl_file_which_comes_before_the_current_folders_file(tmp_path):
    for key in ("explicit", "env", "here"):
        (tmp_path / f"{key}.yaml").write_text(BAD_FILE.format(key=key))
    (tmp_path / "clusterctl.yaml").write_text(BAD_FILE.format(key="here"))
    env = {"CLUSTERCTL_FILE": "env.yaml"}
    assert "explicit.yaml:2: hosts[0].explicit: unknown key" in _clusterctl("validate", "-f", "explicit.yaml", cwd=tmp_path, env=env).stderr
    assert "env.yaml:2: hosts[0].env: unknown key" in _clusterctl("validate", cwd=tmp_path, env=env).stderr
    # Empty is unset (click's rule for every variable).
    here = _clusterctl("validate", cwd=tmp_path, env={"CLUSTERCTL_FILE": ""})
    assert "clusterctl.yaml:2: hosts[0].here: unknown key" in here.stderr


def test_clusterctl_file_naming_no_file_is_one_line_and_exit_2(tmp_path):
    for command in ("plan", "place", "status"):
        proc = _clusterctl(command, cwd=tmp_path, env={"CLUSTERCTL_FILE": "missing.yaml"})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "error: missing.yaml: no such file (from CLUSTERCTL_FILE)\n"
    # -f naming no file: the loader's own line, as before.
    proc = _clusterctl("plan", "-f", "missing.yaml", cwd=tmp_path, env={"CLUSTERCTL_FILE": "missing-too.yaml"})
    assert (proc.returncode, proc.stderr) == (2, "error: missing.yaml: no such file\n")


def test_without_any_file_the_error_names_clusterctl_file_among_the_ways(tmp_path):
    proc = _clusterctl("plan", cwd=tmp_path)
    assert proc.returncode == 2 and "set CLUSTERCTL_FILE" in proc.stderr and len(proc.stderr.splitlines()) == 1


# Flags in --help


def test_no_help_shows_a_type_for_a_flag():
    runner = CliRunner()
    paths = [(), *(path for path, _ in _commands(get_command(cli.app))), ("lab",), ("secrets",), ("image",), ("filebox",), ("inventory",)]
    for path in paths:
        result = runner.invoke(cli.app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "bool" not in result.output.lower(), (path, result.output)
    # The flags keep their names, and the options with a value their types.
    up = runner.invoke(cli.app, ["up", "--help"], env={"COLUMNS": "200"}).output
    rows = {line.split()[1]: line.split()[1:4] for line in up.splitlines() if line.startswith("│ --")}
    assert rows["--dry-run"] == ["--dry-run", "Print", "what"]
    assert rows["--accept-new-host-keys"][1] == "Trust"
    assert rows["--file"] == ["--file", "-f", "<path>"] and rows["--workers"][1] == "<int"


def test_flags_still_parse(tmp_path):
    proc = _clusterctl("down", "--yes", "--dry-run", "--accept-new-host-keys", "-f", "missing.yaml", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "error: missing.yaml: no such file\n")


# The final table

PHASES = ["docker", "engine", "network", "filebox", "consul", "services", "prune"]
FAILURE = "ssh: connect to host 10.0.0.7 port 22: connection refused by /etc/hosts.deny on the bastion"


def _report(names, dry_run=False) -> RunReport:
    hosts = []
    for i, name in enumerate(names):
        statuses = [(PLANNED if dry_run else CHANGED) if (i + j) % 2 else OK for j in range(len(PHASES))]
        steps = [Step(phase, status) for phase, status in zip(PHASES, statuses, strict=True)]
        hosts.append(HostReport(name, f"10.0.0.{i}", steps))
    hosts[0].steps[3] = Step("filebox", FAILED, FAILURE)
    return RunReport("demo", dry_run, PHASES, hosts, 1.5)


def _printed(report, width, terminal) -> str:
    out = io.StringIO()
    print_table(report, Console(file=out, width=width, force_terminal=terminal, color_system=None, highlight=False), "up")
    return out.getvalue()


def _rows(text, report):
    """Each host's first line, split into words (host, statuses, detail words)."""
    lines = text.splitlines()
    return {h.name: next(line for line in lines if line.split()[:1] == [h.name]).split() for h in report.hosts}


def _statuses(host: HostReport) -> list[str]:
    return [s.status for s in host.steps]


LONG_NAMES = [f"node-with-a-long-name-{i}" for i in (7, 17, 123)]


def test_off_a_terminal_nothing_is_cut_or_folded_each_row_is_one_line():
    report = _report(LONG_NAMES)
    text = _printed(report, 80, terminal=False)
    assert "…" not in text
    rows = _rows(text, report)
    for h in report.hosts:
        assert rows[h.name][: 1 + len(PHASES)] == [h.name, *_statuses(h)]
    assert " ".join(rows[LONG_NAMES[0]][1 + len(PHASES) :]) == FAILURE
    assert " ".join(rows[LONG_NAMES[1]][1 + len(PHASES) :]) == "4 phase(s) changed"


def test_on_a_terminal_the_detail_folds_to_fit_and_host_and_status_cells_stay_whole():
    report = _report(LONG_NAMES, dry_run=True)
    text = _printed(report, 120, terminal=True)
    assert "…" not in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 120
    rows = _rows(text, report)
    for h in report.hosts:
        assert rows[h.name][: 1 + len(PHASES)] == [h.name, *_statuses(h)]
    assert FAILURE not in text and all(word in text for word in FAILURE.split())  # folded, all there


def test_on_a_terminal_too_narrow_for_the_host_and_status_columns_the_table_is_wider_not_cut():
    report = _report(LONG_NAMES)
    text = _printed(report, 80, terminal=True)
    assert "…" not in text
    rows = _rows(text, report)
    for h in report.hosts:
        assert rows[h.name][: 1 + len(PHASES)] == [h.name, *_statuses(h)]
    # Only as wide as the host and status columns and the folded detail need.
    assert max(len(line.rstrip()) for line in text.splitlines()) < len(f"{LONG_NAMES[2]} {' '.join(['changed'] * len(PHASES))} {FAILURE}")


def test_a_table_that_fits_is_printed_as_before():
    report = _report(["a1", "a2"])
    report.hosts[0].steps[3] = Step("filebox", FAILED, "exit 1")
    piped, on_a_terminal = _printed(report, 100, terminal=False), _printed(report, 100, terminal=True)
    assert piped == on_a_terminal
    assert max(len(line) for line in piped.splitlines()) <= 100
    assert _rows(piped, report)["a1"] == ["a1", *_statuses(report.hosts[0]), "exit", "1"]


def test_the_json_is_unaffected_by_the_table():
    report = _report(LONG_NAMES)
    before = report_json(report)
    _printed(report, 80, terminal=False)
    assert report_json(report) == before == json.dumps(report_dict(report), indent=2)
    doc = json.loads(before)
    assert [h["name"] for h in doc["hosts"]] == LONG_NAMES
    assert [[p["status"] for p in h["phases"]] for h in doc["hosts"]] == [_statuses(h) for h in report.hosts]


# The program's exit (cli.run): exit handlers run and every byte is written before the process
# ends without the interpreter's tear-down; the exit code is main()'s.


def test_the_program_writes_everything_and_keeps_its_exit_code(tmp_path):
    helped = _clusterctl("up", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.rstrip().endswith("╯"), helped.stdout[-200:]
    missing = _clusterctl("up", "-f", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and missing.stdout == ""
    # A script that imports the program: its exit handlers still run, its output is all there.
    script = tmp_path / "run.py"
    script.write_text(
        "import atexit, sys\nsys.argv = ['clusterctl', '--version']\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "sys.stdout.write('x' * 200000)\nfrom clusterctl.cli import run\nrun()\nprint('never')\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("x" * 200000 + "clusterctl ") and proc.stdout.endswith("handler ran\n") and "never" not in proc.stdout
