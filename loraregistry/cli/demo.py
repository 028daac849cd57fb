"""``loraregistry demo``: the whole job on built-in data, on a fresh machine, with nothing to download.

Ingest the ToyWorld LoRA dump (kohya files with Civitai sidecars, exactly like a real dump) into a
fresh registry, then let the composer retrieve, probe and compose a two-skill prompt on the
built-in ToyWorld pipeline, and write the image and the LoRAtorio weight map.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from composer import methods
from loraregistry.cli.common import library_errors

DEMO_PROMPT = "a kiki on the left, checkerboard background"


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo registry and images go (replaced on each run).")
@click.option("--prompt", default=DEMO_PROMPT, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--keep", type=click.IntRange(1), default=2, show_default=True, help="Most LoRAs to keep after the probe.")
@library_errors
def demo(out_dir: str, prompt: str, seed: int, keep: int) -> None:
    """Ingest the built-in ToyWorld dump, then retrieve, probe and compose a two-skill prompt.

    Writes OUT/compose.png (generation parameters in its `parameters` text chunk), OUT/weights.png
    (each kept LoRA's weight or mask over the steps: where it drew), and OUT/strip.png (the same
    prompt, LoRAs and seed under base, merge, loratorio and the default method, each labelled with
    what the ToyWorld detector finds).

    Example: loraregistry demo --out /tmp/demo --prompt "a bouba on the right, stripes background"
    """
    from rich.console import Console
    from rich.table import Table

    from loraregistry.api import Registry
    from loraregistry.builtin import BUILTIN_CFG, BUILTIN_STEPS, builtin_dump_dir, builtin_pipeline_dir

    console = Console()
    t0 = time.perf_counter()
    try:
        dump, pipeline = builtin_dump_dir(), builtin_pipeline_dir()
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    console.print(f"[bold]1. ingest[/] {dump}")
    registry = Registry.open(f"sqlite:///{(out / 'registry.db').resolve()}")
    report = registry.ingest(str(dump))
    console.print(f"   {dict(report.counts)}; problems: {len(report.problems)}")

    console.print(f"[bold]2. retrieve, probe, compose[/] {prompt!r} on {pipeline}")
    from composer.auto import AutoComposer
    from loraregistry.cli.compose import _progress, _quiet_libraries

    _quiet_libraries()
    ac = AutoComposer.from_pretrained(str(pipeline), registry, device="cpu")
    with _progress(False) as bar:
        task = bar.add_task("compose", total=BUILTIN_STEPS)
        result = ac.compose(prompt, k=keep, seed=seed, steps=BUILTIN_STEPS, cfg=BUILTIN_CFG,
                            progress=lambda done, total: bar.update(task, completed=done))
    sel = result.selection
    table = Table()
    # What selection by phrase decides on: the phrase that found each candidate, its retrieval
    # score, and its strength (how much it moves the base's prediction, composer.relevance.strength).
    for col in ("candidate", "trigger", "phrase", "retrieval", "strength", "decision"):
        table.add_column(col, overflow="fold")
    fmt = lambda x: "" if x is None else f"{x:.3g}"
    for c in sel.candidates:
        strength = c.probe.get("strength") if c.probe else None
        decision = "kept" if c.kept else f"dropped: {c.reason}"
        table.add_row(c.name, ", ".join(c.trigger_words), c.phrase or "", fmt(c.retrieval_score),
                      "" if strength is None else f"{strength:.2%}", decision)
    console.print(table)

    image, weights, strip_path = out / "compose.png", out / "weights.png", out / "strip.png"
    result.save(str(image))
    result.save_weights_map(str(weights))
    names = ", ".join(c.name for c in sel.survivors)
    console.print(f"[bold]3. compared[/] the same LoRAs and seed under base, merge, loratorio and {methods.DEFAULT}")
    from composer import Job
    from loraregistry.strip import method_strip

    strip_methods = list(dict.fromkeys(["base", "merge", "loratorio", methods.DEFAULT]))
    runs = [(m, ac.composer.run(Job(sel.prompt, loras=[c.ref() for c in sel.survivors], method=m, seed=seed,
                                    steps=BUILTIN_STEPS, cfg=BUILTIN_CFG))) for m in strip_methods]
    strip, info = method_strip(runs, sel.prompt)
    strip.save(strip_path, pnginfo=info)
    console.print("   " + info_labels(runs, sel.prompt))
    console.print(f"[bold]4. wrote[/] {image} (LoRAs: {names}), {weights} "
                  f"(rows: {', '.join(result.lora_names)}; columns: steps) and {strip_path} in {time.perf_counter() - t0:.0f}s")
    console.print(f"registry: {out / 'registry.db'}  (try: loraregistry --db {out / 'registry.db'} list)")


def info_labels(runs, prompt: str) -> str:
    from loraregistry.strip import detector_label

    return "; ".join(f"{m}: {detector_label(r.image, prompt) or '-'}" for m, r in runs)


COMMANDS = [demo]
