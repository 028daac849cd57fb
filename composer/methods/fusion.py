"""Fusion (ours): each object LoRA first draws on a latent of its own, then its object is pasted into
the composition, which grounded LoRAtorio finishes.

Why: on ToyWorld an object LoRA that draws its object in 8 of 8 images of the task's prompt, alone,
fails in 8 of 8 when the latent around its region holds another LoRA's background, even when every
LoRA is held to its true region (benchmarks/results/toyworld_quality*.md: mimi + checkerboard,
oracle 0/8). Its own branch sees a context it never saw in training, from the first step, while
the layout forms. Here, for the first ``fuse_at`` steps each object LoRA denoises its own copy of
the starting noise (the context it knows), beside a base-model copy; the composition runs grounded
LoRAtorio on the pipeline's latent meanwhile. At the end of step ``fuse_at - 1`` each object's
region (where its own image departs from the base model's, on the same noise and prompt: the
paper's observation, made spatial on the object's own trajectory) is pasted into the composition's
latent, and those regions become the objects' masks for the remaining steps. With ``repaste``
(unless a style must act on the objects too) the objects go on drawing alone and are pasted again
after the last step, in pixels (each decoded apart): the composition places them and draws
around them, and the object LoRA finishes its object in the context it knows (a kiki's ring,
finished by the composition, filled in). An object draws alone on ``plain_background`` in place of the background LoRAs' phrases, a
background the base model knows, with its attributes merged in (``ride_along``: riders); with the
repaste, those attributes act only there, not in the composition (``riders_in_composition``), and
the object's region grows by the attribute's band for the last paste (``rider_band``).
A style LoRA is measured (``style_where``): a base copy with the style merged in runs until the fuse
step, and where its image departs from the plain base copy's is where the style acts; the objects
are pasted only outside it, and where it covers them (an art style restyles everything) they are
not repasted, so that the composition, the style acting there, finishes them.
Cost: two more UNet samples (conditional and unconditional) per object, and a pair for the base
copy of each distinct object prompt (one with one object, one per object with several), for each of
the first ``fuse_at`` steps, or of every step with ``repaste``; a pair for the style's copy for the
first ``fuse_at`` steps; with ``repaste``, one more VAE decode per object. All of them run in the
step's one batched UNet call (``composer.stacked`` serves any layout, and merged riders). The own
trajectories call the UNet on every ``own_stride``-th of those steps only, and between step again
on their last prediction (with DDIM exactly a step of that stride): by-role on ToyWorld with 2, 283
of 392 tasks at 1.89x Merge's seconds, against 287 at 2.64x on every step
(benchmarks/results/toyworld_quality_stride2.md). The composition itself takes LoRAtorio's lambda =
1 (``fusion_lam``): its guidance is the base's unconditional prediction, so of its LoRA branches
only the conditional halves run, and a rider's (masked out of the composition) not at all. With
the style measured, after the fuse step the style yields to the background LoRA where it was not
measured to act (``style_mask``, :func:`style_yields`).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from composer.decode import decode_latents, to_pil, to_tensor
from composer.denoiser import BASE, Branch
from composer.grounding import masks as gm
from composer.grounding.grounder import FixedMasks
from composer.grounding.phrases import mentions, without
from composer.methods.grounded_loratorio import GroundedLoratorio
from composer.params import GroundingParams, LoratorioParams


def paste(latents: torch.Tensor, own: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """``latents`` with each own latent ``own[j]`` (``(B, C, H, W)``) where its mask ``masks[j]``
    (``(J, B, H, W)``, summing to at most 1 per pixel) says: ``(1 - sum m) x + sum m_j z_j``."""
    m = masks.to(latents.dtype).unsqueeze(2)  # (J, B, 1, H, W)
    return latents * (1 - m.sum(0)) + (m * torch.stack(own)).sum(0)


def departure(x0: torch.Tensor, x0_base: torch.Tensor) -> torch.Tensor:
    """Where an image departs from the base model's on the same noise: ``|x0 - x0_base|`` averaged
    over channels, ``(B, H, W)``."""
    return (x0.float() - x0_base.float()).abs().mean(1)


def object_prompts(prompt: str, units: list, objects: list[int], backgrounds: list[int] = (),
                   plain: str | None = None) -> list[str]:
    """Each object's prompt for its own trajectory: the prompt without the *other* objects' units,
    so that it does not draw its own object where another was asked for, and with the background
    LoRAs' units (``backgrounds``) read as ``plain``, a background the base model knows. Measured on
    ToyWorld (benchmarks/results/toyworld_fusion.md): with the whole prompt each object LoRA drew
    its object at both places (two-object tasks 0/12); without the background phrase, background +
    object fell from 22/36 to 10/36; with it read as "light background" (and ``repaste``), 30/36."""
    mine = {units[j] for j in objects}  # a unit that also holds an object stays as it is
    plain_units = {units[i]: plain for i in backgrounds if plain and units[i] is not None and units[i] not in mine}
    return [without(prompt, [units[i] for i in objects if i != j and units[i] is not None], plain_units)
            for j in objects]


def object_regions(departures: torch.Tensor, g: GroundingParams, prior: torch.Tensor | None = None) -> torch.Tensor:
    """``(J, B, H, W)`` each object's region from where its own image departs from its base copy's
    (``departures``, ``(J, B, H, W)``), split among overlapping objects. ``prior``: masks that say
    whose place is where (two or more objects: ToyWorld's object LoRAs draw theirs unprompted 40-100%
    of the time, so each departs at every object's place)."""
    regions = gm.region(departures, g.sigma, g.lo, g.hi)
    if prior is not None:
        regions = regions * gm.dilate(prior.float(), g.attribute_radius)
    share = regions.pow(g.sharpness)
    return regions * share / share.sum(0, keepdim=True).clamp_min(1e-30)


def style_yields(masks: torch.Tensor, roles: list[str], acts: torch.Tensor) -> torch.Tensor:
    """``masks`` (``(N, B, H, W)``, routed) with each style LoRA's mask cut, inside the background
    LoRAs' regions, to where the style was measured to act (``acts``, ``(B, H, W)``):
    ``max(acts, 1 - background)``. Outside a background (the objects, or everything when no
    background LoRA is in the job) the style keeps its mask. Why: a style whose mask is 1 everywhere
    competes with the background LoRA in every patch of LoRAtorio's SoftMin; ToyWorld's frame, which
    acts at the border only, cost the checkerboard's and the dots' patterns that way."""
    backgrounds = [i for i, r in enumerate(roles) if r == "background"]
    if not backgrounds:
        return masks
    out = masks.clone()
    ground = masks[backgrounds].amax(0)
    for i in (i for i, r in enumerate(roles) if r == "style"):
        out[i] = torch.minimum(masks[i], torch.maximum(acts.to(masks.dtype), 1 - ground))
    return out


def riders(ctx, grounder, j: int) -> list[int]:
    """The attribute LoRAs that qualify object ``j``: its own, or one named in its unit ("a kiki with
    halo ... and a bouba with halo ..."). Drawn with the object, so that the repaste keeps them:
    ToyWorld's halo composed with its object in 6/8 two-object tasks, against 0/8 held to a ring in
    the composition (benchmarks/results/toyworld_fusion.md)."""
    out = []
    unit = grounder.units[j]
    for i, (role, lora) in enumerate(zip(grounder.roles, ctx.loras)):
        named = unit is not None and any(mentions(unit.text, w) for w in (lora.phrase, *lora.trigger_words) if w)
        if role == "attribute" and (grounder.owners[i] == j or named):
            out.append(i)
    return out


def merged(ctx, indices: list[int]) -> str | tuple[str, ...] | None:
    """The branch adapter for these LoRAs merged: one name, a tuple of several, None for none."""
    names = tuple(ctx.loras[i].adapter for i in indices)
    return names[0] if len(names) == 1 else (names or None)


class OwnTrajectories:
    """Latents that denoise beside the pipeline's, each with its own copy of the scheduler, starting
    from the pipeline's noise: the objects' own images and their base copies. ``running``: the
    trajectories that still advance (a stopped one keeps its last latent and image)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.running: list[int] = list(range(count))
        self.latents: list[torch.Tensor] = []
        self.x0: list[torch.Tensor | None] = []
        self.eps: list[torch.Tensor | None] = []  # each one's last guided prediction (``repeat``)

    @property
    def started(self) -> bool:
        return bool(self.latents)

    def start(self, noise: torch.Tensor, scheduler) -> None:
        self.latents = [noise.clone() for _ in range(self.count)]
        self.x0 = [None] * self.count
        self.eps = [None] * self.count
        self.schedulers = [copy.deepcopy(scheduler) for _ in range(self.count)]

    def inputs(self, timestep) -> list[torch.Tensor]:
        """The running trajectories' UNet inputs of this step (the schedulers' own input scaling)."""
        self.timestep = timestep
        return [self.schedulers[k].scale_model_input(self.latents[k], timestep) for k in self.running]

    def advance(self, eps_u: torch.Tensor | None, eps_c: torch.Tensor, cfg: float) -> None:
        """One step of each running trajectory with its own guided prediction (``(K, B, C, H, W)``
        halves, K the running ones, in order)."""
        for j, k in enumerate(self.running):
            c = eps_c[j]
            self.eps[k] = c if eps_u is None else eps_u[j] + cfg * (c - eps_u[j])
            self._step(k)

    def repeat(self, timestep) -> None:
        """One step of each running trajectory with its last prediction again (no UNet call). For
        DDIM (deterministic) the two steps taken on one prediction are exactly one DDIM step of
        twice the stride: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) is the same at both; for Euler
        (epsilon prediction) one Euler step of twice the stride, x + eps (sigma'' - sigma). Multistep
        solvers (PNDM, DPM-Solver) take the repeated prediction into their history: an approximation."""
        self.timestep = timestep
        for k in self.running:
            self._step(k)

    def _step(self, k: int) -> None:
        res = self.schedulers[k].step(self.eps[k], self.timestep, self.latents[k])
        self.latents[k] = res.prev_sample
        self.x0[k] = getattr(res, "pred_original_sample", None)

    def stop(self, indices) -> None:
        """Stop these trajectories (measurements that are done)."""
        self.running = [k for k in self.running if k not in set(indices)]

    def images(self) -> list[torch.Tensor]:
        """Each trajectory's predicted clean latent (its latent where the scheduler gives none)."""
        return [x if x is not None else z for x, z in zip(self.x0, self.latents)]


@dataclass
class Fusion(GroundedLoratorio):
    params: LoratorioParams = field(default_factory=LoratorioParams)
    grounding: GroundingParams = field(default_factory=GroundingParams)
    fixed: FixedMasks | None = None
    name = "fusion"
    repeating = None  # the step's timestep while the own trajectories repeat their last prediction (own_stride)

    def branches(self, ctx):
        composition = super().branches(ctx)
        self.ctx, self.n = ctx, len(composition)
        if self.grounding.fuse_at < 0:
            raise ValueError(f"fuse_at must be >= 0, got {self.grounding.fuse_at}")
        # The steps the objects draw alone; past the job's steps, they are pasted after the last.
        self.fuse_at = min(self.grounding.fuse_at, ctx.job.steps)
        self.objects = [i for i, r in enumerate(self.grounder.roles) if r == "object"]
        self.fused: torch.Tensor | None = None
        self.final: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # the last paste's regions and own latents
        self.own = OwnTrajectories(0)
        if self.grounding.own_stride < 1:
            raise ValueError(f"own_stride must be >= 1, got {self.grounding.own_stride}")
        self.repeating = None
        self.repaste = False
        self.late: int | None = None  # the step the objects are pasted again as latents (GroundingParams.late_paste)
        self.style_pair: tuple[int, int] | None = None  # (base copy, style copy) own indices while measured
        self.style_acts: torch.Tensor | None = None  # (B, H, W) where the style acts, from the fuse step
        self.comp_active = list(range(self.n))  # the composition's branches that run (GroundingParams.objects_in_composition)
        self.fuse_regions: torch.Tensor | None = None  # the fuse step's pasted regions, pasted again after the last step
        self.style_kept = 1.0  # the share of the objects' regions outside it at the fuse step
        if not self.objects or self.fuse_at <= 0:
            return composition
        if self.grounding.fusion_lam is not None:  # the composition's guidance (GroundingParams.fusion_lam)
            self.params = dataclasses.replace(self.params, lam=self.grounding.fusion_lam)
        # Each object draws alone beside a base copy on the same prompt (object_prompts), with its
        # attributes merged in (riders; not without ride_along).
        own: list = []
        self.pairs: list[tuple[int, int]] = []  # (base copy, object) indices into the own trajectories
        self.ridden: list[bool] = []  # per object: an attribute rides along with it
        bases: dict[str, int] = {}
        g, roles = self.grounding, self.grounder.roles
        backgrounds = [i for i, r in enumerate(roles) if r == "background"]
        # A style may act on the objects too. Merged into an object's own trajectory from the first
        # step it cost ToyWorld's character + style tasks 22/24 -> 8/24 (as Merge loses them: the
        # style redraws the layout). So where it is measured to act on the objects the composition
        # finishes them (style_where="measured"; "everywhere": always, no repaste), or, with
        # ``style_joins``, the style joins the own trajectories from ``style_join_at`` (measured
        # worse on ToyWorld: toyworld_quality_stylejoins.md). An attribute that does not ride along
        # acts on the objects too: no repaste.
        styles = [i for i, r in enumerate(roles) if r == "style"]
        if g.final_regions not in ("last", "fuse"):
            raise ValueError(f"final_regions must be 'last' or 'fuse', got {g.final_regions!r}")
        if g.style_mask not in ("everywhere", "measured"):
            raise ValueError(f"style_mask must be 'everywhere' or 'measured', got {g.style_mask!r}")
        if g.style_where not in ("everywhere", "measured"):
            raise ValueError(f"style_where must be 'everywhere' or 'measured', got {g.style_where!r}")
        measured = bool(styles) and g.style_where == "measured" and not g.style_joins
        self.repaste = (g.repaste and (g.style_joins or measured or not styles)
                        and (g.ride_along or "attribute" not in roles))
        # (own index, branch) to switch to at the fuse step: the own trajectories with the style merged in
        self.styled: list[tuple[int, Branch]] = []
        prompts = object_prompts(ctx.prompt, self.grounder.units, self.objects, backgrounds, g.plain_background)
        for j, p in zip(self.objects, prompts):
            if p not in bases:
                bases[p] = len(own)
                own.append(ctx.branch(BASE, None, p))
                if styles and self.repaste and g.style_joins:
                    self.styled.append((bases[p], ctx.branch(merged(ctx, styles), [ctx.loras[i] for i in styles], p)))
            self.pairs.append((bases[p], len(own)))
            mine = [j, *(riders(ctx, self.grounder, j) if g.ride_along else [])]
            self.ridden.append(len(mine) > 1)
            if self.repaste and not g.riders_in_composition:
                self.grounder.elsewhere = sorted({*self.grounder.elsewhere, *mine[1:]})
            own.append(ctx.branch(merged(ctx, mine), [ctx.loras[i] for i in mine], p))
            if styles and self.repaste and g.style_joins:
                self.styled.append((len(own) - 1, ctx.branch(merged(ctx, mine + styles),
                                                             [ctx.loras[i] for i in mine + styles], p)))
        # With the style measured: its own base copy (the style merged in, on the first object's
        # prompt, beside that prompt's base copy) runs until the fuse step, the last own trajectory.
        if measured and self.repaste:
            self.style_pair = (bases[prompts[0]], len(own))
            own.append(ctx.branch(merged(ctx, styles), [ctx.loras[i] for i in styles], prompts[0]))
        self.own = OwnTrajectories(len(own))
        self.join_at = self.fuse_at if g.style_join_at is None else g.style_join_at
        late = g.late_paste
        self.late_step = late if (late is not None and self.fuse_at < late <= ctx.job.steps) else None
        self.late = None if self.repaste else self.late_step
        # Riders drawn only in their object's own trajectory have a mask of 0 in the composition
        # (spatial_prior's floor, 1e-4, is all their weight): the base stands in for their branches
        # there from the first step (their UNet samples saved). After the fuse step the objects'
        # too, with objects_in_composition off.
        elsewhere = set(self.grounder.elsewhere)
        self.comp_active = [0] + [i + 1 for i in range(len(ctx.loras)) if i not in elsewhere]
        stand_in = elsewhere | (set(self.objects) if not g.objects_in_composition else set())
        self.after_fuse = [0] + [i + 1 for i in range(len(ctx.loras)) if i not in stand_in]
        return composition + own

    def _activate(self, denoiser) -> None:
        """Run the composition's active branches and the running own trajectories."""
        denoiser.select(self.comp_active + [self.n + k for k in self.own.running])

    def _composition_alone(self, denoiser) -> None:
        """From the next step on, the composition's branches alone, all of them (it finishes the objects)."""
        self.own.stop(list(self.own.running))
        self.comp_active = list(range(self.n))
        denoiser.branch_samples = None
        self._activate(denoiser)

    @property
    def drawing_alone(self) -> bool:
        return bool(self.objects) and self.fuse_at > 0

    def before_step(self, info):
        super().before_step(info)
        step, denoiser = info["step"], info["denoiser"]
        if self.fused is not None:
            self.state.masks = self.fused
        if not self.drawing_alone:
            return
        if not self.own.started and step > 0:
            # The first steps were replayed (a probe's, composer.auto): the objects' own trajectories
            # cannot start from the noise any more, so the composition goes on alone (grounded LoRAtorio).
            self.fuse_at, self.repaste, self.late = 0, False, None
            self._composition_alone(denoiser)
            return
        if step == 0:
            self.own.start(info["sample"][-info["images"]:], self.ctx.composer.pipe.scheduler)
            self._activate(denoiser)
        self.repeating = None
        if self.own.running and (step < self.fuse_at or self.repaste or (self.late is not None and step < self.late)):
            if step % self.grounding.own_stride:  # no UNet samples: each takes its last prediction again
                self.repeating = info["timestep"]
                denoiser.select(self.comp_active)
                denoiser.branch_samples = None
            else:
                self._activate(denoiser)
                denoiser.branch_samples = [None] * len(self.comp_active) + self.own.inputs(info["timestep"])

    @property
    def uncond_branches(self) -> set[int] | None:  # type: ignore[override]
        """With lambda = 1 the composition's guidance is the base's unconditional prediction alone:
        only the base's and the own trajectories' (each its own guidance) are computed."""
        if self.params.lam != 1.0 or not self.own.count:
            return super().uncond_branches
        return {0, *range(self.n, self.n + self.own.count)}

    def combine(self, eps_u, eps_c, step):
        m = len(self.comp_active)
        own = eps_c.shape[0] - m  # the own trajectories' rows, after the composition's
        mu = m if eps_u is None else eps_u.shape[0] - own  # the composition's unconditional rows

        def full(eps):  # the composition's n branches, the base's prediction where one did not run
            if eps is None or m == self.n:
                return eps
            rows = torch.zeros(self.n, dtype=torch.long)
            rows[self.comp_active] = torch.arange(m)
            return eps[:m][rows.to(eps.device)]

        uncond = None if eps_u is None else (full(eps_u[:m]) if mu == m else eps_u[:mu])  # (the base's alone)
        out = super().combine(uncond, full(eps_c[:m]), step)
        if own and self.own.started:  # advance the own trajectories with their own guidance
            self.own.advance(None if eps_u is None else eps_u[mu:], eps_c[m:], self.ctx.job.cfg)
        elif self.repeating is not None:
            self.own.repeat(self.repeating)
        return out

    def callbacks(self, ctx, denoiser):
        if not self.drawing_alone:
            return []

        def fuse(pipe, step_index, timestep, kwargs):
            last = step_index == ctx.job.steps - 1
            late = self.late is not None and step_index == self.late - 1
            if self.styled and step_index == self.join_at - 1:  # the style joins the own trajectories from the next step
                for k, branch in self.styled:
                    denoiser.branches[self.n + k] = branch
            fusing = step_index == self.fuse_at - 1
            if not fusing and not (self.repaste and last) and not late:
                return kwargs
            if not fusing and self.fuse_regions is not None:
                regions = self.fuse_regions
            else:
                regions, unmasked = self.outside_style(self.object_regions(), fusing, denoiser)
            own = [self.own.latents[k] for _, k in self.pairs]
            if late:  # pasted again as latents; the composition alone finishes the objects
                kwargs["latents"] = paste(kwargs["latents"], own, regions)
                self._composition_alone(denoiser)
                return kwargs
            if not fusing:  # the second paste, after the last step: in pixels (finish)
                self.final = (regions, own)
                return kwargs
            kwargs["latents"] = paste(kwargs["latents"], own, regions)
            if not self.repaste and self.late is None:
                self._composition_alone(denoiser)  # from the next step on
            elif not self.repaste:  # the objects draw alone until the late paste; the composition finishes them
                self.comp_active = list(range(self.n))
                self._activate(denoiser)
            else:
                if self.grounding.final_regions == "fuse":
                    # The last paste takes these regions: the base copies, which only measure them, stop.
                    self.fuse_regions = regions
                    self.own.stop([b for b, _ in self.pairs])
                # The objects' final pixels are their own images, repasted: from here on the base
                # model's prediction may stand in for their (and their riders') composition branches,
                # in their regions, on the latent that holds them now (their samples saved).
                self.comp_active = self.after_fuse
                self._activate(denoiser)
            current = self.state.masks.clone().float()
            current[self.objects] = unmasked
            g = self.grounding
            self.fused = gm.route(current, list(self.grounder.roles), list(self.grounder.owners), g.sharpness,
                                  g.attribute_radius, self.grounder.elsewhere)
            if g.style_mask == "measured" and self.style_acts is not None:
                self.fused = style_yields(self.fused, list(self.grounder.roles), self.style_acts)
            return kwargs

        return [fuse]

    def finish(self, ctx, image):
        """With ``repaste``: each object's own image pasted into the decoded composition, in pixels.
        Pasted as latents, the decoder drew what straddles the seam anew from both sides (the demo's
        kiki ring came out lopsided, its hole showing the checkerboard, although its own image held
        a clean ring); decoded apart, each side keeps its pixels."""
        if self.final is None:
            return image
        regions, own = self.final
        pixels = to_tensor(image)
        own_pixels = [decode_latents(ctx.composer.pipe, z[:1]) for z in own]
        masks = torch.nn.functional.interpolate(regions[:, :1].float().cpu(), size=pixels.shape[-2:], mode="bilinear",
                                                align_corners=False)
        band = round(self.grounding.rider_band * pixels.shape[-1] / regions.shape[-1])  # latent pixels -> image pixels
        if band > 0 and any(self.ridden):
            # An attribute drawn around its object (a halo's band) lies at the region's soft edge,
            # where the paste blends it with the composition: the region grows by the band there.
            grown = torch.nn.functional.max_pool2d(masks, 2 * band + 1, stride=1, padding=band)
            ridden = torch.tensor(self.ridden, dtype=torch.bool).view(-1, 1, 1, 1)
            masks = torch.where(ridden, grown, masks)
            total = masks.sum(0, keepdim=True)
            masks = masks / total.clamp_min(1.0)  # overlapping grown regions split a pixel
        return to_pil(paste(pixels, own_pixels, masks))

    def outside_style(self, regions: torch.Tensor, fusing: bool, denoiser) -> tuple[torch.Tensor, torch.Tensor]:
        """The objects' regions to paste (less the style's region: where the style acts, the
        composition keeps its pixels) and as they were. At the fuse step (``fusing``) the style's
        region is measured, and where it covers most of the objects they are not repasted."""
        if self.style_pair is not None and fusing:
            self.measure_style(denoiser)
        if self.style_acts is None:
            return regions, regions
        pasted = regions * (1 - self.style_acts)
        if fusing:
            self.style_kept = float(pasted.sum() / regions.sum().clamp_min(1e-8))
            if self.style_kept < 0.5:  # the style acts on the objects: the composition finishes them
                self.repaste, self.late = False, self.late_step
        return pasted, regions

    def measure_style(self, denoiser) -> None:
        """At the fuse step: where the style's base copy departs from the plain base copy is where
        the style acts (``style_acts``); its trajectory stops here."""
        b, k = self.style_pair
        ref = self.own.images()
        g = self.grounding
        self.style_acts = gm.region(departure(ref[k], ref[b]), g.sigma, g.lo, g.hi)
        self.own.stop([k])
        self._activate(denoiser)
        self.style_pair = None

    def object_regions(self) -> torch.Tensor:
        """``(J, B, H, W)`` each object's region at the fusion step: the given masks' (an oracle),
        else where its own image departs from the base copy's (``object_regions``), with the
        composition's masks, measured for each LoRA under its own phrase, as the prior for two or more."""
        masks = self.state.masks.float()[self.objects]
        if self.fixed is not None:
            return masks
        ref = self.own.images()
        sal = torch.stack([departure(ref[k], ref[b]) for b, k in self.pairs])  # (J, B, H, W)
        # (Growing an object's region by its attribute's band when the attribute leaves the
        # composition pasted the own image's plain background too: 25/72 against 50/72 without,
        # benchmarks/results/toyworld_quality_riders.md.)
        return object_regions(sal, self.grounding, masks if len(self.objects) > 1 else None)

    def options(self):
        g = self.grounding
        return {**super().options(), "fuse_at": g.fuse_at, "plain_background": g.plain_background,
                "repaste": self.repaste, "ride_along": g.ride_along, "style_joins": g.style_joins,
                "riders_in_composition": g.riders_in_composition, "late_paste": self.late,
                "style_where": g.style_where, "objects_in_composition": g.objects_in_composition,
                "final_regions": g.final_regions, "rider_band": g.rider_band, "own_stride": g.own_stride,
                "style_mask": g.style_mask,
                "style_kept": None if self.style_acts is None else round(self.style_kept, 3)}

    def settings(self):
        g = self.grounding
        return super().settings() + [f"Fuse at: {g.fuse_at}", f'Plain background: "{g.plain_background or ""}"',
                                     f"Repaste: {self.repaste}", f"Ride along: {g.ride_along}",
                                     f"Style joins: {g.style_joins}", f"Style where: {g.style_where}",
                                     f"Objects in composition: {g.objects_in_composition}",
                                     f"Final regions: {g.final_regions}", f"Own stride: {g.own_stride}",
                                     f"Style mask: {g.style_mask}"]
