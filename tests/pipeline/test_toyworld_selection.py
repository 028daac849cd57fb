"""On the ToyWorld demo (trained base pipeline + one LoRA per skill, ingested as a Civitai dump):
a prompt naming two skills keeps exactly those two skills' LoRAs among the survivors in most seeds.

Skips until the ToyWorld issue has produced ``toyworld/assets/pipeline`` and ``toyworld/assets/dump``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[2] / "toyworld" / "assets"
PIPELINE, DUMP = ASSETS / "pipeline", ASSETS / "dump"
PROMPTS = {  # prompt -> the two skills it names (trigger words)
    "a kiki on the left, checkerboard background": {"kiki", "checkerboard"},
    "a bouba on the right, stripes background": {"bouba", "stripes"},
    "a red circle with halo on the left, dark background, framed": {"halo", "framed"},
    "a kiki on the left and a mimi on the right, light background": {"kiki", "mimi"},
}
SEEDS = range(4)


@pytest.mark.slow
def test_two_skill_prompts_keep_their_two_loras(tmp_path):
    if not (PIPELINE.is_dir() and DUMP.is_dir()):
        pytest.skip(f"ToyWorld demo assets not built yet ({PIPELINE} and {DUMP}; see the ToyWorld issue)")
    from composer.auto import AutoComposer
    from loraregistry.api import Registry

    reg = Registry.open(f"sqlite:///{tmp_path / 'toy.db'}")
    reg.ingest(str(DUMP))
    ac = AutoComposer.from_pretrained(str(PIPELINE), reg, device="cpu")
    hits, total, misses = 0, 0, []
    for prompt, want in PROMPTS.items():
        for seed in SEEDS:
            sel = ac.select(prompt, k=2, seed=seed, steps=25, probe_steps=3)
            kept = {w for c in sel.survivors for w in c.trigger_words}
            total += 1
            if kept == want:
                hits += 1
            else:
                misses.append((prompt, seed, sorted(kept)))
    rate = hits / total
    print(f"two-skill selection rate: {hits}/{total} = {rate:.2f}; misses: {misses}")
    assert rate > 0.5, f"two-skill prompts kept their two LoRAs in only {hits} of {total} runs: {misses}"
