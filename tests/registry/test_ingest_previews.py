"""The ingest records the preview image beside each file (X.preview.png, X.png, X.jpeg, X.webp, ...),
follows it being added, replaced or removed, and never takes a symlink out of the dump as one."""
from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from loraregistry import Registry
from tests.registry.loras import civitai_sidecar, kohya_lora


def _png(path: Path, colour: str = "red") -> Path:
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _entries(reg: Registry) -> dict[str, object]:
    return {os.path.basename(e.file_path): e for e in reg.list(limit=100) if e.file_path}


def test_previews_beside_files_are_recorded(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    names = ["a1111", "plain", "manager", "upper", "none"]
    for i, name in enumerate(names):
        adapter = kohya_lora(dump / f"{name}.safetensors", seed=i)
        civitai_sidecar(adapter, model_id=10 + i, version_id=20 + i, name=f"Model {name}", trained_words=[name])
    _png(dump / "a1111.preview.png")
    _png(dump / "a1111.png")  # the .preview. name wins over the plain one
    _png(dump / "plain.png")
    Image.new("RGB", (8, 8)).save(dump / "manager.webp", "WEBP")
    Image.new("RGB", (8, 8)).save(dump / "upper.JPEG", "JPEG")

    report = registry.ingest(dump)
    assert not report.problems
    assert report.counts["other_files"] == 1  # only a1111.png, which lost to a1111.preview.png
    got = {name: e.preview_path for name, e in _entries(registry).items()}
    assert got == {
        "a1111.safetensors": str(dump / "a1111.preview.png"),
        "plain.safetensors": str(dump / "plain.png"),
        "manager.safetensors": str(dump / "manager.webp"),
        "upper.safetensors": str(dump / "upper.JPEG"),
        "none.safetensors": None,
    }
    assert registry.find("plain").to_dict()["preview_path"] == str(dump / "plain.png")
    hit = next(h for h in registry.search("plain", k=3) if h.entry.name == "Model plain")
    assert hit.to_dict()["preview_path"] == str(dump / "plain.png")


def test_preview_added_and_removed_later_is_followed(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    adapter = kohya_lora(dump / "late.safetensors", seed=1)
    civitai_sidecar(adapter, model_id=1, version_id=2, name="Late", trained_words=["late"])
    registry.ingest(dump)
    assert registry.find("late").preview_path is None

    time.sleep(0.01)
    preview = _png(dump / "late.preview.png")
    registry.ingest(dump)
    assert registry.find("late").preview_path == str(preview)

    old = time.time() - 3600  # a removed preview whose mtime was older than the file's changes no mtime
    os.utime(preview, (old, old))
    registry.ingest(dump)
    preview.unlink()
    report = registry.ingest(dump)
    assert registry.find("late").preview_path is None
    assert report.counts["unchanged"] == 1


def test_symlinked_preview_out_of_the_dump_is_refused(registry: Registry, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    secret = _png(tmp_path / "secret.png")
    adapter = kohya_lora(dump / "linked.safetensors", seed=3)
    civitai_sidecar(adapter, model_id=5, version_id=6, name="Linked", trained_words=["linked"])
    (dump / "linked.preview.png").symlink_to(secret)
    report = registry.ingest(dump)
    assert registry.find("linked").preview_path is None
    assert any(p.path.endswith("linked.preview.png") and "outside the dump" in p.reason for p in report.problems)
