"""Conversion report (``--output-json``, ``stages.report``) and progress lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan

__all__ = ["ConvertReport", "LayerReport", "ManifestReport", "Progress", "build_report", "emit"]

log = logging.getLogger("overlaybd_provider.engine.progress")

#: ``progress(event_dict)``; events: {"event": "layer"|"manifest"|"index", ...}
Progress = Callable[[dict[str, Any]], None]


@dataclass
class LayerReport:
    index: int
    chain_id: str
    source_digest: str
    digest: str | None
    size: int | None
    dedup: str
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    cost: float = 0.0  # recorded build seconds of a reused layer


@dataclass
class ManifestReport:
    platform: str
    source_digest: str
    digest: str | None
    size: int | None
    cached: bool
    layers: list[LayerReport] = field(default_factory=list)
    cost: float = 0.0  # manifest-cache hit: recorded build seconds of all its layers


@dataclass
class ConvertReport:
    source: dict[str, Any]
    target: dict[str, Any]
    options: dict[str, Any]
    manifests: list[ManifestReport]
    seconds: float = 0.0
    #: ``--dump-manifest``: converted JSON documents by digest (index/manifests/configs)
    documents: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if not self.documents:
            doc.pop("documents")
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def _layer_report(layer: LayerPlan) -> LayerReport:
    return LayerReport(
        index=layer.index, chain_id=layer.chain_id, source_digest=layer.source_digest, digest=layer.digest,
        size=layer.size, dedup=layer.dedup, bytes_in=layer.bytes_in, bytes_out=layer.bytes_out,
        seconds=round(layer.seconds, 3), cost=layer.cost,
    )


def build_report(plan: Plan, pushed: dict[str, Any] | None, seconds: float = 0.0) -> ConvertReport:
    """The report of a conversion from its plan (digests, dedup outcomes, build statistics and
    recorded costs live in the layer plans) and what was pushed."""
    pushed = pushed or {}
    by_source = {m["source_digest"]: m for m in pushed.get("manifests", [])}
    manifests = []
    for image in plan.images:
        done = by_source.get(image.source_digest, {})
        manifests.append(
            ManifestReport(
                platform=image.platform, source_digest=image.source_digest, digest=done.get("digest"),
                size=done.get("size"), cached=bool(image.cached),
                layers=[] if image.cached else [_layer_report(layer) for layer in image.layers],
                cost=round(sum(layer.cost for layer in image.layers), 3) if image.cached else 0.0,
            )
        )
    return ConvertReport(
        source={"reference": plan.source, "digest": plan.source_digest, "media_type": plan.source_media_type,
                "size": plan.source_size},
        target={"reference": plan.target, "digest": pushed.get("digest"), "media_type": pushed.get("media_type"),
                "size": pushed.get("size")},
        options={k: plan.options[k] for k in ("algorithm", "block_size_kb", "vsize_gb", "fstype", "oci", "referrer")},
        manifests=manifests, seconds=round(seconds, 3),
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def emit(progress: Progress | None, image: ImagePlan, layer: LayerPlan, what: str, *, bytes_in: int = 0,
         bytes_out: int = 0, seconds: float = 0.0) -> None:
    """One progress line on stderr (via logging) and the same facts to ``progress``."""
    n = len(image.layers)
    speed = f", {bytes_in / seconds / 1e6:.1f} MB/s" if seconds > 0 and bytes_in else ""
    parts = [f"{_mb(bytes_in)} in"] if bytes_in else []
    parts += [f"{_mb(bytes_out)} out"] if bytes_out else []
    sizes = f" {', '.join(parts)}" if parts else ""
    log.info("[%s] layer %d/%d %s %s:%s%s%s", image.label, layer.index + 1, n, layer.chain_id[7:19],
             layer.dedup if layer.action == "reuse" else "miss", f" {what}", sizes, speed)
    if progress is not None:
        progress({"event": "layer", "platform": image.platform, "index": layer.index, "count": n,
                  "chain_id": layer.chain_id, "dedup": layer.dedup, "what": what, "bytes_in": bytes_in,
                  "bytes_out": bytes_out, "seconds": seconds})
