"""The CLI as a user drives it: exact exit codes, JSON shapes, clean errors, help everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from loraregistry.cli import cli
from registry import migrate
from tests.registry.test_ingest import make_dump


def invoke(*args: str, db: Path | str | None = None) -> click.testing.Result:
    """``db``: a SQLite file, or any SQLAlchemy URL."""
    url = db if isinstance(db, str) else f"sqlite:///{db}" if db else None
    argv = (["--db", url] if url else []) + list(args)
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in all_commands(cli)], ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    command = cli
    for part in path:
        command = command.commands[part]
    assert command.help and "Example:" in command.help, f"{' '.join(path)} lacks an Example: in its help"


def test_ingest_search_show_remove(tmp_path: Path, db_url: str) -> None:
    db = db_url
    make_dump(tmp_path / "dump", 3)
    (tmp_path / "dump" / "bad.safetensors").write_bytes(b"\x00" * 4)
    result = invoke("ingest", str(tmp_path / "dump"), "--json", db=db)
    assert result.exit_code == 1  # one file failed
    report = json.loads(result.output)
    assert report["ok"] is False
    run = report["runs"][0]
    assert run["counts"]["added"] == 3
    assert run["problems"] == [{"path": str(tmp_path / "dump" / "bad.safetensors"), "kind": "failed",
                                "reason": "truncated: 4 bytes, shorter than the 8-byte header length"}]  # fmt: skip

    result = invoke("search", "masterpiece, trig1, trig2", "-k", "2", "--json", db=db)
    assert result.exit_code == 0
    hits = json.loads(result.output)
    assert {h["name"] for h in hits} == {"Subject 1", "Subject 2"}
    for key in ("id", "civitai_model_id", "civitai_version_id", "name", "base_family", "file_path", "score", "phrase"):
        assert key in hits[0]
    assert {h["phrase"] for h in hits} == {"trig1", "trig2"}

    shown = json.loads(invoke("show", "trig1", "--json", db=db).output)
    assert shown["civitai_model_id"] == 1001 and shown["format"] == "kohya-lora"
    assert invoke("remove", str(shown["id"]), db=db).exit_code == 0
    missing = invoke("show", str(shown["id"]), db=db)
    assert missing.exit_code == 1 and "no registry entry with id" in missing.output and "Traceback" not in missing.output
    stats = json.loads(invoke("stats", "--json", db=db).output)
    assert stats["models"] == 2 and stats["index"]["vectors"] == 2 and stats["index"]["current"]


def test_clean_errors(tmp_path: Path) -> None:
    result = invoke("ingest", db=tmp_path / "r.db")
    assert result.exit_code == 2 and "give a dump directory" in result.output
    not_a_catalog = tmp_path / "x.txt"
    not_a_catalog.write_text("x")
    result = invoke("ingest", str(not_a_catalog), db=tmp_path / "r.db")
    assert result.exit_code == 1 and "neither a dump directory nor" in result.output


def test_db_commands(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert "schema at base" in invoke("db", "downgrade", "base", db=db).output
    assert invoke("db", "current", db=db).output.startswith("current: base")
    assert f"schema at {migrate.head_revision()}" in invoke("db", "upgrade", db=db).output


def test_db_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAREGISTRY_DB", f"sqlite:///{tmp_path / 'env.db'}")
    assert invoke("stats").exit_code == 0
    assert (tmp_path / "env.db").exists()


def test_list_sorts_by_civitai_downloads_and_rating(tmp_path: Path, db_url: str) -> None:
    """Most downloaded / best rated first, entries without the stat last; a later record updates them."""
    import gzip

    def record(i: int, stats: dict | None) -> dict:
        version = {"id": 100 + i, "name": "v1", "baseModel": "SD 1.5", "trainedWords": [f"word{i}"], "files": []}
        return {"id": i, "name": f"Model {i}", "type": "LORA", "modelVersions": [{**version, **({"stats": stats} if stats else {})}]}

    def ingest(records: list[dict], name: str) -> None:
        path = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(path, "wt") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))
        assert invoke("ingest", str(path), db=db_url).exit_code == 0

    ingest([record(1, {"downloadCount": 50, "ratingCount": 3, "rating": 4.0}), record(2, None),
            record(3, {"downloadCount": 900, "ratingCount": 40, "rating": 3.5}),
            record(4, {"downloadCount": 7, "ratingCount": 1, "rating": 4.0})], "first")  # fmt: skip
    names = lambda *args: [e["name"] for e in json.loads(invoke("list", *args, "--json", db=db_url).output)]
    assert names("--sort", "downloads") == ["Model 3", "Model 1", "Model 4", "Model 2"]
    assert names("--sort", "rating") == ["Model 1", "Model 4", "Model 3", "Model 2"]  # ties: more ratings first
    assert names() == ["Model 1", "Model 2", "Model 3", "Model 4"]
    assert json.loads(invoke("show", "word3", "--json", db=db_url).output)["downloads"] == 900
    ingest([record(4, {"downloadCount": 5000, "ratingCount": 2, "rating": 5.0})], "later")
    assert names("--sort", "downloads", "--limit", "1") == ["Model 4"]
    table = invoke("list", "--sort", "downloads", db=db_url).output
    assert "5,000" in table and "5.00 (2)" in table
    assert invoke("list", "--sort", "stars", db=db_url).exit_code == 2
