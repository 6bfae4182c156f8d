"""The image list of the nightly DAG: YAML or JSON, a list of images or ``{"images": [...]}``.

Each entry needs ``source`` and ``destination``; ``platforms`` (list or comma string) is optional.
Entries are validated up front so a typo fails the listing task with one clear line instead of
failing one mapped conversion later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.operators.base import as_platforms


class ImageListError(OverlaybdError):
    """A malformed image list."""


def parse_image_list(text: str, *, origin: str = "image list") -> list[dict[str, Any]]:
    """Parse and validate; returns ``[{"source", "destination", "platforms"}]`` in file order."""
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
        unknown = set(entry) - {"source", "destination", "platforms"}
        if unknown:
            raise ImageListError(f"{origin}: entry {i}: unknown key(s) {', '.join(sorted(unknown))}")
        if destination in seen:
            raise ImageListError(f"{origin}: entry {i}: destination {destination} appears twice")
        seen.add(destination)
        images.append(
            {
                "source": str(source),
                "destination": str(destination),
                "platforms": as_platforms(entry.get("platforms")),
            }
        )
    return images
