"""What a conversion will do: the images of the source, their layers, chain ids and the dedup
decisions (image.md §3, §5, §6). JSON-able, so it can travel between stages (plan.json, XCom)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.engine.errors import StageError

__all__ = ["ImagePlan", "LayerPlan", "Plan"]

PLAN_VERSION = 2  # 2: build statistics and recorded costs travel with the plan (stage handover)


@dataclass
class LayerPlan:
    """One layer of one image: its source, chain identity and what to do with it."""

    index: int
    source_digest: str
    source_size: int
    source_media_type: str
    diff_id: str
    chain_id: str
    uuid: str
    parent_uuid: str
    action: str = "build"  # build | reuse
    # miss (built here) | hit (same repository) | mount (another repository) | local (finished
    # earlier in this work directory or by an earlier try) | wait (built meanwhile by a
    # concurrent conversion holding its lease, then reused)
    dedup: str = "miss"
    digest: str | None = None  # converted blob, once known
    size: int | None = None
    bytes_in: int = 0  # source bytes fetched and applied here
    bytes_out: int = 0  # layer blob bytes written here
    seconds: float = 0.0  # build time here
    cost: float = 0.0  # recorded build time of a reused layer (what its reuse saved)
    #: a flattened layer (``--flatten``): the source layers applied into it, bottom first,
    #: ``[{"digest", "size", "media_type", "diff_id"}]``; None for a native per-layer layer
    parts: list[dict[str, Any]] | None = None
    # TurboOCIv1 images (plan.output "turbo-oci"): "turbo" = a meta blob over the source layer;
    # "overlaybd" = a native layer (a zstd source cannot be TurboOCI). There ``chain_id`` is the
    # turbo chain key (engine/turbo/keys.py), not the OCI chain id.
    kind: str = "overlaybd"
    out_diff_id: str | None = None  # the config's diff_id when it is not ``digest`` (turbo: meta tar)

    @property
    def key(self) -> str:
        """Work-directory name: a flattened layer never shares one with the native top layer."""
        hexpart = self.chain_id.rsplit(":", 1)[1]
        return hexpart if self.parts is None else f"flat-{hexpart}"


@dataclass
class ImagePlan:
    """One manifest to convert (the source itself, or one child of its index)."""

    platform: str
    child: int | None
    source_digest: str
    source_media_type: str
    source_size: int
    config_digest: str
    layers: list[LayerPlan] = field(default_factory=list)
    cached: dict[str, Any] | None = None  # manifest cache hit: {"digest", "size", "repo"}

    @property
    def label(self) -> str:
        return self.platform or self.source_digest[7:19]


@dataclass
class Plan:
    source: str
    target: str
    source_digest: str
    source_media_type: str
    source_size: int
    is_index: bool
    options: dict[str, Any]
    layer_format: str
    manifest_format: str
    images: list[ImagePlan] = field(default_factory=list)
    version: int = PLAN_VERSION
    output: str = "overlaybd"  # overlaybd | turbo-oci (the kind of image this plan writes)
    #: output "both": the TurboOCIv1 plan (same images, its own target), converted in the same run
    twin: dict[str, Any] | None = None

    @property
    def turbo(self) -> bool:
        return self.output == "turbo-oci"

    def layer_format_of(self, layer: LayerPlan) -> str:
        """Dedup format id of one layer: a TurboOCI image's rows also say which kind the blob is."""
        return f"{self.layer_format}/{layer.kind}" if self.turbo else self.layer_format

    def twin_plan(self) -> Plan | None:
        return Plan.from_json(self.twin) if self.twin else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        if doc.get("version") != PLAN_VERSION:
            raise StageError(f"plan.json version {doc.get('version')!r} is not {PLAN_VERSION}")
        images = []
        for img in doc["images"]:
            layers = [LayerPlan(**layer) for layer in img["layers"]]
            images.append(ImagePlan(**{**img, "layers": layers}))
        return cls(**{**doc, "images": images})
