"""The FastAPI app Airflow's API server mounts under ``/overlaybd``.

``GET /overlaybd/api/conversions`` returns the page's data as JSON and requires an Airflow user
with DAG read access (see :mod:`overlaybd_plugin.auth`); rows of DAGs the user may not read are
left out. ``GET /overlaybd/static/...`` serves the page's script and icon (code, no data: public,
like Airflow's own UI assets). ``GET /overlaybd/`` sends the browser to the page inside the
Airflow UI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from overlaybd_plugin.auth import readable_dag_ids, require_dag_reader
from overlaybd_plugin.summary import PageData, dag_ids, filter_rows, load_page_data
from overlaybd_plugin.urls import page_url

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
STATUS_PATTERN = "^(success|failed|up_for_retry|running)$"


def _default_hook():
    from overlaybd_provider.hooks.dedup import OverlaybdDedupHook

    return OverlaybdDedupHook()


def create_app(hook_factory: Callable[[], Any] = _default_hook) -> FastAPI:
    """Build the app; ``hook_factory`` returns an ``OverlaybdDedupHook`` (tests pass their own)."""
    app = FastAPI(title="overlaybd conversions", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    from overlaybd_plugin.webhooks import create_router  # POST /webhook: convert on push

    app.include_router(create_router())

    def page_data(user: Any, image: str | None, status: str | None, limit: int) -> PageData:
        hook = hook_factory()
        with closing(hook.get_conn()) as conn:
            data = load_page_data(conn, source=image or None, status=status or None, limit=limit)
        data.database = hook.describe()
        return filter_rows(data, readable_dag_ids(user, dag_ids(data)))

    @app.get("/")
    def to_the_page(request: Request, image: str | None = Query(None)) -> RedirectResponse:
        """The page lives in the Airflow UI (``plugin/overlaybd``); relative, so proxies keep working."""
        return RedirectResponse(f"../{page_url(image)}", status_code=307)

    @app.get("/api/conversions")
    def conversions_json(
        user: Any = Depends(require_dag_reader),
        image: str | None = Query(None, description="one image: its source or target reference"),
        status: str | None = Query(None, pattern=STATUS_PATTERN),
        limit: int = Query(500, ge=1, le=5000),
    ) -> JSONResponse:
        return JSONResponse(page_data(user, image, status, limit).as_json())

    return app
