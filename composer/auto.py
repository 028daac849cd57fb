"""Retrieve, probe, prune, compose: a composer that picks its own LoRAs for a prompt.

    from composer.auto import AutoComposer
    from loraregistry import Registry
    ac = AutoComposer.from_pretrained("./sd15", Registry.open("sqlite:///loras.db"))
    r = ac.compose("a kiki on the left, checkerboard background", k=2, seed=1)
    r.save("out.png"); print(r.report["selection"]["survivors"])
    r = ac.compose("a kiki on the left", pool=["kiki", "stripes.safetensors", "42"])   # no retrieval

1. retrieve: the registry's top K (16) entries of the pipeline's family with a file
   (composer.retrieve); or the user's ``pool``.
2. probe: the first P (3) denoising steps with all candidates, dynamic LoRAtorio, batched
   (composer.probe), scored by their divergence from the base (composer.relevance).
3. prune: the combined score (probe x retrieval, geometric) keeps at most k, above a relative
   threshold; every dropped candidate gets its reason.
4. compose: the full composition (LoRAtorio by default) of the survivors from the same seed.

Settings travel as two objects (composer.params): ``Generation`` (steps, cfg, seed, size,
negative prompt) and ``SelectionParams`` (K, k, P, threshold, retrieval weight, probe top-k,
re-use of the probe). Each public method takes them as ``gen=`` / ``selection=`` or as keywords
named like their fields (``k`` is ``keep``), whichever reads better at the call.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from composer import methods
from composer.api import Composer, Job, Result
from composer.cache import DEFAULT_CACHE_BYTES
from composer.loras import LoadedLora, LoraError, LoraRef, extract_prompt_loras, pipeline_family
from composer.params import Generation, GroundingParams, LoratorioParams, SelectionParams
from composer.probe import ProbeRun, run_probe
from composer.relevance import combine_scores, concept_of, eligible, phrase_scores, prune, prune_by_phrase
from composer.retrieve import Candidate, SelectionError, resolve_pool, retrieve

_GEN_FIELDS = {f.name for f in dataclasses.fields(Generation)}
_SEL_FIELDS = {f.name for f in dataclasses.fields(SelectionParams)}


def settings_of(gen: Generation | None, selection: SelectionParams | None, kw: dict[str, Any]) -> tuple[Generation, SelectionParams]:
    """``gen`` and ``selection`` with the keyword overrides applied (``k`` means ``keep``)."""
    kw = dict(kw)
    if "k" in kw:
        kw["keep"] = kw.pop("k")
    unknown = set(kw) - _GEN_FIELDS - _SEL_FIELDS
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    gen = dataclasses.replace(gen or Generation(), **{k: v for k, v in kw.items() if k in _GEN_FIELDS})
    selection = dataclasses.replace(selection or SelectionParams(), **{k: v for k, v in kw.items() if k in _SEL_FIELDS})
    return gen, selection


@dataclass
class Selection:
    """What retrieve + probe + prune decided: every candidate with its scores and fate."""

    prompt: str
    mode: str  # "retrieval" | "pool"
    candidates: list[Candidate]
    survivors: list[Candidate]
    retrieval: dict[str, Any] | None
    probe: ProbeRun | None
    params: SelectionParams  # with ``keep`` resolved to the k used
    timings: dict[str, float] = field(default_factory=dict)
    unserved: list[str] = field(default_factory=list)  # phrases whose candidates were all dropped: the base draws them

    @property
    def k(self) -> int:
        return int(self.params.keep or 0)

    def report(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "k": self.k, "threshold": self.params.threshold,
            "retrieval_weight": self.params.retrieval_weight,
            "retrieval": self.retrieval, "probe": None if self.probe is None else self.probe.report(),
            "candidates": [c.report() for c in self.candidates],
            "survivors": [c.name for c in self.survivors],
            "per_phrase": self.params.per_phrase,
            "unserved_phrases": list(self.unserved),
            "dropped": [{"name": c.name, "registry_id": c.registry_id, "reason": c.reason} for c in self.candidates if not c.kept],
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def parameters(self) -> str:
        """A1111-style settings: ``Candidates: "..."`` (name r=retrieval p=probe c=combined, kept or not)."""
        def fmt(c: Candidate) -> str:
            bits = [c.name]
            if c.retrieval_score is not None:
                bits.append(f"r={c.retrieval_score:.3f}")
            if c.probe is not None:
                bits.append(f"p={c.probe['score']:.4f}")
            if c.combined is not None:
                bits.append(f"c={c.combined:.3f}")
            bits.append("kept" if c.kept else "dropped")
            return " ".join(bits).replace('"', "'").replace(",", ";")

        probe = self.probe
        return ", ".join([
            f"LoRA selection: {self.mode}",
            f'Selection: "K={len(self.candidates)}, k={self.k}, threshold={self.params.threshold:g}, '
            f'retrieval weight={self.params.retrieval_weight:g}, '
            f'probe steps={probe.steps if probe else 0}, probe start={probe.start if probe else 0}, probe top-k={probe.top_k if probe else None}, '
            f'probe UNet samples={probe.unet_samples if probe else 0}"',
            'Candidates: "' + "; ".join(fmt(c) for c in self.candidates) + '"',
        ] + ([f'Left to the base model: "{"; ".join(self.unserved)}"'] if self.unserved else []))


@dataclass
class AutoResult(Result):
    """A composition :class:`Result` plus the :class:`Selection` that chose its LoRAs."""

    selection: Selection | None = None

    def save(self, path: str) -> None:
        """PNG with ``parameters`` (A1111) and ``loraregistry`` (the full JSON report) text chunks."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("parameters", self.parameters)
        info.add_text("loraregistry", json.dumps(self.report, default=str))
        self.image.save(path, pnginfo=info)


class AutoComposer:
    """A :class:`composer.api.Composer` plus a registry: ``compose(prompt)`` picks the LoRAs.

    Args:
        composer: a warm Composer (its LoRA cache is shared: a second compose with overlapping
            candidates reads none of them again).
        registry: a ``loraregistry.Registry`` (None: pools of files only).
    """

    def __init__(self, composer: Composer, registry=None) -> None:
        self.composer = composer
        self.registry = registry
        self.family = pipeline_family(composer.pipe)

    @classmethod
    def from_pipeline(cls, pipe, registry=None, cache_bytes: int | None = DEFAULT_CACHE_BYTES) -> "AutoComposer":
        return cls(Composer(pipe, (lambda: registry) if registry is not None else None, cache_bytes=cache_bytes), registry)

    @classmethod
    def from_pretrained(cls, model: str, registry=None, device: str | None = None, dtype: torch.dtype | str = "auto",
                        cache_bytes: int | None = DEFAULT_CACHE_BYTES) -> "AutoComposer":
        factory = (lambda: registry) if registry is not None else None
        return cls(Composer.from_pretrained(model, factory, device, dtype, cache_bytes), registry)

    @property
    def reads(self) -> int:
        """LoRA files read from disk so far (the cache's effect shows here)."""
        return self.composer.loader.reads

    # ------------------------------------------------------------------ 1. retrieve
    def retrieve(self, prompt: str, candidates: int = SelectionParams.candidates) -> list[Candidate]:
        """The registry's best ``candidates`` entries for ``prompt`` that this pipeline can load."""
        return self._retrieve(prompt, candidates)[0]

    def _retrieve(self, prompt: str, candidates: int) -> tuple[list[Candidate], dict[str, Any]]:
        if self.registry is None:
            raise SelectionError("no registry: give a pool of LoRA files, or build the composer with a registry")
        return retrieve(self.registry, prompt, self.family, candidates)

    # ------------------------------------------------------------------ 2. probe
    def _load(self, cands: list[Candidate], strict: bool) -> list[tuple[Candidate, LoadedLora]]:
        """Install every candidate (cached ones are not read again). A retrieved candidate that
        does not fit is dropped with the reason; a pool item that does not fit is an error."""
        loader = self.composer.loader
        loaded, pinned, errors = [], set(), []
        for c in cands:
            try:
                a = loader.load(c.ref(), pinned)
            except (LoraError, OSError) as exc:
                if strict:
                    errors.append(f"{c.name}: {exc}")
                c.kept, c.reason = False, f"cannot be loaded: {exc}"
                continue
            pinned.add(os.path.realpath(a.path))
            loaded.append((c, a))
        if errors:
            raise SelectionError("pool LoRAs that do not fit this pipeline: " + "; ".join(errors))
        if not loaded:
            raise SelectionError(f"none of the {len(cands)} candidates can be loaded on this {self.family} pipeline")
        return loaded

    def probe(self, prompt: str, pool: Sequence[str | LoraRef | Candidate] | None = None, *,
              params: LoratorioParams | None = None, gen: Generation | None = None,
              selection: SelectionParams | None = None, **settings: Any) -> list[Candidate]:
        """Probe scores (``c.probe``: far, coverage, score) and ``c.combined`` for each candidate:
        ``pool`` items, or the registry's top ``candidates``. Best first; nothing is pruned.
        The probe's top-k is ``probe_top_k``, else ``keep``, else SelectionParams.MAX_KEEP."""
        gen, sel = settings_of(gen, selection, settings)
        prompt = self._clean_prompt(prompt)
        cands = self._candidates(prompt, pool, sel.candidates)[0]
        loaded = self._load(cands, strict=pool is not None)
        top_k = sel.probe_top_k if sel.probe_top_k is not None else (sel.keep or SelectionParams.MAX_KEEP)
        self._probe(prompt, loaded, gen, sel, top_k, params or LoratorioParams())
        scored = [c for c, _ in loaded]
        return sorted(scored, key=lambda c: -(c.combined or 0.0)) + [c for c in cands if c not in scored]

    def _candidates(self, prompt, pool, candidates) -> tuple[list[Candidate], dict[str, Any] | None]:
        if pool is None:
            return self._retrieve(prompt, candidates)
        items = list(pool)
        if items and all(isinstance(x, Candidate) for x in items):
            return items, None
        return resolve_pool(self.registry, items, self.family), None

    def _probe(self, prompt: str, loaded: list[tuple[Candidate, LoadedLora]], gen: Generation, sel: SelectionParams,
               top_k: int | None, params: LoratorioParams) -> ProbeRun:
        run = run_probe(self.composer, prompt, [a for _, a in loaded], gen, probe_steps=sel.probe_steps,
                        start=sel.probe_start_step(gen.steps), p=params.p,
                        tau=params.tau, top_k=top_k)
        cands = [c for c, _ in loaded]
        retrieval = None
        if all(c.retrieval_score is not None for c in cands):
            retrieval = torch.tensor([c.retrieval_score for c in cands], dtype=torch.float32)
        combined = combine_scores(run.scores.score, retrieval, sel.retrieval_weight)
        for i, c in enumerate(cands):
            c.probe = {"far": float(run.scores.far[i]), "coverage": float(run.scores.coverage[i]),
                       "score": float(run.scores.score[i]), "strength": float(run.strength[i])}
            c.combined = float(combined[i])
        return run

    # ------------------------------------------------------------------ 3. prune
    def select(self, prompt: str, pool: Sequence[str | LoraRef] | None = None, *, params: LoratorioParams | None = None,
               gen: Generation | None = None, selection: SelectionParams | None = None, **settings: Any) -> Selection:
        """Retrieve (or take ``pool``), probe and prune; the survivors and a reason for each drop."""
        gen, sel = settings_of(gen, selection, settings)
        t0 = time.perf_counter()
        prompt = self._clean_prompt(prompt)
        self._check(gen, sel, pool)
        cands, retrieval = self._candidates(prompt, pool, sel.candidates)
        sel = dataclasses.replace(sel, keep=sel.keep if sel.keep is not None else min(SelectionParams.MAX_KEEP, len(cands)))
        t1 = time.perf_counter()
        # Retrieval alone says which candidates may serve no phrase (composer.relevance.eligible): by
        # phrase, the probe cannot bring them back, so they are neither loaded nor probed (on ToyWorld's
        # registry with distractors, a third to a half of the 16 candidates).
        unprobed: dict[int, str] = {}
        if sel.per_phrase and not sel.probe_all:
            unprobed = eligible([c.phrase for c in cands], [c.match for c in cands], [c.retrieval_score for c in cands],
                                sel.min_semantic)
            for i, reason in unprobed.items():
                cands[i].kept, cands[i].reason = False, reason + " (not probed)"
        probed = [c for i, c in enumerate(cands) if i not in unprobed]
        loaded = self._load(probed, strict=pool is not None) if probed else []
        t2 = time.perf_counter()
        run = None
        if not loaded:
            survivors = []
        elif len(loaded) == 1 and pool is not None:
            loaded[0][0].kept, loaded[0][0].reason = True, "the only loadable candidate: nothing to choose, no probe"
            survivors = [loaded[0][0]]
        else:
            top_k = sel.probe_top_k if sel.probe_top_k is not None else min(sel.keep, len(loaded))
            run = self._probe(prompt, loaded, gen, sel, top_k, params or LoratorioParams())
            scored = [c for c, _ in loaded]
            combined = torch.tensor([c.combined for c in scored])
            phrases = [concept_of(c.phrase, c.match, c.trigger_words) for c in scored]
            if sel.per_phrase and any(phrases):
                # Retrieval says which phrase a candidate may serve; the probe decides among a phrase's
                # candidates (retrieval scores of two trigger matches differ by their names' wording).
                excluded = eligible([c.phrase for c in scored], [c.match for c in scored],
                                    [c.retrieval_score for c in scored], sel.min_semantic)
                active = [i not in excluded and float(run.strength[i]) >= sel.inert for i in range(len(scored))]
                ranking = phrase_scores(run.strength, run.agreement, phrases, active, sel.agreement_power)
                for c, v in zip(scored, ranking):
                    c.probe["phrase_score"] = float(v)
                keep, dropped, unserved = prune_by_phrase(ranking, phrases, sel.per_phrase, strength=run.strength,
                                                          inert=sel.inert, excluded=excluded)
                for rank, i in enumerate(keep[sel.keep:], sel.keep + 1):
                    dropped[i] = f"rank {rank} of the phrases' best: only the best {sel.keep} are kept"
                keep = keep[: sel.keep]
            else:
                keep, dropped = prune(combined, sel.keep, sel.threshold)
            for i, c in enumerate(scored):
                c.kept = i in keep
                c.reason = dropped.get(i) or f"kept: combined score {c.combined:.3f}, rank {keep.index(i) + 1}"
            survivors = [scored[i] for i in keep]
        t3 = time.perf_counter()
        timings = {"retrieve" if pool is None else "resolve": t1 - t0, "load": t2 - t1, "probe": t3 - t2}
        concept = {id(c): concept_of(c.phrase, c.match, c.trigger_words) for c in cands}
        served = {concept[id(c)] for c in survivors}
        unserved = [p for p in dict.fromkeys(concept[id(c)] for c in cands if c.phrase) if p not in served]
        return Selection(prompt, "pool" if pool is not None else "retrieval", cands, survivors, retrieval, run, sel, timings,
                         unserved)

    @staticmethod
    def _check(gen: Generation, sel: SelectionParams, pool) -> None:
        if not 0.0 <= sel.threshold <= 1.0:
            raise SelectionError(f"threshold must be in [0, 1], got {sel.threshold}")
        if not 0.0 <= sel.retrieval_weight <= 1.0:
            raise SelectionError(f"retrieval weight must be in [0, 1], got {sel.retrieval_weight}")
        if not 1 <= sel.probe_steps <= gen.steps:
            raise SelectionError(f"probe steps must be between 1 and the {gen.steps} denoising steps, got {sel.probe_steps}")
        if not 0.0 <= sel.probe_start < 1.0:
            raise SelectionError(f"the probe's start is a fraction of the denoising steps in [0, 1), got {sel.probe_start}")
        k = sel.keep
        if k is not None and k < 1:
            raise SelectionError(f"k must be >= 1, got {k}")
        if pool is not None:
            if k is not None and k > len(list(pool)):
                raise SelectionError(f"k={k} is larger than the pool of {len(list(pool))} LoRAs")
        elif k is not None and k > sel.candidates:
            raise SelectionError(f"k={k} is larger than the {sel.candidates} candidates retrieved")

    # ------------------------------------------------------------------ 4. compose
    def compose(self, prompt: str, pool: Sequence[str | LoraRef] | None = None, *, method: str = methods.DEFAULT,
                params: LoratorioParams | None = None, grounding: GroundingParams | None = None, name: str | None = None,
                progress=None, gen: Generation | None = None, selection: SelectionParams | None = None,
                **settings: Any) -> AutoResult:
        """Pick the LoRAs for ``prompt`` (from ``pool``, or the registry) and compose them with ``method``.

        ``selection.reuse_probe``: start the composition from the probe's latents (its P steps are
        replayed, not recomputed), which saves S + P steps of the composition's UNet work; those
        steps are then the base model's own (the probe follows the base's path) rather than the survivors'."""
        if method not in methods.NAMES or not methods.method_class(method).needs_loras:
            raise SelectionError(f"method must be one of {', '.join(m for m in methods.NAMES if m != 'base')}, got {method!r}")
        gen, sel = settings_of(gen, selection, settings)
        t0 = time.perf_counter()
        params = params or LoratorioParams()
        chosen = self.select(prompt, pool, params=params, gen=gen, selection=sel)
        # No LoRA serves the prompt (every phrase left to the base model): the base model draws it.
        job = Job.with_generation(chosen.prompt, gen, loras=[c.ref() for c in chosen.survivors],
                                  method=method if chosen.survivors else "base",
                                  params=params, grounding=grounding or GroundingParams(), name=name)
        t1 = time.perf_counter()
        replay = chosen.probe.outputs if (sel.reuse_probe and chosen.probe is not None) else ()
        result = self.composer.run(job, progress=progress, replay=replay)
        chosen.timings["compose"] = time.perf_counter() - t1
        chosen.timings["total"] = time.perf_counter() - t0
        report = dict(result.report)
        sel_report = chosen.report()
        if result.weights:  # each survivor's mean patch weight over the steps
            mean_w = torch.stack(result.weights).mean(dim=(0, 2, 3))
            sel_report["mean_patch_weights"] = {n: round(float(w), 4) for n, w in zip(result.lora_names, mean_w)}
        report["selection"] = sel_report
        probe_calls = chosen.probe.unet_calls if chosen.probe else 0
        probe_samples = chosen.probe.unet_samples if chosen.probe else 0
        report["unet_calls_total"] = probe_calls + result.report["unet_calls"]
        report["unet_samples_total"] = probe_samples + result.report["unet_samples"]
        report["seconds"] = round(chosen.timings["total"], 3)
        params_text = result.parameters + ", " + chosen.parameters()
        if replay:
            params_text += f", Probe steps re-used: {len(replay)}"
        return AutoResult(result.image, params_text, report, result.weights, result.lora_names, selection=chosen)

    @staticmethod
    def _clean_prompt(prompt: str) -> str:
        if not prompt or not prompt.strip():
            raise SelectionError("the prompt is empty")
        clean, tagged = extract_prompt_loras(prompt)
        if tagged:
            raise SelectionError("the prompt names LoRAs with <lora:...> tags: pass them as pool=[...] "
                                 "(to choose among them) or use Composer.run (to use them all)")
        return clean
