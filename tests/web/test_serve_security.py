"""The guard: the token, loopback host names, files served only when the registry knows them (no
path from a request reaches the file system), and every metadata string escaped on the pages."""
from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.registry.loras import civitai_sidecar, kohya_lora
from tests.web.conftest import HOSTILE_ID, make_client

TOKEN = "s3cret-token_for.tests"


@pytest.fixture(scope="module")
def guarded(state):
    return make_client(state, token=TOKEN)


@pytest.mark.parametrize("path", ["/", "/compose", "/api/entries", "/api/jobs", "/static/app.css", "/api/docs",
                                  "/api/openapi.json", "/entries/1", "/api/entries/1/preview"])
def test_every_request_needs_the_token(guarded, path):
    r = guarded.get(path)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert guarded.get(path, headers={"authorization": "Bearer wrong-token-123"}).status_code == 401
    assert guarded.get(path, headers={"authorization": f"Bearer {TOKEN}"}).status_code in (200, 404)
    assert guarded.post("/api/jobs", json={"prompt": "a kiki"}).status_code == 401


def test_token_in_the_address_becomes_a_cookie(state):
    client = make_client(state, token=TOKEN)
    r = client.get(f"/?q=kiki&token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?q=kiki"  # dropped from the address bar
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert client.get("/?q=kiki").status_code == 200  # the cookie now carries it
    assert client.get("/api/entries").status_code == 200
    other = make_client(state, token=TOKEN)
    assert other.get("/?token=wrong-token-123", follow_redirects=False).status_code == 401


def test_without_a_token_only_loopback_host_names_are_served(state):
    for host in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765", "http://127.0.0.2"):
        assert make_client(state, host=host).get("/api/entries?limit=1").status_code == 200, host
    for host in ("http://evil.example", "http://evil.example:8765", "http://192.168.1.5:8765", "http://localhost.evil.example"):
        r = make_client(state, host=host).get("/api/entries?limit=1")
        assert r.status_code == 400 and "loopback" in r.json()["detail"], host


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/api/entries/..%2f..%2fetc%2fpasswd/preview", "/api/entries/%2fetc%2fpasswd/preview", "/api/entries/1%2f..%2f2/preview",
    "/api/jobs/..%2f..%2f..%2fetc%2fpasswd/image.png", "/api/jobs/%2fetc%2fpasswd/image.png", "/api/jobs//etc/passwd/image.png",
    "/api/jobs/../../etc/passwd/weights.png", "/results/..%2f..%2fetc%2fpasswd", "/api/docs-static/../../../../etc/passwd",
])
def test_paths_from_requests_never_reach_the_file_system(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert b"root:" not in r.content


def test_result_files_only_for_job_ids(client, state):
    assert client.get("/api/jobs/" + "0" * 32 + "/image.png").status_code == 404
    (state.store.directory / "notes.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # in the directory, but no job's
    assert client.get("/api/jobs/notes/image.png").status_code == 404


def test_preview_swapped_for_a_symlink_is_not_served(tmp_path, model_info):
    """The ingest recorded a real preview; afterwards it becomes a link to a secret, or to a file
    that is no image: neither is served."""
    from loraregistry import Registry
    from loraregistry.web.server import build_state

    dump = tmp_path / "dump"
    dump.mkdir()
    adapter = kohya_lora(dump / "swap.safetensors", seed=9)
    civitai_sidecar(adapter, model_id=31, version_id=32, name="Swap", trained_words=["swap"])
    preview = dump / "swap.preview.png"
    shutil.copy(Path(__file__).resolve().parents[2] / "toyworld/assets/dump/toyworld_kiki.preview.png", preview)
    reg = Registry.open(f"sqlite:///{tmp_path / 'r.db'}")
    reg.ingest(dump)
    state = build_state(model_info, reg, tmp_path / "results", start_worker=False)
    client = make_client(state)
    entry = reg.find("swap").id
    assert client.get(f"/api/entries/{entry}/preview").status_code == 200

    secret = tmp_path / "secret.png"
    secret.write_bytes(preview.read_bytes())  # an image, but outside the LoRA's directory
    preview.unlink()
    preview.symlink_to(secret)
    assert client.get(f"/api/entries/{entry}/preview").status_code == 404
    preview.unlink()
    preview.symlink_to(dump / "swap.civitai.json")  # beside it, but no image
    assert client.get(f"/api/entries/{entry}/preview").status_code == 404
    preview.unlink()
    os.symlink("/etc/passwd", preview)
    r = client.get(f"/api/entries/{entry}/preview")
    assert r.status_code == 404 and b"root:" not in r.content
    reg.close()


class _Elements(HTMLParser):
    """Every element a browser would build from the page, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))


def injected(html: str) -> list[tuple[str, dict]]:
    """Elements no template of ours makes: event handlers, scripts other than ours, frames, objects."""
    bad = []
    for tag, attrs in _Elements(html).elements:
        if any(a.startswith("on") for a in attrs) or tag in ("iframe", "object", "embed", "svg", "u", "i", "b"):
            bad.append((tag, attrs))
        elif tag == "script" and attrs.get("src") != "/static/app.js":
            bad.append((tag, attrs))
        elif tag == "img" and "src" in attrs and not (attrs["src"] or "").startswith("/api/"):
            bad.append((tag, attrs))
        elif tag == "a" and (attrs.get("href") or "").lower().startswith("javascript"):
            bad.append((tag, attrs))
    return bad


def test_hostile_metadata_is_escaped_on_every_page(client, toy_registry):
    entry = toy_registry.get(toy_registry.find("evilword").id)
    assert "<script>alert('desc')</script>" in entry.description  # what the ingest stored: text with markup in it
    pages = {
        "detail": client.get(f"/entries/{entry.id}").text,
        "search": client.get("/", params={"q": "evilword"}).text,
        "list": client.get("/", params={"tag": "<i>evil</i>"}).text,
        "compose": client.get("/compose", params={"lora": entry.id}).text,
        "extra": client.get(f"/entries/{toy_registry.find('extraword').id}").text,  # hostile header metadata
    }
    for name, html in pages.items():
        assert not injected(html), (name, injected(html))
        for raw in ("<script>alert", "<img src=x", "<svg onload", "<b onmouseover", "<iframe src", '"><script>'):
            assert raw not in html, (name, raw)
    detail = pages["detail"]
    assert "&lt;b onmouseover=alert(1)&gt;Evil Model&lt;/b&gt;" in detail
    assert "&lt;script&gt;alert(&#39;desc&#39;)&lt;/script&gt;" in detail
    assert "&lt;iframe src=javascript:alert(5)&gt;" in detail
    assert "&lt;svg onload=alert(3)&gt;" in detail
    assert "&#34;&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in detail
    assert f"https://civitai.com/models/{HOSTILE_ID}" in detail
    assert "&lt;script&gt;alert(&#39;header&#39;)&lt;/script&gt;" in pages["extra"]
    assert "&lt;b onmouseover=alert(1)&gt;Evil Model&lt;/b&gt;" in pages["search"]
    assert "&lt;b onmouseover=alert(1)&gt;Evil Model&lt;/b&gt;" in pages["list"]


def test_pages_forbid_inline_script(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # our own script is a file: /static/app.js
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/docs-static/swagger-ui-bundle.js" in docs.text  # no CDN
    assert "cdn" not in docs.text.lower()
    assert client.get("/api/docs-static/swagger-ui-bundle.js").status_code == 200
