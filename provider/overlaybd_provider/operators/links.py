"""Extra link "overlaybd image" on the push and convert tasks: the converted image, for a person.

By default the link opens the overlaybd page of the Airflow UI filtered on the converted image
(its conversions, sizes, reuse, failures). With ``[overlaybd] registry_ui_url_template`` set, it
opens the image in the registry's own web UI instead; the template's placeholders are
``{registry}`` (host[:port]), ``{repository}`` (``team/app``), ``{namespace}`` (``team``),
``{name}`` (``app``), ``{tag}``, ``{digest}`` and ``{reference}`` (the whole reference), e.g.
``https://{registry}/harbor/projects/{namespace}/repositories/{name}`` or
``https://quay.io/repository/{repository}?tab=tags``.

Airflow 3 evaluates operator links on the worker when the task finishes and stores the URL in
XCom; the operator leaves the URL in ``image_url`` during ``execute``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

log = logging.getLogger(__name__)

PAGE_PATH = "plugin/overlaybd"  # the plugin's react app route (overlaybd_plugin.urls.PAGE_ROUTE)
PLACEHOLDERS = ("registry", "repository", "namespace", "name", "tag", "digest", "reference")


def _conf(section: str, key: str) -> str | None:
    try:
        from airflow.sdk.configuration import conf

        value = conf.get(section, key, fallback=None)
    except Exception:
        value = None
    return value.strip() if isinstance(value, str) and value.strip() else None


def page_link(image: str) -> str:
    """The overlaybd page filtered on ``image``: absolute with ``[api] base_url``, else relative to
    the UI (the UI resolves it against its own base URL)."""
    path = f"{PAGE_PATH}?{urlencode({'image': image})}"
    base = _conf("api", "base_url")
    return f"{base.rstrip('/')}/{path}" if base else path


def registry_ui_link(template: str, target: str, digest: str | None) -> str | None:
    """``template`` filled in for ``target`` (a registry reference), or None when it cannot be."""
    from overlaybd_provider.oci.reference import parse_reference

    try:
        ref = parse_reference(target)
    except Exception:
        return None
    if ref.is_layout:
        return None
    namespace, _, name = ref.repository.rpartition("/")
    values = {
        "registry": ref.registry,
        "repository": ref.repository,
        "namespace": namespace,
        "name": name,
        "tag": ref.tag or "",
        "digest": digest or ref.digest or "",
        "reference": target,
    }
    try:
        return template.format(**{k: quote(v, safe="/:@") for k, v in values.items()})
    except (KeyError, IndexError, ValueError) as exc:
        log.warning(
            "[overlaybd] registry_ui_url_template %r is not usable (%s: %s); placeholders are %s",
            template,
            type(exc).__name__,
            exc,
            ", ".join("{" + p + "}" for p in PLACEHOLDERS),
        )
        return None


def image_link(target: str | None, digest: str | None, *, plain_http: bool = False) -> str | None:
    """The link for the converted image ``target``: the registry UI when a template is configured
    (registry references only), else the overlaybd page filtered on the image. ``plain_http`` is
    kept for callers; the registry UI's scheme is the template's."""
    if not target:
        return None
    template = _conf("overlaybd", "registry_ui_url_template")
    if template:
        url = registry_ui_link(template, target, digest)
        if url:
            return url
    return page_link(target)


class OverlaybdImageLink(BaseOperatorLink):
    """The converted image: its conversions on the overlaybd page, or the registry's UI."""

    name = "overlaybd image"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "image_url", None) or ""
