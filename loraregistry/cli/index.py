"""``loraregistry reindex``: rebuild the FAISS index from the embeddings in SQL."""
from __future__ import annotations

import click

from loraregistry.cli.common import CliContext, echo_json, json_option, library_errors, pass_cli


@click.command("reindex")
@json_option
@pass_cli
@library_errors
def reindex(cli: CliContext, as_json: bool) -> None:
    """Rebuild the search index (embedding any model that lacks an embedding).

    Searches rebuild a missing or stale index by themselves; this forces it.

    Example: loraregistry reindex
    """
    from dataclasses import asdict

    manifest = cli.registry().reindex()
    if as_json:
        echo_json(asdict(manifest))
    else:
        click.echo(f"indexed {manifest.count} models with {manifest.embed_model} ({manifest.dim} dims, {manifest.embedder})")


COMMANDS = [reindex]
