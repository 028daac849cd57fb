"""``loraregistry compose``: generate images with several LoRAs (LoRAtorio and baselines).

The options arrive as one dict and are handed out in the library's own groups (``Generation``,
``SelectionParams``, ``LoratorioParams``: their defaults are the library's, defined once).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from composer import methods
from composer.params import Generation, GroundingParams, LoratorioParams, SelectionParams
from loraregistry.builtin import BUILTIN_CFG, BUILTIN_NAME, BUILTIN_STEPS
from loraregistry.cli.common import CliContext, echo_json, json_option, pass_cli
from loraregistry.cli.queue import queue_option, results_option

_LT, _SEL, _GEN, _GR = LoratorioParams(), SelectionParams(), Generation(), GroundingParams()


def _errors():
    """Library exceptions that become one clean ClickException."""
    from registry.errors import RegistryError

    return (ValueError, OSError, RegistryError)


def _progress(quiet: bool):
    """A rich progress bar over steps on stderr (hidden with --json or when not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from loraregistry.cli.common import stderr_console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr_console(), disable=quiet, transient=True)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers chatter (load reports, missing-TE-key notes) off the output."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    # Several adapters on one model is what the composer means to do; PEFT warns about it each time.
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")


def _take(opts: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: opts.pop(n) for n in names}


@click.command("compose")
@click.argument("prompt", required=False)
@click.option("--model", "-m", default=None, metavar="ID_OR_DIR",
              help="Hugging Face id or save_pretrained directory (SD 1.x/2.x, SDXL). Env: LORAREGISTRY_MODEL. "
                   "Default: the built-in ToyWorld pipeline (and, without --db, its demo registry).")
@click.option("--lora", "-l", "loras", multiple=True, metavar="ID_OR_FILE[:WEIGHT][@PHRASE]",
              help="A LoRA file or registry id/name, optional weight, and optionally the phrase of the prompt it is "
                   "for (grounded methods: where it acts; default: the unit of the prompt with its trigger word). Repeatable.")
@click.option("--method", type=click.Choice(methods.NAMES), default=methods.DEFAULT, show_default=True,
              help="How to combine the LoRAs. by-role picks fusion for a character/object beside other LoRAs, merge for "
                   "one object with its clothing/attribute, loratorio otherwise (from the LoRAs' Civitai categories).")
@click.option("--steps", type=click.IntRange(1), default=None, help=f"Denoising steps (default {_GEN.steps}; built-in model {BUILTIN_STEPS}).")
@click.option("--cfg", type=float, default=None, help=f"Classifier-free guidance scale (default {_GEN.cfg:g}; built-in model {BUILTIN_CFG:g}).")
@click.option("--seed", type=int, default=_GEN.seed, show_default=True)
@click.option("--width", type=click.IntRange(8), default=None, help="Default: the model's native size.")
@click.option("--height", type=click.IntRange(8), default=None)
@click.option("--negative-prompt", default="", help="Negative prompt.")
@click.option("--out", "-o", default=None, metavar="FILE.png|DIR", help="Output PNG (with --batch: a directory).")
@click.option("--weights-map", default=None, metavar="FILE.png", help="Write an image of each LoRA's per-patch weights over the steps.")
@click.option("--batch", "batch_file", type=click.Path(exists=True, dir_okay=False), default=None, metavar="JOBS.jsonl",
              help="Run one job per JSON line on one warm pipeline; needs --out DIR.")
@click.option("--patch", "p", type=click.IntRange(1), default=_LT.p, show_default=True, help="LoRAtorio patch side p (latent pixels).")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=_LT.tau, show_default=True, help="LoRAtorio SoftMin temperature.")
@click.option("--lam", "lam", type=click.FloatRange(0, 1), default=_LT.lam, show_default=True, help="LoRAtorio re-centring weight lambda.")
@click.option("--top-k", "k", type=click.IntRange(1), default=_LT.k, help="LoRAtorio dynamic selection: keep the k most divergent LoRAs per patch.")
@click.option("--grounding", "grounding_source", type=click.Choice(["contrast", "lora-contrast", "attention"]),
              default=_GR.source, show_default=True,
              help="Grounded methods: where each LoRA acts comes from the base model's prediction with and without "
                   "its phrase (contrast), the LoRA's own (lora-contrast), or cross-attention to the phrase (attention).")
@click.option("--grounding-steps", default=",".join(map(str, _GR.steps)), show_default=True, metavar="I,J",
              help="Grounded methods: the steps whose latents the masks are measured on.")
@click.option("--region-prompts", type=click.Choice(["own", "full"]), default=_GR.prompts, show_default=True,
              help="regional: each LoRA's region reads its own phrase and the shared context (own) or the whole prompt.")
@click.option("--fuse-at", type=click.IntRange(0), default=_GR.fuse_at, show_default=True,
              help="fusion: the steps each object LoRA draws on a latent of its own before its region is pasted.")
@click.option("--plain-background", default=_GR.plain_background, show_default=True, metavar="PHRASE",
              help="fusion: an object draws alone on this phrase in place of the background LoRAs' phrases "
                   "('' keeps their phrases).")
@click.option("--repaste/--no-repaste", default=_GR.repaste, show_default=True,
              help="fusion: the objects draw alone to the last step and are pasted again then.")
@click.option("--riders-in-composition/--no-riders-in-composition", default=_GR.riders_in_composition,
              show_default=True, help="fusion with repaste: an attribute riding along with its object acts in the "
                                      "composition too (default: only in the object's own trajectory).")
@click.option("--style-joins/--no-style-joins", default=_GR.style_joins, show_default=True,
              help="fusion with a style LoRA: it joins the objects' own trajectories from the fuse step (without: "
                   "no repaste, the composition finishes the objects).")
@click.option("--style-join-at", type=click.IntRange(0), default=None,
              help="fusion with --style-joins: the step the style joins from (default: the fuse step).")
@click.option("--style-where", type=click.Choice(["everywhere", "measured"]), default=_GR.style_where,
              show_default=True,
              help="fusion with a style LoRA: measured: find where the style changes the image and paste the "
                   "objects only outside it (everywhere: the composition finishes the objects).")
@click.option("--style-mask", type=click.Choice(["everywhere", "measured"]), default=_GR.style_mask,
              show_default=True,
              help="fusion with the style measured: after the fuse step the style acts everywhere in the "
                   "composition, or (measured) inside a background LoRA's region only where it was measured to act.")
@click.option("--objects-in-composition/--no-objects-in-composition", default=_GR.objects_in_composition,
              show_default=True,
              help="fusion with repaste: after the fuse step the composition runs the objects' LoRAs too (without: "
                   "the base stands in for them where their own images are repasted; faster, measured worse).")
@click.option("--fusion-lam", type=click.FloatRange(0, 1), default=_GR.fusion_lam, show_default=True,
              help="fusion: LoRAtorio's lambda in the composition (1: the base's unconditional prediction alone, "
                   "the LoRAs' not computed; overrides --lam there).")
@click.option("--rider-band", type=click.FloatRange(0), default=_GR.rider_band, show_default=True,
              help="fusion with repaste: an object with a clothing/attribute LoRA riding along is repasted over its "
                   "region grown by this many latent pixels (the attribute's band at its edge).")
@click.option("--own-stride", type=click.IntRange(1), default=_GR.own_stride, show_default=True,
              help="fusion: the objects' own trajectories call the UNet every this many steps and step again on "
                   "their last prediction between (with DDIM, one step of that stride; 1: every step, slower).")
@click.option("--final-regions", type=click.Choice(["last", "fuse"]), default=_GR.final_regions, show_default=True,
              help="fusion with repaste: the last paste's regions are measured after the last step (last) or are "
                   "the fuse step's (fuse: the base copies stop there; faster).")
@click.option("--ride-along/--no-ride-along", default=_GR.ride_along, show_default=True,
              help="fusion: an object draws alone with its clothing/attribute LoRAs merged in (without: alone, and "
                   "no repaste with such LoRAs).")
@click.option("--switch-every", type=click.IntRange(1), default=1, show_default=True, help="Switch: steps between LoRA changes.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True,
              help="Model precision; auto: float16 on a GPU, float32 on a CPU.")
@click.option("--pool", "pool", multiple=True, metavar="ID_OR_FILE[:WEIGHT]",
              help="Choose the LoRAs among these (probe + prune, no registry search). Repeatable.")
@click.option("--candidates", type=click.IntRange(1), default=_SEL.candidates, show_default=True,
              help="Without --lora: how many LoRAs to retrieve from the registry (K).")
@click.option("--keep", type=click.IntRange(1), default=None,
              help=f"Without --lora: most LoRAs to keep (k; default {SelectionParams.MAX_KEEP}, at most the pool).")
@click.option("--probe-steps", type=click.IntRange(1), default=_SEL.probe_steps, show_default=True, help="Without --lora: denoising steps of the probe (P).")
@click.option("--probe-start", type=click.FloatRange(0, 1, max_open=True), default=_SEL.probe_start, show_default=True,
              help="Without --lora: where the probe starts, as a fraction of the steps (the base runs alone before it).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=_SEL.threshold, show_default=True,
              help="Without --lora: drop candidates whose combined score is below this fraction of the best.")
@click.option("--retrieval-weight", type=click.FloatRange(0, 1), default=_SEL.retrieval_weight, show_default=True,
              help="Without --lora: weight of the retrieval score against the probe score (geometric).")
@click.option("--per-phrase", type=click.IntRange(0), default=_SEL.per_phrase, show_default=True,
              help="Without --lora: most LoRAs per phrase of the prompt (candidates compete within their phrase); "
                   "0: one global ranking with --threshold.")
@click.option("--reuse-probe/--no-reuse-probe", default=_SEL.reuse_probe, show_default=True,
              help="Without --lora: continue from the probe's latents instead of recomputing its steps "
                   "(saves S + P steps of composition).")
@click.option("--cache-mb", type=click.IntRange(0), default=4096, show_default=True, help="LoRA weights kept loaded between jobs (MiB).")
@queue_option
@results_option
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="With --queue: wait for the jobs and copy their results to --out DIR (else print their ids).")
@json_option
@pass_cli
def compose(cli_ctx: CliContext, prompt: str | None, **opts: Any) -> None:
    """Generate an image from PROMPT with several LoRAs composed by LoRAtorio (or a baseline).

    LoRAs come from --lora (file paths or registry ids/names) and from A1111 tags in the prompt.
    With neither, the registry (--db) picks them: it retrieves --candidates LoRAs for the prompt,
    probes them for --probe-steps steps, keeps the --keep most relevant and composes those; with
    --pool the probe chooses among the given LoRAs instead. The JSON report and the PNG say why.

    Example: loraregistry compose "a knight <lora:armor:0.8>" --model ./sd15 --lora castle.safetensors --out knight.png

    Example: loraregistry --db loras.db compose "a kiki on the left, checkerboard background" --model ./toy --keep 2
    """
    batch_file, out, weights_map, as_json = opts.pop("batch_file"), opts.pop("out"), opts.pop("weights_map"), opts.pop("as_json")
    queue_url, results_dir, wait = opts.pop("queue_url"), opts.pop("results_dir"), opts.pop("wait")
    if queue_url and not batch_file:
        if click.get_current_context().get_parameter_source("queue_url") == click.core.ParameterSource.ENVIRONMENT:
            queue_url = None  # $LORAREGISTRY_QUEUE sends batches to the queue; one prompt composes here
        else:
            raise click.UsageError("--queue submits a --batch JOBS.jsonl; give --batch")
    if queue_url and opts["model"]:
        raise click.UsageError("with --queue the workers' model composes (loraregistry worker --model); drop --model")
    loras, pool, method = opts.pop("loras"), opts.pop("pool"), opts["method"]
    if batch_file and prompt:
        raise click.UsageError("give either PROMPT or --batch JOBS.jsonl, not both")
    if not batch_file and not prompt:
        raise click.UsageError("missing PROMPT (or --batch JOBS.jsonl)")
    if batch_file and not out:
        raise click.UsageError("--batch needs --out DIR")
    if batch_file and weights_map:
        raise click.UsageError("--weights-map is per image; with --batch each job's map goes to DIR/<name>.weights.png")
    if pool and (loras or batch_file):
        raise click.UsageError("--pool chooses the LoRAs itself: give it without --lora and --batch")

    if queue_url:
        return _submit_batch(queue_url, batch_file, out, results_dir, wait, as_json, opts)

    from composer.loras import extract_prompt_loras

    try:
        choice, cli_ctx = _resolve_model(cli_ctx, opts.pop("model"), as_json)
        tagged = bool(prompt) and bool(extract_prompt_loras(prompt)[1])
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    runtime = _take(opts, "device", "dtype", "cache_mb")
    runtime["name"] = BUILTIN_NAME if choice.builtin else None
    steps, cfg = opts.pop("steps"), opts.pop("cfg")
    gen = Generation(**_take(opts, "seed", "width", "height", "negative_prompt"),
                     steps=steps if steps is not None else (BUILTIN_STEPS if choice.builtin else _GEN.steps),
                     cfg=cfg if cfg is not None else (BUILTIN_CFG if choice.builtin else _GEN.cfg))
    params = LoratorioParams(**_take(opts, "p", "tau", "lam", "k"))
    try:
        steps_g = tuple(int(x) for x in opts.pop("grounding_steps").split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter("--grounding-steps takes step numbers, e.g. 0,2") from exc
    grounding = GroundingParams(source=opts.pop("grounding_source"), steps=steps_g, prompts=opts.pop("region_prompts"),
                                fuse_at=opts.pop("fuse_at"), plain_background=opts.pop("plain_background") or None,
                                repaste=opts.pop("repaste"), ride_along=opts.pop("ride_along"),
                                style_joins=opts.pop("style_joins"), style_join_at=opts.pop("style_join_at"),
                                style_where=opts.pop("style_where"), style_mask=opts.pop("style_mask"),
                                riders_in_composition=opts.pop("riders_in_composition"),
                                objects_in_composition=opts.pop("objects_in_composition"),
                                final_regions=opts.pop("final_regions"), rider_band=opts.pop("rider_band"),
                                fusion_lam=opts.pop("fusion_lam"), own_stride=opts.pop("own_stride"))
    selection = SelectionParams(**_take(opts, "candidates", "keep", "probe_steps", "probe_start", "threshold", "retrieval_weight", "reuse_probe"),
                                per_phrase=opts.pop("per_phrase") or None)
    switch_every = opts.pop("switch_every")

    _quiet_libraries()
    auto = not batch_file and methods.method_class(method).needs_loras and (bool(pool) or (not loras and not tagged))
    if auto:
        return _auto(cli_ctx, prompt, choice.path, runtime, method, gen, selection, params, grounding, list(pool), out,
                     weights_map, as_json)

    from composer import Composer, Job
    from composer.api import read_jobs
    from composer.loras import parse_lora_token

    try:
        if batch_file:
            defaults = {"method": method, "switch_every": switch_every, "p": params.p, "tau": params.tau, "lam": params.lam,
                        "k": params.k, "grounding": grounding.source, "grounding_steps": list(grounding.steps),
                        "region_prompts": grounding.prompts, "fuse_at": grounding.fuse_at,
                        "plain_background": grounding.plain_background, "repaste": grounding.repaste,
                        "ride_along": grounding.ride_along, "style_joins": grounding.style_joins,
                        "style_join_at": grounding.style_join_at, "style_where": grounding.style_where,
                        "style_mask": grounding.style_mask,
                        "riders_in_composition": grounding.riders_in_composition,
                        "objects_in_composition": grounding.objects_in_composition,
                        "final_regions": grounding.final_regions, "rider_band": grounding.rider_band,
                        "fusion_lam": grounding.fusion_lam, "own_stride": grounding.own_stride,
                        **{f: getattr(gen, f) for f in ("seed", "steps", "cfg", "width", "height", "negative_prompt")}}
            jobs = read_jobs(batch_file, defaults)
            os.makedirs(out, exist_ok=True)
        else:
            jobs = [Job.with_generation(prompt, gen, loras=[parse_lora_token(t) for t in loras], method=method,
                                        params=params, grounding=grounding, switch_every=switch_every)]
        composer = Composer.from_pretrained(choice.path, registry=cli_ctx.registry, device=runtime["device"],
                                            dtype=runtime["dtype"], cache_bytes=runtime["cache_mb"] << 20, name=runtime["name"])
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc

    reports = [_run_job(composer, job, batch_file, out, weights_map, as_json) for job in jobs]
    if as_json:
        echo_json(reports if batch_file else reports[0])
    elif not batch_file:
        rep = reports[0]
        loras_txt = ", ".join(f"{x['name']}:{x['weight']:g}" for x in rep["loras"]) or "none"
        click.echo(f"{rep['out']}: {rep['model']}, {method_label(rep)}, {rep['steps']} steps, seed {rep['seed']}, LoRAs {loras_txt}, "
                   f"{rep['unet_calls']} UNet calls, {rep['seconds']:.1f}s")
    if batch_file and any("error" in r for r in reports):
        raise click.ClickException(f"{sum('error' in r for r in reports)} of {len(reports)} jobs failed")


def _submit_batch(queue_url: str, batch_file: str, out: str, results_dir: str | None, wait: bool, as_json: bool,
                  opts: dict[str, Any]) -> None:
    """Submit each line of the batch to the queue; with --wait, wait for them and copy the results to
    --out DIR under the jobs' names, reporting each line as an in-process batch does."""
    import shutil
    import time

    from composer.api import read_jobs
    from loraregistry.cli.queue import open_queue, results_dir_or_default
    from loraregistry.web.jobs import QueueFull

    # The line fields the options give (unset sampling options are left to the worker's model).
    try:
        grounding_steps = [int(x) for x in opts["grounding_steps"].split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter("--grounding-steps takes step numbers, e.g. 0,2") from exc
    defaults = {"method": opts["method"], "switch_every": opts["switch_every"], "p": opts["p"], "tau": opts["tau"], "lam": opts["lam"],
                "k": opts["k"], "grounding": opts["grounding_source"], "grounding_steps": grounding_steps,
                "region_prompts": opts["region_prompts"], "fuse_at": opts["fuse_at"], "seed": opts["seed"], "negative_prompt": opts["negative_prompt"],
                **{f: opts[f] for f in ("steps", "cfg", "width", "height") if opts[f] is not None}}
    try:
        read_jobs(batch_file, defaults)  # every line valid before any is submitted
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    lines = []
    with open(batch_file, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if text.strip():
                d = {**defaults, **json.loads(text)}
                d.setdefault("name", f"job{n:04d}")
                lines.append(d)
    store_dir = results_dir_or_default(results_dir)
    q = open_queue(queue_url)
    submitted: list[tuple[str, str]] = []
    try:
        for line in lines:
            submitted.append((line["name"], q.enqueue("line", line, name=line["name"])))
    except QueueFull as exc:
        raise click.ClickException(f"{exc} ({len(submitted)} of {len(lines)} jobs submitted: "
                                   f"{', '.join(i for _, i in submitted) or 'none'})") from exc
    if not wait:
        (echo_json if as_json else lambda x: [click.echo(json.dumps(r)) for r in x])(
            [{"name": name, "id": job_id} for name, job_id in submitted])
        return
    os.makedirs(out, exist_ok=True)
    pending, reports = dict(submitted), {}
    while pending:
        for name, job_id in list(pending.items()):
            rec = q.record(job_id)
            if rec is None or rec["state"] not in ("done", "failed"):
                continue
            del pending[name]
            if rec["state"] == "failed":
                reports[name] = {"name": name, "id": job_id, "error": rec["error"], "worker": rec["worker"]}
            else:
                stored = json.loads((store_dir / f"{job_id}.json").read_text())
                rep = {**stored["report"], "name": name, "id": job_id, "worker": rec["worker"], "out": os.path.join(out, f"{name}.png")}
                shutil.copyfile(store_dir / stored["image"], rep["out"])
                if stored.get("weights_map"):
                    rep["weights_map"] = os.path.join(out, f"{name}.weights.png")
                    shutil.copyfile(store_dir / stored["weights_map"], rep["weights_map"])
                reports[name] = rep
            if not as_json:
                click.echo(json.dumps(reports[name], default=str))
        if pending:
            time.sleep(0.2)
    ordered = [reports[name] for name, _ in submitted]
    if as_json:
        echo_json(ordered)
    if any("error" in r for r in ordered):
        raise click.ClickException(f"{sum('error' in r for r in ordered)} of {len(ordered)} jobs failed")


def _run_job(composer, job, batch_file, out, weights_map, as_json) -> dict[str, Any]:
    """Run one job and write its PNG (and weights map); in a batch, a failing job is reported, not raised."""
    quiet = as_json or not sys.stderr.isatty()
    with _progress(quiet) as bar:
        task = bar.add_task(job.name or "compose", total=job.steps)
        try:
            result = composer.run(job, progress=lambda done, total: bar.update(task, completed=done))
        except _errors() as exc:
            if not batch_file:
                raise click.ClickException(str(exc)) from exc
            rep = {"name": job.name, "error": str(exc)}
            if not as_json:
                click.echo(json.dumps(rep))
            return rep
    rep = result.report
    path = os.path.join(out, f"{job.name}.png") if batch_file else (out or "compose.png")
    result.save(path)
    rep["out"] = path
    wm_path = weights_map or (os.path.join(out, f"{job.name}.weights.png") if batch_file and result.weights else None)
    if wm_path:
        if not result.weights:
            raise click.ClickException(f"--weights-map: method {job.method!r} has no LoRA weights to draw")
        result.save_weights_map(wm_path)
        rep["weights_map"] = wm_path
    if batch_file and not as_json:
        click.echo(json.dumps(rep, default=str))
    return rep


def _resolve_model(cli_ctx: CliContext, model: str | None, quiet: bool):
    """The pipeline to load (said on stderr), and with the built-in one and no --db, the demo registry."""
    from loraregistry.builtin import demo_registry_url, resolve_model

    choice = resolve_model(model)
    if not quiet:
        click.echo(f"model: {choice.describe()}", err=True)
    if choice.builtin and cli_ctx.db_url is None:
        cli_ctx = _DemoContext(db_url=demo_registry_url())
        if not quiet:
            click.echo("registry: the built-in ToyWorld LoRAs (give --db for your own)", err=True)
    return choice, cli_ctx


class _DemoContext(CliContext):
    """The demo registry, ingested from the built-in dump when first needed."""

    def registry(self):
        if self._registry is None:
            from loraregistry.builtin import open_demo_registry

            self._registry = open_demo_registry(self.db_url)
        return self._registry


def _auto(cli_ctx: CliContext, prompt: str, model: str, runtime: dict[str, Any], method: str, gen: Generation,
          selection: SelectionParams, params: LoratorioParams, grounding: GroundingParams, pool: list[str],
          out: str | None, weights_map: str | None, as_json: bool) -> None:
    """Retrieve (or take --pool), probe, prune and compose: composer.auto does the work."""
    from composer import Composer
    from composer.auto import AutoComposer

    quiet = as_json or not sys.stderr.isatty()
    try:
        registry = cli_ctx.registry()
        ac = AutoComposer(Composer.from_pretrained(model, registry=cli_ctx.registry, device=runtime["device"],
                                                   dtype=runtime["dtype"], cache_bytes=runtime["cache_mb"] << 20,
                                                   name=runtime["name"]), registry)
        with _progress(quiet) as bar:
            task = bar.add_task("compose", total=gen.steps)
            result = ac.compose(prompt, pool or None, method=method, params=params, grounding=grounding, gen=gen,
                                selection=selection,
                                progress=lambda done, total: bar.update(task, completed=done))
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    rep = result.report
    path = out or "compose.png"
    result.save(path)
    rep["out"] = path
    if weights_map:
        result.save_weights_map(weights_map)
        rep["weights_map"] = weights_map
    if as_json:
        echo_json(rep)
        return
    sel = rep["selection"]
    loras_txt = ", ".join(f"{x['name']}:{x['weight']:g}" for x in rep["loras"])
    click.echo(f"{path}: {rep['model']}, {method_label(rep)}, {rep['steps']} steps, seed {gen.seed}, LoRAs {loras_txt} "
               f"(kept {len(sel['survivors'])} of {len(sel['candidates'])} candidates after a "
               f"{sel['probe']['steps'] if sel['probe'] else 0}-step probe), {rep['unet_calls_total']} UNet calls, "
               f"{rep['seconds']:.1f}s")
    for d in sel["dropped"]:
        click.echo(f"  dropped {d['name']}: {d['reason']}")
    for p in sel.get("unserved_phrases") or []:
        click.echo(f"  no LoRA kept for {p!r}: the base model draws it")


def method_label(rep: dict) -> str:
    """The method of a report, with the one it picked ("by-role: loratorio")."""
    chosen = (rep.get("options") or {}).get("chosen")
    return f"{rep['method']}: {chosen}" if chosen else rep["method"]


COMMANDS = [compose]
