"""Retrieve + probe + compose on ToyWorld against composing the right LoRAs by hand: image quality
(SPEC detector), UNet samples and wall time, with and without re-using the probe's steps.

    .venv/bin/python benchmarks/bench_toyworld_auto.py [--seeds 2] [--threads 1]

For every two-skill task of SPEC (25 skill sets) and each seed, on the built-in ToyWorld pipeline
and a registry of its dump: `AutoComposer.compose(prompt)` with the CLI's defaults (K = 16
candidates, of which ToyWorld has 8; P = 3; k <= 4, threshold 0.5; retrieval weight 0.75), once
recomputing the first P steps and once replaying the probe's (``reuse_probe``), and
`Composer.run` with the task's two LoRAs given by hand. All three run from the same seed, one
image each, on one warm pipeline, in turn per task so that machine noise hits them alike. Writes
benchmarks/results/toyworld_auto.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ("auto", "auto, probe steps re-used", "hand-given")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "toyworld_auto.md")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from bench_toyworld_selection import toyworld_setup

    from composer import Job
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS, builtin_dump_dir
    from toyworld.detect import task_succeeds

    ac, tasks = toyworld_setup()
    dump = builtin_dump_dir()
    kw = dict(steps=BUILTIN_STEPS, cfg=BUILTIN_CFG)
    ac.compose(tasks[0].prompt, seed=0, **kw)  # warm-up: LoRA files read and cached, first-call costs paid
    rows = []
    t0 = time.time()
    for ti, task in enumerate(tasks):
        for seed in range(args.seeds):
            for run in RUNS:
                t = time.perf_counter()
                if run == "hand-given":
                    job = Job(task.prompt, loras=[str(dump / f"toyworld_{s}.safetensors") for s in task.skills],
                              method="loratorio", seed=seed, **kw)
                    r = ac.composer.run(job)
                    samples, kept = r.report["unet_samples"], sorted(task.skills)
                else:
                    r = ac.compose(task.prompt, seed=seed, reuse_probe=run != "auto", **kw)
                    samples = r.report["unet_samples_total"]
                    kept = sorted(next(iter(c.trigger_words)) for c in r.selection.survivors)
                seconds = time.perf_counter() - t
                img = np.asarray(r.image.convert("RGB"))
                rows.append({"run": run, "task": ti, "skills": list(task.skills), "seed": seed,
                             "success": bool(task_succeeds(img, task)), "kept": kept,
                             "right_loras": kept == sorted(task.skills), "unet_samples": samples, "seconds": seconds})
        print(f"{ti + 1}/{len(tasks)} tasks ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    def agg(run, key):
        return float(np.mean([r[key] for r in rows if r["run"] == run]))

    hand_s, hand_n = agg("hand-given", "seconds"), agg("hand-given", "unet_samples")
    lines = ["# Retrieve + probe + compose on ToyWorld", "",
             f"`python benchmarks/bench_toyworld_auto.py --seeds {args.seeds} --threads {args.threads}`: the 25 "
             f"two-skill tasks of SPEC x {args.seeds} seeds, {len(rows)} images in {(time.time() - t0) / 60:.1f} min "
             f"(torch {torch.__version__}, {args.threads} thread(s), shared 2-core CPU). DDIM {BUILTIN_STEPS} steps, "
             f"CFG {BUILTIN_CFG}; auto = the CLI's defaults. Success: the SPEC detector finds both skills and no "
             "unnamed object. Right LoRAs: the survivors are exactly the task's two.", "",
             "| run | task success | right LoRAs | UNet samples / image | vs hand-given | s / image | vs hand-given |",
             "|---|---|---|---|---|---|---|"]
    for run in RUNS:
        s, n = agg(run, "seconds"), agg(run, "unet_samples")
        lines.append(f"| {run} | {agg(run, 'success'):.0%} | {agg(run, 'right_loras'):.0%} | {n:.0f} | "
                     f"{n / hand_n:.2f}x | {s:.2f} | {s / hand_s:.2f}x |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
