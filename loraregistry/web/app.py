"""The ASGI application: FastAPI (for the OpenAPI docs and request validation it derives from the
same type hints) on Starlette, with Jinja2 pages and the guard of ``security.py`` in front.

    state = ServeState(registry, queue, store, defaults={...}, model_description="...")
    app = create_app(state, token=None)          # uvicorn.run(app, host="127.0.0.1", port=8765)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from loraregistry.web.catalog import SerialSearch
from loraregistry.web.gallery import ResultStore
from loraregistry.web.jobs import JobQueue
from loraregistry.web.security import Guard, Limits

HERE = Path(__file__).resolve().parent
DOCS_PATH = "/api/docs"


@dataclass
class ServeState:
    """What one server process holds: the registry, the job queue over the warm pipeline, the results."""

    registry: Any  # loraregistry.Registry
    queue: JobQueue
    store: ResultStore
    defaults: dict[str, Any] = field(default_factory=dict)  # the compose form's defaults
    model_description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.registry, SerialSearch):
            self.registry = SerialSearch(self.registry)


def create_app(state: ServeState, token: str | None = None, limits: Limits = Limits()) -> Any:
    """The app, wrapped in the guard. ``token`` None: loopback clients only, no token asked."""
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline

    from loraregistry.web import api, pages

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        state.queue.close()

    # FastAPIOffline: FastAPI whose Swagger UI is served from the package, not from a CDN.
    app = FastAPIOffline(
        title="loraregistry", version=_version(), lifespan=lifespan,
        description="Search the LoRA registry and compose images with LoRAtorio. Every page has a JSON twin here.",
        docs_url=DOCS_PATH, redoc_url=None, openapi_url="/api/openapi.json", static_url="/api/docs-static",
    )
    app.state.serve = state
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    pages.install_error_pages(app)
    return Guard(app, token, limits, docs_path=DOCS_PATH)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loraregistry")
    except PackageNotFoundError:
        return "0"
