"""Extra link "overlaybd image" on the push and convert tasks: the converted manifest.

Airflow 3 evaluates operator links on the worker when the task finishes and stores the URL in
XCom; the operator leaves the URL in ``image_url`` during ``execute``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


def image_link(target: str | None, digest: str | None, *, plain_http: bool = False) -> str | None:
    """Registry API URL of the manifest (``/v2/<repo>/manifests/<digest|tag>``), or ``file://`` for
    an OCI layout."""
    if not target:
        return None
    from overlaybd_provider.oci.reference import parse_reference

    try:
        ref = parse_reference(target)
    except Exception:
        return None
    if ref.is_layout:
        return f"file://{ref.path.resolve()}"
    scheme = "http" if plain_http else "https"
    return f"{scheme}://{ref.endpoint_host}/v2/{ref.repository}/manifests/{digest or ref.target}"


class OverlaybdImageLink(BaseOperatorLink):
    """The converted image (manifest or index) in the target registry."""

    name = "overlaybd image"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "image_url", None) or ""
