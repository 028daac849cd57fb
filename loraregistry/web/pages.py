"""The HTML pages: library, entry, compose (with the gallery) and result. Each reads through the same
functions as its JSON twin (linked from the page) and renders with Jinja2 autoescaping on: no
template marks registry text safe, so a Civitai description is shown as text, never as markup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from composer import methods
from loraregistry.web import catalog
from loraregistry.web.api import MAX_PAGE, MAX_QUERY_CHARS, filters_from, job_view, result_view, state
from loraregistry.web.composing import MAX_LORAS, MAX_PROMPT_CHARS
from registry.errors import NotFound, RegistryError
from registry.sorts import LIST_SORTS

router = APIRouter(include_in_schema=False)
PER_PAGE = 50

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
)
_env.globals.update(lora_tag=catalog.lora_tag, copy_text=catalog.copy_text, families=catalog.FAMILIES)
_env.filters["filesize"] = lambda n: "" if n is None else (f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB")
templates = Jinja2Templates(env=_env)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status)


@router.get("/", response_class=HTMLResponse)
def library(request: Request, q: str = Query("", max_length=MAX_QUERY_CHARS), base: str = "", format: str = Query("", max_length=64),
            tag: str = Query("", max_length=128), creator: str = Query("", max_length=256), present: bool = False,
            page: int = Query(1, ge=1, le=100_000), per: int = Query(PER_PAGE, ge=1, le=MAX_PAGE),
            sort: Literal[LIST_SORTS] = "id") -> HTMLResponse:
    s = state(request)
    filters = filters_from(base, format, tag, creator, present)
    offset = (page - 1) * per
    q = q.strip()
    error = None
    try:
        if q:
            result = catalog.search_entries(s.registry, q, filters, per, min(offset, catalog.SEARCH_DEPTH))
        else:
            result = catalog.list_entries(s.registry, filters, per, offset, sort=sort)
    except RegistryError as exc:
        result, error = catalog.Page(0, offset, per, []), str(exc)
    params = {k: v for k, v in {"q": q, "base": base, "format": format, "tag": tag, "creator": creator,
                                "present": "true" if present else "", "per": per if per != PER_PAGE else "",
                                "sort": sort if sort != "id" and not q else ""}.items() if v}
    api = "/api/search" if q else "/api/entries"
    api_params = {**{k: v for k, v in params.items() if k != "per"}, "limit": per, "offset": offset}
    return render(request, "library.html", q=q, filters=filters, result=result, error=error, sort=sort, sorts=LIST_SORTS,
                  facets=catalog.facets(s.registry, top=100), json_url=f"{api}?{urlencode(api_params)}",
                  page_url=lambda n: "/?" + urlencode({**params, "page": n}), pages=_window(result.page, result.pages))


def _window(current: int, last: int, width: int = 3) -> list[int | None]:
    """Page numbers to link: the first, the last and those near the current one; None is a gap."""
    shown = sorted({1, last, *range(max(1, current - width), min(last, current + width) + 1)})
    out: list[int | None] = []
    for n in shown:
        if out and n - (out[-1] or 0) > 1:
            out.append(None)
        out.append(n)
    return out


@router.get("/entries/{entry_id}", response_class=HTMLResponse)
def entry(request: Request, entry_id: int) -> HTMLResponse:
    try:
        detail = catalog.entry_detail(state(request).registry, entry_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return render(request, "entry.html", d=detail, e=detail.entry, json_url=f"/api/entries/{entry_id}")


@router.get("/compose", response_class=HTMLResponse)
def compose(request: Request, lora: list[int] = Query([], max_length=MAX_LORAS)) -> HTMLResponse:
    """The compose form; ``?lora=ID`` (repeatable) starts it with those LoRAs chosen."""
    s = state(request)
    chosen = []
    for entry_id in lora:
        try:
            chosen.append(s.registry.get(entry_id))
        except NotFound:
            continue
    return render(request, "compose.html", defaults=s.defaults, model=s.model_description, chosen=chosen, methods=methods.NAMES,
                  results=[result_view(r) for r in s.store.recent(24)], max_prompt=MAX_PROMPT_CHARS,
                  max_loras=MAX_LORAS, json_url="/api/jobs")


@router.get("/results/{job_id}", response_class=HTMLResponse)
def result(request: Request, job_id: str) -> HTMLResponse:
    view = job_view(state(request), job_id)
    return render(request, "result.html", job=view, r=view["result"], json_url=f"/api/jobs/{job_id}")


def install_error_pages(app: Any) -> None:
    """Errors as an HTML page for the pages, as JSON ({"detail": ...}) under /api/."""

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api/")

    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        if wants_html(request):
            return render(request, "error.html", status=exc.status_code, status_code=exc.status_code, detail=str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        if wants_html(request):
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
            return render(request, "error.html", status=422, status_code=422, detail=detail)
        return JSONResponse({"detail": jsonable(exc.errors())}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def jsonable(value: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)
