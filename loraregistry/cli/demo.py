"""``loraregistry demo``: the whole job on built-in data, on a fresh machine, with nothing to download."""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from loraregistry.cli.common import library_errors

DEMO_PROMPT = "masterpiece, best quality, a kiki on the left, checkerboard background"


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo registry, dump and images go (replaced on each run).")
@click.option("--prompt", default=DEMO_PROMPT, show_default=True)
@library_errors
def demo(out_dir: str, prompt: str) -> None:
    """Ingest the built-in example dump into a fresh registry and search it with a two-subject prompt.

    Example: loraregistry demo --out /tmp/demo
    """
    from rich.console import Console
    from rich.table import Table

    from loraregistry.examples import write_example_dump
    from registry.api import Registry

    console = Console()
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    dump = write_example_dump(out / "dump")
    console.print(f"[bold]1. ingest[/] {dump}")
    registry = Registry.open(f"sqlite:///{(out / 'registry.db').resolve()}")
    report = registry.ingest(dump)
    console.print(f"   {dict(report.counts)}; problems: {len(report.problems)}")
    console.print(f"[bold]2. search[/] {prompt!r}")
    hits = registry.search(prompt, k=3)
    table = Table()
    for col in ("id", "name", "score", "found by", "file"):
        table.add_column(col, overflow="fold")
    for h in hits:
        table.add_row(str(h.entry.id), h.entry.name, f"{h.score:.2f}", f"{h.match}: {h.phrase}", h.entry.file_path or "")
    console.print(table)
    click.echo("found: " + "; ".join(f"{h.entry.name} <- {h.phrase!r}" for h in hits))
    console.print(f"registry: {out / 'registry.db'}  (try: loraregistry --db {out / 'registry.db'} list)")


COMMANDS = [demo]
