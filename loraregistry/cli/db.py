"""``loraregistry db``: schema migrations (Alembic) of the registry database."""
from __future__ import annotations

import click

from loraregistry.cli.common import CliContext, library_errors, pass_cli


def _engine(cli: CliContext):
    from registry.db import make_engine
    from registry.settings import database_url

    return make_engine(database_url(cli.db_url))


@click.group("db")
def db() -> None:
    """Database schema: upgrade, downgrade, current revision.

    Example: loraregistry --db postgresql+psycopg://user@host/loras db upgrade
    """


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_cli
@library_errors
def upgrade(cli: CliContext, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head).

    Example: loraregistry db upgrade
    """
    from registry import migrate

    engine = _engine(cli)
    migrate.upgrade(engine, revision)
    click.echo(f"schema at {migrate.current_revision(engine)}")


@db.command("downgrade")
@click.argument("revision")
@pass_cli
@library_errors
def downgrade(cli: CliContext, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' drops everything).

    Example: loraregistry db downgrade base
    """
    from registry import migrate

    engine = _engine(cli)
    migrate.downgrade(engine, revision)
    click.echo(f"schema at {migrate.current_revision(engine) or 'base'}")


@db.command("current")
@pass_cli
@library_errors
def current(cli: CliContext) -> None:
    """Print the schema revision of the database and the newest one this version knows.

    Example: loraregistry db current
    """
    from registry import migrate

    click.echo(f"current: {migrate.current_revision(_engine(cli)) or 'base'}  head: {migrate.head_revision()}")


COMMANDS = [db]
