"""The ``loraregistry`` command line: a thin click layer over the library.

Each subcommand lives in its own module and only parses, calls the library and renders.
"""
from __future__ import annotations

import importlib

import click

from loraregistry.cli.common import CliContext

# Modules that each define click commands (or groups), listed in the module's COMMANDS.
_COMMAND_MODULES = (
    "loraregistry.cli.ingest",
    "loraregistry.cli.search",
    "loraregistry.cli.browse",
    "loraregistry.cli.index",
    "loraregistry.cli.db",
    "loraregistry.cli.compose",
    "loraregistry.cli.demo",
    "loraregistry.cli.serve",
    "loraregistry.cli.queue",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar="LORAREGISTRY_DB",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL of the registry (default: SQLite in the data directory). Env: LORAREGISTRY_DB.",
)
@click.option(
    "--embedder",
    envvar="LORAREGISTRY_EMBEDDER",
    type=click.Choice(["auto", "torch", "onnx", "onnx-int8"], case_sensitive=False),
    default=None,
    help="What computes embeddings: onnx (ONNX Runtime, same vectors as torch, faster), onnx-int8 "
    "(fastest; switching to or from it re-embeds), torch (no ONNX Runtime needed), or auto (default: "
    "onnx, else torch). Env: LORAREGISTRY_EMBEDDER.",
)
@click.version_option(package_name="loraregistry")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, embedder: str | None) -> None:
    """A retrieval-backed LoRA registry with a LoRAtorio composer.

    Example: loraregistry ingest ./civitai_dump && loraregistry search "a knight, castle"
    """
    ctx.obj = CliContext(db_url=db_url, embedder=embedder.lower() if embedder else None)


for _name in _COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="loraregistry")
