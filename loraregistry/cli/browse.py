"""``list``, ``show``, ``stats`` and ``remove``: browse and prune the registry."""
from __future__ import annotations

import click

from loraregistry.cli.common import CliContext, echo_json, json_option, library_errors, pass_cli
from loraregistry.cli.search import FAMILIES, filter_options
from registry.sorts import LIST_SORTS


@click.command("list")
@click.option("--base", type=FAMILIES, help="Only entries of this base family.")
@click.option("--present", is_flag=True, help="Only entries whose file is on disk.")
@click.option("--name", "query", help="Only entries whose model name contains this text.")
@click.option("--sort", type=click.Choice(LIST_SORTS), default="id", show_default=True,
              help="Order: registry id, or most downloaded / best rated on Civitai first.")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
@filter_options
@json_option
@pass_cli
@library_errors
def list_(cli: CliContext, base: str | None, present: bool, query: str | None, sort: str, limit: int, offset: int,
          tag: str | None, creator: str | None, fmt: str | None, as_json: bool) -> None:
    """List registry entries.

    Example: loraregistry list --base sdxl --present --sort downloads --limit 20 --tag character
    """
    entries = cli.registry().list(base=base, present_only=present, limit=limit, offset=offset, query=query, tag=tag,
                                  creator=creator, format=fmt, sort=sort)
    if as_json:
        echo_json([e.to_dict() for e in entries])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("id", "name", "version", "base", "format", "downloads", "rating", "file"):
        table.add_column(col, overflow="fold", justify="right" if col in ("downloads", "rating") else "left")
    for e in entries:
        rating = f"{e.rating:.2f} ({e.rating_count})" if e.rating is not None else ""
        table.add_row(str(e.id), e.name, e.version_name or "", e.base_family, e.format or "",
                      f"{e.downloads:,}" if e.downloads is not None else "", rating,
                      e.file_path or f"({e.file_status or 'no file'})")
    Console().print(table)


@click.command("show")
@click.argument("entry")
@json_option
@pass_cli
@library_errors
def show(cli: CliContext, entry: str, as_json: bool) -> None:
    """Show one entry, by registry id, file path, name or trigger word.

    Example: loraregistry show 42
    """
    e = cli.registry().find(entry)
    data = e.to_dict()
    if as_json:
        echo_json(data)
        return
    meta = data.pop("header_metadata") or {}
    for key, value in data.items():
        if value not in (None, [], ""):
            text = str(value)
            click.echo(f"{key:>20}: {text if len(text) < 400 else text[:400] + '…'}")
    if meta:
        click.echo(f"{'header metadata':>20}: {len(meta)} keys ({', '.join(sorted(meta)[:8])}{', …' if len(meta) > 8 else ''})")


@click.command("stats")
@json_option
@pass_cli
@library_errors
def stats(cli: CliContext, as_json: bool) -> None:
    """Counts of models, versions, files, formats and base families, and the index state.

    Example: loraregistry stats --json
    """
    data = cli.registry().stats()
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key:>15}: {value}")


@click.command("remove")
@click.argument("entry_ids", nargs=-1, type=int, required=True)
@json_option
@pass_cli
@library_errors
def remove(cli: CliContext, entry_ids: tuple[int, ...], as_json: bool) -> None:
    """Remove entries by registry id (the files on disk are not touched).

    Example: loraregistry remove 12 13
    """
    registry = cli.registry()
    removed = [registry.remove(i) for i in entry_ids]
    registry.reindex(only_if_stale=True)
    if as_json:
        echo_json([{"id": e.id, "name": e.name} for e in removed])
    else:
        for e in removed:
            click.echo(f"removed {e.id}: {e.name}")


COMMANDS = [list_, show, stats, remove]
