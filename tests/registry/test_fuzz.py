"""Hostile and broken input, fuzzed with hypothesis (bounded: a few seconds per test).

Headers (random bytes, lying lengths, nesting bombs, wrong dtypes, shapes and offsets), sidecars with
the wrong type in any field, odd file names, pickles under any extension and symlinks out of the dump:
nothing crashes, each is reported by path and reason, nothing is unpickled, no good entry is lost.
benchmarks/fuzz_report.py runs the same checks as a bigger campaign.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import select

from loraregistry.api import Registry
from registry.models import LoraFile
from tests.registry import fuzzing
from tests.registry.ingest_worker import HASH_EMBED_MODEL, install_hash_embedder
from tests.registry.loras import kohya_lora

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INGEST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@given(data=fuzzing.random_files)
@FAST
def test_random_bytes_as_safetensors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        fuzzing.check_random_bytes(Path(d), data)


@given(length=fuzzing.header_lengths, body=fuzzing.random_files)
@FAST
def test_lying_header_lengths_allocate_nothing(length: int, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        fuzzing.check_header_length(Path(d), length, body)


@given(case=fuzzing.nesting)
@settings(max_examples=20, deadline=None)
def test_json_nesting_bombs(case: tuple[int, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        outcome = fuzzing.check_nesting_bomb(Path(d), *case)
        assert outcome == "refused" or case[0] < 2000  # deep enough to exhaust the parser: refused


@given(header=fuzzing.headers, data_len=fuzzing.st.integers(0, 80))
@FAST
def test_wrong_dtypes_shapes_and_offsets(header: dict, data_len: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fuzzing.check_structured_header(Path(d), header, data_len)


@given(doc=fuzzing.mutated_sidecars())
@settings(max_examples=300, deadline=None)
def test_sidecars_with_wrong_types_in_any_field(doc: object) -> None:
    fuzzing.check_sidecar(doc)


def check_ingest(reg: Registry, root: Path, n: int, kind: str, value) -> str:
    """One good adapter and one hostile item in a fresh dump: the ingest finishes, the good one
    lands, the hostile one is stored or reported by path with a reason, and nothing is unpickled."""
    dump, outside, marker = root / f"case{n}" / "dump", root / f"case{n}" / "outside", root / f"case{n}" / "unpickled"
    dump.mkdir(parents=True)
    outside.mkdir()
    good = kohya_lora(dump / "good.safetensors", seed=n, rank=2)
    expected = fuzzing.plant(dump, outside, marker, kind, value, good)
    report = reg.ingest(dump)
    assert not marker.exists(), "a pickle was unpickled"
    with reg.session() as s:
        present = set(s.scalars(select(LoraFile.path).where(LoraFile.status == "present")))
    assert str(good) in present, f"good entry lost: {report.to_dict()}"
    reported = {p.path: p for p in report.problems + report.warnings}
    outcomes = []
    for path in expected:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        assert path in present or (shown in reported and reported[shown].reason), (kind, path, report.to_dict())
        outcomes.append("stored" if path in present else f"reported {reported[shown].kind}")
    return ", ".join(outcomes)


@pytest.fixture
def fuzz_registry(db_url: str, tmp_path: Path):
    install_hash_embedder()
    reg = Registry.open(db_url, embed_model=HASH_EMBED_MODEL, index_dir=tmp_path / "index")
    yield reg
    reg.close()


def test_hostile_dumps_never_stop_the_ingest(fuzz_registry: Registry, tmp_path: Path) -> None:
    counter = itertools.count()

    @given(case=fuzzing.hostile_dump_cases())
    @INGEST
    def run(case) -> None:
        check_ingest(fuzz_registry, tmp_path, next(counter), *case)

    run()


@pytest.mark.parametrize("ext", fuzzing.PICKLE_EXTS)
def test_a_pickle_is_never_unpickled_whatever_its_extension(fuzz_registry: Registry, tmp_path: Path, ext: str) -> None:
    check_ingest(fuzz_registry, tmp_path, 0, "pickle", (ext, 4))
