"""The embedded default: with no model configured, `compose` uses the built-in ToyWorld pipeline
(and, with no registry configured, the ToyWorld demo registry); `demo` runs the whole job on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from loraregistry import builtin
from loraregistry.cli import cli

DUMP_READY = (builtin.assets_dir() / "dump").is_dir() and any((builtin.assets_dir() / "dump").glob("*.safetensors"))
needs_dump = pytest.mark.skipif(not DUMP_READY, reason="ToyWorld LoRA dump not trained yet (toyworld/assets/dump)")


def test_model_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(builtin.MODEL_ENV, raising=False)
    choice = builtin.resolve_model(None)
    assert choice.builtin and (Path(choice.path) / "model_index.json").is_file()
    assert "built-in ToyWorld" in choice.describe()
    assert builtin.resolve_model("toyworld").builtin
    monkeypatch.setenv(builtin.MODEL_ENV, str(tmp_path))
    env = builtin.resolve_model(None)
    assert not env.builtin and env.path == str(tmp_path) and env.source == "$LORAREGISTRY_MODEL"
    given = builtin.resolve_model("runwayml/stable-diffusion-v1-5")
    assert not given.builtin and given.source == "--model"


def test_compose_without_model_uses_the_builtin_pipeline(monkeypatch, tmp_path):
    monkeypatch.delenv(builtin.MODEL_ENV, raising=False)
    monkeypatch.delenv("LORAREGISTRY_DB", raising=False)
    monkeypatch.setenv("LORAREGISTRY_HOME", str(tmp_path / "home"))
    out = tmp_path / "circle.png"
    r = CliRunner().invoke(cli, ["compose", "a red circle on the left, light background", "--method", "base",
                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "model: built-in ToyWorld pipeline" in r.stderr
    assert "toyworld" in r.stdout and "25 steps" in r.stdout  # ToyWorld's own sampling defaults
    img = Image.open(out)
    assert img.size == (64, 64) and "CFG scale: 2" in img.text["parameters"]


def test_compose_with_a_missing_model_env_fails_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv(builtin.MODEL_ENV, str(tmp_path / "nowhere"))
    r = CliRunner().invoke(cli, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "compose", "a kiki", "--method", "base",
                                 "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "nowhere" in r.output and "Traceback" not in r.output


@needs_dump
@pytest.mark.slow
def test_compose_without_model_or_db_picks_toyworld_loras(monkeypatch, tmp_path):
    monkeypatch.delenv(builtin.MODEL_ENV, raising=False)
    monkeypatch.delenv("LORAREGISTRY_DB", raising=False)
    monkeypatch.setenv("LORAREGISTRY_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(cli, ["compose", "a kiki on the left, checkerboard background", "--keep", "2",
                                 "--out", str(tmp_path / "kc.png"), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["model"] == "toyworld"
    kept = {w for c in rep["selection"]["candidates"] if c["kept"] for w in c["trigger_words"]}
    assert kept == {"kiki", "checkerboard"}, rep["selection"]["dropped"]
    # The default method sees a character and a background (their Civitai categories) and runs fusion.
    assert rep["method"] == "by-role" and rep["options"]["chosen"] == "fusion"
    from loraregistry.cli.compose import method_label

    assert method_label(rep) == "by-role: fusion" and method_label({"method": "merge", "options": {}}) == "merge"
    assert (tmp_path / "home" / "toyworld-demo.db").is_file()


@needs_dump
@pytest.mark.slow
def test_a_frame_measured_at_the_border_lets_the_object_be_repasted(monkeypatch, tmp_path):
    """ToyWorld's style draws a frame: measured (``--style-where measured``), it acts at the border,
    off the kiki, so the kiki is pasted again after the last step, outside the frame."""
    monkeypatch.delenv(builtin.MODEL_ENV, raising=False)
    monkeypatch.delenv("LORAREGISTRY_DB", raising=False)
    monkeypatch.setenv("LORAREGISTRY_HOME", str(tmp_path / "home"))
    dump = builtin.assets_dir() / "dump"
    r = CliRunner().invoke(cli, ["compose", "a kiki in the center, light background, framed",
                                 "--lora", str(dump / "toyworld_kiki.safetensors"),
                                 "--lora", str(dump / "toyworld_framed.safetensors"), "--method", "fusion",
                                 "--style-where", "measured", "--out", str(tmp_path / "kf.png"), "--json",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    options = json.loads(r.stdout)["options"]
    assert options["grounding"]["roles"] == ["object", "style"]
    assert options["style_kept"] > 0.8 and options["repaste"]


@needs_dump
@pytest.mark.slow
def test_demo_ingests_composes_and_writes_image_and_weight_map(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "problems: 0" in r.output
    image, weights = Image.open(out / "compose.png"), Image.open(out / "weights.png")
    assert image.size == (64, 64)
    assert "kiki" in image.text["parameters"] and "checkerboard" in image.text["parameters"]
    rows = weights.text["rows"].split(", ")
    assert len(rows) == 2 and weights.size[1] > 2 * 48  # one row of cells per kept LoRA
    strip = Image.open(out / "strip.png")
    labels = dict(x.split(": ", 1) for x in strip.text["labels"].split("; "))
    from composer import methods

    assert list(labels) == list(dict.fromkeys(["base", "merge", "loratorio", methods.DEFAULT]))
    assert all("kiki " in v and "checkerboard " in v for v in labels.values())  # the detector's verdict on each
    assert strip.size[0] >= len(labels) * 256 and strip.text["parameters"].count("Seed: 0") == len(labels)


def test_strip_labels_come_from_the_detector():
    from types import SimpleNamespace

    from PIL import Image as PILImage

    from loraregistry.strip import detector_label, method_strip
    from toyworld.captions import parse_caption
    from toyworld.render import render

    prompt = "a kiki on the left, checkerboard background"
    import numpy as np

    drawn = PILImage.fromarray(render(parse_caption(prompt), np.random.default_rng(0)))
    blank = PILImage.new("RGB", (64, 64), (200, 200, 200))
    assert detector_label(drawn, prompt) == "checkerboard yes, kiki yes"
    assert detector_label(blank, prompt) == "checkerboard no, kiki no"
    assert detector_label(blank, "a knight in a castle") == ""  # not ToyWorld's grammar: no verdict
    strip, info = method_strip([("a", SimpleNamespace(image=drawn, parameters="p1")),
                                ("b", SimpleNamespace(image=blank, parameters="p2"))], prompt)
    assert strip.size[0] > 2 * 256 and "[a] p1" in info.chunks[0][1].decode()
