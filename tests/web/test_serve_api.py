"""The JSON API, in process, on the ToyWorld registry: the CLI's shapes, filters, paging, previews,
and compose jobs end to end (progress, result, gallery, a failing job, a full queue)."""
from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from loraregistry.cli import cli
from tests.web.conftest import FILLERS, make_client, wait_for

TOYWORLD = {"bouba", "checkerboard", "dots", "framed", "halo", "kiki", "mimi", "stripes"}
LOCON = {"bouba", "checkerboard", "dots", "halo"}  # toyworld/assets/README.md


def cli_json(url: str, *args: str):
    r = CliRunner().invoke(cli, ["--db", url, *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def names(items) -> set[str]:
    return {e["name"] for e in items}


def test_list_agrees_with_the_cli(client, toy_url):
    api = client.get("/api/entries", params={"limit": 100, "offset": 10}).json()
    assert api["entries"] == cli_json(toy_url, "list", "--limit", "100", "--offset", "10")
    assert api["total"] == 8 + 1 + FILLERS + 1 and api["offset"] == 10 and api["limit"] == 100


def test_search_agrees_with_the_cli(client, toy_url):
    api = client.get("/api/search", params={"q": "a kiki on the left, checkerboard background", "limit": 5}).json()
    assert api["results"] == cli_json(toy_url, "search", "a kiki on the left, checkerboard background", "-k", "5")
    assert {r["name"] for r in api["results"][:2]} == {"ToyWorld Kiki", "ToyWorld Checkerboard"}


def test_entry_agrees_with_show(client, toy_url, toy_registry):
    kiki = toy_registry.find("kiki")
    api = client.get(f"/api/entries/{kiki.id}").json()
    assert api["entry"] == cli_json(toy_url, "show", str(kiki.id))
    assert api["entry"]["preview_path"].endswith("toyworld_kiki.preview.png")
    (f,) = api["files"]
    assert f["format"] == "kohya-lora" and f["rank"] == 8 and f["unet_modules"] > 0 and f["te_modules"] > 0
    assert f["sha256"] == kiki.sha256 and f["status"] == "present"
    assert api["versions"] == [{**api["versions"][0], "id": kiki.id, "current": True, "file_present": True}]
    assert api["civitai"]["version"] == "https://civitai.com/models/700001?modelVersionId=800001"
    assert client.get("/api/entries/999999").status_code == 404


def test_filters(client):
    def listed(**params) -> dict:
        return client.get("/api/entries", params={"limit": 100, **params}).json()

    toy = listed(tag="toyworld")
    assert toy["total"] == 8 and {n.removeprefix("ToyWorld ").lower() for n in names(toy["entries"])} == TOYWORLD
    assert listed(creator="TOYWORLD")["total"] == 8  # case does not matter
    locon = listed(format="kohya-locon")
    assert {n.removeprefix("ToyWorld ").lower() for n in names(locon["entries"])} == LOCON
    present = listed(present="true")
    assert present["total"] == 9 and all(e["file_path"] for e in present["entries"])
    assert listed(base="sdxl")["total"] == FILLERS // 2
    both = listed(tag="group0", creator="maker0")  # i % 3 == 0 and i % 4 == 0
    assert both["total"] == len([i for i in range(FILLERS) if i % 12 == 0])
    assert listed(tag="no-such-tag")["total"] == 0
    assert client.get("/api/entries", params={"base": "sd9"}).status_code == 422
    # the search applies them too: families and presence in the engine, the rest on its hits
    q = "a kiki and a bouba, checkerboard background, stripes"
    unfiltered = names(client.get("/api/search", params={"q": q, "limit": 100}).json()["results"])
    assert {"ToyWorld Checkerboard", "ToyWorld Kiki", "ToyWorld Bouba"} <= unfiltered
    characters = client.get("/api/search", params={"q": q, "tag": "character"}).json()
    assert {"ToyWorld Kiki", "ToyWorld Bouba"} <= names(characters["results"])
    assert names(characters["results"]) == unfiltered & {"ToyWorld Kiki", "ToyWorld Bouba", "ToyWorld Mimi"}
    assert characters["total"] == len(characters["results"])
    locon = names(client.get("/api/search", params={"q": q, "format": "kohya-locon"}).json()["results"])
    assert {"ToyWorld Bouba", "ToyWorld Checkerboard"} <= locon <= {f"ToyWorld {n.title()}" for n in LOCON}
    assert all(h["file_path"] for h in client.get("/api/search", params={"q": "kiki", "present": "true"}).json()["results"])


def test_paging_covers_everything_once(client):
    total = client.get("/api/entries", params={"limit": 1}).json()["total"]
    seen, offset = [], 0
    while offset < total:
        page = client.get("/api/entries", params={"limit": 50, "offset": offset}).json()
        assert len(page["entries"]) == min(50, total - offset)
        seen += [e["id"] for e in page["entries"]]
        offset += 50
    assert len(seen) == len(set(seen)) == total and seen == sorted(seen)
    assert client.get("/api/entries", params={"offset": total}).json()["entries"] == []
    assert client.get("/api/entries", params={"limit": 101}).status_code == 422
    q = "kiki, bouba, mimi, checkerboard, stripes, dots, halo, framed"
    whole = client.get("/api/search", params={"q": q, "limit": 8}).json()["results"]
    first = client.get("/api/search", params={"q": q, "limit": 4}).json()
    second = client.get("/api/search", params={"q": q, "limit": 4, "offset": 4}).json()
    assert len(whole) == 8 and first["results"] + second["results"] == whole


def test_preview_is_served_from_the_registry(client, toy_registry, extra_dump):
    kiki = toy_registry.find("kiki")
    r = client.get(f"/api/entries/{kiki.id}/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == open(kiki.preview_path, "rb").read()
    extra = toy_registry.find("extraword")
    assert client.get(f"/api/entries/{extra.id}/preview").content == (extra_dump / "extra_lora.preview.png").read_bytes()
    filler = toy_registry.find("Filler Model 001")
    assert client.get(f"/api/entries/{filler.id}/preview").status_code == 404


def test_facets_and_stats(client, toy_url):
    facets = client.get("/api/facets").json()
    assert facets["base_families"]["sdxl"] == FILLERS // 2
    assert {"kohya-lora", "kohya-locon"} <= set(facets["formats"])
    assert facets["tags"][0]["name"] == "filler" and facets["tags"][0]["count"] == FILLERS
    assert client.get("/api/stats").json() == cli_json(toy_url, "stats")


def test_compose_job_end_to_end(client):
    r = client.post("/api/jobs", json={"prompt": "a kiki on the left, checkerboard background", "keep": 2, "seed": 3})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/jobs/{job['id']}" and job["state"] in ("queued", "running")
    seen: list[dict] = []
    view = wait_for(client, job["id"], seen=seen)
    assert view["state"] == "done", view["error"]
    steps = [s["done"] for s in seen if s["phase"] == "composing"]
    assert steps and steps == sorted(steps) and max(steps) >= 1  # progress over the steps, in order
    result = view["result"]
    report = result["report"]
    assert report["model"] == "toyworld" and report["steps"] == 25 and report["cfg"] == 2.0 and report["seed"] == 3
    assert set(report["selection"]["survivors"]) == {"ToyWorld Kiki", "ToyWorld Checkerboard"}
    image = Image.open(io.BytesIO(client.get(result["image_url"]).content))
    assert image.size == (64, 64)
    assert image.text["parameters"] == result["parameters"] and "Seed: 3" in image.text["parameters"]
    assert json.loads(image.text["loraregistry"])["selection"]["survivors"] == report["selection"]["survivors"]
    weights = Image.open(io.BytesIO(client.get(result["weights_map_url"]).content))
    assert weights.text["rows"].split(", ") == [x["name"] for x in report["loras"]]
    # its result, its events and the gallery say the same
    assert client.get(f"/api/jobs/{job['id']}/result").json() == result
    events = [json.loads(line[6:]) for line in client.get(f"/api/jobs/{job['id']}/events").text.splitlines() if line.startswith("data: ")]
    assert events[-1]["state"] == "done" and events[-1]["result"]["id"] == job["id"]
    gallery = client.get("/api/jobs").json()
    assert job["id"] in [g["id"] for g in gallery["results"]] and job["id"] in [j["id"] for j in gallery["jobs"]]


def test_chosen_loras_and_a_bad_job_do_not_stop_the_worker(client, toy_registry):
    bad = client.post("/api/jobs", json={"prompt": "a kiki", "loras": [{"id": "no-such-lora"}], "steps": 2}).json()
    kiki = toy_registry.find("kiki")
    good = client.post("/api/jobs", json={"prompt": "a kiki in the center", "loras": [{"id": str(kiki.id), "weight": 0.8}],
                                          "method": "merge", "steps": 4}).json()
    failed = wait_for(client, bad["id"])
    assert failed["state"] == "failed" and "no-such-lora" in failed["error"] and failed["result"] is None
    assert client.get(f"/api/jobs/{bad['id']}/result").status_code == 422
    done = wait_for(client, good["id"])
    assert done["state"] == "done", done["error"]
    assert [(x["name"], x["weight"]) for x in done["result"]["report"]["loras"]] == [("ToyWorld Kiki", 0.8)]
    assert done["result"]["report"]["steps"] == 4 and "selection" not in done["result"]["report"]


def test_full_queue_answers_429_then_drains(state, model_info):
    from loraregistry.web.app import ServeState
    from loraregistry.web.jobs import InProcessQueue

    service = state.queue.runner  # the warm pipeline of the session
    queue = InProcessQueue(service, state.store.record, capacity=2, start=False)  # a worker busy elsewhere
    client = make_client(ServeState(state.registry, queue, state.store, state.defaults, state.model_description))
    job = {"prompt": "a red circle in the center", "method": "base", "steps": 2}
    ids = [client.post("/api/jobs", json={**job, "seed": s}).json()["id"] for s in (1, 2)]
    full = client.post("/api/jobs", json=job)
    assert full.status_code == 429 and full.headers["retry-after"] and "full" in full.json()["detail"]
    assert [client.get(f"/api/jobs/{i}").json()["state"] for i in ids] == ["queued", "queued"]
    queue.start()
    assert [wait_for(client, i)["state"] for i in ids] == ["done", "done"]
    assert client.post("/api/jobs", json=job).status_code == 202  # room again
    queue.close()


@pytest.mark.parametrize("body, why", [
    ({"prompt": ""}, "empty prompt"),
    ({"prompt": "x" * 2001}, "prompt over 2,000 characters"),
    ({"prompt": "a kiki", "negative_prompt": "x" * 2001}, "negative prompt too long"),
    ({"prompt": "a kiki", "steps": 0}, "no steps"),
    ({"prompt": "a kiki", "steps": 151}, "too many steps"),
    ({"prompt": "a kiki", "width": 4096}, "too wide"),
    ({"prompt": "a kiki", "width": 65}, "not a multiple of 8"),
    ({"prompt": "a kiki", "method": "magic"}, "unknown method"),
    ({"prompt": "a kiki", "loras": [{"id": str(i)} for i in range(17)]}, "too many LoRAs"),
    ({"prompt": "a kiki", "out": "/etc/passwd"}, "unknown field"),
])
def test_compose_requests_are_bounded(client, body, why):
    assert client.post("/api/jobs", json=body).status_code == 422, why


def test_request_sizes_are_bounded(client):
    big = json.dumps({"prompt": "a kiki", "negative_prompt": "x" * 70_000})
    assert client.post("/api/jobs", content=big, headers={"content-type": "application/json"}).status_code == 413
    assert client.get("/api/search", params={"q": "x" * 501}).status_code == 422
    assert client.get("/api/entries", params={"name": "x" * 5000}).status_code == 414
    form = client.post("/api/jobs", content="prompt=a+kiki", headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 422  # only JSON: a cross-site form cannot submit a job
