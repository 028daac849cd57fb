"""Shared pieces of the CLI: the context object, output options and error conversion."""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from loraregistry.api import Registry


@dataclass
class CliContext:
    """What the top-level group hands to every command: the database URL and a lazily opened registry."""

    db_url: str | None
    embedder: str | None = None  # None: $LORAREGISTRY_EMBEDDER, else auto
    _registry: "Registry | None" = field(default=None, repr=False)

    def registry(self) -> "Registry":
        if self._registry is None:
            from loraregistry.api import Registry

            self._registry = Registry.open(self.db_url, embedder=self.embedder)
        return self._registry


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report.")(func)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def library_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's domain errors into one clean ClickException at the edge (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from registry.errors import RegistryError

        try:
            return func(*args, **kwargs)
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # full disk, read-only data directory, unreadable path
            raise click.ClickException(f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}".lstrip(": ")) from exc

    return wrapper


def stderr_console():
    from rich.console import Console

    return Console(file=sys.stderr)
