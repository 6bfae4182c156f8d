"""Identity of the layers of a TurboOCIv1 image, for the workspace and the dedup tables.

A meta blob depends on more than the OCI chain id: its ``gzip.meta`` and ``target-digest``
belong to one compressed source blob, and its block allocation depends on which lowers are
TurboOCI and which are native (a zstd source). So the key chains ``diff_id`` with the layer's
source digest (turbo) or ``native``; equal keys mean equal bytes for the same format id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from overlaybd_provider.engine.plan.model import LayerPlan
from overlaybd_provider.formats.turbo import turbo_capability

__all__ = ["layer_kind", "turbo_keys"]


def layer_kind(source_media_type: str) -> str:
    """``turbo`` for gzip and plain tar sources, ``overlaybd`` (native) otherwise (zstd)."""
    return "turbo" if turbo_capability(source_media_type)[0] else "overlaybd"


def turbo_keys(layers: Sequence[LayerPlan]) -> list[str]:
    """The turbo chain key of every layer, bottom first (``sha256:`` + 64 hex, like a chain id)."""
    out: list[str] = []
    prev = "turbo"
    for layer in layers:
        part = layer.source_digest if layer_kind(layer.source_media_type) == "turbo" else "native"
        prev = "sha256:" + hashlib.sha256(f"{prev} {layer.diff_id}|{part}".encode()).hexdigest()
        out.append(prev)
    return out


def as_turbo_layers(layers: Sequence[LayerPlan]) -> None:
    """Turn the planned layers of one image into the layers of its TurboOCIv1 image, in place."""
    for layer, key in zip(layers, turbo_keys(layers), strict=True):
        layer.chain_id = key
        layer.kind = layer_kind(layer.source_media_type)
