"""Parameters of a generation, of LoRAtorio and of the LoRA selection, with their defaults in one
place (no torch import: the CLI reads the defaults for its --help)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoratorioParams:
    """LoRAtorio's knobs, chosen by measurement on ToyWorld (``python
    benchmarks/bench_toyworld_quality.py --sweep --seeds 3``, 48 tasks of N = 2 and 3 per setting,
    ranked by task success plus the share of named skills shown; benchmarks/results/toyworld_sweep.md):

    * ``p=1``: one latent pixel per patch. p = 1, 2 and 4 scored within noise of each other
      (skills shown 35-42% at N = 2); 1 came out on top with tau = 0.25, and the cosines of a
      finer grid follow small objects more closely. Sizes p does not divide are zero-padded.
    * ``tau=0.25``: of 0.01 / 0.05 / 0.25, the softest did best (N = 2 success 8% vs 4%, N = 3
      shown 38% vs 29-32%). On ToyWorld a background LoRA diverges from the base 3-10x more
      than an object LoRA even inside the object's box (benchmarks/results/toyworld_divergence.md),
      so a sharp SoftMin hands it the object's patches; a softer one keeps the object LoRA in.
    * ``lam=0.5``: of 0 / 0.25 / 0.5 / 0.75 / 1, 0.5 scored best (lambda 0, the LoRAs'
      unconditional alone, collapsed to 17% shown).
    * ``k=None``: dynamic top-k off (all LoRAs); set k < N for a pool of many LoRAs.

    Measured and dropped: rescaling each LoRA's divergence by its own mean before the SoftMin
    (ours, not the paper's): skills shown 21-35% against 35-42% without it (toyworld_sweep.md).
    """

    p: int = 1
    tau: float = 0.25
    lam: float = 0.5
    k: int | None = None


@dataclass
class Generation:
    """What every image of a run shares: the sampler settings and the negative prompt."""

    steps: int = 20
    cfg: float = 7.5
    seed: int = 0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    negative_prompt: str = ""


@dataclass
class SelectionParams:
    """Retrieve, probe, prune (composer.auto): how many LoRAs are looked at and how many kept.

    The default prunes by phrase (``per_phrase``): retrieval says which phrase a candidate may
    serve, the probe's strength and agreement decide among a phrase's candidates. Measured on
    ToyWorld with 24 distractors beside the 8 skill LoRAs (benchmarks/results/toyworld_selection.md,
    1-4 skills x 4 seeds): the kept LoRAs draw exactly the prompt's skills in 96% of runs (exactly the
    good LoRAs, no weak copy: 94%; held-out seeds 4-7: 96% and 93%), against 0% for the global ranking (``per_phrase=None``: k with
    ``threshold`` on retrieval^w x probe^(1-w), w = ``retrieval_weight``), whose probe prefers
    whole-image LoRAs (they diverge from the base everywhere).
    """

    candidates: int = 16  # K, retrieved from the registry
    keep: int | None = None  # k (k_max); None: min(MAX_KEEP, the candidates)
    probe_steps: int = 3  # P
    # Where the probe starts, as a fraction of the denoising steps: the base model runs alone for the
    # first S = round(probe_start x steps) (at most steps - P). composer.probe says why: the later the
    # steps (until the last few), the more a full LoRA moves the prediction beyond its quick-trained
    # copy (the halo's only from step 12). Exact selection on ToyWorld, seeds 0-3 / 4-7, by the step of
    # 25 the probe starts at: 6: 35 / 27%, 12: 66 / 67%, 14: 73 / 79%, 16: 77 / 87%, 18: 79 / 90%,
    # 20: 86 / 90%, 22: 80 / 75% (chosen on seeds 0-3; benchmarks/results/toyworld_selection_probe_start.md).
    probe_start: float = 0.8
    threshold: float = 0.5  # relative to the best combined score
    retrieval_weight: float = 0.75
    probe_top_k: int | None = None  # the probe's dynamic top-k; None: k
    reuse_probe: bool = False  # continue from the probe's latents instead of recomputing its steps
    # Each phrase of the prompt asks for at most this many LoRAs; candidates compete only within
    # their phrase (composer.relevance.prune_by_phrase). None: one global ranking with `threshold`.
    per_phrase: int | None = 1
    # A candidate that changes the noise prediction by less than this fraction is inert: dropped
    # (composer.relevance.strength; on ToyWorld inert copies move it ~0.01%, working LoRAs 1-14%).
    inert: float = 0.002
    # A semantic-only match (no trigger or name typed) under this retrieval score asks for nothing:
    # on ToyWorld, "light/dark background" reach 0.14-0.33 with background LoRAs.
    min_semantic: float = 0.4
    # Within a phrase: strength x (peer-weighted) agreement^this (composer.relevance.phrase_scores; 1 was the first rule).
    agreement_power: float = 2.0
    # Probe every candidate, also those retrieval alone rules out by phrase (``eligible``), whom
    # pruning by phrase drops whatever the probe says: for benchmarks that compare other rules.
    probe_all: bool = False

    MAX_KEEP = 4

    def probe_start_step(self, steps: int) -> int:
        """S for a run of ``steps`` denoising steps."""
        return max(0, min(round(self.probe_start * steps), steps - self.probe_steps))


@dataclass
class GroundingParams:
    """Where each LoRA acts (composer.grounding): the mask source, the steps whose latents it
    reads, and how saliency becomes a region. The defaults are the measured ones
    (benchmarks/results/toyworld_grounding.md, and toyworld_grounding_seeds4to7.md on other seeds)."""

    # contrast | lora-contrast | attention | fixed (given masks). lora-contrast: on ToyWorld's
    # background + character and character + character tasks, grounded-loratorio composed 25/48 on
    # seeds 0-3 and 20/48 on seeds 4-7 with it, 19/48 and 12/48 with contrast (toyworld_grounding*.md).
    source: str = "lora-contrast"
    steps: tuple[int, ...] = (0, 2)  # the masks are measured on these steps' latents (running mean)
    prompts: str = "own"  # regional cross-attention reads each LoRA's own prompt ("own") or the whole one ("full")
    # grounded-loratorio: each LoRA's branch runs on the whole prompt ("full") or on its own ("own")
    branch_prompts: str = "full"
    sigma: float = 1.0  # smoothing of a saliency map, latent pixels
    lo: float = 0.25  # soft threshold of the normalised saliency: 0 below lo ...
    hi: float = 0.55  # ... 1 above hi
    sharpness: float = 8.0  # how hard overlapping objects split a pixel
    attribute_radius: int = 2  # how far an attribute (clothing) reaches beyond its object, latent pixels
    pool: str = "area"  # regional: masks shrink to coarse layers by cell average ("area") or maximum ("max")
    # fusion: the steps each object LoRA draws on a latent of its own before its region is pasted
    fuse_at: int = 12
    # fusion: LoRAtorio's lambda in the composition (None: the job's, LoratorioParams.lam). With 1
    # the guidance is the base's unconditional prediction alone and the LoRAs' are not computed:
    # by-role 287 of 392 ToyWorld tasks against 285 with the job's 0.5 (N = 2 / 3 / 4: 174 / 74 / 39
    # against 171 / 71 / 43), 10.2 UNet samples per step against 12.9
    # (benchmarks/results/toyworld_quality_final.md, toyworld_quality_lam1.md).
    fusion_lam: float | None = 1.0
    # fusion: an object draws alone on this phrase in place of the background LoRAs' phrases (None:
    # on their phrases). Their trigger words mean nothing to the base, and an object LoRA beside an
    # unknown word drew ToyWorld's kiki in 6 of 12 images, on "light background" in 12 of 12
    # (benchmarks/results/toyworld_fusion.md). Real CLIP encoders know "light background" too.
    plain_background: str | None = "light background"
    # fusion: the objects go on drawing alone to the last step and are pasted again then.
    repaste: bool = True
    # fusion with a style LoRA, which must act on the objects too: True: the style joins each
    # object's own trajectory (and its base copy) from the fuse step, once the object's layout is
    # set, and the objects are repasted; False: no repaste, the composition finishes the objects.
    # On ToyWorld's tasks with an object and the style: 30/128 with it, 32/128 without; the frame,
    # merged in from step 12, still spoils objects (character + style 15/24 against 22/24)
    # (benchmarks/results/toyworld_quality_stylejoins.md).
    style_joins: bool = False
    # fusion with a style LoRA, without ``style_joins``: "everywhere": no repaste, the composition
    # (the style acting everywhere) finishes the objects; "measured": a base copy with the style
    # merged in runs beside the objects' until the fuse step, and where its image departs from the
    # base copy's is where the style acts; the objects are pasted (at the fuse step, and again after
    # the last) only outside it, and not repasted at all when it covers most of them (an art style:
    # the composition finishes them, styled). ToyWorld's tasks with an object and the style: 47/128
    # measured, 32/128 everywhere (benchmarks/results/toyworld_quality_stylemeasured.md). Its frame
    # measures at the border on light backgrounds; on dark ones the frame LoRA redraws the object
    # most, so there it is measured as acting on it, as it does.
    style_where: str = "measured"
    # fusion with the style measured (style_where): after the fuse step the style's mask in the
    # composition is 1 everywhere ("everywhere"), or, inside the background LoRAs' region, where it
    # was measured to act ("measured": fusion.style_yields). ToyWorld's 128 tasks with an object and
    # the style: 55 -> 63 (gained 9, lost 1; seeds 0-3 25 -> 28, 4-7 30 -> 35; N = 4 12 -> 17),
    # the tasks without a background unchanged (benchmarks/results/toyworld_quality_stylemask.md).
    style_mask: str = "measured"
    # with ``style_joins``: the step from which the style joins (None: the fuse step); at or past the
    # last step it never joins, and the objects are repasted as drawn without it.
    style_join_at: int | None = None
    # fusion without repaste (a style in the job, or an attribute that does not ride along): the
    # objects go on drawing alone to this step and are pasted again then, as latents, and the
    # composition (the style acting everywhere) finishes them. None: pasted at fuse_at only.
    late_paste: int | None = None
    # fusion: an object draws alone with its attribute LoRAs (clothing) merged in, so that the
    # repaste keeps their work. False: the object alone, and no repaste with an attribute LoRA.
    ride_along: bool = True
    # fusion with repaste: the attributes riding along with an object act in the composition too
    # (True), or only in their object's own trajectory, whose repaste carries their work (False). In
    # the composition a halo's mask spilled over the background: ToyWorld's tasks with an object and
    # its attribute composed 30/72 with it, 50/72 without (benchmarks/results/toyworld_quality_riders.md).
    riders_in_composition: bool = False
    # fusion with repaste: after the fuse step the composition runs the objects' (and riders')
    # branches too (True), or the base model's prediction stands in for them in their regions
    # (False), since their own images are repasted there: their UNet samples saved (one a step per
    # object with fusion_lam = 1). Measured worse: benchmarks/results/toyworld_quality_lean.md.
    objects_in_composition: bool = True
    # fusion with repaste: the regions of the paste after the last step are measured then ("last"),
    # or are the fuse step's ("fuse"), and the base copies that measure them stop at the fuse step.
    final_regions: str = "last"
    # fusion with repaste: an object with an attribute riding along is pasted after the last step
    # over its region grown by this many latent pixels (the attribute's band at its edge). ToyWorld's
    # halo, a white band 2-3 pixels around its object, fell at the region's soft edge, where the
    # paste blended it with the background: with 0, bouba + stripes + halo composed 1/8; with half a
    # latent pixel (2 image pixels), 8/8, and by-role 270 -> 285 of 392 tasks, N = 4 38 -> 43 of 96
    # (benchmarks/results/toyworld_quality_band.md; seeds 0-3 130 -> 138, 4-7 140 -> 147).
    rider_band: float = 0.5
    # fusion: the own trajectories (objects and their base copies) call the UNet on every this many
    # steps only, and on the steps between step again on their last prediction: with DDIM exactly
    # one DDIM step of this stride (OwnTrajectories.repeat). 1: every step. By-role on the 392
    # ToyWorld tasks: 1: 287 (N = 2 / 3 / 4: 174 / 74 / 39), 2.64x Merge's seconds, 10.2 samples a
    # step; 2: 283 (173 / 72 / 38), 1.89x, 7.7; 3: 282 (173 / 70 / 39), 1.92x, 6.9
    # (benchmarks/results/toyworld_quality_final.md, toyworld_quality_stride2.md, _stride3.md).
    own_stride: int = 2
    finest: int = 0  # regional: masks on layers up to this many times coarser than the latent, Merge on coarser ones (0: all)
