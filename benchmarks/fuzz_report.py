"""A bigger fuzz campaign than the test suite's, with the numbers: cases per kind, failures, entries lost.

    python benchmarks/fuzz_report.py [--examples 2000] [--ingest-examples 150] [--out benchmarks/results/fuzz.md]

Runs the checks of tests/registry/fuzzing.py (the same ones tests/registry/test_fuzz.py runs with a
few examples) on parsers directly, then whole ingests of hostile dumps on SQLite and, when a server
can be had ($LORAREGISTRY_TEST_PG, or a throwaway one from PostgreSQL's binaries), on PostgreSQL.
A failure is any exception other than the domain error, or a broken invariant; an entry lost is a
good adapter, beside a hostile item, that did not land.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.registry import fuzzing, pgserver


class Tally:
    def __init__(self) -> None:
        self.cases: Counter = Counter()
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.failures: Counter = Counter()
        self.lost: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.seconds: Counter = Counter()

    def run(self, kind: str, fn, *args) -> None:
        self.cases[kind] += 1
        start = time.perf_counter()
        try:
            self.outcomes[kind][fn(*args)] += 1
        except AssertionError as exc:
            lost = "good entry lost" in str(exc)
            (self.lost if lost else self.failures)[kind] += 1
            self.examples.setdefault(kind, f"{exc}"[:300])
        except Exception:
            self.failures[kind] += 1
            self.examples.setdefault(kind, traceback.format_exc(limit=3)[-400:])
        self.seconds[kind] += time.perf_counter() - start


def parser_campaign(tally: Tally, n: int) -> None:
    opts = settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        given(fuzzing.random_files)(opts(lambda data: tally.run("header: random bytes", fuzzing.check_random_bytes, d, data)))()
        given(fuzzing.header_lengths, fuzzing.random_files)(opts(lambda length, body: tally.run("header: lying length", fuzzing.check_header_length, d, length, body)))()
        given(fuzzing.nesting)(settings(opts, max_examples=max(20, n // 20))(lambda case: tally.run("header: JSON nesting bomb", fuzzing.check_nesting_bomb, d, *case)))()
        given(fuzzing.headers, st.integers(0, 80))(opts(lambda h, k: tally.run("header: dtypes/shapes/offsets", fuzzing.check_structured_header, d, h, k)))()
    given(fuzzing.mutated_sidecars())(opts(lambda doc: tally.run("sidecar: wrong type in a field", fuzzing.check_sidecar, doc)))()


def ingest_campaign(tally: Tally, url: str, backend: str, n: int) -> None:
    from loraregistry.api import Registry
    from tests.registry.ingest_worker import HASH_EMBED_MODEL, install_hash_embedder
    from tests.registry.test_fuzz import check_ingest

    install_hash_embedder()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        reg = Registry.open(url, embed_model=HASH_EMBED_MODEL, index_dir=root / "index")
        counter = itertools.count()
        opts = settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))

        @given(fuzzing.hostile_dump_cases())
        @opts
        def run(case) -> None:
            kind, value = case
            tally.run(f"ingest ({backend}): {kind}", check_ingest, reg, root, next(counter), kind, value)

        run()
        reg.close()


def postgres_url() -> tuple[str | None, str | None, str]:
    url = os.environ.get("LORAREGISTRY_TEST_PG")
    if url:
        return url, None, "$LORAREGISTRY_TEST_PG"
    if not pgserver.find_bin("initdb"):
        return None, None, "no PostgreSQL server (initdb not installed, $LORAREGISTRY_TEST_PG unset)"
    directory = tempfile.mkdtemp(prefix="loraregistry-fuzz-pg-")
    return pgserver.start(directory), directory, "a throwaway server (tests/registry/pgserver.py)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per parser kind")
    parser.add_argument("--ingest-examples", type=int, default=150, help="hostile dumps ingested per backend")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fuzz.md"))
    args = parser.parse_args()

    tally = Tally()
    start = time.perf_counter()
    parser_campaign(tally, args.examples)
    with tempfile.TemporaryDirectory() as d:
        ingest_campaign(tally, f"sqlite:///{d}/fuzz.db", "SQLite", args.ingest_examples)
    url, own_dir, pg_note = postgres_url()
    if url:
        server = pgserver.Server(url)
        db = server.new_database()
        try:
            ingest_campaign(tally, db, "PostgreSQL", args.ingest_examples)
        finally:
            server.drop_database(db)
            server.close()
            if own_dir:
                pgserver.stop(own_dir)
    elapsed = time.perf_counter() - start

    lines = [
        "# Fuzz campaign: hostile and broken input",
        "",
        f"`python benchmarks/fuzz_report.py --examples {args.examples} --ingest-examples {args.ingest_examples}` "
        f"on {platform.machine()} / Python {platform.python_version()}, {elapsed:.0f} s in all. PostgreSQL: {pg_note}.",
        "",
        "A failure is an exception other than the registry's own refusal (InvalidInput / NotARecord) or a",
        "broken invariant (tensors outside the data section or overlapping after a header was accepted, more",
        "than 16 MiB allocated for a lying header length, text that PostgreSQL cannot store, a hostile item",
        "neither stored nor reported by path, a pickle unpickled). An entry lost is the good adapter placed",
        "beside each hostile item not landing.",
        "",
        "| kind | cases | outcomes | failures | entries lost | s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for kind in tally.cases:
        outcomes = ", ".join(f"{k}: {v}" for k, v in tally.outcomes[kind].most_common())
        lines.append(f"| {kind} | {tally.cases[kind]} | {outcomes} | {tally.failures[kind]} | {tally.lost[kind]} | {tally.seconds[kind]:.1f} |")
    total_cases, total_fail, total_lost = sum(tally.cases.values()), sum(tally.failures.values()), sum(tally.lost.values())
    lines.append(f"| **total** | **{total_cases}** | | **{total_fail}** | **{total_lost}** | |")
    if tally.examples:
        lines += ["", "## First failure of each kind", ""]
        lines += [f"- {kind}: `{text.strip().replace(chr(10), ' ')}`" for kind, text in tally.examples.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if total_fail or total_lost else 0


if __name__ == "__main__":
    sys.exit(main())
