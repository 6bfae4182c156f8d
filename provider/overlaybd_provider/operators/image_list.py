"""The image list of the nightly DAG: YAML or JSON, a list of images or ``{"images": [...]}``.

Each entry needs ``source`` and ``destination``; optional: ``platforms`` (list or comma string),
its own connections (``src_registry_conn_id``, ``dst_registry_conn_id``; empty = the connection
named after the registry host, ``oci_registry_<host>``, else the run's) and its own format options
(``algorithm``, ``block_size_kb``, ``vsize_gb``, ``fstype``, ``oci``, ``flatten``, ``format``:
``overlaybd`` | ``turbo-oci`` | ``both``, and for ``both`` its ``turbo_destination``; empty = the
run's params).
Entries are validated up front so a typo fails the listing task with one clear line instead of
failing one mapped conversion later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from overlaybd_provider.errors import OverlaybdError, message_for
from overlaybd_provider.operators.base import as_platforms, convert_options

CONNECTIONS = ("src_registry_conn_id", "dst_registry_conn_id")
OPTIONS = ("algorithm", "block_size_kb", "vsize_gb", "fstype", "oci", "flatten", "format", "turbo_destination")
KEYS = ("source", "destination", "platforms", *CONNECTIONS, *OPTIONS)


class ImageListError(OverlaybdError):
    """A malformed image list."""


def parse_image_list(text: str, *, origin: str = "image list",
                     defaults: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Parse and validate; returns one dict per image, in file order, with every key of
    :data:`KEYS` (entry values, else ``defaults`` — the run's params — else None)."""
    defaults = dict(defaults or {})
    try:
        data = yaml.safe_load(text) if text and text.strip() else []
    except yaml.YAMLError as exc:
        raise ImageListError(f"{origin}: not valid YAML/JSON: {exc}") from None
    if isinstance(data, Mapping):
        data = data.get("images", [])
    if not isinstance(data, list):
        raise ImageListError(f"{origin}: expected a list of images or a mapping with 'images'")
    images: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise ImageListError(f"{origin}: entry {i}: expected a mapping with source and destination")
        source, destination = entry.get("source"), entry.get("destination")
        if not source or not destination:
            raise ImageListError(f"{origin}: entry {i}: source and destination are required")
        unknown = set(entry) - set(KEYS)
        if unknown:
            raise ImageListError(f"{origin}: entry {i}: unknown key(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(KEYS)})")
        if destination in seen:
            raise ImageListError(f"{origin}: entry {i}: destination {destination} appears twice")
        seen.add(destination)
        image: dict[str, Any] = {"source": str(source), "destination": str(destination),
                                 "platforms": as_platforms(entry.get("platforms"))}
        for key in (*CONNECTIONS, *OPTIONS):
            value = entry.get(key)
            image[key] = value if value not in (None, "") else defaults.get(key)
        try:
            convert_options(**{k: image[k] if image[k] is not None else _FALLBACK[k] for k in OPTIONS},
                            referrer=False, platforms=image["platforms"])
        except OverlaybdError as exc:
            raise ImageListError(f"{origin}: entry {i} ({source}): {message_for(exc, 'airflow')}") from None
        images.append(image)
    return images


_FALLBACK = {"algorithm": "lz4", "block_size_kb": 4, "vsize_gb": 64, "fstype": "ext4", "oci": False, "flatten": False,
             "format": "overlaybd", "turbo_destination": None}
