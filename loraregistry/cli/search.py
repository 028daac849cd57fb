"""``loraregistry search``: hybrid semantic + lexical search over the registry."""
from __future__ import annotations

import click

from loraregistry.cli.common import CliContext, echo_json, json_option, library_errors, pass_cli
from registry.families import FAMILIES as BASE_FAMILIES

FAMILIES = click.Choice(list(BASE_FAMILIES))


def filter_options(func):
    """--tag, --creator, --format: shared by search and list."""
    func = click.option("--format", "fmt", default=None, metavar="FORMAT",
                        help="Only entries with a file of this format (kohya-lora, lycoris-lokr, peft, ...).")(func)
    func = click.option("--creator", default=None, help="Only entries by this creator (exact, any case).")(func)
    return click.option("--tag", default=None, help="Only entries with this tag (exact, any case).")(func)


@click.command("search")
@click.argument("prompt")
@click.option("-k", "k", default=10, show_default=True, help="How many entries to return.")
@click.option("--base", type=FAMILIES, help="Only entries of this base family.")
@click.option("--present", is_flag=True, help="Only entries whose file is on disk.")
@filter_options
@json_option
@pass_cli
@library_errors
def search(cli: CliContext, prompt: str, k: int, base: str | None, present: bool, tag: str | None, creator: str | None,
           fmt: str | None, as_json: bool) -> None:
    """Find the LoRAs a prompt asks for: each subject of the prompt, by trigger word, name and meaning.
    A single word that is an entry's name, tag, trigger or creator finds it.

    Example: loraregistry search "masterpiece, 1girl, nezuko, castle background" -k 5 --base sd1

    Example: loraregistry search toyworld --tag background
    """
    hits = cli.registry().search(prompt, k=k, base=base, present_only=present, tag=tag, creator=creator, format=fmt)
    if as_json:
        echo_json([h.to_dict() for h in hits])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"search: {prompt}")
    for col in ("id", "name", "base", "score", "found by", "downloads", "file"):
        table.add_column(col, overflow="fold", justify="right" if col == "downloads" else "left")
    for h in hits:
        e = h.entry
        table.add_row(str(e.id), e.name, e.base_family, f"{h.score:.3f}", f"{h.match}: {h.phrase}",
                      f"{e.downloads:,}" if e.downloads is not None else "", e.file_path or "(catalog)")
    Console().print(table)


COMMANDS = [search]
