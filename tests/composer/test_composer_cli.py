"""``loraregistry compose`` through click's CliRunner on the tiny SD1 pipeline."""
from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from loraregistry.cli import cli


def test_compose_help_has_example():
    r = CliRunner().invoke(cli, ["compose", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "--weights-map" in r.output


def test_compose_one_image_json_png_weights_map(sd1_dir, sd1_loras, tmp_path):
    out, wm = tmp_path / "a.png", tmp_path / "w.png"
    args = ["compose", f"a fox <lora:{sd1_loras['peft']}:0.5>", "--model", sd1_dir, "--lora", sd1_loras["kohya"] + ":0.8",
            "--lora", sd1_loras["lokr"], "--steps", "2", "--width", "32", "--height", "32", "--seed", "9",
            "--out", str(out), "--weights-map", str(wm), "--json", "--device", "cpu"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    # The default, by-role, sees files with no Civitai category (no registry here) and runs LoRAtorio.
    assert rep["method"] == "by-role" and rep["options"]["chosen"] == "loratorio"
    assert rep["unet_calls"] == 2 and rep["unet_samples"] == 2 * 2 * 4
    assert [x["weight"] for x in rep["loras"]] == [0.8, 1.0, 0.5]
    assert [x["format"] for x in rep["loras"]] == ["kohya-locon", "lycoris-lokr", "peft"]
    assert Image.open(out).text["parameters"].startswith("a fox <lora:kohya_locon:0.8> <lora:lokr:1> <lora:peft:0.5>\n")
    assert Image.open(wm).size[1] > 3 * 40
    # Seeded: same command, same pixels.
    out2 = tmp_path / "b.png"
    r2 = CliRunner().invoke(cli, [a if a != str(out) else str(out2) for a in args])
    assert r2.exit_code == 0
    assert Image.open(out).tobytes() == Image.open(out2).tobytes()


def test_compose_batch(sd1_dir, sd1_loras, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"name": "lt", "prompt": "a hill", "loras": [sd1_loras["kohya"], [sd1_loras["loha"], 0.7]], "method": "loratorio", "seed": 1, "steps": 2},
        {"name": "sw", "prompt": "a hill", "loras": [sd1_loras["kohya"], sd1_loras["peft"]], "method": "switch", "seed": 1, "steps": 2},
        {"name": "bad", "prompt": "a hill", "loras": ["/nonexistent/x.safetensors"], "method": "merge", "seed": 1},
    ]
    jobs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    d = tmp_path / "out"
    r = CliRunner().invoke(cli, ["compose", "--model", sd1_dir, "--batch", str(jobs), "--out", str(d),
                                 "--width", "32", "--height", "32", "--device", "cpu"])
    assert r.exit_code == 1
    reps = [json.loads(x[x.index('{"name"'):]) for x in r.output.splitlines() if '{"name"' in x]
    assert [x["name"] for x in reps] == ["lt", "sw", "bad"]
    assert "error" in reps[2] and "1 of 3 jobs failed" in r.output
    assert (d / "lt.png").exists() and (d / "sw.png").exists() and (d / "lt.weights.png").exists()
    assert "Composition: switch" in Image.open(d / "sw.png").text["parameters"]


def test_compose_refuses_wrong_family_cleanly(sd1_dir, fixtures_dir):
    r = CliRunner().invoke(cli, ["compose", "x", "--model", sd1_dir, "--lora", f"{fixtures_dir}/flux_aitoolkit_lora.safetensors",
                                 "--steps", "1", "--device", "cpu"])
    assert r.exit_code == 1 and "Error:" in r.output and "flux" in r.output and "Traceback" not in r.output


def test_compose_usage_errors(sd1_dir, tmp_path):
    r = CliRunner().invoke(cli, ["compose", "--model", sd1_dir])
    assert r.exit_code == 2 and "missing PROMPT" in r.output


def test_registry_id_resolution(sd1_dir, sd1_loras, tmp_path):
    """--lora takes registry ids and names: a LoRA ingested into the registry is composed by its id
    and by its trigger word (the report names the entry), and an unknown name is one clean error."""
    import shutil

    from loras import civitai_sidecar

    from loraregistry.api import Registry

    d = tmp_path / "dump"
    d.mkdir()
    path = d / "fox_style.safetensors"
    shutil.copy(sd1_loras["peft"], path)
    civitai_sidecar(path, model_id=501, version_id=601, name="Fox Style", trained_words=["foxstyle"], description="foxes")
    db = f"sqlite:///{tmp_path}/reg.db"
    reg = Registry.open(db)
    reg.ingest(str(d))
    entry = reg.find("foxstyle")
    reg.close()
    for token in (str(entry.id), "foxstyle"):
        r = CliRunner().invoke(cli, ["--db", db, "compose", "x", "--model", sd1_dir, "--lora", f"{token}:0.6",
                                     "--lora", sd1_loras["kohya"], "--steps", "1", "--width", "32", "--height", "32",
                                     "--device", "cpu", "--out", str(tmp_path / "x.png"), "--json"])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.output[r.output.index("{"):])
        assert (rep["loras"][0]["name"], rep["loras"][0]["registry_id"], rep["loras"][0]["weight"]) == ("Fox Style", entry.id, 0.6)
    r = CliRunner().invoke(cli, ["--db", db, "compose", "x", "--model", sd1_dir,
                                 "--lora", "no-such-lora", "--steps", "1", "--device", "cpu"])
    assert r.exit_code == 1 and "no registry entry matches 'no-such-lora'" in r.output and "Traceback" not in r.output


def test_compose_in_half_precision(sd1_dir, sd1_loras, tmp_path):
    """--dtype bfloat16 (half precision, as float16 is on a GPU; bfloat16 is what a CPU runs):
    the pipeline and four-format LoRAs load in it, LoRAtorio composes, the report says so, and the
    image is float32's up to rounding. --dtype auto is float32 on a CPU."""
    import numpy as np

    images = {}
    for dtype in ("auto", "bfloat16"):
        out = tmp_path / f"{dtype}.png"
        r = CliRunner().invoke(cli, ["compose", "a fox", "--model", sd1_dir, "--lora", sd1_loras["kohya"],
                                     "--lora", sd1_loras["lokr"], "--lora", sd1_loras["peft"], "--steps", "3",
                                     "--width", "32", "--height", "32", "--out", str(out), "--json", "--device", "cpu",
                                     "--dtype", dtype])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.output[r.output.index("{"):])
        assert rep["dtype"] == ("float32" if dtype == "auto" else dtype)
        images[dtype] = np.asarray(Image.open(out)).astype(float)
    diff = np.abs(images["auto"] - images["bfloat16"])
    assert diff.mean() < 3 and images["bfloat16"].std() > 1  # close to float32, and not a blank image


def test_compose_grounded_with_phrases_from_the_command_line(sd1_dir, sd1_loras, tmp_path):
    """--lora FILE@PHRASE says which part of the prompt a LoRA is for; --grounding picks the mask
    source; batch lines take the same fields."""
    out = tmp_path / "g.png"
    r = CliRunner().invoke(cli, ["compose", "a fox on the left, a hill on the right", "--model", sd1_dir, "--method", "regional",
                                 "--lora", sd1_loras["kohya"] + "@a fox on the left", "--lora", sd1_loras["peft"] + ":0.7@a hill on the right",
                                 "--grounding", "attention", "--grounding-steps", "0", "--steps", "2", "--width", "32",
                                 "--height", "32", "--out", str(out), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    g = rep["options"]["grounding"]
    assert (g["source"], g["steps"], g["units"]) == ("attention", [0], ["a fox on the left", "a hill on the right"])
    assert [x["phrase"] for x in rep["loras"]] == ["a fox on the left", "a hill on the right"]
    assert rep["loras"][1]["weight"] == 0.7
    assert 'Grounding: "source=attention' in Image.open(out).text["parameters"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"name": "g", "prompt": "a fox on the left, a hill on the right", "method": "grounded-loratorio",
                                "loras": [{"path": sd1_loras["kohya"], "phrase": "a fox on the left"}, sd1_loras["peft"]],
                                "grounding": "contrast", "grounding_steps": [0], "steps": 2}) + "\n")
    r = CliRunner().invoke(cli, ["compose", "--model", sd1_dir, "--batch", str(jobs), "--out", str(tmp_path / "b"),
                                 "--width", "32", "--height", "32", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)[0]
    assert rep["options"]["grounding"]["units"][0] == "a fox on the left" and rep["options"]["grounding"]["steps"] == [0]
    r = CliRunner().invoke(cli, ["compose", "x", "--model", sd1_dir, "--lora", sd1_loras["peft"], "--grounding-steps", "a,b"])
    assert r.exit_code == 2 and "--grounding-steps" in r.output


def test_fusion_options_reach_fusion_from_the_cli_and_a_batch(sd1_dir, sd1_loras, tmp_path):
    out = tmp_path / "f.png"
    r = CliRunner().invoke(cli, ["compose", "a fox, a hill", "--model", sd1_dir, "--method", "fusion", "--fuse-at", "1",
                                 "--plain-background", "white background",
                                 "--lora", sd1_loras["kohya"], "--lora", sd1_loras["peft"], "--grounding", "contrast",
                                 "--grounding-steps", "0", "--steps", "2", "--width", "32", "--height", "32",
                                 "--style-where", "everywhere", "--style-join-at", "5",
                                 "--no-objects-in-composition", "--final-regions", "fuse", "--rider-band", "1.5", "--fusion-lam", "0.25",
                                 "--own-stride", "3", "--style-mask", "everywhere",
                                 "--out", str(out), "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    options = json.loads(r.output[r.output.index("{"):])["options"]
    assert options["fuse_at"] == 1 and options["plain_background"] == "white background"
    assert options["style_where"] == "everywhere" and options["grounding"]["style_join_at"] == 5
    assert options["objects_in_composition"] is False and options["final_regions"] == "fuse"
    assert options["rider_band"] == 1.5 and options["grounding"]["fusion_lam"] == 0.25
    assert options["own_stride"] == 3 and options["style_mask"] == "everywhere"
    params = Image.open(out).text["parameters"]
    assert "Own stride: 3" in params and "Fuse at: 1" in params and 'Plain background: "white background"' in params
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"name": "f", "prompt": "a fox, a hill", "method": "fusion", "fuse_at": 3,
                                "plain_background": None, "style_where": "everywhere", "loras": [sd1_loras["kohya"]],
                                "final_regions": "fuse", "own_stride": 1, "style_mask": "everywhere",
                                "steps": 2}) + "\n")
    r = CliRunner().invoke(cli, ["compose", "--model", sd1_dir, "--batch", str(jobs), "--out", str(tmp_path / "b"),
                                 "--width", "32", "--height", "32", "--device", "cpu", "--json", "--no-repaste",
                                 "--no-ride-along"])
    assert r.exit_code == 0, r.output
    options = json.loads(r.stdout)[0]["options"]
    assert options["fuse_at"] == 3 and options["plain_background"] is None
    assert options["grounding"]["repaste"] is False  # the batch's defaults, from the command line
    assert options["ride_along"] is False
    assert options["style_where"] == "everywhere" and options["final_regions"] == "fuse"  # the job's own fields
    assert options["own_stride"] == 1 and options["style_mask"] == "everywhere"
