"""Converted images as Airflow assets: the outlet the converting operators declare, and the event.

A destination is only known when the task runs (it is templated), so the operators declare one
static outlet, the asset alias ``overlaybd_converted``, and attach the concrete image asset
(``oci://REGISTRY/REPO:TAG``) to it at run time with the conversion's facts as the event's extra.
DAGs scheduled on the alias run after every conversion; DAGs scheduled on one image's asset run
after that image was converted. A concrete ``Asset`` the user put in ``outlets`` for the same URI
gets the same extra.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset, AssetAlias

from overlaybd_provider.asset_uri import image_uri

log = logging.getLogger(__name__)

#: Name of the asset alias every overlaybd conversion emits its image asset through.
CONVERTED_ALIAS = "overlaybd_converted"


def converted_alias() -> AssetAlias:
    return AssetAlias(name=CONVERTED_ALIAS)


def with_converted_outlet(outlets: Any) -> list[Any]:
    """``outlets`` (None, one item or a list) plus the ``overlaybd_converted`` alias, once."""
    if outlets is None:
        items: list[Any] = []
    elif isinstance(outlets, (list, tuple)):
        items = list(outlets)
    else:
        items = [outlets]
    if not any(isinstance(o, AssetAlias) and o.name == CONVERTED_ALIAS for o in items):
        items.append(converted_alias())
    return items


def converted_extra(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The asset event's extra from an engine conversion report (``stages.report``); ``None`` when
    nothing was pushed to a registry (an OCI-layout destination has no asset URI)."""
    source, target = report.get("source") or {}, report.get("target") or {}
    reference, digest = target.get("reference"), target.get("digest")
    if not reference or not digest or image_uri(reference) is None:
        return None
    options = report.get("options") or {}
    manifests = [m for m in report.get("manifests") or [] if isinstance(m, Mapping)]
    return {
        "reference": reference,
        "digest": digest,
        "media_type": target.get("media_type"),
        "source": source.get("reference"),
        "source_digest": source.get("digest"),
        "format": options.get("format") or "overlaybd",
        "platforms": sorted({str(m["platform"]) for m in manifests if m.get("platform")}),
        "manifests": [
            {"platform": m.get("platform"), "digest": m.get("digest")} for m in manifests if m.get("digest")
        ],
        "options": {k: options[k] for k in ("algorithm", "block_size_kb", "vsize_gb", "oci") if k in options},
    }


def emit_converted(context: Any, report: Mapping[str, Any], outlets: Iterable[Any] = ()) -> dict[str, Any] | None:
    """Attach the converted image to the ``overlaybd_converted`` alias (and to a matching concrete
    outlet) in ``context["outlet_events"]``; returns the extra (``None``: nothing to emit)."""
    extra = converted_extra(report)
    if extra is None:
        return None
    events = context.get("outlet_events") if isinstance(context, Mapping) else None
    if events is None:  # execute() called without an Airflow context (unit tests, scripts)
        return extra
    uri = image_uri(extra["reference"])
    asset = Asset(uri=uri, name=uri)
    events[converted_alias()].add(asset, extra=extra)
    for outlet in outlets:
        if isinstance(outlet, Asset) and outlet.uri == uri:
            events[outlet].extra.update(extra)
    log.info("asset event: %s digest %s (alias %s)", uri, extra["digest"], CONVERTED_ALIAS)
    return extra
