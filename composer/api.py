"""The composer's Python API: a warm pipeline (``Composer``) that runs composition jobs.

Example::

    from composer import Composer, Job
    c = Composer.from_pretrained("runwayml/stable-diffusion-v1-5")   # or a save_pretrained dir
    r = c.run(Job("a knight <lora:armor.safetensors:0.8>", loras=["castle.safetensors"], method="loratorio", seed=1))
    r.save("knight.png"); r.weights_map().save("weights.png")
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from composer import methods
from composer.cache import DEFAULT_CACHE_BYTES
from composer.callbacks import StepCallbacks, progress_callback
from composer.denoiser import Branch, MultiLoraDenoiser, installed
from composer.loras import LoadedLora, LoraError, LoraLoader, LoraRef, extract_prompt_loras, parse_lora_token, pipeline_family
from composer.methods.base import MethodContext
from composer.params import Generation, GroundingParams, LoratorioParams

METHODS = methods.NAMES  # the names; composer.methods.METHODS maps them to classes

# A1111 sampler names for diffusers schedulers (what the `parameters` chunk says).
_SAMPLERS = {
    "DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler", "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M", "PNDMScheduler": "PLMS", "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun", "UniPCMultistepScheduler": "UniPC", "DDPMScheduler": "DDPM",
}


@dataclass
class Job:
    """One image to generate. ``loras`` are ``LoraRef``s or ``"ID_OR_FILE[:WEIGHT]"`` strings;
    ``<lora:name:w>`` tags in the prompt add more. ``method`` names a composition method
    (``composer.methods.NAMES``); ``params`` are LoRAtorio's, ``switch_every`` Switch's."""

    prompt: str
    loras: Sequence[LoraRef | str] = ()
    method: str = methods.DEFAULT
    seed: int = 0
    steps: int = 20
    cfg: float = 7.5
    width: int | None = None
    height: int | None = None
    negative_prompt: str = ""
    name: str | None = None
    switch_every: int = 1
    params: LoratorioParams = field(default_factory=LoratorioParams)
    grounding: GroundingParams = field(default_factory=GroundingParams)
    masks: Any = None  # grounded methods: fixed masks (N, B, H, W) or step -> masks, instead of a mask source
    batched: bool = True

    @classmethod
    def with_generation(cls, prompt: str, gen: Generation, **kw: Any) -> "Job":
        return cls(prompt, seed=gen.seed, steps=gen.steps, cfg=gen.cfg, width=gen.width, height=gen.height,
                   negative_prompt=gen.negative_prompt, **kw)

    @property
    def generation(self) -> Generation:
        return Generation(self.steps, self.cfg, self.seed, self.width, self.height, self.negative_prompt)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Job":
        """A ``--batch`` JSONL line: name, prompt, loras, method, seed, optional steps/cfg/width/height/p/tau/lam/k
        and grounding/grounding_steps/region_prompts/fuse_at/plain_background/repaste/ride_along/style_joins/
        style_join_at/style_where/riders_in_composition/late_paste/objects_in_composition/final_regions/rider_band/fusion_lam/own_stride/style_mask."""
        known = {"prompt", "loras", "method", "seed", "steps", "cfg", "width", "height", "negative_prompt", "name", "switch_every"}
        grounding_keys = {"grounding": "source", "grounding_steps": "steps", "region_prompts": "prompts", "fuse_at": "fuse_at",
                          "plain_background": "plain_background", "repaste": "repaste",
                          "ride_along": "ride_along", "style_joins": "style_joins", "style_join_at": "style_join_at",
                          "style_where": "style_where",
                          "riders_in_composition": "riders_in_composition", "late_paste": "late_paste",
                          "objects_in_composition": "objects_in_composition", "final_regions": "final_regions",
                          "rider_band": "rider_band", "fusion_lam": "fusion_lam", "own_stride": "own_stride",
                          "style_mask": "style_mask"}
        param_keys = {"p": "p", "tau": "tau", "lam": "lam", "lambda": "lam", "k": "k"}
        unknown = set(d) - known - set(param_keys) - set(grounding_keys)
        if unknown:
            raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")
        if "prompt" not in d:
            raise ValueError("a job needs a prompt")
        kw = {k: v for k, v in d.items() if k in known}
        params = LoratorioParams(**{dst: d[src] for src, dst in param_keys.items() if src in d})
        grounding = GroundingParams(**{dst: tuple(d[src]) if dst == "steps" else d[src]
                                       for src, dst in grounding_keys.items() if src in d})
        loras = kw.pop("loras", []) or []
        if isinstance(loras, str):
            loras = [loras]
        return cls(loras=[_lora_from_json(x) for x in loras], params=params, grounding=grounding, **kw)


def read_jobs(path: str, defaults: dict[str, Any]) -> list[Job]:
    """The jobs of a JSON Lines batch file, each line over ``defaults``; ValueError naming the
    file and line of the first bad one. A job without a name is called ``jobNNNN`` (its line)."""
    import json

    jobs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = {**defaults, **json.loads(line)}
                d.setdefault("name", f"job{n:04d}")
                jobs.append(Job.from_dict(d))
            except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{path}:{n}: {exc}") from exc
    return jobs


def _lora_from_json(x) -> LoraRef:
    if isinstance(x, dict):
        return LoraRef(str(x.get("id", x.get("path", x.get("name")))), float(x.get("weight", 1.0)), x.get("phrase"))
    if isinstance(x, (list, tuple)):
        return LoraRef(str(x[0]), float(x[1]) if len(x) > 1 else 1.0)
    return parse_lora_token(str(x))


@dataclass
class Result:
    image: Any  # PIL.Image
    parameters: str
    report: dict[str, Any]
    weights: list[torch.Tensor]  # per step: (N, Hp, Wp) weights of each LoRA for image 0
    lora_names: list[str]

    def save(self, path: str) -> None:
        """PNG with A1111's ``parameters`` text chunk."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("parameters", self.parameters)
        self.image.save(path, pnginfo=info)

    def save_weights_map(self, path: str) -> None:
        """The weights map as a PNG carrying the generation parameters and which LoRA each row is."""
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("parameters", self.parameters)
        info.add_text("rows", ", ".join(self.lora_names))
        self.weights_map().save(path, pnginfo=info)

    def weights_map(self, cell: int = 48, max_steps: int = 12):
        """An image of each LoRA's per-patch weights over the steps: one row per LoRA, one column per step."""
        return weights_map_image(self.weights, cell=cell, max_steps=max_steps)


def weights_map_image(weights: Sequence[torch.Tensor], cell: int = 48, max_steps: int = 12):
    """Grid image: rows are LoRAs, columns (up to ``max_steps``, evenly spread) are steps; white = weight 1."""
    from PIL import Image

    if not weights:
        raise ValueError("no per-step weights were recorded (method 'base' has no LoRAs)")
    steps = len(weights)
    idx = sorted({round(i * (steps - 1) / max(1, min(steps, max_steps) - 1)) for i in range(min(steps, max_steps))})
    n = weights[0].shape[0]
    gap = 2
    canvas = Image.new("L", (len(idx) * (cell + gap) + gap, n * (cell + gap) + gap), 64)
    for col, s in enumerate(idx):
        for row in range(n):
            w = weights[s][row].clamp(0, 1)
            tile = Image.fromarray((w.numpy() * 255).round().astype("uint8"), mode="L").resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (gap + col * (cell + gap), gap + row * (cell + gap)))
    return canvas


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: torch.dtype | str, device: str) -> torch.dtype:
    """``"auto"``: float16 on a GPU (what SD checkpoints are run in there: half the memory and
    time), float32 elsewhere (CPUs run half precision slowly); else the named or given dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_pipeline(model: str, device: str | None = None, dtype: torch.dtype | str = "auto"):
    """An SD 1.x/2.x or SDXL pipeline from a Hugging Face id or a ``save_pretrained`` directory,
    on ``device`` (default: cuda if there is one) in ``dtype`` (see :func:`resolve_dtype`)."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = DiffusionPipeline.from_pretrained(model, dtype=resolve_dtype(dtype, device))
    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise LoraError(f"{model}: {type(pipe).__name__} is not supported yet (SD 1.x/2.x and SDXL are)")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Composer:
    """A warm pipeline plus a LoRA cache; ``run(job)`` generates one image.

    ``cache_bytes`` bounds the LoRA weights kept installed between jobs (None: unbounded).
    """

    def __init__(self, pipe, registry: Callable[[], Any] | None = None, model_name: str | None = None,
                 cache_bytes: int | None = DEFAULT_CACHE_BYTES):
        self.pipe = pipe
        self.loader = LoraLoader(pipe, registry, max_bytes=cache_bytes)
        self.model_name = model_name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
        self.is_sdxl = pipeline_family(pipe) == "sdxl"

    @classmethod
    def from_pretrained(cls, model: str, registry=None, device: str | None = None, dtype: torch.dtype | str = "auto",
                        cache_bytes: int | None = DEFAULT_CACHE_BYTES, name: str | None = None) -> "Composer":
        import os

        name = name or os.path.basename(os.path.normpath(model))
        return cls(load_pipeline(model, device, dtype), registry, name, cache_bytes)

    # ------------------------------------------------------------------ prompt encodings
    def _encode(self, prompt: str, negative: str):
        # The text encoder's device: the pipeline's `_execution_device` walks every module of the
        # pipeline on each call (diffusers' offloading check), which cost more than the encoding.
        device = self.pipe.text_encoder.device
        if self.is_sdxl:
            pe, npe, ppe, nppe = self.pipe.encode_prompt(
                prompt=prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt=negative)
            return pe, npe, ppe, nppe
        pe, npe = self.pipe.encode_prompt(prompt, device, 1, True, negative)
        return pe, npe, None, None

    def has_adapters(self) -> bool:
        """Whether any LoRA is installed on the pipeline (the loader's cache)."""
        return bool(getattr(self.loader, "_by_path", None))

    def branch(self, adapter: str | None, prompt: str, negative: str, active: list[LoadedLora] | None,
               encodings: dict | None = None) -> Branch:
        """Encode the prompt with exactly ``active`` text-encoder adapters on (None/[]: base text
        encoder). LoRAs without text-encoder weights do not change the encoding, so branches that
        differ only in those share one (``encodings``: a cache for one job)."""
        te_active = [a for a in (active or []) if a.text_encoder]
        key = (prompt, negative, tuple((a.adapter, a.weight) for a in te_active))
        if encodings is not None and key in encodings:
            return Branch(adapter, *encodings[key])
        if self.has_adapters():
            self._set_text_encoder_adapters(te_active)
        enc = self._encode(prompt, negative)
        if encodings is not None:
            encodings[key] = enc
        return Branch(adapter, *enc)

    def _set_text_encoder_adapters(self, active: list[LoadedLora]) -> None:
        """Only the text encoders: the UNet's adapters are set once per job, not per branch."""
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder, set_adapters_for_text_encoder

        for name in ("text_encoder", "text_encoder_2"):
            te = getattr(self.pipe, name, None)
            if te is None or not getattr(te, "peft_config", None):
                continue
            mine = [a for a in active if a.adapter in te.peft_config]
            if mine:
                enable_lora_for_text_encoder(te)
                set_adapters_for_text_encoder([a.adapter for a in mine], te, [a.weight for a in mine])
            else:
                disable_lora_for_text_encoder(te)

    # ------------------------------------------------------------------ run
    def prepare(self, job: Job) -> tuple[str, list[LoadedLora]]:
        """Parse prompt tags, resolve and load every LoRA (refusing bad ones) before any denoising."""
        method_cls = methods.method_class(job.method)
        prompt, tagged = extract_prompt_loras(job.prompt)
        refs = [r if isinstance(r, LoraRef) else parse_lora_token(r) for r in job.loras] + tagged
        loras = self.loader.load_all(refs)
        if not method_cls.needs_loras:
            return prompt, []
        if not loras:
            raise ValueError(f"method {job.method!r} needs at least one LoRA")
        return prompt, loras

    def run(self, job: Job, progress: Callable[[int, int], None] | None = None,
            replay: Sequence[torch.Tensor] = (), callback: Callable[[dict[str, Any]], None] | None = None) -> Result:
        """Generate ``job``. ``progress(done, total)`` after every step. ``replay``: the guided noise
        predictions of the first steps, taken as they are instead of running the UNet (a probe's
        steps from the same seed and settings). ``callback``: sees every step's predictions and
        weights (:class:`composer.denoiser.MultiLoraDenoiser`)."""
        t0 = time.perf_counter()
        prompt, loras = self.prepare(job)
        method = methods.for_job(job)
        ctx = MethodContext(self, prompt, job.negative_prompt, loras, job)
        branches = method.branches(ctx)
        # Adapter state for denoising: scales for every LoRA of the job (mixed batches read them);
        # with no LoRA but adapters installed, the base branch runs as "__base__" in a mixed batch.
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters([a.adapter for a in loras], [a.weight for a in loras])
        elif self.has_adapters():
            self.pipe.enable_lora()
        denoiser = MultiLoraDenoiser(self.pipe.unet, branches, method.combine, batched=job.batched, replay=replay,
                                     uncond_branches=method.uncond_branches, callback=callback,
                                     prepare=method.before_step)
        step_callbacks = method.callbacks(ctx, denoiser)
        step_callbacks.append(progress_callback(progress, job.steps) if progress else None)
        first = branches[0]
        kwargs: dict[str, Any] = dict(
            prompt_embeds=first.cond, negative_prompt_embeds=first.uncond, num_inference_steps=job.steps,
            guidance_scale=job.cfg, height=job.height, width=job.width, output_type="pil",
            generator=torch.Generator("cpu").manual_seed(job.seed), callback_on_step_end=StepCallbacks(*step_callbacks),
        )
        if self.is_sdxl:
            kwargs.update(pooled_prompt_embeds=first.pooled_cond, negative_pooled_prompt_embeds=first.pooled_uncond)
        with torch.inference_mode(), installed(self.pipe, denoiser), method.hooks(ctx, denoiser):
            image = method.finish(ctx, self.pipe(**kwargs).images[0])
        per_step = method.step_weights(ctx, denoiser, job.steps)
        seconds = time.perf_counter() - t0
        height = job.height or image.height
        width = job.width or image.width
        report = {
            "name": job.name, "prompt": prompt, "negative_prompt": job.negative_prompt, "model": self.model_name,
            "method": job.method, "options": method.options(), "seed": job.seed, "steps": job.steps, "cfg": job.cfg,
            "width": width, "height": height, "sampler": self.sampler_name(), "loras": [a.report() for a in loras],
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
            "batched": job.batched, "unet_calls": denoiser.unet_calls, "unet_samples": denoiser.unet_samples,
            "replayed_steps": len(replay), "seconds": round(seconds, 3),
        }
        return Result(image, self.parameters_text(prompt, loras, job, width, height, method.settings()), report,
                      per_step, [a.name for a in loras])

    def sampler_name(self) -> str:
        name = type(self.pipe.scheduler).__name__
        return _SAMPLERS.get(name, name)

    def parameters_text(self, prompt: str, loras: list[LoadedLora], job: Job, width: int, height: int,
                        method_settings: Sequence[str] = ()) -> str:
        """A1111's ``parameters`` convention: prompt with ``<lora:...>`` tags, negative prompt, then settings."""
        tags = "".join(f" <lora:{a.name}:{a.weight:g}>" for a in loras)
        lines = [prompt + tags]
        if job.negative_prompt:
            lines.append(f"Negative prompt: {job.negative_prompt}")
        settings = [f"Steps: {job.steps}", f"Sampler: {self.sampler_name()}", f"CFG scale: {job.cfg:g}",
                    f"Seed: {job.seed}", f"Size: {width}x{height}", f"Model: {self.model_name}"]
        if loras:
            settings.append('Lora hashes: "' + ", ".join(f"{a.name}: {a.autov3}" for a in loras) + '"')
        settings.append(f"Composition: {job.method}")
        settings.extend(method_settings)
        lines.append(", ".join(settings))
        return "\n".join(lines)


def compose(prompt: str, model: str, loras: Sequence[LoraRef | str] = (), **job_kwargs) -> Result:
    """One-shot convenience: load ``model``, run one :class:`Job`, return the :class:`Result`."""
    return Composer.from_pretrained(model).run(Job(prompt, loras=loras, **job_kwargs))
