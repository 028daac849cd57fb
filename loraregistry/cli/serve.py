"""``loraregistry serve``: the library and composer as a web page and a JSON API (uvicorn)."""
from __future__ import annotations

import re

import click

from loraregistry.cli.common import CliContext, pass_cli
from loraregistry.cli.queue import queue_option

TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]{8,256}$")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--token", envvar="LORAREGISTRY_TOKEN", default=None, metavar="TOKEN",
              help="Every request must carry it (Authorization: Bearer TOKEN, or open a page once with ?token=TOKEN). "
                   "8+ characters of A-Z a-z 0-9 . _ ~ -. Env: LORAREGISTRY_TOKEN.")
@click.option("--model", "-m", default=None, metavar="ID_OR_DIR",
              help="Pipeline to compose with (as `compose --model`). Env: LORAREGISTRY_MODEL. Default: built-in ToyWorld.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=None,
              help="Directory of composed images and their reports (default: serve-results in the data directory).")
@click.option("--queue-size", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Compose jobs that may wait; more are refused with 429.")
@click.option("--keep-results", type=click.IntRange(1), default=500, show_default=True, help="Results kept in the gallery.")
@click.option("--no-warm", is_flag=True, help="Load the pipeline on the first job instead of at start.")
@queue_option
@pass_cli
def serve(cli: CliContext, host: str, port: int, token: str | None, model: str | None, device: str | None, dtype: str,
          results_dir: str | None, queue_size: int, keep_results: int, no_warm: bool, queue_url: str | None) -> None:
    """Serve the registry and the composer: library, entry and compose pages, and a JSON API under /api/.

    One process holds the registry, the warm pipeline and a bounded job queue. With no --model the
    built-in ToyWorld pipeline composes; with no --db either, the ToyWorld demo registry is served.
    With --queue, compose jobs go to that queue for `loraregistry worker` processes (no pipeline is
    loaded here; --results must be the workers' results directory, --queue-size is the URL's capacity).

    Example: loraregistry --db sqlite:///loras.db serve --model ./sd15 --port 8765
    """
    import uvicorn

    from loraregistry.web import create_app
    from loraregistry.web.security import is_loopback
    from loraregistry.web.server import build_state, resolve
    from registry.errors import RegistryError
    from registry.settings import data_dir

    if token is not None and not TOKEN_RE.match(token):
        raise click.BadParameter("8 to 256 characters of A-Z a-z 0-9 . _ ~ - (try: python -c 'import secrets; print(secrets.token_urlsafe())')",
                                 param_hint="--token")
    if not is_loopback(host) and token is None:
        raise click.UsageError(f"--host {host} is reachable from other machines: give --token (or set LORAREGISTRY_TOKEN)")
    try:
        info, registry = resolve(model, cli.db_url)
    except (FileNotFoundError, ValueError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model: {info.description}", err=True)
    click.echo(f"registry: {registry.stats()['url']}", err=True)
    if queue_url:
        from loraregistry.cli.queue import open_queue, results_dir_or_default

        open_queue(queue_url).close()  # reachable, or one clean error now
        results_dir = str(results_dir_or_default(results_dir))
        click.echo(f"compose jobs go to the queue {queue_url}", err=True)
    state = build_state(info, registry, results_dir or data_dir() / "serve-results", device=device, dtype=dtype,
                        queue_size=queue_size, warm=not no_warm and not queue_url, keep_results=keep_results,
                        queue_url=queue_url)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving on http://{shown}:{port}/" + ("?token=…" if token else "") + "  (API docs: /api/docs)", err=True)
    uvicorn.run(create_app(state, token=token), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


COMMANDS = [serve]
