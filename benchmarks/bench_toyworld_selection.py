"""How well retrieve + probe + prune picks a prompt's LoRAs on ToyWorld, and how P and the
retrieval weight were chosen.

    .venv/bin/python benchmarks/bench_toyworld_selection.py [--seeds 2] [--probe-steps 1,3,5]

The ToyWorld dump (8 LoRAs) is ingested into a fresh registry; for every two-skill task of SPEC
(25 skill sets) and each seed the AutoComposer retrieves all 8 candidates and probes them for P
steps. The candidates' retrieval and probe scores are kept, and the pruning is redone offline for
each retrieval weight (the probe does not depend on it): a run is right when the survivors are
exactly the task's two LoRAs. Two settings of the pruning: k = 2 (the user says how many), and
the CLI default (k = 4 with the relative threshold 0.5), where the survivors must still be exactly
the two. Writes benchmarks/results/toyworld_selection.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def toyworld_setup():
    """An AutoComposer on the built-in ToyWorld pipeline with a fresh registry of its dump, and
    the 25 two-skill tasks of SPEC (one seeded scene each)."""
    from composer.auto import AutoComposer
    from loraregistry.api import Registry
    from loraregistry.builtin import builtin_dump_dir, builtin_pipeline_dir
    from loraregistry.cli.compose import _quiet_libraries
    from toyworld.captions import task_for, task_skill_sets

    _quiet_libraries()
    reg = Registry.open(f"sqlite:///{tempfile.mkdtemp()}/toy.db")
    reg.ingest(str(builtin_dump_dir()))
    ac = AutoComposer.from_pretrained(str(builtin_pipeline_dir()), reg, device="cpu")
    return ac, [task_for(s, np.random.default_rng([7, i])) for i, s in enumerate(task_skill_sets(2))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--probe-steps", default="1,3,5")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    ap.add_argument("--out", type=Path, default=RESULTS / "toyworld_selection.md")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from composer.relevance import combine_scores, prune
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS

    ac, tasks = toyworld_setup()
    ps = [int(x) for x in args.probe_steps.split(",")]
    runs = []  # (P, wanted, names, retrieval scores, probe scores)
    t0 = time.time()
    for P in ps:
        for task in tasks:
            for seed in range(args.seeds):
                sel = ac.select(task.prompt, k=2, probe_steps=P, seed=seed, steps=BUILTIN_STEPS, cfg=BUILTIN_CFG)
                names = [next(iter(c.trigger_words)) for c in sel.candidates]
                runs.append((P, set(task.skills), names,
                             torch.tensor([c.retrieval_score for c in sel.candidates]),
                             torch.tensor([c.probe["score"] for c in sel.candidates])))
        print(f"P={P} done ({time.time() - t0:.0f}s)", flush=True)
    seconds = time.time() - t0

    def rate(P, w, k, threshold):
        hits = [r for r in runs if r[0] == P]
        ok = 0
        for _, wanted, names, ret, probe in hits:
            keep, _ = prune(combine_scores(probe, ret, w), k, threshold)
            ok += {names[i] for i in keep} == wanted
        return ok / len(hits)

    lines = ["# ToyWorld LoRA selection (retrieve + probe + prune)", "",
             f"`python benchmarks/bench_toyworld_selection.py --seeds {args.seeds}`: the 25 two-skill tasks of SPEC x "
             f"{args.seeds} seeds, 8 candidates each (the whole ToyWorld dump), {len(runs)} probes in {seconds:.0f} s. "
             "A run is right when the survivors are exactly the task's two LoRAs. Retrieval weight 0 = probe only, "
             "1 = retrieval only (combined score: weighted geometric mean of the relative scores).", "",
             "k = 2 (the number of skills is given):", "",
             "| P | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |", "|---|" + "---|" * len(WEIGHTS)]
    for P in ps:
        lines.append(f"| {P} | " + " | ".join(f"{rate(P, w, 2, 0.0):.0%}" for w in WEIGHTS) + " |")
    lines += ["", "CLI default pruning (k = 4, threshold 0.5 of the best combined score):", "",
              "| P | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |", "|---|" + "---|" * len(WEIGHTS)]
    for P in ps:
        lines.append(f"| {P} | " + " | ".join(f"{rate(P, w, 4, 0.5):.0%}" for w in WEIGHTS) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
