"""`clusterctl inventory ...`: make cluster files from other sources.

Mounted by the main CLI (clusterctl/cli.py) as `clusterctl inventory`, whose main() prints a
UserError as one line with exit code 2. Only typer is imported here; the importer (PyYAML,
pydantic) loads inside the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Make cluster files from other sources.", no_args_is_help=True)


@app.callback()
def _inventory() -> None:
    """Make cluster files from other sources."""


@app.command("from-vagrant")
def from_vagrant(
    vagrant_dir: Path = typer.Option(
        Path("vagrant"), "--dir", help="Folder with the lab's Vagrantfile (machines must be up)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write the cluster file here and print its path, instead of printing it."
    ),
) -> None:
    """Cluster file for the running machines of a Vagrant lab (vagrant/Vagrantfile).

    SSH address, port, user and key come from `vagrant ssh-config`; each host's cluster_address from the private network plan the Vagrantfile writes to .clusterctl-hosts.json.
    """
    from clusterctl.errors import UserError
    from clusterctl.inventory.vagrant import import_vagrant

    # A UserError goes up to clusterctl.cli.main, which prints it as one line and exits 2.
    text = import_vagrant(vagrant_dir, output=output)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{output}: cannot write: {exc.strerror or exc}") from None
    typer.echo(str(output))
