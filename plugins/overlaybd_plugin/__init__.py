"""Airflow plugin: the "overlaybd" page (recent conversions and dedup savings) inside the Airflow UI.

Registered through the ``airflow.plugins`` entry point of airflow-provider-overlaybd; the folder
loader skips it (``plugins/.airflowignore``) so it is never loaded twice.
"""

from __future__ import annotations

from airflow.sdk.plugins_manager import AirflowPlugin

from overlaybd_plugin.app import create_app

URL_PREFIX = "/overlaybd"


class OverlaybdPlugin(AirflowPlugin):
    """A FastAPI app under ``/overlaybd`` and a "Browse → overlaybd" menu entry showing it."""

    name = "overlaybd"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "overlaybd conversions"}]
    external_views = [
        {
            "name": "overlaybd",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "overlaybd",
        }
    ]


__all__ = ["OverlaybdPlugin", "create_app"]
