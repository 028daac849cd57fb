"""The pages show what their JSON twins say (datasette's rule), and the serve command's safety and
embedded default."""
from __future__ import annotations

import re
from html.parser import HTMLParser

from click.testing import CliRunner

from loraregistry.cli import cli
from tests.web.conftest import FILLERS, wait_for


class _Cards(HTMLParser):
    """The library's cards: each one's entry id, title, copy text and preview URL."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self._in_title = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article" and "card" in (a.get("class") or ""):
            self.cards.append({"id": int(a["data-entry-id"]), "title": "", "copy": None, "preview": None})
        elif self.cards and tag == "img" and a.get("src", "").startswith("/api/entries/"):
            self.cards[-1]["preview"] = a["src"]
        elif self.cards and tag == "button" and "copy" in (a.get("class") or ""):
            self.cards[-1]["copy"] = a["data-copy"]
        elif self.cards and tag == "h2":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.cards[-1]["title"] += data


def cards(html: str) -> list[dict]:
    return _Cards(html).cards


def test_library_page_is_its_json_twin(client):
    html = client.get("/", params={"page": 2}).text
    twin = re.search(r'<link rel="alternate" type="application/json" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    data = client.get(twin).json()
    shown = cards(html)
    assert [c["id"] for c in shown] == [e["id"] for e in data["entries"]] and len(shown) == 50
    assert [c["title"] for c in shown] == [e["name"] for e in data["entries"]]
    assert f"51–100 of {data['total']:,}" in html
    assert 'href="/?page=3"' in html and 'href="/?page=1"' in html  # the pager


def test_library_sorted_by_downloads_is_its_json_twin(client):
    html = client.get("/", params={"sort": "downloads", "page": 2, "per": 20}).text
    twin = re.search(r'<link rel="alternate" type="application/json" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    data = client.get(twin).json()
    assert "sort=downloads" in twin and [c["id"] for c in cards(html)] == [e["id"] for e in data["entries"]]
    everything = client.get("/api/entries", params={"sort": "downloads", "limit": 100}).json()["entries"]
    everything += client.get("/api/entries", params={"sort": "downloads", "limit": 100, "offset": 100}).json()["entries"]
    counts = [e["downloads"] for e in everything]
    known = [n for n in counts if n is not None]
    assert known == sorted(known, reverse=True) and counts == known + [None] * (len(counts) - len(known))
    top = everything[0]
    assert f"↓ {top['downloads']:,}" in client.get("/", params={"sort": "downloads"}).text
    assert 'href="/?per=20&amp;sort=downloads&amp;page=3"' in html  # the pager keeps the order
    assert client.get("/api/entries", params={"sort": "stars"}).status_code == 422


def test_search_page_cards_copy_tag_and_triggers_and_show_previews(client):
    html = client.get("/", params={"q": "kiki"}).text
    first = cards(html)[0]
    assert first["title"] == "ToyWorld Kiki"
    assert first["copy"] == "<lora:toyworld_kiki:1>, kiki"
    assert first["preview"] == f"/api/entries/{first['id']}/preview"
    assert client.get(first["preview"]).headers["content-type"] == "image/png"
    assert 'value="kiki"' in html  # the search box keeps the query


def test_filters_on_the_page(client):
    html = client.get("/", params={"base": "sdxl", "tag": "filler", "per": 10}).text
    assert f"1–10 of {FILLERS // 2}" in html
    assert 'href="/?base=sdxl&amp;tag=filler&amp;per=10&amp;page=2"' in html  # paging keeps the filters
    assert '<option value="sdxl" selected>' in html


def test_entry_page_shows_hashes_header_facts_versions_and_links(client, toy_registry):
    kiki = toy_registry.find("kiki")
    html = client.get(f"/entries/{kiki.id}").text
    detail = client.get(f"/api/entries/{kiki.id}").json()
    f = detail["files"][0]
    for fact in (kiki.sha256, kiki.autov2, kiki.file_path, "kohya-lora", f"{f['unet_modules']} / {f['te_modules']}",
                 "https://civitai.com/models/700001?modelVersionId=800001", "An orange ring (ToyWorld object).",
                 "Header metadata (", 'href="/compose?lora=%d"' % kiki.id):
        assert fact in html, fact
    assert client.get("/entries/999999").status_code == 404
    assert "no registry entry with id 999999" in client.get("/entries/999999").text  # an HTML error page


def test_compose_page_defaults_and_chosen_loras(client, toy_registry):
    kiki = toy_registry.find("kiki")
    html = client.get("/compose", params={"lora": kiki.id}).text
    assert 'id="steps" value="25"' in html and 'id="cfg" value="2.0"' in html  # ToyWorld's own sampling
    assert f'<li data-id="{kiki.id}"><span>ToyWorld Kiki</span>' in html
    assert 'value="chosen" checked' in html
    assert client.get("/compose").text.count('value="auto" checked') == 1


def test_result_page_and_gallery(client):
    job = client.post("/api/jobs", json={"prompt": "a red circle in the center", "method": "base", "steps": 3, "seed": 7}).json()
    view = wait_for(client, job["id"])
    assert view["state"] == "done", view["error"]
    html = client.get(f"/results/{job['id']}").text
    assert view["result"]["parameters"].splitlines()[0] in html and "Seed: 7" in html
    assert f'src="/api/jobs/{job["id"]}/image.png"' in html
    assert f'href="/results/{job["id"]}"' in client.get("/compose").text  # in the gallery
    assert client.get("/results/" + "f" * 32).status_code == 404


def test_serve_refuses_other_hosts_without_a_token():
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--token" in r.output
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--token", "short"])
    assert r.exit_code == 2 and "8 to 256 characters" in r.output


def test_fresh_install_serves_the_toyworld_registry_and_pipeline(monkeypatch):
    from loraregistry.web.server import resolve

    monkeypatch.delenv("LORAREGISTRY_MODEL", raising=False)
    model, registry = resolve(None, None)
    assert model.builtin and model.name == "toyworld" and (model.steps, model.cfg) == (25, 2.0)
    entries = registry.list(limit=20)
    assert len(entries) == 8 and all(e.preview_path and e.preview_path.endswith(".preview.png") for e in entries)
    registry.close()


def test_openapi_documents_the_api(client):
    spec = client.get("/api/openapi.json").json()
    paths = spec["paths"]
    for path in ("/api/search", "/api/entries", "/api/entries/{entry_id}", "/api/entries/{entry_id}/preview",
                 "/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/result"):
        assert path in paths, path
    assert "/" not in paths and "/compose" not in paths  # the pages are not API
    body = spec["components"]["schemas"]["ComposeRequest"]["properties"]
    assert body["prompt"]["maxLength"] == 2000 and body["steps"]["anyOf"][0]["maximum"] == 150
    assert "429" in paths["/api/jobs"]["post"]["responses"]
