"""``loraregistry compose "prompt"`` without --lora: the registry picks the LoRAs."""
from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from loraregistry.cli import cli

SMALL = ["--steps", "3", "--probe-steps", "1", "--width", "32", "--height", "32", "--device", "cpu"]


def test_compose_picks_its_own_loras(sd1_dir, registry, tmp_path):
    out = tmp_path / "auto.png"
    r = CliRunner().invoke(cli, ["--db", registry.url, "compose", "a kiki on the left, checkerboard background, inert",
                                 "--model", sd1_dir, "--keep", "2", "--out", str(out), "--json", *SMALL])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    sel = rep["selection"]
    assert sel["mode"] == "retrieval" and 1 <= len(sel["survivors"]) <= 2 and len(sel["candidates"]) == 3
    assert sorted(x["registry_id"] for x in rep["loras"]) == sorted(c["registry_id"] for c in sel["candidates"] if c["kept"])
    assert rep["unet_samples_total"] == sel["probe"]["unet_samples"] + rep["unet_samples"]
    params = Image.open(out).text["parameters"]
    assert "LoRA selection: retrieval" in params and "Candidates:" in params


def test_compose_reuse_probe_flag(sd1_dir, registry, dump, tmp_path):
    out = tmp_path / "reuse.png"
    r = CliRunner().invoke(cli, ["--db", registry.url, "compose", "a kiki", "--model", sd1_dir, "--pool", dump["kiki"],
                                 "--pool", dump["stripes"], "--keep", "2", "--threshold", "0", "--reuse-probe",
                                 "--probe-start", "0.34",
                                 "--out", str(out), "--json", *SMALL])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    # 3 steps: the probe's base step (S = round(0.34 x 3) = 1) and its 1 step replayed
    assert rep["replayed_steps"] == 2 and rep["unet_calls"] == 1
    assert "Probe steps re-used: 2" in Image.open(out).text["parameters"]


def test_compose_pool_and_human_output(sd1_dir, registry, dump, tmp_path):
    out = tmp_path / "pool.png"
    r = CliRunner().invoke(cli, ["--db", registry.url, "compose", "a kiki", "--model", sd1_dir, "--pool", dump["kiki"],
                                 "--pool", dump["inert"], "--keep", "1", "--threshold", "0", "--out", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    assert "kept 1 of 2 candidates after a 1-step probe" in r.output and "dropped inert: rank 2 of 2" in r.output


def test_compose_auto_errors_are_clean(sd1_dir, dump, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    r = CliRunner().invoke(cli, ["--db", empty, "compose", "a kiki", "--model", sd1_dir, *SMALL])
    assert r.exit_code == 1 and "is empty" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["--db", empty, "compose", "a kiki", "--model", sd1_dir, "--pool", dump["kiki"], "--keep", "2", *SMALL])
    assert r.exit_code == 1 and "larger than the pool of 1" in r.output
    r = CliRunner().invoke(cli, ["compose", "a kiki", "--model", sd1_dir, "--pool", dump["kiki"], "--lora", dump["kiki"]])
    assert r.exit_code == 2 and "--pool" in r.output
