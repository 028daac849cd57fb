"""UNet passes and wall time per image: all-K LoRAtorio vs retrieve + probe + compose vs hand-given
LoRAs; and retrieval latency at the 7,951-entry Civitai catalog and at 100k entries.

Per image (same prompt, seed, 20 steps, CFG 7.5), on the tiny SD1 pipeline of tests/composer
(random weights, 16x16 latents) with K = 16 random kohya LoRAs:

* all-K: LoRAtorio over all 16 candidates at every step (Composer.run, 2(K + 1) samples a step);
* probe + compose: AutoComposer.compose over the same 16 as a pool, P probe steps (K + 2 samples
  a step), then LoRAtorio with the k survivors, for k = 2, 3, 4;
* hand: LoRAtorio with the k LoRAs the probe kept, given by hand.

LoRAs are installed before timing (warm cache), so the rows compare denoising work; the cold
load of the 16 files is reported on its own. Retrieval adds the measured registry search latency.

Retrieval latency: the 7,951-record catalog ingested for real (``--catalog-db`` reuses one); 100k
entries are synthesised: the catalog's own embeddings plus Gaussian noise, renormalised, in the
registry's FAISS index (flat inner product) inside the real Searcher. SQL rows, trigger words and
names stay at 7,951, so the 100k figure measures the FAISS share of the growth.

    python benchmarks/bench_pipeline.py [--out benchmarks/results/pipeline.md] [--catalog-db /tmp/cat.db]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "composer"))  # composer_tiny: the tiny pipeline and LoRA writers
CATALOG = ROOT.parent / "shared" / "fixtures" / "civitai" / "civitai_lora_models_2023-07.jsonl.gz"
PROMPT = "a kiki on the left, checkerboard background"
RETRIEVAL_PROMPTS = [
    "a kiki on the left, checkerboard background",
    "masterpiece, best quality, 1girl, nezuko, castle background",
    "a knight in armor, cyberpunk city at night, neon lights",
    "watercolor style, a cat with a hat, forest",
    "pixel art, a dragon, mountains, sunset",
]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def per_image(work: Path, steps: int, probe_steps: int, reps: int) -> tuple[list[dict], dict]:
    from composer_tiny import save_tiny_sd1, write_kohya_lora
    from diffusers import UNet2DConditionModel

    from composer import Job, LoraRef
    from composer.auto import AutoComposer

    model = save_tiny_sd1(work / "sd1")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    pool = [write_kohya_lora(work / f"lora{i:02d}.safetensors", unet, None, seed=100 + i, convs=False,
                             scale=0.3 if i % 4 == 0 else 0.05) for i in range(16)]
    ac = AutoComposer.from_pretrained(model, None, device="cpu")
    size = dict(width=32, height=32)
    _, cold = timed(lambda: ac.composer.loader.load_all([LoraRef(p) for p in pool]))
    rows, extra = [], {"cold_load_16_s": cold, "reads_after_cold": ac.reads}

    def med(fn):
        results, times = [], []
        for _ in range(reps):
            r, t = timed(fn)
            results.append(r)
            times.append(t)
        return results[-1], statistics.median(times)

    r_all, t_all = med(lambda: ac.composer.run(Job(PROMPT, loras=pool, steps=steps, seed=1, **size)))
    rows.append(dict(run="LoRAtorio, all K=16 every step", calls=r_all.report["unet_calls"],
                     samples=r_all.report["unet_samples"], seconds=t_all))
    for k in (2, 3, 4):
        r, t = med(lambda: ac.compose(PROMPT, pool=pool, k=k, threshold=0.0, probe_steps=probe_steps, steps=steps, seed=1, **size))
        kept = [c.path for c in r.selection.survivors]
        r_hand, t_hand = med(lambda: ac.composer.run(Job(PROMPT, loras=kept, steps=steps, seed=1, **size)))
        rows.append(dict(run=f"probe ({probe_steps} steps) + compose, K=16 -> k={k}", calls=r.report["unet_calls_total"],
                         samples=r.report["unet_samples_total"], seconds=t, hand=t_hand, all_k=r_all.report["unet_samples"],
                         hand_samples=r_hand.report["unet_samples"], probe_s=r.selection.timings["probe"]))
        r_re, t_re = med(lambda: ac.compose(PROMPT, pool=pool, k=k, threshold=0.0, probe_steps=probe_steps, steps=steps,
                                            seed=1, reuse_probe=True, **size))
        rows.append(dict(run=f"probe ({probe_steps} steps, re-used) + compose, K=16 -> k={k}",
                         calls=r_re.report["unet_calls_total"], samples=r_re.report["unet_samples_total"], seconds=t_re,
                         hand=t_hand))
        rows.append(dict(run=f"hand-given k={k} (the probe's survivors)", calls=r_hand.report["unet_calls"],
                         samples=r_hand.report["unet_samples"], seconds=t_hand))
    extra["reads_after_all"] = ac.reads
    return rows, extra


def retrieval(catalog_db: str | None, work: Path, reps: int) -> dict:
    import faiss
    import numpy as np

    from loraregistry.api import Registry

    db = catalog_db or f"sqlite:///{work / 'catalog.db'}"
    if "://" not in db:
        db = f"sqlite:///{db}"
    reg = Registry.open(db)
    out = {}
    if reg.stats()["versions"] == 0:
        _, out["ingest_s"] = timed(lambda: reg.ingest(str(CATALOG)))
    reg.search("warm up", k=16)

    def latency() -> tuple[float, float]:
        ts = []
        for _ in range(reps):
            for p in RETRIEVAL_PROMPTS:
                _, t = timed(lambda: reg.search(p, k=16, base="sd1", present_only=False))
                ts.append(t)
        return statistics.median(ts) * 1e3, max(ts) * 1e3

    searcher = reg.searcher()
    n = searcher.index.ntotal
    out["n"] = n
    out["median_ms"], out["max_ms"] = latency()
    # 100k: the catalog's vectors plus noisy copies, new ids above the real ones.
    base = np.vstack([searcher.index.reconstruct(int(i)) for i in faiss.vector_to_array(searcher.index.id_map)])
    ids = faiss.vector_to_array(searcher.index.id_map)
    rng = np.random.default_rng(0)
    reps_needed = 100_000 // len(base) + 1
    extra = np.vstack([base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(reps_needed)])[: 100_000 - len(base)]
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    big = faiss.IndexIDMap2(faiss.IndexFlatIP(base.shape[1]))
    big.add_with_ids(base, ids)
    big.add_with_ids(extra.astype(np.float32), np.arange(len(extra), dtype=np.int64) + int(ids.max()) + 1)
    searcher.index = big
    out["n_big"] = big.ntotal
    out["median_ms_big"], out["max_ms_big"] = latency()
    reg.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline.md"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--probe-steps", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--catalog-db", default=None, help="a registry that already holds the 7,951-record catalog")
    ap.add_argument("--no-retrieval", action="store_true",
                    help="skip the retrieval latency runs (the catalog ingest takes minutes) and keep that section of --out as it is")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows, extra = per_image(work, args.steps, args.probe_steps, args.reps)
        ret = None if args.no_retrieval else retrieval(args.catalog_db, work, 3)
    lines = [
        "# retrieve + probe + compose benchmark", "",
        f"device=cpu, threads=1, torch {torch.__version__}, {platform.machine()}, median of {args.reps}; "
        f"tiny SD1 pipeline (random weights, 32x32 px, 16x16 latents), {args.steps} steps, CFG 7.5, K=16 random kohya LoRAs.", "",
        "| run | UNet calls | UNet samples | wall s / image | samples vs all-K | wall vs hand-given |",
        "|---|---|---|---|---|---|",
    ]
    all_k = rows[0]
    for r in rows:
        vs_all = f"{r['samples'] / all_k['samples']:.0%}"
        vs_hand = f"{r['seconds'] / r['hand']:.2f}x" if "hand" in r else ""
        lines.append(f"| {r['run']} | {r['calls']} | {r['samples']} | {r['seconds']:.2f} | {vs_all} | {vs_hand} |")
    lines += [
        "", f"Cold load of the 16 LoRA files (read, convert, install as PEFT adapters): {extra['cold_load_16_s']:.2f} s; "
        f"files read: {extra['reads_after_cold']} then, {extra['reads_after_all']} after every run above (the cache).", "",
    ]
    if ret is None:
        previous = Path(args.out).read_text() if Path(args.out).exists() else ""
        kept = previous[previous.index("## Retrieval latency"):] if "## Retrieval latency" in previous else ""
        kept = kept.split("\nVerdict")[0]  # a verdict written for the previous numbers does not carry over
        note = "(Retrieval section kept from the previous run: this one ran with --no-retrieval.)"
        kept = kept.replace(note, "").rstrip()  # once, however many runs kept it
        lines.append(kept + "\n\n" + note)
    else:
        lines += [
            "## Retrieval latency (registry.search, k=16, 5 prompts x 3)", "",
            "| catalog entries | median ms | max ms |", "|---|---|---|",
            f"| {ret['n']:,} (Civitai 2023-07 catalog, ingested) | {ret['median_ms']:.1f} | {ret['max_ms']:.1f} |",
            f"| {ret['n_big']:,} (synthesised vectors in the FAISS index; SQL side at {ret['n']:,}) | {ret['median_ms_big']:.1f} | {ret['max_ms_big']:.1f} |",
        ]
        if "ingest_s" in ret:
            lines.append(f"\nCatalog ingest for this run: {ret['ingest_s']:.0f} s.")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
