"""The distractor dump (toyworld.distractors): files a registry can ingest, each with the sidecar
its kind calls for, and weights that are what the card does not say."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toyworld import distractors as dis

DUMP = Path(__file__).resolve().parents[2] / "toyworld" / "assets" / "dump"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("distractors")
    return out, dis.write(DUMP, out)


def test_every_kind_is_written_with_its_sidecar(made):
    out, plan = made
    kinds = {d.kind for d in plan}
    assert kinds == {"weak", "inert", "mislabelled", "neighbour"}
    index = json.loads((out / "DISTRACTORS.json").read_text())
    for d in plan:
        card = json.loads((out / f"{d.stem}.civitai.json").read_text())
        assert card["modelVersions"][0]["files"][0]["name"] == f"{d.stem}.safetensors"
        assert card["modelVersions"][0]["trainedWords"] == [d.trigger]
        assert index[d.stem]["kind"] == d.kind
        if d.kind in ("weak", "inert", "mislabelled"):
            assert d.claims in card["tags"]  # the card claims the skill...
        if d.kind == "mislabelled":
            assert d.source != d.claims  # ...that the weights do not draw


def test_weak_copies_are_the_trained_ones(made):
    """The weak near-duplicates are LoRAs of their own, trained for a fraction of the steps from
    another seed (toyworld/assets/weak), not rescaled copies of the good one."""
    out, plan = made
    index = json.loads((out / "DISTRACTORS.json").read_text())
    weak = [d for d in plan if d.kind == "weak"]
    assert len(weak) == 8 and all(index[d.stem]["trained_steps"] == d.trained_steps > 0 for d in weak)
    for d in weak:
        trained = load_file(str(dis.WEAK_DIR / f"toyworld_{d.source}.safetensors"))
        written = load_file(str(out / f"{d.stem}.safetensors"))
        assert trained.keys() == written.keys() and all(torch.equal(trained[k], written[k]) for k in trained)
        good = load_file(str(DUMP / f"toyworld_{d.source}.safetensors"))
        up = next(k for k in good if k.endswith("lora_up.weight"))
        assert not torch.allclose(good[up], trained[up], atol=1e-3)  # its own weights


def test_weights_are_scaled_through_alpha_only(tmp_path):
    """Without trained copies (a dump of one's own), a weak copy is the good LoRA at a quarter."""
    plan = dis.write(DUMP, tmp_path, weak=None)
    out = tmp_path
    weak = next(d for d in plan if d.kind == "weak")
    a, b = load_file(str(DUMP / f"toyworld_{weak.source}.safetensors")), load_file(str(out / f"{weak.stem}.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        expected = a[k] * dis.WEAK_SCALE if k.endswith(".alpha") else a[k]
        assert b[k].allclose(expected), k
    with pytest.raises(ValueError, match="alpha"):
        dis.scaled({"x.lora_up.weight": a[next(iter(a))]}, 0.5)


def test_the_distractor_dump_ingests(made, tmp_path):
    from loraregistry.api import Registry

    out, plan = made
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg.ingest(str(DUMP))
    reg.ingest(str(out))
    names = {e.name for e in reg.list(limit=100)}
    assert {d.name for d in plan} <= names and len(names) == len(plan) + 8
    reg.close()
