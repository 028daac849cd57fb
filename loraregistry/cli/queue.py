"""``loraregistry worker`` and ``loraregistry jobs``: compose on several machines through a queue
(Dramatiq on Redis; see ``loraregistry.queue``)."""
from __future__ import annotations

import datetime as dt
from typing import Any

import click

from loraregistry.cli.common import CliContext, echo_json, json_option, pass_cli

QUEUE_HELP = ("Redis URL of the compose queue (Dramatiq), e.g. redis://HOST:6379/0; query settings: capacity, heartbeat, "
              "retries, time_limit, poll, maintenance, name. Jobs then run on `loraregistry worker` processes, with their "
              "model and device. Env: LORAREGISTRY_QUEUE.")


def queue_option(func):
    return click.option("--queue", "queue_url", envvar="LORAREGISTRY_QUEUE", default=None, metavar="URL", help=QUEUE_HELP)(func)


def results_option(func):
    return click.option("--results", "results_dir", type=click.Path(file_okay=False), default=None,
                        help="Directory of results, shared by workers and submitters (default: queue-results in the data "
                             "directory; several machines: a shared mount). Env: LORAREGISTRY_RESULTS.",
                        envvar="LORAREGISTRY_RESULTS")(func)


def results_dir_or_default(results_dir: str | None):
    from pathlib import Path

    from registry.settings import data_dir

    return Path(results_dir) if results_dir else data_dir() / "queue-results"


def open_queue(queue_url: str, results: Any = None):
    """The queue, reachable, or one clean ClickException."""
    from loraregistry.queue import RedisQueue

    try:
        q = RedisQueue(queue_url, results)
        q.ping()
    except (ValueError, ConnectionError) as exc:
        raise click.ClickException(str(exc)) from exc
    return q


@click.command("worker")
@click.option("--queue", "queue_url", envvar="LORAREGISTRY_QUEUE", required=True, metavar="URL", help=QUEUE_HELP)
@click.option("--model", "-m", default=None, metavar="ID_OR_DIR",
              help="Pipeline to compose with (as `compose --model`). Env: LORAREGISTRY_MODEL. Default: built-in ToyWorld.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True)
@click.option("--cache-mb", type=click.IntRange(0), default=4096, show_default=True, help="LoRA weights kept loaded between jobs (MiB).")
@click.option("--name", default=None, help="This worker's name in `loraregistry jobs` (default: HOST:PID).")
@click.option("--keep-results", type=click.IntRange(1), default=10000, show_default=True, help="Results kept in the results directory.")
@results_option
@pass_cli
def worker(cli: CliContext, queue_url: str, model: str | None, device: str | None, dtype: str, cache_mb: int, name: str | None,
           keep_results: int, results_dir: str | None) -> None:
    """Take compose jobs from the queue and run them on one warm pipeline, until SIGTERM or Ctrl-C.

    Run one per GPU. Jobs are `compose --batch` lines (from `compose --batch FILE --queue URL`) and
    `serve --queue URL` requests; results go to --results as ID.png, ID.weights.png and ID.json. The
    pipeline loads first: a worker whose model cannot load exits without taking a job.

    Example: loraregistry --db postgresql+psycopg://HOST/loras worker --queue redis://HOST:6379/0 --model ./sd15
    """
    import logging
    import signal

    from loraregistry.queue.worker import QueueWorker
    from loraregistry.web.composing import ComposeService
    from loraregistry.web.gallery import ResultStore
    from loraregistry.web.server import resolve
    from registry.errors import RegistryError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dramatiq").setLevel(logging.WARNING)
    try:
        info, registry = resolve(model, cli.db_url)
        service = ComposeService(info, registry, ResultStore(results_dir_or_default(results_dir), keep=keep_results),
                                 device=device, dtype=dtype, cache_bytes=cache_mb << 20)
        qw = QueueWorker(queue_url, service, name=name)
        qw.broker.client.ping()
    except (FileNotFoundError, ValueError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        import redis

        if isinstance(exc, redis.RedisError):
            raise click.ClickException(f"cannot reach the queue at {queue_url}: {exc}") from exc
        raise
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: qw.stop())
    click.echo(f"model: {info.description}", err=True)
    try:
        qw.run(ready=lambda: click.echo(f"worker {qw.name}: taking jobs from {qw.settings.redis_url}", err=True))
    except Exception as exc:  # the model did not load: take no job
        raise click.ClickException(f"cannot load the model {info.path}: {exc}; this worker takes no jobs") from exc


def _when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else "-"


@click.command("jobs")
@queue_option
@click.option("--limit", "-n", type=click.IntRange(1), default=20, show_default=True, help="Newest jobs to show.")
@click.option("--state", type=click.Choice(["queued", "running", "done", "failed"]), default=None, help="Only jobs in this state.")
@json_option
def jobs(queue_url: str | None, limit: int, state: str | None, as_json: bool) -> None:
    """List the newest jobs of the queue: state, worker, attempts, timings and errors.

    Example: loraregistry jobs --queue redis://HOST:6379/0 --state failed --json
    """
    if not queue_url:
        raise click.UsageError("give --queue URL (or set LORAREGISTRY_QUEUE)")
    q = open_queue(queue_url)
    records = q.records(limit if state is None else 10 * limit)
    if state:
        records = [r for r in records if r["state"] == state][:limit]
    if as_json:
        echo_json({"waiting": q.waiting(), "capacity": q.capacity, "jobs": records})
        return
    click.echo(f"{q.waiting()} of {q.capacity} jobs queued or running")
    for r in records:
        took = f"{r['finished_at'] - r['started_at']:.1f}s" if r["finished_at"] and r["started_at"] else "-"
        wait = f"{r['started_at'] - r['submitted_at']:.1f}s" if r["started_at"] and r["submitted_at"] else "-"
        line = (f"{r['id']}  {r['state']:<7} {r['name'] or r['kind']:<16} submitted {_when(r['submitted_at'])}  waited {wait}  "
                f"ran {took}  worker {r['worker'] or '-'}  attempts {r['attempts']}")
        if r["state"] == "running" and r["total"]:
            line += f"  {r['phase']} {r['done']}/{r['total']}"
        click.echo(line)
        if r["error"]:
            click.echo(f"    error: {r['error']}")


COMMANDS = [worker, jobs]
