"""Does retrieve + probe + prune pick exactly the LoRAs a prompt asks for, in a registry full of
near-duplicates?

    .venv/bin/python benchmarks/bench_toyworld_selection.py [--seeds 2] [--first-seed 0] [--no-distractors]

A fresh registry holds the ToyWorld dump (one LoRA per skill) and, unless --no-distractors, the
24 distractors of `toyworld.distractors` (a weak and an inert copy of every skill, four mislabelled
LoRAs, four neighbours). For every skill set of SPEC with 1 to 4 skills and each seed, the
AutoComposer retrieves its K candidates and probes them (P steps, the CLI defaults); each
candidate's phrase, retrieval score and probe score are kept, and the pruning is redone offline for
every strategy, so all are judged on the same candidates and probes:

- scores: retrieval alone (w = 1), probe alone (w = 0), combined (the default w);
- pruning: global (the old CLI default: k = 4, relative threshold 0.5) or by phrase (each phrase
  keeps its best candidate; a phrase whose best is inert is left to the base).

A run is right when the survivors are exactly the task's skill LoRAs. Per kind of distractor: how
often one survived when it was a candidate. Writes benchmarks/results/toyworld_selection.md/.json.
"""
from __future__ import annotations

import argparse
import functools
import json
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
# name -> retrieval weight of combine_scores (None: SelectionParams' default); "agreement": the
# phrase-wise probe (strength x agreement^power within the phrase, eligibility by match, inert by
# strength) with SelectionParams' power; "agreement^1": the first rule, power 1; "unweighted": every
# peer's vote counts the same (the rule until 2026-12-07).
SCORES = {"retrieval": 1.0, "probe": 0.0, "combined": None, "agreement^1": "agreement^1",
          "agreement, unweighted": "unweighted", "agreement": "agreement"}
PRUNING = ("global", "phrase")


def setup(distractors: bool, dump: Path | None):
    from composer.auto import AutoComposer
    from loraregistry.api import Registry
    from loraregistry.builtin import builtin_dump_dir, builtin_pipeline_dir
    from loraregistry.cli.compose import _quiet_libraries
    from toyworld import distractors as dis

    _quiet_libraries()
    tmp = Path(tempfile.mkdtemp())
    reg = Registry.open(f"sqlite:///{tmp}/toy.db")
    dump = dump or builtin_dump_dir()
    reg.ingest(str(dump))
    kinds: dict[str, str] = {}
    if distractors:
        made = dis.write(Path(dump), tmp / "distractors")
        reg.ingest(str(tmp / "distractors"))
        kinds = {d.stem: d.kind for d in made}
    return AutoComposer.from_pretrained(str(builtin_pipeline_dir()), reg, device="cpu"), kinds


def survivors(run: dict, w: float | str, pruning: str, sel) -> set[str]:
    """The survivors of one recorded run under a score (a retrieval weight, or "agreement": the
    phrase-wise probe of composer.relevance.phrase_scores) and a pruning."""
    from composer.relevance import combine_scores, concept_of, eligible, phrase_scores, prune, prune_by_phrase

    keep_n = min(sel.MAX_KEEP, len(run["names"]))
    phrases = run["phrases"]
    if w in ("agreement", "agreement^1", "unweighted"):
        excluded = eligible(phrases, run["matches"], run["retrieval"], sel.min_semantic)
        phrases = [concept_of(p, m, tuple(t)) for p, m, t in zip(phrases, run["matches"], run["triggers"])]
        power = torch.tensor(run["strength"])
        active = [i not in excluded and float(power[i]) >= sel.inert for i in range(len(phrases))]
        scores = phrase_scores(power, torch.tensor(run["agreement"]), phrases, active,
                               1.0 if w == "agreement^1" else sel.agreement_power, weighted=w == "agreement")
        keep = prune_by_phrase(scores, phrases, 1, strength=power, inert=sel.inert, excluded=excluded)[0][:keep_n]
        return {run["names"][i] for i in keep}
    scores = combine_scores(torch.tensor(run["probe"]), torch.tensor(run["retrieval"]), w)
    if pruning == "phrase":
        keep = prune_by_phrase(scores, phrases, 1)[0][:keep_n]
    else:
        keep = prune(scores, keep_n, sel.threshold)[0]
    return {run["names"][i] for i in keep}


def probe_runs(args, sel) -> tuple[list[dict], dict[str, str], float]:
    """Retrieve and probe every task once; what each strategy prunes is decided offline from these."""
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS
    from toyworld.captions import task_for, task_skill_sets

    ac, kinds = setup(not args.no_distractors, args.dump)
    runs = []
    t0 = time.time()
    for n in (1, 2, 3, 4):
        for i, skills in enumerate(task_skill_sets(n)):
            task = task_for(skills, np.random.default_rng([7, n, i]))
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                # probe_all: the candidates retrieval rules out by phrase are probed too (the default
                # skips them; its survivors are the same), for the rules that would keep them.
                s = ac.select(task.prompt, seed=seed, steps=BUILTIN_STEPS, cfg=BUILTIN_CFG, probe_start=sel.probe_start,
                              probe_all=True)
                if s.probe is None:  # one loadable candidate: kept without a probe, whatever the strategy
                    scored = s.survivors
                    strength, agree = [1.0], [[1.0]]
                    probe = retrieval = [1.0]
                else:
                    scored = [c for c in s.candidates if c.probe is not None]
                    strength, agree = s.probe.strength.tolist(), s.probe.agreement.tolist()
                    probe, retrieval = [c.probe["score"] for c in scored], [c.retrieval_score for c in scored]
                runs.append({"n": n, "prompt": task.prompt, "seed": seed, "wanted": [f"toyworld_{k}" for k in skills],
                             "names": [Path(c.path).stem for c in scored], "phrases": [c.phrase for c in scored],
                             "retrieval": retrieval, "probe": probe, "strength": strength, "agreement": agree,
                             "matches": [c.match for c in scored], "triggers": [list(c.trigger_words) for c in scored],
                             "cli": sorted(Path(c.path).stem for c in s.survivors)})
        print(f"N={n} done ({time.time() - t0:.0f}s)", flush=True)
    return runs, kinds, time.time() - t0


@functools.cache
def _distractor_draws() -> dict[str, str | None]:
    from toyworld import distractors as dis

    return {d.stem: (None if d.kind == "inert" else d.source) for d in dis.plan()}


def drawn_skills(names: set[str]) -> list[str]:
    """What the LoRAs named draw, sorted ("nothing" for an inert one): a skill LoRA its skill, a
    distractor the skill whose weights it carries (toyworld.distractors.plan)."""
    draws = _distractor_draws()
    return sorted((n.removeprefix("toyworld_") if n.startswith("toyworld_") else draws.get(n)) or "nothing"
                  for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds FIRST.. (e.g. 2: seeds a rule was not chosen on)")
    ap.add_argument("--no-distractors", action="store_true")
    ap.add_argument("--dump", type=Path, default=None, help="the skill LoRAs (default: the built-in dump)")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    ap.add_argument("--probe-start", type=float, default=None, help="the probe's start (default: SelectionParams')")
    ap.add_argument("--out", type=Path, default=RESULTS / "toyworld_selection")
    ap.add_argument("--report-only", action="store_true", help="no probes: redo the report from the .json beside --out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from composer.params import SelectionParams
    from loraregistry.builtin import BUILTIN_STEPS

    sel = SelectionParams() if args.probe_start is None else SelectionParams(probe_start=args.probe_start)
    if args.report_only:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        runs, kinds, seconds = saved["runs"], saved["kinds"], saved.get("seconds", float("nan"))
    else:
        runs, kinds, seconds = probe_runs(args, sel)
    combos = [(name, pruning) for name in SCORES for pruning in PRUNING
              if not (name.startswith("agreement") and pruning == "global")]
    table = {}
    for name, pruning in combos:
        w = sel.retrieval_weight if SCORES[name] is None else SCORES[name]
        for n in (1, 2, 3, 4):
            rs = [r for r in runs if r["n"] == n]
            table[(name, pruning, n)] = sum(survivors(r, w, pruning, sel) == set(r["wanted"]) for r in rs) / len(rs)
            # right skills: every survivor draws a skill the task names, one per skill (a weak copy counts)
            table[(name, pruning, n, "skills")] = sum(drawn_skills(survivors(r, w, pruning, sel)) == drawn_skills(set(r["wanted"]))
                                                      for r in rs) / len(rs)
    # how often a distractor of each kind survived when it was a candidate: the old default
    # (combined scores, global pruning) against the new (agreement, by phrase)
    versus = {"old": (sel.retrieval_weight, "global"), "agreement^1": ("agreement^1", "phrase"),
              "unweighted": ("unweighted", "phrase"), "new": ("agreement", "phrase")}
    survived = {}
    for label, (w, pruning) in versus.items():
        for kind in sorted(set(kinds.values())):
            seen = kept = 0
            for r in runs:
                cands = [x for x in r["names"] if kinds.get(x) == kind]
                if cands:
                    alive = survivors(r, w, pruning, sel)
                    seen += len(cands)
                    kept += sum(x in alive for x in cands)
            survived[(label, kind)] = (kept, seen)
    cli_ok = sum(set(r["cli"]) == set(r["wanted"]) for r in runs) / len(runs)

    reg = "the ToyWorld dump (8 skill LoRAs)" + ("" if args.no_distractors else
                                                 f" and {len(kinds)} distractors (toyworld.distractors; the weak ones "
                                                 "trained for a quarter of the steps, toyworld/assets/weak)")
    lines = ["# ToyWorld LoRA selection (retrieve + probe + prune)", "",
             f"`python benchmarks/bench_toyworld_selection.py --seeds {args.seeds}"
             f"{f' --first-seed {args.first_seed}' if args.first_seed else ''}"
             f"{' --no-distractors' if args.no_distractors else ''}`: registry = {reg}; every skill set of SPEC "
             f"with 1-4 skills x {args.seeds} seeds (from {args.first_seed}; {len(runs)} runs), K = {sel.candidates} candidates, "
             f"P = {sel.probe_steps} probe steps from step {sel.probe_start_step(BUILTIN_STEPS)} of {BUILTIN_STEPS}, {seconds:.0f} s. Exact = the survivors are exactly the task's "
             "skill LoRAs. Combined = retrieval weight "
             f"{sel.retrieval_weight}; global = the old default pruning (k = 4, threshold {sel.threshold}); "
             "phrase = each phrase keeps its best candidate; agreement = the phrase-wise probe (retrieval says which phrase "
             "a candidate may serve; within the phrase, strength x agreement^p with the phrase's other candidates; "
             "inert by strength; each peer's vote weighted by its own agreement with its peers): "
             f"p = {sel.agreement_power:g}, the default; agreement^1: p = 1, unweighted (the first rule); "
             "agreement, unweighted: p = 2, every peer's vote the same (the default until 2026-12-07).", "",
             "| scores | pruning | N=1 | N=2 | N=3 | N=4 | all |", "|---|---|---|---|---|---|---|"]
    counts = [sum(r["n"] == n for r in runs) for n in (1, 2, 3, 4)]
    for name, pruning in combos:
        vals = [table[(name, pruning, n)] for n in (1, 2, 3, 4)]
        avg = sum(v * c for v, c in zip(vals, counts)) / sum(counts)
        lines.append(f"| {name} | {pruning} | " + " | ".join(f"{v:.0%}" for v in vals) + f" | {avg:.0%} |")
    lines += ["", "Right skills: every survivor draws a skill the task names, one LoRA per skill, whether the good "
              "LoRA or a near-duplicate that draws the same skill (a weak copy); an inert or mislabelled survivor "
              "is wrong:", "", "| scores | pruning | N=1 | N=2 | N=3 | N=4 | all |", "|---|---|---|---|---|---|---|"]
    for name, pruning in combos:
        vals = [table[(name, pruning, n, "skills")] for n in (1, 2, 3, 4)]
        avg = sum(v * c for v, c in zip(vals, counts)) / sum(counts)
        lines.append(f"| {name} | {pruning} | " + " | ".join(f"{v:.0%}" for v in vals) + f" | {avg:.0%} |")
    lines += ["", f"The CLI's own selection (the same code path, not re-pruned offline): {cli_ok:.0%} exact.", ""]
    if kinds:
        lines += ["Distractors that survived when they were candidates: old = combined scores, global pruning; "
                  "agreement^1, unweighted and new = the agreement rules above, by phrase (new: the default):", "",
                  "| kind | " + " | ".join(versus) + " |", "|---|" + "---|" * len(versus)]
        for kind in sorted(set(kinds.values())):
            cells = []
            for label in versus:
                kept, seen = survived[(label, kind)]
                cells.append(f"{kept}/{seen}" + (f" ({kept / seen:.0%})" if seen else ""))
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.with_suffix(".md").write_text(report)
    if not args.report_only:
        args.out.with_suffix(".json").write_text(json.dumps({"runs": runs, "kinds": kinds, "seconds": seconds}))


if __name__ == "__main__":
    main()
