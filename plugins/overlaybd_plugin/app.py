"""The FastAPI app Airflow's API server mounts under ``/overlaybd``.

``GET /overlaybd/`` renders the conversions page (server-side, one self-contained HTML document);
``GET /overlaybd/api/conversions`` returns the same data as JSON. Both require an Airflow user
with DAG read access (see :mod:`overlaybd_plugin.auth`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from overlaybd_plugin.auth import readable_dag_ids, require_dag_reader
from overlaybd_plugin.summary import (
    PageData,
    filter_rows,
    human_bytes,
    human_seconds,
    load_page_data,
    short_digest,
)

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _default_hook():
    from overlaybd_provider.hooks.dedup import OverlaybdDedupHook

    return OverlaybdDedupHook()


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters.update(bytes=human_bytes, seconds=human_seconds, short=short_digest)
    return env


def create_app(hook_factory: Callable[[], Any] = _default_hook) -> FastAPI:
    """Build the app; ``hook_factory`` returns an ``OverlaybdDedupHook`` (tests pass their own)."""
    app = FastAPI(title="overlaybd conversions", docs_url=None, redoc_url=None, openapi_url=None)
    from overlaybd_plugin.webhooks import create_router  # POST /webhook: convert on push

    app.include_router(create_router())
    env = _environment()

    def page_data(user: Any, image: str | None, limit: int) -> PageData:
        hook = hook_factory()
        with closing(hook.get_conn()) as conn:
            data = load_page_data(conn, source=image or None, limit=limit)
        data.database = hook.describe()
        dag_ids = {r.dag_id for img in data.images for r in img.conversions if r.dag_id}
        return filter_rows(data, readable_dag_ids(user, dag_ids))

    @app.get("/", response_class=HTMLResponse)
    def conversions_page(
        user: Any = Depends(require_dag_reader),
        image: str | None = Query(None, description="show one source image"),
        limit: int = Query(500, ge=1, le=5000),
    ) -> HTMLResponse:
        data = page_data(user, image, limit)
        html = env.get_template("conversions.html").render(data=data, image=image)
        return HTMLResponse(html)

    @app.get("/api/conversions")
    def conversions_json(
        user: Any = Depends(require_dag_reader),
        image: str | None = Query(None),
        limit: int = Query(500, ge=1, le=5000),
    ) -> JSONResponse:
        return JSONResponse(page_data(user, image, limit).as_json())

    return app
