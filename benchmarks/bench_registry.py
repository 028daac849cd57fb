"""Registry benchmark: ingest throughput, unchanged re-ingest, search latency, multi-subject recall.

Each phase runs in its own process so that its peak memory (ru_maxrss) is its own. Results are
printed as a table and written to benchmarks/results/registry.md (and .json beside it).

    python benchmarks/bench_registry.py [--files 2000] [--queries 1000] [--recall-prompts 200]

This machine is shared and noisy: compare numbers from one run, and read the load average printed
with them.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CATALOG = Path(os.environ.get("LORAREGISTRY_SHARED", ROOT.parent / "shared")) / "fixtures/civitai/civitai_lora_models_2023-07.jsonl.gz"
BOILERPLATE = ["masterpiece, best quality", "RAW photo, 8k uhd, dslr", "best quality, ultra detailed", "highres"]
GENERIC = ["1girl", "solo", "outdoors", "smile", "looking at viewer", "city street", "night", "upper body"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_catalog(work: Path) -> dict:
    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{work / 'catalog.db'}")
    reg.embedder()  # model load is not ingest work
    t = time.perf_counter()
    report = reg.ingest(CATALOG)
    dt = time.perf_counter() - t
    return {"records": report.counts["records"], "seconds": dt, "per_s": report.counts["records"] / dt, "peak_mb": peak_mb()}


def make_dump(root: Path, n: int) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    block = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2"
    for i in range(n):
        sub = root / f"d{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        path = sub / f"gen_{i:05d}.safetensors"
        tensors = {
            f"{block}_to_k.lora_down.weight": rng.standard_normal((2, 768), dtype=np.float32).astype(np.float16),
            f"{block}_to_k.lora_up.weight": rng.standard_normal((320, 2), dtype=np.float32).astype(np.float16),
            f"{block}_to_k.alpha": np.array(2.0, dtype=np.float16),
        }
        save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
        import hashlib

        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        record = {
            "id": 500000 + i, "name": f"Generated subject {i}", "type": "LORA", "description": f"<p>Subject number {i}</p>",
            "tags": ["character"], "creator": {"username": "bench"},
            "modelVersions": [{"id": 600000 + i, "name": "v1", "baseModel": "SD 1.5", "trainedWords": [f"gensub{i}"],
                               "files": [{"id": 700000 + i, "name": path.name, "type": "Model", "primary": True,
                                          "sizeKB": path.stat().st_size / 1024, "hashes": {"SHA256": sha.upper()}}]}],
        }  # fmt: skip
        path.with_suffix(".civitai.json").write_text(json.dumps(record))


def phase_dump(work: Path, n: int) -> dict:
    from loraregistry.api import Registry

    dump = work / "dump"
    if not dump.exists():
        make_dump(dump, n)
    reg = Registry.open(f"sqlite:///{work / 'dump.db'}")
    reg.embedder()
    t = time.perf_counter()
    first = reg.ingest(dump)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    again = reg.ingest(dump)
    t2 = time.perf_counter() - t
    assert again.counts["unchanged"] == n, again.counts
    return {"files": first.counts["added"], "ingest_s": t1, "ingest_per_s": n / t1, "reingest_s": t2,
            "reingest_per_s": n / t2, "problems": len(first.problems), "peak_mb": peak_mb()}  # fmt: skip


def _catalog_models() -> list[dict]:
    with gzip.open(CATALOG, "rt") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def recall_prompts(n: int, seed: int = 0) -> list[tuple[str, str, list[tuple[int, set[str]]]]]:
    """Multi-subject prompts: (style, prompt, [(civitai id, accepted keys)]) for 2-3 subjects each."""
    from registry.civitai import split_trigger_words
    from registry.service import clean_name
    from registry.text import normalize_word

    rng = random.Random(seed)
    models = _catalog_models()
    with_triggers = [m for m in models if any(split_trigger_words(v.get("trainedWords")) for v in m.get("modelVersions") or [])]
    named = [m for m in models if len(clean_name(m["name"])) >= 4]
    prompts = []
    for i in range(n):
        style = "trigger" if i % 2 == 0 else "name"
        pool = with_triggers if style == "trigger" else named
        subjects, parts = [], [rng.choice(BOILERPLATE)]
        for m in rng.sample(pool, rng.choice([2, 3])):
            if style == "trigger":
                word = split_trigger_words((m["modelVersions"][0] or {}).get("trainedWords")) or split_trigger_words(
                    next(v.get("trainedWords") for v in m["modelVersions"] if split_trigger_words(v.get("trainedWords")))
                )
                parts.append(word[0])
                subjects.append((m["id"], {"trigger:" + normalize_word(word[0])}))
            else:
                parts.append(clean_name(m["name"]))
                subjects.append((m["id"], {"name:" + clean_name(m["name"])}))
        parts += rng.sample(GENERIC, 2)
        rng.shuffle(parts)
        prompts.append((style, ", ".join(parts), subjects))
    return prompts


def _found(hit_entry, subject: tuple[int, set[str]]) -> bool:
    """A hit counts for a subject when it is that model, or carries the very same trigger or name."""
    from registry.service import clean_name
    from registry.text import normalize_word

    civitai_id, keys = subject
    if hit_entry.civitai_model_id == civitai_id:
        return True
    own = {"trigger:" + normalize_word(w) for w in hit_entry.trigger_words} | {"name:" + clean_name(hit_entry.name)}
    return bool(own & keys)


def phase_search(work: Path, queries: int, recall_n: int) -> dict:
    import numpy as np

    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{work / 'catalog.db'}")
    searcher = reg.searcher()
    prompts = recall_prompts(recall_n)
    # recall@10: hybrid phrase search vs one embedding of the whole prompt
    found = {"hybrid": 0, "whole-prompt": 0}
    by_style: dict[str, list[int]] = {}
    total = 0
    with reg.session() as session:
        from registry.models import Version
        from registry.service import entry_of, version_query

        for style, prompt, subjects in prompts:
            hits = [h.entry for h in reg.search(prompt, k=10)]
            vec = searcher.embedder.encode([prompt])
            _, ids = searcher.index.search(vec, 10)
            vids = [searcher._pick_version(int(mid), None, False) for mid in ids[0] if mid >= 0]
            base_entries = [entry_of(v) for v in session.scalars(version_query().where(Version.id.in_([v for v in vids if v])))]
            for subject in subjects:
                total += 1
                h = any(_found(e, subject) for e in hits)
                b = any(_found(e, subject) for e in base_entries)
                found["hybrid"] += h
                found["whole-prompt"] += b
                by_style.setdefault(style, [0, 0, 0])
                by_style[style][0] += h
                by_style[style][1] += b
                by_style[style][2] += 1
    # latency over `queries` prompts, each search including its query embedding
    lat_prompts = [p for _, p, _ in recall_prompts(queries, seed=1)]
    searcher.embedder._query_cache.clear()
    cold = []
    for p in lat_prompts:
        t = time.perf_counter()
        reg.search(p, k=10)
        cold.append((time.perf_counter() - t) * 1000)
    warm = []
    for p in lat_prompts:
        t = time.perf_counter()
        reg.search(p, k=10)
        warm.append((time.perf_counter() - t) * 1000)
    return {
        "recall_hybrid": found["hybrid"] / total,
        "recall_whole_prompt": found["whole-prompt"] / total,
        "recall_by_style": {s: {"hybrid": v[0] / v[2], "whole_prompt": v[1] / v[2], "subjects": v[2]} for s, v in by_style.items()},
        "subjects": total,
        "prompts": len(prompts),
        "search_ms_p50": float(np.percentile(cold, 50)),
        "search_ms_p99": float(np.percentile(cold, 99)),
        "search_ms_p50_cached_phrases": float(np.percentile(warm, 50)),
        "search_ms_p99_cached_phrases": float(np.percentile(warm, 99)),
        "queries": len(lat_prompts),
        "peak_mb": peak_mb(),
    }


def run_phase(name: str, work: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(work), "--files", str(args.files),
           "--queries", str(args.queries), "--recall-prompts", str(args.recall_prompts)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase")
    ap.add_argument("--work")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--recall-prompts", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/registry.md"))
    args = ap.parse_args()
    if args.phase:
        work = Path(args.work)
        result = {"catalog": lambda: phase_catalog(work), "dump": lambda: phase_dump(work, args.files),
                  "search": lambda: phase_search(work, args.queries, args.recall_prompts)}[args.phase]()  # fmt: skip
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    try:
        load = os.getloadavg()
        catalog = run_phase("catalog", work, args)
        dump = run_phase("dump", work, args)
        search = run_phase("search", work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        ("catalog ingest (7,951 records)", f"{catalog['per_s']:.0f} records/s", ">= 100 records/s", f"{catalog['seconds']:.1f} s, peak {catalog['peak_mb']:.0f} MB"),
        (f"dump ingest ({dump['files']} files + sidecars)", f"{dump['ingest_per_s']:.0f} files/s", "", f"{dump['ingest_s']:.1f} s, peak {dump['peak_mb']:.0f} MB"),
        ("unchanged re-ingest", f"{dump['reingest_per_s']:.0f} files/s", ">= 2,000 files/s", f"{dump['reingest_s']:.2f} s"),
        (f"search p50 / p99 ({search['queries']} queries, new phrases)", f"{search['search_ms_p50']:.1f} / {search['search_ms_p99']:.1f} ms", "p50 < 15 ms", "incl. query embedding"),
        ("search p50 / p99 (phrases seen before)", f"{search['search_ms_p50_cached_phrases']:.1f} / {search['search_ms_p99_cached_phrases']:.1f} ms", "", f"peak {search['peak_mb']:.0f} MB"),
        (f"recall@10, {search['subjects']} subjects in {search['prompts']} multi-subject prompts: hybrid", f"{search['recall_hybrid']:.1%}", "", ""),
        ("recall@10, same prompts: one embedding of the whole prompt", f"{search['recall_whole_prompt']:.1%}", "", "baseline"),
    ]
    for style, v in search["recall_by_style"].items():
        rows.append((f"recall@10 by {style}: hybrid / whole prompt", f"{v['hybrid']:.1%} / {v['whole_prompt']:.1%}", "", f"{v['subjects']} subjects"))
    header = "| measure | result | target | notes |\n|---|---|---|---|\n"
    table = header + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    text = (
        f"# Registry benchmark\n\n{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, "
        f"load average at start {load[0]:.1f}, python {sys.version.split()[0]}\n\n{table}\n"
    )
    print(text)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"catalog": catalog, "dump": dump, "search": search, "load": load}, indent=2))


if __name__ == "__main__":
    main()
