"""``loraregistry serve``: a web page and a JSON API over the registry and the composer.

Every HTML page has a JSON twin under ``/api/`` (what the page shows, a script can fetch), built
from the same functions; templates escape everything that came from a Civitai record.

    from loraregistry.web import create_app, ServeState
"""
from __future__ import annotations

from loraregistry.web.app import ServeState, create_app

__all__ = ["ServeState", "create_app"]
