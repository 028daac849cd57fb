"""The JSON API under ``/api/``: the pages' twins. Entries and hits have exactly the shapes of
``loraregistry list/show/search --json``; pages of them come in an envelope with the total.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from composer import methods
from loraregistry.web import catalog
from loraregistry.web.composing import MAX_LORAS, MAX_PROMPT_CHARS, ComposeRequest
from loraregistry.web.jobs import QueueFull, UnknownJob
from registry.errors import NotFound, RegistryError
from registry.sorts import LIST_SORTS

router = APIRouter(prefix="/api")

MAX_QUERY_CHARS = 500
MAX_PAGE = 100
Family = catalog.FAMILIES
EVENTS_MAX_SECONDS = 3600  # an event stream ends by itself


def state(request: Request) -> Any:
    return request.app.state.serve


def filters_from(base: str | None, format: str | None, tag: str | None, creator: str | None, present: bool) -> catalog.Filters:
    if base and base not in catalog.FAMILIES:
        raise HTTPException(422, f"base must be one of {', '.join(catalog.FAMILIES)}")
    return catalog.Filters(base or None, format or None, tag or None, creator or None, present)


def page_envelope(page: catalog.Page, key: str, items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**extra, "total": page.total, "offset": page.offset, "limit": page.limit, key: items}


# -- the library ------------------------------------------------------------------------------
@router.get("/search", summary="Search (as `loraregistry search --json`), paged and filtered")
def search(request: Request,
           q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="A prompt or words to search for."),
           base: str | None = None, format: str | None = Query(None, max_length=64),
           tag: str | None = Query(None, max_length=128), creator: str | None = Query(None, max_length=256),
           present: bool = False, limit: int = Query(20, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=catalog.SEARCH_DEPTH)) -> dict[str, Any]:
    filters = filters_from(base, format, tag, creator, present)
    try:
        page = catalog.search_entries(state(request).registry, q, filters, limit, offset)
    except RegistryError as exc:
        raise HTTPException(503, str(exc)) from exc
    return page_envelope(page, "results", [h.to_dict() for h in page.hits or []], query=q, filters=filters.to_dict())


@router.get("/entries", summary="List entries (as `loraregistry list --json`), paged and filtered, with the total")
def entries(request: Request, base: str | None = None, format: str | None = Query(None, max_length=64),
            tag: str | None = Query(None, max_length=128), creator: str | None = Query(None, max_length=256),
            present: bool = False, name: str | None = Query(None, max_length=MAX_QUERY_CHARS),
            limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0),
            sort: Literal[LIST_SORTS] = Query("id", description="id, or Civitai's most downloaded / best rated first.")
            ) -> dict[str, Any]:
    filters = filters_from(base, format, tag, creator, present)
    page = catalog.list_entries(state(request).registry, filters, limit, offset, name=name, sort=sort)
    return page_envelope(page, "entries", [e.to_dict() for e in page.entries], filters=filters.to_dict())


@router.get("/entries/{entry_id}", summary="One entry (`entry` as `loraregistry show --json`), its files, versions and Civitai links")
def entry(request: Request, entry_id: int) -> dict[str, Any]:
    try:
        return catalog.entry_detail(state(request).registry, entry_id).to_dict()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/entries/{entry_id}/preview", summary="The entry's preview image, when the ingest found one beside its file",
            response_class=FileResponse, responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
def preview(request: Request, entry_id: int) -> FileResponse:
    found = catalog.preview_file(state(request).registry, entry_id)
    if found is None:
        raise HTTPException(404, f"entry {entry_id} has no preview image")
    path, media = found
    return FileResponse(path, media_type=media, headers={"cache-control": "private, max-age=300"})


@router.get("/facets", summary="The filters' choices: base families, formats, the most used tags and creators")
def facets(request: Request) -> dict[str, Any]:
    return catalog.facets(state(request).registry)


@router.get("/stats", summary="Registry counts (as `loraregistry stats --json`)")
def stats(request: Request) -> dict[str, Any]:
    return state(request).registry.stats()


# -- compose ----------------------------------------------------------------------------------
def job_view(s: Any, job_id: str) -> dict[str, Any]:
    """A job's status, position and, once done, its result with the URLs of its images."""
    try:
        status = s.queue.status(job_id).to_dict()
    except UnknownJob:
        record = s.store.record(job_id)  # a result from before this server started
        if record is None:
            raise HTTPException(404, f"no compose job {job_id}") from None
        status = {"id": job_id, "state": "done", "phase": "done", "done": record["report"].get("steps", 0),
                  "total": record["report"].get("steps", 0), "error": None, "request": record["request"]}
    status["result"] = result_view(s.queue.result(job_id)) if status["state"] == "done" else None
    return status


def result_view(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    job_id = record["id"]
    return {**record, "image_url": f"/api/jobs/{job_id}/image.png",
            "weights_map_url": f"/api/jobs/{job_id}/weights.png" if record.get("weights_map") else None}


@router.get("/compose/options", summary="The compose form's defaults, methods and the model in use")
def compose_options(request: Request) -> dict[str, Any]:
    s = state(request)
    return {"defaults": s.defaults, "methods": list(methods.NAMES),
            "model": s.model_description, "queue_capacity": s.queue.capacity,
            "limits": {"prompt_chars": MAX_PROMPT_CHARS, "loras": MAX_LORAS}}


@router.post("/jobs", status_code=202, summary="Submit a compose job; 429 when the queue is full",
             responses={429: {"description": "The compose queue is full: retry later"}})
def submit(request: Request, body: ComposeRequest) -> JSONResponse:
    s = state(request)
    try:
        status = s.queue.submit(body.model_dump())
    except QueueFull as exc:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"retry-after": "5"})
    view = job_view(s, status.id)
    return JSONResponse(view, status_code=202, headers={"location": f"/api/jobs/{status.id}"})


@router.get("/jobs", summary="Recent jobs of this server, and the gallery of stored results (newest first)")
def jobs(request: Request, limit: int = Query(24, ge=1, le=MAX_PAGE)) -> dict[str, Any]:
    s = state(request)
    return {"jobs": [j.to_dict() for j in s.queue.list(limit)],
            "results": [result_view(r) for r in s.store.recent(limit)]}


@router.get("/jobs/{job_id}", summary="A job's state and progress over the steps; its result once done")
def job(request: Request, job_id: str) -> dict[str, Any]:
    return job_view(state(request), job_id)


@router.get("/jobs/{job_id}/result", summary="A finished job's result: report, parameters and image URLs")
def job_result(request: Request, job_id: str) -> dict[str, Any]:
    view = job_view(state(request), job_id)
    if view["result"] is None:
        raise HTTPException(409 if view["state"] != "failed" else 422, view["error"] or f"job {job_id} is {view['state']}")
    return view["result"]


@router.get("/jobs/{job_id}/events", summary="Server-sent events: the job's status each time it changes, until it ends")
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    s = state(request)
    job_view(s, job_id)  # 404 now rather than inside the stream

    async def stream() -> AsyncIterator[bytes]:
        last = None
        deadline = time.monotonic() + EVENTS_MAX_SECONDS
        while time.monotonic() < deadline:
            view = job_view(s, job_id)
            key = (view["state"], view["phase"], view["done"], view["total"])
            if key != last:
                last = key
                yield f"data: {json.dumps(view, default=str)}\n\n".encode()
                if view["state"] in ("done", "failed"):
                    return
            elif await request.is_disconnected():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})


@router.get("/jobs/{job_id}/image.png", response_class=FileResponse, summary="The composed image (PNG with its parameters)")
def job_image(request: Request, job_id: str) -> FileResponse:
    return _stored(request, job_id, "image")


@router.get("/jobs/{job_id}/weights.png", response_class=FileResponse, summary="Each LoRA's per-patch weights over the steps")
def job_weights(request: Request, job_id: str) -> FileResponse:
    return _stored(request, job_id, "weights")


def _stored(request: Request, job_id: str, kind: str) -> FileResponse:
    path = state(request).store.file(job_id, kind)
    if path is None:
        raise HTTPException(404, f"no {kind} for job {job_id}")
    return FileResponse(path, media_type="image/png")
