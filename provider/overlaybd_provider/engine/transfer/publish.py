"""Push converted layers, config, manifests and the index; record them in the dedup store.

Config/manifest/index bytes are rebuilt from the source objects saved in the workspace, so the
same source and options always give the same digests, whatever was reused (image.md §4-§5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.documents import manifests as mf
from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan
from overlaybd_provider.engine.transfer.endpoint import Endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace

__all__ = [
    "Built",
    "PushStats",
    "build_image_documents",
    "build_index_document",
    "publish_all",
    "push_image",
    "push_layer",
    "record_image",
    "record_layer",
]

log = logging.getLogger(__name__)


@dataclass
class Built:
    """Converted documents of one image (bytes kept in the workspace objects)."""

    config: mf.Descriptor
    manifest: mf.Descriptor
    layers: list[dict] = field(default_factory=list)


def layer_result(ws: Workspace, layer: LayerPlan) -> tuple[str, int]:
    """Digest and size of a layer's converted blob: known from the plan (reused, or built by the
    build stage), else from the finished blob in the workspace."""
    if layer.digest is not None and layer.size is not None:
        return layer.digest, layer.size
    info = ws.blob_info(layer)
    if info is None:
        raise StageError(f"layer {layer.index} ({layer.chain_id}) has no converted blob: run the build stage first")
    return info["digest"], info["size"]


def build_image_documents(ws: Workspace, plan: Plan, image: ImagePlan, dst: Endpoint | None = None) -> Built:
    """``dst``: where a TurboOCI image's reused meta blobs are read for their diff_id."""
    from overlaybd_provider.engine.turbo import documents as turbo_docs

    oci = plan.options["oci"]
    fs_type = _fs_annotation(plan)
    descs = []
    digests = []
    for layer in image.layers:
        digest, size = layer_result(ws, layer)
        layer.digest, layer.size = digest, size
        if plan.turbo:
            digests.append(turbo_docs.config_diff_id(ws, dst, layer))
            descs.append(turbo_docs.layer_descriptor(layer, oci=oci, fs_type=fs_type))
        else:
            digests.append(digest)
            descs.append(mf.layer_descriptor(digest, size, oci=oci, fs_type=fs_type))
    flattened = sum(len(layer.parts) for layer in image.layers if layer.parts is not None)
    config_bytes = mf.build_config(ws.get_object(image.config_digest), digests, flattened=flattened)
    config = mf.Descriptor.of(mf.media_types(oci)["config"], config_bytes)
    ws.put_object(config.digest, config_bytes)
    subject = (
        mf.Descriptor(image.source_media_type, image.source_digest, image.source_size)
        if plan.options["referrer"] else None
    )
    manifest_bytes = mf.build_manifest(ws.get_object(image.source_digest), config, descs, oci=oci, subject=subject,
                                       artifact_type=_artifact_type(plan))
    manifest = mf.Descriptor.of(mf.media_types(oci)["manifest"], manifest_bytes)
    ws.put_object(manifest.digest, manifest_bytes)
    return Built(config, manifest, descs)


def _artifact_type(plan: Plan) -> str:
    from overlaybd_provider.engine.turbo import ARTIFACT_TYPE

    return ARTIFACT_TYPE if plan.turbo else mf.ARTIFACT_TYPE


def _fs_annotation(plan: Plan) -> str | None:
    from overlaybd_provider.engine.options import parse_fstype

    return parse_fstype(plan.options["fstype"]).annotation


def build_index_document(ws: Workspace, plan: Plan, results: dict[int, mf.Descriptor]) -> mf.Descriptor:
    subject = (
        mf.Descriptor(plan.source_media_type, plan.source_digest, plan.source_size)
        if plan.options["referrer"] else None
    )
    data = mf.build_index(ws.get_object(plan.source_digest), results, oci=plan.options["oci"], subject=subject,
                          artifact_type=_artifact_type(plan))
    media_type = mf.OCI_INDEX if plan.options["oci"] else plan.source_media_type
    desc = mf.Descriptor.of(media_type, data)
    ws.put_object(desc.digest, data)
    return desc


@dataclass
class PushStats:
    pushed: int = 0
    existing: int = 0
    bytes: int = 0
    sources: int = 0  # TurboOCI source layers mounted or copied into the destination


def push_layer(ws: Workspace, dst: Endpoint, layer: LayerPlan, stats: PushStats) -> None:
    """Make the layer's blob present in ``dst``: pushed from the workspace when it is there, else
    it must already be in ``dst`` (reused, or pushed by the build stage on another machine)."""
    digest, size = layer_result(ws, layer)
    if layer.action == "reuse":
        stats.existing += 1
        return
    path = ws.blob_path(layer)
    if ws.blob_info(layer) is None:
        if not dst.has_blob(digest):
            raise StageError(f"layer {layer.index} blob {digest} is not in {dst.text} and not here: "
                             "rerun the build stage")
        stats.existing += 1
    # the digest is the one the seal computed writing this very file: not hashed a second time
    # (the registry checks it before committing); a pushed layout copy is still hashed
    elif dst.push_blob_file(path, digest, size, verify=False):
        stats.pushed += 1
        stats.bytes += size
    else:
        stats.existing += 1


def push_image(ws: Workspace, dst: Endpoint, plan: Plan, image: ImagePlan, built: Built, stats: PushStats,
               *, tag: str | None, src: Endpoint | None = None) -> None:
    """Layers (missing ones), config, then the manifest (tagged only for a single-image source).
    A TurboOCI image's source layers are made present first (mounted or copied from ``src``)."""
    if plan.turbo:
        from overlaybd_provider.engine.turbo.documents import ensure_sources

        stats.sources += ensure_sources(ws, src, dst, image)
    for layer in image.layers:
        push_layer(ws, dst, layer, stats)
    if dst.push_blob_bytes(ws.get_object(built.config.digest), built.config.digest, ws.root / "objects"):
        stats.pushed += 1
        stats.bytes += built.config.size
    dst.push_manifest(ws.get_object(built.manifest.digest), built.manifest.media_type, tag)


def record_layer(dedup: DedupStore | None, dst: Endpoint, plan: Plan, layer: LayerPlan, digest: str,
                 size: int) -> int:
    """Record a freshly converted, pushed layer (reused ones already have their row)."""
    if dedup is None or layer.action != "build" or not dst.is_registry:
        return 0
    dedup.record_layer(dst.host, dst.repo, layer.chain_id, digest, size, plan.layer_format_of(layer))
    if layer.seconds > 0:  # built here: what a later reuse of it saves
        dedup.record_layer_cost(layer.chain_id, plan.layer_format, layer.seconds, layer.bytes_in)
    return 1


def record_image(dedup: DedupStore | None, dst: Endpoint, plan: Plan, image: ImagePlan,
                 manifest: mf.Descriptor) -> int:
    if dedup is None or not dst.is_registry or image.cached:
        return 0
    dedup.record_manifest(dst.host, dst.repo, image.source_digest, manifest.media_type, manifest.digest,
                          manifest.size, plan.manifest_format)
    return 1


def publish_all(ws: Workspace, plan: Plan, dst: Endpoint, *, upload: bool, per_image=None,
                src: Endpoint | None = None) -> dict[str, Any]:
    """Documents for every image (+ index), pushed when ``upload``; saved as pushed.json.

    ``per_image(image, built, stats)`` replaces the default push of one image's documents."""
    stats = PushStats()
    tag = dst.tag
    results: dict[int, Any] = {}
    manifests = []
    for n, image in enumerate(plan.images):
        if image.cached:
            desc = mf.Descriptor(mf.media_types(plan.options["oci"])["manifest"], image.cached["digest"],
                                 image.cached["size"])
            if upload and not plan.is_index and tag:
                data = dst.get_manifest(desc.digest)  # re-tag (image.md §6)
                ws.put_object(desc.digest, data)
                dst.push_manifest(data, desc.media_type, tag)
        else:
            built = build_image_documents(ws, plan, image, dst if upload else None)
            desc = built.manifest
            if upload:
                if per_image is not None:
                    per_image(image, built, stats)
                else:
                    push_image(ws, dst, plan, image, built, stats, tag=None if plan.is_index else tag, src=src)
        results[image.child if image.child is not None else n] = desc
        manifests.append({"platform": image.platform, "source_digest": image.source_digest,
                          "digest": desc.digest, "size": desc.size, "media_type": desc.media_type,
                          "cached": bool(image.cached)})
    if plan.is_index:
        top = build_index_document(ws, plan, results)
        if upload:
            dst.push_manifest(ws.get_object(top.digest), top.media_type, tag)
    else:
        top = results[next(iter(results))]
    doc = {"target": plan.target, "digest": top.digest, "media_type": top.media_type, "size": top.size,
           "manifests": manifests, "uploaded": upload, "blobs_pushed": stats.pushed,
           "blobs_existing": stats.existing, "bytes_pushed": stats.bytes, "output": plan.output}
    if plan.turbo:
        doc["source_layers_copied"] = stats.sources
    ws.write_json(ws.root / "pushed.json", doc)
    return doc
