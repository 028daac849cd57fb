"""Ingest: real records and files, incremental re-runs, and bad input that must not stop anything."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

import indexer.ingest as ingest_module
from loraregistry.api import Registry
from registry.models import LoraFile, LoraModel, Version
from registry.service import read_stamp
from tests.registry.loras import civitai_sidecar, kohya_lora, sha256_of


def count(reg: Registry, stmt) -> int:
    with reg.session() as s:
        return s.scalar(stmt)


def make_dump(root: Path, n: int = 3) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = kohya_lora(root / f"lora_{i}.safetensors", seed=i)
        civitai_sidecar(path, model_id=1000 + i, version_id=2000 + i, name=f"Subject {i}", trained_words=[f"trig{i}"])
        files.append(path)
    return files


def test_real_records_ingest_with_edge_cases(registry: Registry, shared: Path) -> None:
    report = registry.ingest(shared / "fixtures/civitai/api-records")
    assert not report.problems
    assert report.counts["records"] == 28
    assert count(registry, select(func.count(LoraModel.id))) == 28
    with registry.session() as s:
        collection = s.scalar(select(LoraModel).where(LoraModel.civitai_id == 5742))
        assert len(collection.versions) == 12
        archived = s.scalar(select(LoraModel).where(LoraModel.civitai_id == 35484))
        assert archived.description is None and all(not v.files for v in archived.versions)
        sd21 = s.scalar(select(Version).join(LoraModel).where(LoraModel.civitai_id == 11843))
        assert (sd21.base_model, sd21.base_family) == ("SD 2.1 768", "sd2")
        assert s.scalar(select(func.count(LoraFile.id)).where(LoraFile.format == "pickle")) >= 2
    # the newer response shapes too; the enums file is reported as ignored, not a failure
    report = registry.ingest(shared / "fixtures/civitai/api-records-2025")
    assert report.counts["records"] == 3 and report.counts["ignored"] == 1 and not report.failed
    assert registry.find("ppstorybook").base_family == "flux"


def test_real_lora_files(registry: Registry, shared: Path) -> None:
    report = registry.ingest(shared / "fixtures/lora-files")
    assert report.counts["added"] == 11
    assert [(Path(p.path).name, p.kind) for p in report.problems] == [("malformed_kohya_like.safetensors", "refused")]
    entry = registry.find("smart_falcon_8_lokr.safetensors")
    assert (entry.format, entry.base_family, entry.rank) == ("lycoris-lokr", "sd1", 8)
    assert entry.header_metadata["ss_network_module"] == "lycoris.kohya"
    assert registry.find("flux_aitoolkit_lora").base_family == "flux"
    assert any("shapes win" in w.reason for w in report.warnings)


def test_sidecar_facts_and_lazy_hashing(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_dump(tmp_path / "dump")
    bare = kohya_lora(tmp_path / "dump" / "bare.safetensors", seed=99)
    hashed: list[str] = []
    real = ingest_module.sha256_file
    monkeypatch.setattr(ingest_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    report = registry.ingest(tmp_path / "dump")
    assert report.counts["added"] == 4 and not report.problems
    assert hashed == [str(bare)]  # sidecars gave the other hashes: those files were not read
    entry = registry.find("trig1")
    assert (entry.name, entry.civitai_model_id, entry.civitai_version_id) == ("Subject 1", 1001, 2001)
    assert entry.file_path == str(files[1]) and entry.sha256 == sha256_of(files[1])
    assert registry.find("bare").sha256 == sha256_of(bare)
    hashed.clear()
    report = registry.ingest(tmp_path / "dump", verify=True)
    assert sorted(hashed) == sorted(map(str, files + [bare]))
    with registry.session() as s:
        assert all(s.scalars(select(LoraFile.sha256_verified).where(LoraFile.status == "present")))


def test_unchanged_reingest_changes_nothing(registry: Registry, tmp_path: Path) -> None:
    make_dump(tmp_path / "dump")
    registry.ingest(tmp_path / "dump")

    def snapshot():
        with registry.session() as s:
            rows = s.execute(select(LoraFile.id, LoraFile.path, LoraFile.updated_at, LoraFile.sha256)).all()
            return rows, read_stamp(s), s.scalar(select(func.count(Version.id)))

    before = snapshot()
    report = registry.ingest(tmp_path / "dump")
    assert report.counts["unchanged"] == 3 and report.counts["added"] == 0 and report.counts["embedded"] == 0
    assert snapshot() == before


def test_changed_and_vanished_files(registry: Registry, tmp_path: Path) -> None:
    files = make_dump(tmp_path / "dump")
    registry.ingest(tmp_path / "dump")
    kohya_lora(files[0], seed=42, rank=8)  # re-saved with another rank
    os.utime(files[0], ns=(1, 10**18))
    files[1].unlink()
    report = registry.ingest(tmp_path / "dump")
    assert (report.counts["updated"], report.counts["missing"], report.counts["unchanged"]) == (1, 1, 1)
    assert registry.find("trig0").rank == 8
    assert registry.find("trig1").file_path is None and registry.find("trig1").file_status == "missing"


def test_corrupt_file_among_good_ones(registry: Registry, tmp_path: Path) -> None:
    files = make_dump(tmp_path / "dump")
    truncated = tmp_path / "dump" / "truncated.safetensors"
    truncated.write_bytes(files[0].read_bytes()[:-100])
    liar = tmp_path / "dump" / "liar.safetensors"
    liar.write_bytes(b"\xff" * 8 + b"{}")
    report = registry.ingest(tmp_path / "dump")
    assert report.counts["added"] == 3
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert "truncated" in reasons["truncated.safetensors"]
    assert "exceeds" in reasons["liar.safetensors"] or "past the end" in reasons["liar.safetensors"]
    assert report.failed
    # a second run reports them again without reading them, and still fails
    again = registry.ingest(tmp_path / "dump")
    assert {Path(p.path).name for p in again.problems} == {"truncated.safetensors", "liar.safetensors"}


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["BOOM_MARKER"]),))


def test_pickles_are_refused_and_never_unpickled(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("BOOM_MARKER", str(marker))
    dump = tmp_path / "dump"
    make_dump(dump, 1)
    for name in ("evil.ckpt", "evil.pt", "evil.bin", "evil2.safetensors"):
        (dump / name).write_bytes(pickle.dumps(_Boom(), protocol=4))
    report = registry.ingest(dump)
    assert not marker.exists()
    refused = {Path(p.path).name for p in report.problems if p.kind in ("refused", "failed")}
    assert refused == {"evil.ckpt", "evil.pt", "evil.bin", "evil2.safetensors"}
    assert report.counts["added"] == 1


def test_broken_sidecar_is_reported_and_the_file_still_lands(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    make_dump(dump, 2)
    (dump / "lora_0.civitai.json").write_text('{"id": 5, "name": ')
    report = registry.ingest(dump)
    assert report.counts["added"] == 2
    assert [(Path(p.path).name, p.kind) for p in report.problems] == [("lora_0.civitai.json", "failed")]
    assert "broken JSON" in report.problems[0].reason
    assert registry.find("lora_0").name == "lora_0"  # named from the file, as no record describes it


def test_duplicate_sha_at_two_paths(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    files = make_dump(dump, 1)
    (dump / "sub").mkdir()
    shutil.copy(files[0], dump / "sub" / "copy.safetensors")
    report = registry.ingest(dump)
    assert report.counts["added"] == 1
    dups = [p for p in report.problems if p.kind == "duplicate"]
    assert len(dups) == 1
    assert dups[0].path == str(dump / "sub" / "copy.safetensors") and str(files[0]) in dups[0].reason


def test_symlink_loops_and_links_out_of_the_dump(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    make_dump(dump, 1)
    (dump / "loop").symlink_to(dump)
    outside = tmp_path / "outside"
    make_dump(outside, 1)
    (dump / "out").symlink_to(outside)
    report = registry.ingest(dump)
    assert report.counts["added"] == 1
    assert any("outside the dump" in p.reason for p in report.problems)
    followed = registry.ingest(dump, follow_symlinks=True)
    assert any("symlink loop" in p.reason for p in followed.problems)


def test_catalog_then_file_matched_by_hash(registry: Registry, tmp_path: Path) -> None:
    """A catalog-only entry gains its path when the file shows up without any sidecar."""
    lora = kohya_lora(tmp_path / "renamed_by_user.safetensors", seed=5)
    sidecar = civitai_sidecar(lora, model_id=77, version_id=78, name="Catalogued", trained_words=["cat77"])
    catalog = tmp_path / "catalog.jsonl.gz"
    with gzip.open(catalog, "wt") as fh:
        fh.write(sidecar.read_text() + "\n" + "{broken\n")
    sidecar.unlink()
    report = registry.ingest(catalog)
    assert report.counts["records"] == 1 and len(report.problems) == 1 and ":2" in report.problems[0].path
    assert registry.find("cat77").file_path is None
    dump = tmp_path / "dump"
    dump.mkdir()
    lora.rename(dump / "other_name.safetensors")
    registry.ingest(dump)
    entry = registry.find("cat77")
    assert entry.file_path == str(dump / "other_name.safetensors") and entry.civitai_version_id == 78
    assert count(registry, select(func.count(LoraModel.id))) == 1


def test_shapes_outrank_the_sidecar_base_model(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    lora = kohya_lora(dump / "xl.safetensors", context=2048, te=False)
    civitai_sidecar(lora, model_id=5, version_id=6, name="XL", trained_words=["xlw"], base_model="SD 1.5")
    report = registry.ingest(dump)
    entry = registry.find("xlw")
    assert entry.base_family == "sdxl" and entry.base_model == "SD 1.5"
    assert any("shapes win" in w.reason for w in report.warnings)


def test_interrupted_ingest_resumes_without_loss_or_duplicates(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    make_dump(dump, 7)
    seen = []

    def crash(n: int, path: str) -> None:
        seen.append(path)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.ingest(dump, progress=crash, batch_size=2)
    kept = count(registry, select(func.count(LoraFile.id)).where(LoraFile.status == "present"))
    assert kept == 4  # two whole batches were committed before the crash
    report = registry.ingest(dump, batch_size=2)
    assert report.counts["unchanged"] == 4 and report.counts["added"] == 3
    assert count(registry, select(func.count(LoraFile.id)).where(LoraFile.status == "present")) == 7
    assert count(registry, select(func.count(LoraModel.id))) == 7
    assert registry.stats()["index"]["vectors"] == 7


@pytest.mark.parametrize("backend", ["sqlite"])  # takes minutes: SQLite only, to keep the suite short
def test_full_civitai_catalog(registry: Registry, shared: Path) -> None:
    path = shared / "fixtures/civitai/civitai_lora_models_2023-07.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        ids = {json.loads(line)["id"] for line in fh if line.strip()}
    report = registry.ingest(path)
    assert not report.problems
    assert report.counts["records"] == 7951
    assert count(registry, select(func.count(LoraModel.id))) == len(ids)
    stats = registry.stats()
    assert stats["index"]["vectors"] == len(ids) and stats["index"]["current"]
    assert stats["versions"] > 10_000 and stats["base_families"]["sd1"] > 9_000


def test_batch_entries_match_the_orm_entries(registry: Registry, shared: Path) -> None:
    """The search reads entries with plain selects (entries_by_id); every field must be what the ORM
    path (entry_of) gives, on real records: many versions, pickles, archived, files present or not."""
    from registry.service import entries_by_id, entry_of, version_query

    registry.ingest(shared / "fixtures/civitai/api-records")
    registry.ingest(shared / "fixtures/lora-files")
    with registry.session() as s:
        orm = {v.id: entry_of(v) for v in s.scalars(version_query())}
        core = entries_by_id(s, list(orm) + [10**9])  # an id that does not exist is left out
    assert len(orm) > 40 and set(core) == set(orm)
    sort_tags = lambda e: e.to_dict() | {"tags": sorted(e.tags)}  # SQL gives tags in no set order
    assert [sort_tags(core[i]) for i in orm] == [sort_tags(e) for e in orm.values()]
    assert any(e.file_path for e in core.values()) and any(e.file_status == "catalog" for e in core.values())
    assert any(e.trigger_words for e in core.values()) and any(e.tags for e in core.values())
