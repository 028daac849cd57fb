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

    Writes OUT/compose.png (generation parameters in its `parameters` text chunk) and
    OUT/weights.png (each kept LoRA's per-patch LoRAtorio weight over the steps).

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
    for col in ("candidate", "trigger", "retrieval", "probe", "combined", "decision"):
        table.add_column(col, overflow="fold")
    fmt = lambda x: "" if x is None else f"{x:.3g}"
    for c in sel.candidates:
        probe = c.probe.get("score") if c.probe else None
        decision = "kept" if c.kept else f"dropped: {c.reason}"
        table.add_row(c.name, ", ".join(c.trigger_words), fmt(c.retrieval_score), fmt(probe), fmt(c.combined), decision)
    console.print(table)

    image, weights = out / "compose.png", out / "weights.png"
    result.save(str(image))
    result.save_weights_map(str(weights))
    names = ", ".join(c.name for c in sel.survivors)
    console.print(f"[bold]3. wrote[/] {image} (LoRAs: {names}) and {weights} "
                  f"(rows: {', '.join(result.lora_names)}; columns: steps) in {time.perf_counter() - t0:.0f}s")
    console.print(f"registry: {out / 'registry.db'}  (try: loraregistry --db {out / 'registry.db'} list)")


COMMANDS = [demo]
