"""Airflow plugin: the "overlaybd" page (recent conversions, failures, dedup savings) in the Airflow UI.

The page is a React app rendered by Airflow's own UI (``react_apps``): it uses the UI's React,
Chakra UI theme and router (light and dark mode, Airflow's colors and fonts) and reads the JSON
API of the FastAPI app mounted under ``/overlaybd`` (``fastapi_apps``), which also serves the
page's script. Registered through the ``airflow.plugins`` entry point of
airflow-provider-overlaybd; the folder loader skips it (``plugins/.airflowignore``) so it is
never loaded twice.
"""

from __future__ import annotations

import hashlib

from airflow.sdk.plugins_manager import AirflowPlugin

from overlaybd_plugin.app import STATIC, create_app
from overlaybd_plugin.urls import PAGE_ROUTE, URL_PREFIX

# Relative URLs: the UI resolves them against its <base href>, so a base_url with a path works.
# The script's content hash in the URL: browsers never run a stale copy after an upgrade.
_BUNDLE = "overlaybd-page.js"
_VERSION = hashlib.sha256((STATIC / _BUNDLE).read_bytes()).hexdigest()[:12]
BUNDLE_URL = f"{URL_PREFIX.lstrip('/')}/static/{_BUNDLE}?v={_VERSION}"
ICON_URL = f"{URL_PREFIX.lstrip('/')}/static/overlaybd-icon.svg"
ICON_DARK_URL = f"{URL_PREFIX.lstrip('/')}/static/overlaybd-icon-dark.svg"


class OverlaybdPlugin(AirflowPlugin):
    """``/overlaybd`` (JSON API + the page's script) and a "Browse → overlaybd" React page."""

    name = "overlaybd"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "overlaybd conversions"}]
    react_apps = [
        {
            "name": "overlaybd",
            "bundle_url": BUNDLE_URL,
            "destination": "nav",
            "category": "browse",
            "url_route": PAGE_ROUTE,
            "icon": ICON_URL,
            "icon_dark_mode": ICON_DARK_URL,
        }
    ]


__all__ = ["OverlaybdPlugin", "create_app"]
