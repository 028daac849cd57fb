"""``loraregistry ingest``: catalog a dump directory or a JSON Lines catalog."""
from __future__ import annotations

import sys

import click

from loraregistry.cli.common import CliContext, echo_json, json_option, library_errors, pass_cli, stderr_console


@click.command("ingest")
@click.argument("path", type=click.Path(exists=True), required=False)
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A JSON Lines catalog of Civitai model records (.jsonl or .jsonl.gz), ingested as catalog-only entries.")
@click.option("--verify", is_flag=True, help="Hash every file, even when a sidecar gives its SHA256.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links that point out of the dump.")
@click.option("--batch-size", default=200, show_default=True, help="Files per committed batch.")
@click.option("--strict", is_flag=True, help="Exit non-zero for refused files and duplicates too, not only failures.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
@pass_cli
@library_errors
def ingest(cli: CliContext, path: str | None, catalogs: tuple[str, ...], verify: bool, follow_symlinks: bool,
           batch_size: int, strict: bool, no_progress: bool, as_json: bool) -> None:
    """Ingest LoRA files with their Civitai sidecars, and catalogs of records.

    Re-running it is cheap: unchanged files are skipped, changed ones updated, vanished ones marked
    missing. Every refused or failed file is listed with its reason; the exit status is 1 when any failed.

    Example: loraregistry ingest ./civitai_dump --catalog models.jsonl.gz
    """
    if not path and not catalogs:
        raise click.UsageError("give a dump directory, or --catalog FILE.jsonl[.gz]")
    registry = cli.registry()
    reports = []
    targets = ([path] if path else []) + list(catalogs)
    show_progress = not no_progress and not as_json and sys.stderr.isatty()
    for target in targets:
        if show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            total = registry.ingest_total(target, follow_symlinks=follow_symlinks)
            with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          TextColumn("{task.fields[current]}"), console=stderr_console(), transient=True) as bar:
                task = bar.add_task("ingest", total=total, current="")
                report = registry.ingest(
                    target, verify=verify, follow_symlinks=follow_symlinks, batch_size=batch_size,
                    progress=lambda n, p: bar.update(task, advance=n, current=p[-60:]),
                )
        else:
            report = registry.ingest(target, verify=verify, follow_symlinks=follow_symlinks, batch_size=batch_size)
        reports.append((target, report))
    failed = any(r.failed for _, r in reports) or (strict and any(r.problems for _, r in reports))
    if as_json:
        echo_json({"ok": not failed, "runs": [{"path": t, **r.to_dict()} for t, r in reports]})
    else:
        _render(reports)
    if failed:
        sys.exit(1)


def _render(reports) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for target, report in reports:
        table = Table(title=f"ingest {target} ({report.elapsed_s:.1f} s)", show_header=True)
        table.add_column("what")
        table.add_column("count", justify="right")
        for key, value in sorted(report.counts.items()):
            table.add_row(key, str(value))
        console.print(table)
        if report.problems:
            problems = Table(title="problems", show_header=True)
            problems.add_column("kind")
            problems.add_column("path", overflow="fold")
            problems.add_column("reason", overflow="fold")
            for p in report.problems:
                problems.add_row(p.kind, p.path, p.reason)
            console.print(problems)
        for w in report.warnings:
            console.print(f"[yellow]warning[/] {w.path}: {w.reason}")


COMMANDS = [ingest]
