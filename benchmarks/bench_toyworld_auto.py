"""Retrieve + probe + compose on ToyWorld against composing the right LoRAs by hand, in a registry
full of near-duplicates: does what the selection keeps give the image the prompt asks for?

    .venv/bin/python benchmarks/bench_toyworld_auto.py [--seeds 2] [--ns 2] [--no-distractors] [--threads 1]

A fresh registry holds the ToyWorld dump and, unless --no-distractors, the 24 distractors of
`toyworld.distractors` (weak and inert copies, mislabelled LoRAs, neighbours; the selection
benchmark's registry). For every skill set of SPEC with N skills (the selection benchmark's scenes)
and each seed: `AutoComposer.compose(prompt)` with the CLI's defaults, and `Composer.run` with the
task's skill LoRAs given by hand, both with the default method, from the same seed, one after the
other on one warm pipeline so that machine noise hits them alike. Success: the SPEC detector finds
every named skill and no unnamed object. Kept: exact (the task's skill LoRAs), right skills (each
named skill drawn by one kept LoRA: the skill LoRA or a weak copy of it), or wrong. Writes
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
RUNS = ("auto", "hand-given")


def kept_kind(kept: list[str], skills: list[str]) -> str:
    """``exact``, ``right skills`` (a weak copy drawing a named skill) or ``wrong``."""
    from bench_toyworld_selection import drawn_skills

    if sorted(kept) == sorted(f"toyworld_{s}" for s in skills):
        return "exact"
    return "right skills" if drawn_skills(set(kept)) == sorted(skills) and len(kept) == len(skills) else "wrong"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ns", default="2", help="how many skills per task (e.g. 1,2,3)")
    ap.add_argument("--no-distractors", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probe-start", type=float, default=None, help="the probe's start (SelectionParams.probe_start)")
    ap.add_argument("--out", type=Path, default=RESULTS / "toyworld_auto.md")
    ap.add_argument("--report-only", action="store_true", help="no new images: the report from --out's .json")
    ap.add_argument("--minutes", type=float, default=None, help="--report-only: the run's minutes, for the report")
    args = ap.parse_args()
    if args.report_only:
        from composer import methods

        rows = json.loads(args.out.with_suffix(".json").read_text())
        report = write_report(rows, args, 60 * (args.minutes or 0), methods.DEFAULT)
        print(report)
        args.out.write_text(report)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from bench_toyworld_selection import setup

    from composer import Job, methods
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS, builtin_dump_dir
    from toyworld.captions import task_for, task_skill_sets
    from toyworld.detect import task_succeeds

    ac, _ = setup(not args.no_distractors, None)
    dump = builtin_dump_dir()
    ns = [int(n) for n in args.ns.split(",")]
    # The selection benchmark's scenes (bench_toyworld_selection.probe_runs).
    tasks = [(n, task_for(skills, np.random.default_rng([7, n, i]))) for n in ns
             for i, skills in enumerate(task_skill_sets(n))]
    kw = dict(steps=BUILTIN_STEPS, cfg=BUILTIN_CFG)
    auto_kw = kw if args.probe_start is None else kw | {"probe_start": args.probe_start}
    ac.compose(tasks[0][1].prompt, seed=0, **auto_kw)  # warm-up: LoRA files read and cached, first-call costs paid
    rows = []
    t0 = time.time()
    for ti, (n, task) in enumerate(tasks):
        for seed in range(args.seeds):
            for run in RUNS:
                t = time.perf_counter()
                if run == "hand-given":
                    job = Job(task.prompt, loras=[str(dump / f"toyworld_{s}.safetensors") for s in task.skills],
                              seed=seed, **kw)
                    r = ac.composer.run(job)
                    samples, kept = r.report["unet_samples"], sorted(f"toyworld_{s}" for s in task.skills)
                else:
                    r = ac.compose(task.prompt, seed=seed, **auto_kw)
                    samples = r.report["unet_samples_total"]
                    kept = sorted(Path(c.path).stem for c in r.selection.survivors)
                seconds = time.perf_counter() - t
                img = np.asarray(r.image.convert("RGB"))
                rows.append({"run": run, "n": n, "task": ti, "skills": list(task.skills), "seed": seed,
                             "success": bool(task_succeeds(img, task)), "kept": kept,
                             "kept_kind": kept_kind(kept, list(task.skills)), "unet_samples": samples,
                             "seconds": seconds, "method": r.report.get("options", {}).get("chosen", r.report.get("method"))})
        print(f"{ti + 1}/{len(tasks)} tasks ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    report = write_report(rows, args, time.time() - t0, methods.DEFAULT)
    print(report)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(rows))


def write_report(rows: list[dict], args, seconds: float, method: str) -> str:
    from composer.params import SelectionParams
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS

    def mean(run: str, key: str, where=lambda r: True) -> float:
        vals = [r[key] for r in rows if r["run"] == run and where(r)]
        return float(np.mean(vals)) if vals else float("nan")

    sel = SelectionParams() if args.probe_start is None else SelectionParams(probe_start=args.probe_start)
    start = sel.probe_start_step(BUILTIN_STEPS)
    registry = "the dump alone" if args.no_distractors else "the dump and the 24 distractors"
    lines = ["# Retrieve + probe + compose on ToyWorld", "",
             f"`python benchmarks/bench_toyworld_auto.py --seeds {args.seeds} --ns {args.ns}"
             f"{' --no-distractors' if args.no_distractors else ''} --threads {args.threads}"
             f"{'' if args.probe_start is None else f' --probe-start {args.probe_start}'}`: registry = {registry}; "
             f"every skill set of SPEC with N = {args.ns} skills x {args.seeds} seeds, {len(rows)} images in "
             f"{seconds / 60:.1f} min (torch {torch.__version__}, {args.threads} thread(s), shared 2-core CPU). DDIM "
             f"{BUILTIN_STEPS} steps, CFG {BUILTIN_CFG}; both runs compose with the default method ({method}); auto = "
             "the CLI's selection defaults (the probe from step "
             f"{start}). Success: the SPEC detector finds every named skill and no unnamed object.",
             "", "| run | task success | kept exactly the skill LoRAs | kept the right skills | UNet samples / image | "
             "vs hand-given | s / image | vs hand-given |", "|---|---|---|---|---|---|---|---|"]
    for n_skills in sorted({r["n"] for r in rows}) + [None]:
        if n_skills is None and len({r["n"] for r in rows}) == 1:
            break
        where = (lambda r: True) if n_skills is None else (lambda r, k=n_skills: r["n"] == k)
        for run in RUNS:
            part = [r for r in rows if r["run"] == run and where(r)]
            s, n = mean(run, "seconds", where), mean(run, "unet_samples", where)
            hand_s, hand_n = mean("hand-given", "seconds", where), mean("hand-given", "unet_samples", where)
            exact = np.mean([r["kept_kind"] == "exact" for r in part])
            right = np.mean([r["kept_kind"] != "wrong" for r in part])
            label = f"{run}, N = {n_skills}" if n_skills is not None else f"{run}, all"
            lines.append(f"| {label} | {mean(run, 'success', where):.0%} | {exact:.0%} | {right:.0%} | {n:.0f} | "
                         f"{n / hand_n:.2f}x | {s:.2f} | {s / hand_s:.2f}x |")
    hand = {(r["task"], r["seed"]): r["success"] for r in rows if r["run"] == "hand-given"}
    lines += ["", "Auto's runs by what the selection kept, against the hand-given composition of the same tasks and seeds:",
              "", "| kept | runs | auto success | hand-given success |", "|---|---|---|---|"]
    for kind in ("exact", "right skills", "wrong"):
        sel = [r for r in rows if r["run"] == "auto" and r["kept_kind"] == kind]
        if sel:
            lines.append(f"| {kind} | {len(sel)} | {np.mean([r['success'] for r in sel]):.0%} | "
                         f"{np.mean([hand[(r['task'], r['seed'])] for r in sel]):.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
