"""Conversion report (``--output-json``, ``stages.report``) and progress lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan

__all__ = ["ConvertReport", "LayerReport", "ManifestReport", "Progress", "build_report", "describe_flatten",
           "describe_layer_event", "emit", "flatten_change", "human_bytes", "human_seconds"]

log = logging.getLogger("overlaybd_provider.engine.progress")

#: ``progress(event_dict)``; events: {"event": "layer"|"manifest"|"index", ...}
Progress = Callable[[dict[str, Any]], None]


@dataclass
class LayerReport:
    index: int
    chain_id: str
    source_digest: str
    source_size: int
    digest: str | None
    size: int | None
    dedup: str
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    cost: float = 0.0  # recorded build seconds of a reused layer
    kind: str = "overlaybd"  # overlaybd | turbo (a TurboOCIv1 meta blob over the source layer)


@dataclass
class ManifestReport:
    platform: str
    source_digest: str
    digest: str | None
    size: int | None
    cached: bool
    layers: list[LayerReport] = field(default_factory=list)  # a cached manifest's: dedup "cache"
    #: ``--flatten``: ``{"source_layers", "source_bytes", "layers", "bytes"}`` (see :func:`flatten_change`)
    flatten: dict[str, int] | None = None


@dataclass
class ConvertReport:
    source: dict[str, Any]
    target: dict[str, Any]
    options: dict[str, Any]
    manifests: list[ManifestReport]
    seconds: float = 0.0
    #: ``--dump-manifest``: converted JSON documents by digest (index/manifests/configs)
    documents: dict[str, str] = field(default_factory=dict)
    format: str = "overlaybd"  # overlaybd | turbo-oci
    #: TurboOCI: ``{"source_bytes", "meta_bytes", "bytes_saved"}`` over the layers of every manifest
    #: (meta = what this image adds to the registry beyond the original layers)
    savings: dict[str, int] | None = None
    #: output ``both``: the report of the TurboOCIv1 image written next to this one
    turbo: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for key in ("documents", "savings", "turbo"):
            if not doc[key]:
                doc.pop(key)
        for manifest in doc["manifests"]:
            if manifest["flatten"] is None:
                del manifest["flatten"]
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def _layer_report(layer: LayerPlan, *, cached: bool = False) -> LayerReport:
    """A layer of a manifest-cache hit is reported as ``cache`` (its blob digest is in the cached
    manifest, not looked at)."""
    return LayerReport(
        index=layer.index, chain_id=layer.chain_id, source_digest=layer.source_digest,
        source_size=layer.source_size, digest=None if cached else layer.digest,
        size=None if cached else layer.size, dedup="cache" if cached else layer.dedup,
        bytes_in=layer.bytes_in, bytes_out=layer.bytes_out, seconds=round(layer.seconds, 3), cost=layer.cost,
        kind=layer.kind,
    )


def flatten_change(image: ImagePlan) -> dict[str, int] | None:
    """Layer count and bytes before (the source layers, as stored) and after (the flattened
    blob, once known) of a flattened image; None for a native conversion."""
    flat = [layer for layer in image.layers if layer.parts is not None]
    if not flat:
        return None
    return {"source_layers": sum(len(layer.parts or ()) for layer in flat),
            "source_bytes": sum(int(p["size"]) for layer in flat for p in layer.parts or ()),
            "layers": len(image.layers), "bytes": sum(layer.size or 0 for layer in image.layers)}


def describe_flatten(change: dict[str, int]) -> str:
    """``flattened 10 layers (1.2 MiB) into 1 (900.0 KiB, -25.0%)``."""
    before, after = change["source_bytes"], change["bytes"]
    pct = f", {100.0 * (after - before) / before:+.1f}%" if before and after else ""
    return (f"flattened {change['source_layers']} layers ({human_bytes(before)}) into {change['layers']} "
            f"({human_bytes(after)}{pct})")


def savings(plan: Plan) -> dict[str, int] | None:
    """Bytes a TurboOCIv1 image saves against storing every layer twice: source layer bytes vs the
    meta blobs (native layers of it, for zstd sources, count as stored in full)."""
    if not plan.turbo:
        return None
    src = meta = 0
    for image in plan.images:
        for layer in image.layers:
            src += layer.source_size
            meta += layer.size or 0
    return {"source_bytes": src, "meta_bytes": meta, "bytes_saved": src - meta}


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
                layers=[_layer_report(layer, cached=bool(image.cached)) for layer in image.layers],
                flatten=flatten_change(image),
            )
        )
    return ConvertReport(
        source={"reference": plan.source, "digest": plan.source_digest, "media_type": plan.source_media_type,
                "size": plan.source_size},
        target={"reference": plan.target, "digest": pushed.get("digest"), "media_type": pushed.get("media_type"),
                "size": pushed.get("size")},
        options={**{k: plan.options[k] for k in ("algorithm", "block_size_kb", "vsize_gb", "fstype", "oci", "referrer")},
                 **({"flatten": True} if plan.options.get("flatten") else {})},
        manifests=manifests, seconds=round(seconds, 3), format=plan.output, savings=savings(plan),
    )


def human_bytes(n: float) -> str:
    """``512 B``, ``3.4 KiB``, ``12.0 MiB``, ``1.25 GiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.2f} {unit}" if unit == "GiB" else f"{value:.1f} {unit}"
    return f"{int(n)} B"


def human_seconds(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``3 min 05 s``, ``2 h 10 min``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def describe_layer_event(event: dict[str, Any]) -> str:
    """The one line a layer event gets: ``layer 2/3 3f2a1b2c4d5e: built 2.1 MiB → 1.2 MiB in
    0.40 s (5.2 MiB/s)`` (reused: ``reused (mount)``)."""
    what = str(event.get("what", ""))
    chain = str(event.get("chain_id", ""))
    short = chain.rsplit(":", 1)[-1][:12] + (" (flattened)" if chain.startswith("flat:") else "")
    head = f"layer {int(event.get('index', 0)) + 1}/{event.get('count', '?')} {short}"
    if what == "reused":
        return f"{head}: reused ({event.get('dedup')})"
    bytes_in, bytes_out = int(event.get("bytes_in") or 0), int(event.get("bytes_out") or 0)
    seconds = float(event.get("seconds") or 0.0)
    sizes = ""
    if bytes_in and bytes_out:
        sizes = f" {human_bytes(bytes_in)} → {human_bytes(bytes_out)}"
    elif bytes_in or bytes_out:
        sizes = f" {human_bytes(bytes_in or bytes_out)}"
    timing = ""
    if seconds > 0:
        timing = f" in {human_seconds(seconds)}"
        if bytes_in:
            timing += f" ({human_bytes(bytes_in / seconds)}/s)"
    return f"{head}: {what}{sizes}{timing}"


def emit(progress: Progress | None, image: ImagePlan, layer: LayerPlan, what: str, *, bytes_in: int = 0,
         bytes_out: int = 0, seconds: float = 0.0) -> None:
    """A layer event: to ``progress`` when given (the caller logs it its way), else one line on
    the ``overlaybd_provider.engine.progress`` logger (the CLI's stderr) — never both."""
    event = {"event": "layer", "platform": image.platform, "index": layer.index, "count": len(image.layers),
             "chain_id": layer.chain_id, "dedup": layer.dedup, "what": what, "bytes_in": bytes_in,
             "bytes_out": bytes_out, "seconds": seconds}
    if progress is not None:
        progress(event)
    else:
        log.info("[%s] %s", image.label, describe_layer_event(event))
