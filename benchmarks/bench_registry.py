"""Registry benchmark: ingest throughput, unchanged re-ingest, search latency, multi-subject recall,
for each embedding path (torch, onnx, onnx-int8) in one run.

Each phase runs in its own process so that its peak memory (ru_maxrss) is its own. Results are
printed as a table and written to benchmarks/results/registry.md (and .json beside it).

    python benchmarks/bench_registry.py [--embedders torch,onnx,onnx-int8] [--files 2000]
        [--queries 1000] [--recall-prompts 200] [--big 100000] [--threads N]

Search latency at ``--big`` entries pads the catalog's FAISS index with synthetic vectors (real
ones plus noise, ids that no model has) and builds it as a registry of that size would be built
(indexer.faiss_index.build_index: HNSW from 50,000 vectors); SQL stays the catalog's. Latency is
measured for all paths in one process, prompt by prompt in rotating order, so that load from other
processes hits them alike.

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


def phase_catalog(work: Path, embedder: str) -> dict:
    from indexer.embed import free_cores
    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{work / f'catalog-{embedder}.db'}", embedder=embedder)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    emb = reg.embedder()  # model load (and, for ONNX, the one-time export) is not ingest work
    load_s = time.perf_counter() - t
    threads = free_cores()
    embedding = [0.0, 0]  # seconds and texts inside the embedder: the rest is SQL, parsing, the index
    encode = emb.encode

    def timed_encode(texts: list[str], *a, **kw):
        t0 = time.perf_counter()
        try:
            return encode(texts, *a, **kw)
        finally:
            embedding[0] += time.perf_counter() - t0
            embedding[1] += len(texts)

    emb.encode = timed_encode  # the ingest asks get_embedder, which hands back this very instance
    t = time.perf_counter()
    report = reg.ingest(CATALOG)
    dt = time.perf_counter() - t
    return {"records": report.counts["records"], "seconds": dt, "per_s": report.counts["records"] / dt,
            "embed_s": embedding[0], "embedded_texts": embedding[1],
            "peak_mb": peak_mb(), "first_load_s": load_s, "threads": threads, "runtime": emb.runtime,
            "load_at_start": load}  # fmt: skip


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


def phase_dump(work: Path, n: int, embedder: str) -> dict:
    from loraregistry.api import Registry

    dump = work / "dump"
    if not dump.exists():
        make_dump(dump, n)
    reg = Registry.open(f"sqlite:///{work / 'dump.db'}", embedder=embedder)
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


def _vectors(db: Path) -> dict[int, "object"]:
    import sqlite3

    import numpy as np

    with sqlite3.connect(db) as con:
        return {mid: np.frombuffer(blob, dtype="<f4") for mid, blob in con.execute("SELECT model_id, vector FROM embeddings")}


def _interleaved_latency(regs: dict, prompts: list[str]) -> dict[str, dict[str, list[float]]]:
    """Per-search ms for every path, prompt by prompt in rotating order, so that a burst of load
    from another process hits all paths alike. "new": the first pass, query caches emptied (a
    phrase embedded by an earlier prompt is cached, as in use); "cached": the same prompts again."""
    for reg in regs.values():
        reg.searcher().embedder._query_cache.clear()
    names = list(regs)
    out: dict[str, dict[str, list[float]]] = {e: {"new": [], "cached": []} for e in names}
    for run in ("new", "cached"):
        for i, prompt in enumerate(prompts):
            for e in names[i % len(names) :] + names[: i % len(names)]:
                t = time.perf_counter()
                regs[e].search(prompt, k=10)
                out[e][run].append((time.perf_counter() - t) * 1000)
    return out


def _pad_index(searcher, size: int):
    """The searcher's index padded to ``size`` vectors: catalog vectors plus noisy copies under ids
    that no model has (search skips them), built as a registry of that size builds its index."""
    import faiss
    import numpy as np

    from indexer.faiss_index import build_index

    ids = faiss.vector_to_array(searcher.index.id_map)
    real = np.vstack([searcher.index.reconstruct(int(i)) for i in ids])
    rng = np.random.default_rng(0)
    n = len(ids)
    fake = real[rng.integers(0, n, size - n)] + rng.normal(0, 0.05, (size - n, real.shape[1])).astype(np.float32)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    all_ids = np.concatenate([ids, 10_000_000 + np.arange(size - n)])
    vectors = np.vstack([real, fake]).astype(np.float32)
    t = time.perf_counter()
    index = build_index(all_ids, vectors, real.shape[1])
    return index, time.perf_counter() - t, all_ids, vectors


def phase_latency(work: Path, embedders: list[str], queries: int, size: int) -> dict:
    """Search latency of every path in one process, interleaved, at the catalog's size and at ``size``."""
    import faiss
    import numpy as np

    from loraregistry.api import Registry

    regs = {e: Registry.open(f"sqlite:///{work / f'catalog-{e}.db'}", embedder=e) for e in embedders}
    prompts = [p for _, p, _ in recall_prompts(queries, seed=1)]
    stats = lambda ms: {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    result: dict = {"load_at_start": os.getloadavg()[0], "queries": len(prompts)}
    small = _interleaved_latency(regs, prompts)
    result["small"] = {e: {run: stats(ms) for run, ms in v.items()} for e, v in small.items()}
    result["small_entries"] = int(regs[embedders[0]].searcher().index.ntotal)
    if size:
        builds = {}
        for e, reg in regs.items():
            searcher = reg.searcher()
            searcher.index, builds[e], ids, vectors = _pad_index(searcher, size)
        result["load_big"] = os.getloadavg()[0]
        big = _interleaved_latency(regs, prompts)
        result["big"] = {e: {run: stats(ms) for run, ms in v.items()} for e, v in big.items()}
        result["big_build_s"] = builds
        result["big_entries"] = int(searcher.index.ntotal)
        result["big_index"] = type(faiss.downcast_index(searcher.index.index)).__name__
        # What the approximate index changes, against an exact scan of the same vectors (the last
        # path's): FAISS's top 10 per phrase, and the search's top 10 per prompt.
        exact = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        exact.add_with_ids(vectors, ids)
        q = searcher.embedder.encode_queries(list(searcher.embedder._query_cache)[:2000])
        _, truth = exact.search(q, 10)
        _, got = searcher.index.search(q, 10)
        result["big_phrase_top10_agreement"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
        approx_hits = [[h.entry.id for h in searcher.search(p, k=10)] for p in prompts[:300]]
        searcher.index = exact
        exact_hits = [[h.entry.id for h in searcher.search(p, k=10)] for p in prompts[:300]]
        result["big_search_top10_agreement"] = float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(approx_hits, exact_hits)]))
    result["peak_mb"] = peak_mb()
    return result


def phase_search(work: Path, embedder: str, queries: int, recall_n: int) -> dict:
    import numpy as np

    from indexer.search import Filters
    from loraregistry.api import Registry

    load = os.getloadavg()[0]
    reg = Registry.open(f"sqlite:///{work / f'catalog-{embedder}.db'}", embedder=embedder)
    searcher = reg.searcher()
    cosine = None
    if embedder != "torch" and (work / "catalog-torch.db").exists():  # this path's vectors vs torch's, every document
        mine, ref = _vectors(work / f"catalog-{embedder}.db"), _vectors(work / "catalog-torch.db")
        cos = np.array([float(np.dot(mine[k], ref[k])) for k in mine if k in ref])
        cosine = {"mean": float(cos.mean()), "min": float(cos.min()), "p01": float(np.percentile(cos, 1)),
                  "below_0.99": int((cos < 0.99).sum()), "documents": len(cos)}  # fmt: skip
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
            vids = [searcher._pick_version(int(mid), Filters()) for mid in ids[0] if mid >= 0]
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
    return {
        "cosine_vs_torch": cosine,
        "load_at_start": load,
        "entries": int(searcher.index.ntotal),
        "recall_hybrid": found["hybrid"] / total,
        "recall_whole_prompt": found["whole-prompt"] / total,
        "recall_by_style": {s: {"hybrid": v[0] / v[2], "whole_prompt": v[1] / v[2], "subjects": v[2]} for s, v in by_style.items()},
        "subjects": total,
        "prompts": len(prompts),
        "peak_mb": peak_mb(),
    }


def run_phase(name: str, work: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(work), "--files", str(args.files),
           "--queries", str(args.queries), "--recall-prompts", str(args.recall_prompts), "--big", str(args.big), "--embedders", args.embedders, "--catalog", args.catalog]  # fmt: skip
    # the ONNX export is cached in the data directory: a fresh one, so the first load shows its cost
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAREGISTRY_HOME": str(work / "home")}
    if args.threads:
        env["LORAREGISTRY_THREADS"] = str(args.threads)
    print(f"[{time.strftime('%H:%M:%S')}] {name} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:  # show why the phase failed, not only that it did
        sys.exit(f"phase {name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_processes() -> str:
    """What else held a CPU when the run started (the numbers mean little without it)."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "(ps unavailable)"
    rows = [line.strip() for line in out.splitlines()[1:] if line.strip() and float(line.split()[0]) >= 10.0]
    return "; ".join(f"{r.split(None, 1)[1][:90]} ({r.split()[0]}% CPU)" for r in rows[:5]) or "nothing over 10% CPU"


def _ratio(value: float, base: float, higher_better: bool = True) -> str:
    if not base or not value:
        return ""
    r = value / base if higher_better else base / value
    return f" ({r:.1f}x)"


def render(results: dict, args: argparse.Namespace) -> str:
    paths = [e for e in args.embedders.split(",") if f"catalog:{e}" in results]
    cat = {e: results[f"catalog:{e}"] for e in paths}
    srch = {e: results[f"search:{e}"] for e in paths}
    lat = results.get("latency")
    base = "torch" if "torch" in paths else paths[0]
    rows: list[tuple[str, list[str], str]] = []
    rows.append((f"catalog ingest ({cat[base]['records']:,} records), records/s", [f"{cat[e]['per_s']:.0f}{_ratio(cat[e]['per_s'], cat[base]['per_s'])}" for e in paths], ">= 150"))
    rows.append(("  ingest seconds (embedding threads)", [f"{cat[e]['seconds']:.1f} s ({cat[e]['threads']})" for e in paths], ""))
    if all("embed_s" in cat[e] for e in paths):
        rows.append(("  of which embedding (texts/s)", [f"{cat[e]['embed_s']:.1f} s ({cat[e]['embedded_texts'] / max(cat[e]['embed_s'], 1e-9):.0f}/s)" for e in paths], ""))
        rows.append(("  the rest: parsing, SQL, index build", [f"{cat[e]['seconds'] - cat[e]['embed_s']:.1f} s" for e in paths], ""))
    rows.append(("  first model load, incl. the one-time ONNX export", [f"{cat[e]['first_load_s']:.1f} s" for e in paths], ""))
    rows.append(("  ingest peak memory", [f"{cat[e]['peak_mb']:.0f} MB" for e in paths], ""))
    if lat:
        for size, goal in (("small", "p50 <= 10 ms"), ("big", "p50 <= 15 ms")):
            if size not in lat:
                continue
            what = f"{lat[size + '_entries']:,} entries" + (f" ({lat['big_index']})" if size == "big" else " (exact scan)")
            rows.append((f"search p50 / p99, new phrases, {what}",
                         [f"{lat[size][e]['new']['p50']:.1f} / {lat[size][e]['new']['p99']:.1f} ms{_ratio(lat[size][e]['new']['p50'], lat[size][base]['new']['p50'], False)}" for e in paths], goal))
            rows.append(("  same prompts again (phrases cached): p50", [f"{lat[size][e]['cached']['p50']:.1f} ms" for e in paths], ""))
        if "big" in lat:
            rows.append((f"  {lat['big_entries']:,}-entry index: build time / top 10 vs an exact scan (phrases, searches)",
                         [f"{lat['big_build_s'][e]:.0f} s" for e in paths[:-1]] + [f"{lat['big_build_s'][paths[-1]]:.0f} s / {lat['big_phrase_top10_agreement']:.1%}, {lat['big_search_top10_agreement']:.1%}"], ""))
    rows.append(("search peak memory (catalog, recall run)", [f"{srch[e]['peak_mb']:.0f} MB" for e in paths], ""))
    if lat:
        rows.append(("latency run's peak memory (every path, padded indexes, one process)", [f"{lat['peak_mb']:.0f} MB", *[""] * (len(paths) - 1)], ""))
    rows.append((f"recall@10, {srch[base]['subjects']} subjects in {srch[base]['prompts']} multi-subject prompts",
                 [f"{srch[e]['recall_hybrid']:.1%}" + (f" ({(srch[e]['recall_hybrid'] - srch[base]['recall_hybrid']) * 100:+.1f} pts)" if e != base else "") for e in paths],
                 "within 0.5 pts of torch"))
    for style in srch[base]["recall_by_style"]:
        rows.append((f"  recall@10 by {style}", [f"{srch[e]['recall_by_style'][style]['hybrid']:.1%}" for e in paths], ""))
    rows.append(("  one embedding of the whole prompt (baseline)", [f"{srch[e]['recall_whole_prompt']:.1%}" for e in paths], ""))
    rows.append(("document vectors vs torch's: cosine mean / min (below 0.99)",
                 [(f"{c['mean']:.5f} / {c['min']:.4f} ({c['below_0.99']})" if (c := srch[e].get("cosine_vs_torch")) else "reference") for e in paths], ">= 0.99"))
    rows.append(("runtime", [cat[e]["runtime"] for e in paths], ""))
    rows.append(("load average at ingest / search start", [f"{cat[e]['load_at_start']:.1f} / {srch[e]['load_at_start']:.1f}" for e in paths], ""))
    head = "| measure | " + " | ".join(paths) + " | goal |\n|---|" + "---|" * (len(paths) + 1) + "\n"
    table = head + "\n".join(f"| {a} | " + " | ".join(b) + f" | {c} |" for a, b, c in rows)
    dump = results.get("dump")
    if dump:
        table += (f"\n\nDump ({args.dump_embedder}): {dump['files']} files + sidecars ingested at {dump['ingest_per_s']:.0f} files/s "
                  f"({dump['ingest_s']:.1f} s, peak {dump['peak_mb']:.0f} MB); unchanged re-ingest {dump['reingest_per_s']:.0f} files/s "
                  f"({dump['reingest_s']:.2f} s, target >= 2,000 files/s).")  # fmt: skip
    return table


def main() -> None:
    global CATALOG
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase")
    ap.add_argument("--work")
    ap.add_argument("--embedders", default="torch,onnx,onnx-int8", help="paths to compare, in one run")
    ap.add_argument("--dump-embedder", default="onnx", help="the path the dump ingest runs with ('' skips it)")
    ap.add_argument("--catalog", default=str(CATALOG), help="the JSON Lines catalog to ingest (a smaller one for a smoke run)")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--recall-prompts", type=int, default=200)
    ap.add_argument("--big", type=int, default=100_000, help="entries for the large-index latency (0 skips it)")
    ap.add_argument("--threads", type=int, default=0, help="embedding threads for ingest (default: the free cores)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/registry.md"))
    ap.add_argument("--render", action="store_true", help="only redo the .md from the .json beside it")
    args = ap.parse_args()
    CATALOG = Path(args.catalog)
    if args.render:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        head = Path(args.out).read_text().split("\n\n| measure")[0] if Path(args.out).exists() else "# Registry benchmark"
        Path(args.out).write_text(f"{head}\n\n{render(saved, args)}\n")
        return
    if args.phase:
        work = Path(args.work)
        kind, _, emb = args.phase.partition(":")
        result = {"catalog": lambda: phase_catalog(work, emb), "dump": lambda: phase_dump(work, args.files, emb),
                  "search": lambda: phase_search(work, emb, args.queries, args.recall_prompts),
                  "latency": lambda: phase_latency(work, args.embedders.split(","), args.queries, args.big)}[kind]()  # fmt: skip
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M")
    load, busy = os.getloadavg(), busy_processes()
    results: dict = {}
    try:
        embedders = args.embedders.split(",")
        for e in embedders:
            results[f"catalog:{e}"] = run_phase(f"catalog:{e}", work, args)
        for e in embedders:
            results[f"search:{e}"] = run_phase(f"search:{e}", work, args)
        results["latency"] = run_phase("latency", work, args)
        if args.dump_embedder:
            results["dump"] = run_phase(f"dump:{args.dump_embedder}", work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end_load, end_busy = os.getloadavg(), busy_processes()
    Path(args.out).with_suffix(".json").write_text(json.dumps({**results, "load": load, "end_load": end_load, "busy": busy}, indent=2))
    text = (
        f"# Registry benchmark\n\n{started} UTC, {os.cpu_count()} cores, python {sys.version.split()[0]}; "
        f"load average {load[0]:.1f} at the start, {end_load[0]:.1f} at the end.\n"
        f"Also running at the start: {busy}.\nAt the end: {end_busy}.\n\n{render(results, args)}\n"
    )
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
