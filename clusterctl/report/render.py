"""Per-host, per-phase table (rich) and the same facts as JSON."""

from __future__ import annotations

import json
from typing import Any

from clusterctl.report.model import CHANGED, FAILED, OK, PLANNED, SKIPPED, RunReport, Step

STYLE = {OK: "green", CHANGED: "yellow", PLANNED: "cyan", FAILED: "bold red", SKIPPED: "dim"}
# The table's detail column folds down to this width, no narrower.
DETAIL_MIN_WIDTH = 12
# Wider than any table measured: measurements are capped to the width they are given.
MEASURE_WIDTH = 1 << 16


def report_dict(report: RunReport) -> dict[str, Any]:
    return {
        "cluster": report.cluster,
        "dry_run": report.dry_run,
        "ok": report.ok,
        "changed": report.changed,
        "seconds": round(report.seconds, 3),
        "failed_hosts": [h.name for h in report.failed_hosts],
        "errors": report.errors,
        "refused": dict(report.refused),
        "notes": list(report.notes),
        "interrupted": report.interrupted,
        "ended_on": list(report.ended_on),
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "ok": h.ok,
                "changed": any(s.changed for s in h.steps),
                "round_trips": h.round_trips,
                "bytes_sent": h.bytes_sent,
                "phases": [_step(s) for s in h.steps],
            }
            for h in report.hosts
        ],
    }


def _step(s: Step) -> dict[str, Any]:
    return {
        "phase": s.phase,
        "status": s.status,
        "changed": s.changed,
        "message": s.message,
        "seconds": round(s.seconds, 3),
        "commands": s.commands,
    }


def report_json(report: RunReport) -> str:
    return json.dumps(report_dict(report), indent=2)


def progress_line(host: str, step: Step) -> str:
    style = STYLE.get(step.status, "")
    took = f" [dim]{step.seconds:.1f}s[/dim]" if step.seconds >= 0.05 else ""
    return f"  [bold]{host}[/bold] {step.phase}: [{style}]{step.status}[/{style}] {_escape(step.message)}{took}"


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


def print_table(report: RunReport, console, verb: str = "") -> None:  # noqa: ANN001 - rich.Console, imported lazily
    from rich.table import Table

    title = f"{verb or ('plan' if report.dry_run else 'up')}: cluster {report.cluster} ({report.seconds:.1f}s)"
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # Host and status cells are kept whole (_fit_width makes room for them); only the detail folds.
    table.add_column("host", no_wrap=True)
    for phase in report.phases:
        table.add_column(phase, no_wrap=True)
    table.add_column("detail", overflow="fold", min_width=DETAIL_MIN_WIDTH)
    for h in report.hosts:
        by_phase = {s.phase: s for s in h.steps}
        cells = []
        for phase in report.phases:
            s = by_phase.get(phase)
            cells.append(f"[{STYLE[s.status]}]{s.status}[/]" if s else "[dim]-[/dim]")
        failed = h.failed
        # Short: the cells say what changed; the progress lines above said how.
        changed = [s.phase for s in h.steps if s.changed]
        detail = failed.message if failed else ("converged" if not changed else f"{len(changed)} phase(s) {'planned' if report.dry_run else 'changed'}")
        table.add_row(h.name, *cells, _escape(detail))
    print_whole(table, console)
    for note in report.notes:
        console.print(f"[bold]note:[/bold] {_escape(note)}", soft_wrap=True)
    if report.dry_run:
        for h in report.hosts:
            for s in h.steps:
                for c in s.commands:
                    console.print(f"[cyan]{h.name}[/cyan] {s.phase}$ {_escape(c)}", soft_wrap=True)


def print_whole(table, console) -> None:  # noqa: ANN001 - rich Table and Console, imported lazily
    """Print a table whose last column is the one that may fold: every other cell whole."""
    _fit_width(table, console)
    console.print(table, crop=False)  # a table wider than the console is printed whole


def _fit_width(table, console) -> None:  # noqa: ANN001 - rich Table and Console, imported lazily
    """Widen the table past the console where its host and status cells would not fit whole
    (rich cuts cells to the console's width: `nod…`, `chang…`). Off a terminal (a pipe, a
    file, a CI log) the console's width is only a default: the table takes all it needs, a row
    a line. On a terminal it fits the screen by folding the detail column, and is wider only
    when the host and status columns beside a detail folded to its least are."""
    from rich.measure import Measurement

    def measured() -> int:
        return Measurement.get(console, console.options.update_width(MEASURE_WIDTH), table).maximum

    detail = table.columns[-1]
    natural = measured()
    detail.max_width = detail.min_width  # the width with the detail folded as far as it goes
    least = measured()
    detail.max_width = None
    width = min(natural, max(console.width, least)) if console.is_terminal else natural
    if width > console.width:
        table.width = width
