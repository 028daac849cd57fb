"""Walk a dump directory: adapter files with their sidecars, standalone records, and what to refuse.

Symbolic links are not followed out of the dump unless asked, and every directory is entered once
(by device and inode), so a symlink loop ends the walk instead of hanging it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ADAPTER_EXTS = (".safetensors",)
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
CATALOG_EXTS = (".jsonl", ".jsonl.gz")
RECORD_EXTS = (".json", ".info")
# Sidecars of <stem>.safetensors, strongest first (Civitai's own records before third-party ones).
SIDECAR_SUFFIXES = (".civitai.json", ".civitai.info", ".metadata.json", ".cm-info.json", ".json")
# Preview images of <stem>.safetensors, first found wins: A1111's and ComfyUI-Lora-Manager's names.
PREVIEW_SUFFIXES = (".preview.png", ".preview.jpeg", ".preview.jpg", ".preview.webp", ".png", ".jpeg", ".jpg", ".webp")


@dataclass
class AdapterCandidate:
    path: str
    sidecars: list[str] = field(default_factory=list)
    preview: str | None = None


@dataclass
class WalkResult:
    adapters: list[AdapterCandidate] = field(default_factory=list)
    pickles: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    catalogs: list[str] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason)
    other_files: int = 0


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _iter_files(root: str, follow_symlinks: bool, result: WalkResult) -> Iterator[str]:
    root_real = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError as exc:
            result.problems.append((directory, "failed", f"cannot enter directory: {exc.strerror}"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            result.problems.append((directory, "refused", "symlink loop: directory already visited"))
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            result.problems.append((directory, "failed", f"cannot list directory: {exc.strerror}"))
            continue
        for entry in entries:
            try:
                entry.path.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are no UTF-8: no database stores such a path
                shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                result.problems.append((shown, "failed", "file name is not valid UTF-8 (rename the file)"))
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target):
                        try:
                            os.stat(entry.path)
                            reason = "broken symlink"
                        except OSError as exc:
                            reason = "symlink loop" if exc.errno == 40 else f"broken symlink ({exc.strerror})"
                        result.problems.append((entry.path, "failed", reason))
                        continue
                    if not follow_symlinks and not _within(target, root_real):
                        result.problems.append(
                            (entry.path, "refused", f"symlink points outside the dump ({target}); use --follow-symlinks")
                        )
                        continue
                    if os.path.isdir(target):
                        if follow_symlinks:
                            stack.append(entry.path)
                        # inside the dump and not following: its target is walked anyway
                        continue
                    yield entry.path
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path
            except OSError as exc:
                result.problems.append((entry.path, "failed", f"cannot stat: {exc.strerror}"))


def sidecar_candidates(adapter_path: str) -> list[str]:
    stem = adapter_path[: -len(".safetensors")]
    return [stem + suffix for suffix in SIDECAR_SUFFIXES]


def preview_candidates(adapter_path: str) -> list[str]:
    stem = adapter_path[: -len(".safetensors")]
    return [stem + suffix for suffix in PREVIEW_SUFFIXES]


def walk_dump(root: str | os.PathLike[str], follow_symlinks: bool = False) -> WalkResult:
    root = os.path.abspath(os.fspath(root))
    result = WalkResult()
    files = list(_iter_files(root, follow_symlinks, result))
    present = set(files)
    by_lower = {p.lower(): p for p in files}  # previews are often named .PNG / .JPG
    claimed: set[str] = set()
    for path in files:
        if path.lower().endswith(ADAPTER_EXTS):
            sidecars = [s for s in sidecar_candidates(path) if s in present]
            # only paths the walk yielded: a symlink out of the dump was refused above, never a preview
            preview = next((by_lower[p.lower()] for p in preview_candidates(path) if p.lower() in by_lower), None)
            claimed.update(sidecars)
            if preview:
                claimed.add(preview)
            result.adapters.append(AdapterCandidate(path, sidecars, preview))
    for path in files:
        lower = path.lower()
        if lower.endswith(ADAPTER_EXTS) or path in claimed:
            continue
        if lower.endswith(PICKLE_EXTS):
            result.pickles.append(path)
        elif lower.endswith(CATALOG_EXTS):
            result.catalogs.append(path)
        elif lower.endswith(RECORD_EXTS):
            result.records.append(path)
        else:
            result.other_files += 1  # previews, notes, archives: not ours to judge
    return result


__all__ = ["walk_dump", "WalkResult", "AdapterCandidate", "Path"]


def count_items(root: str, follow_symlinks: bool = False) -> int:
    """How many items an ingest of the dump at ``root`` goes through (adapters, pickles, records)."""
    walked = walk_dump(root, follow_symlinks=follow_symlinks)
    return len(walked.adapters) + len(walked.pickles) + len(walked.records)
