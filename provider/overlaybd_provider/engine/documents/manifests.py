"""Converted config, manifest and index bytes, exactly as upstream's convertor writes them
(image.md §2, §4, §5)."""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from overlaybd_provider.engine.documents import gotypes
from overlaybd_provider.engine.documents.jsonenc import go_marshal

__all__ = [
    "ARTIFACT_TYPE",
    "MEDIA_TYPES",
    "Descriptor",
    "build_config",
    "build_index",
    "build_manifest",
    "is_attestation",
    "is_index_media_type",
    "layer_descriptor",
    "media_types",
]

log = logging.getLogger(__name__)

ANNOTATION_BLOB_DIGEST = "containerd.io/snapshot/overlaybd/blob-digest"
ANNOTATION_BLOB_SIZE = "containerd.io/snapshot/overlaybd/blob-size"
ANNOTATION_VERSION = "containerd.io/snapshot/overlaybd/version"
ANNOTATION_FS_TYPE = "containerd.io/snapshot/overlaybd/blob-fs-type"
OVERLAYBD_VERSION = "0.1.0"
ARTIFACT_TYPE = "application/vnd.containerd.overlaybd.native.v1+json"
ATTESTATION_KEY = "vnd.docker.reference.type"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

MEDIA_TYPES = {
    False: {
        "manifest": DOCKER_MANIFEST,
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar",
    },
    True: {
        "manifest": OCI_MANIFEST,
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar",
    },
}


def media_types(oci: bool) -> dict[str, str]:
    return MEDIA_TYPES[bool(oci)]


def is_index_media_type(media_type: str) -> bool:
    return media_type in (DOCKER_LIST, OCI_INDEX)


@dataclass(frozen=True)
class Descriptor:
    """A pushed object: what a descriptor needs, plus the bytes for JSON documents."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Descriptor:
        return cls(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))

    def as_go(self) -> dict[str, Any]:
        d = gotypes.zero(gotypes.DESCRIPTOR)
        d.update(mediaType=self.media_type, digest=self.digest, size=self.size)
        return d


def layer_descriptor(digest: str, size: int, *, oci: bool, fs_type: str | None = None) -> dict[str, Any]:
    """Converted layer descriptor with the overlaybd annotations (image.md §3)."""
    d = gotypes.zero(gotypes.DESCRIPTOR)
    annotations = {
        ANNOTATION_BLOB_DIGEST: digest,
        ANNOTATION_BLOB_SIZE: str(size),
        ANNOTATION_VERSION: OVERLAYBD_VERSION,
    }
    if fs_type:
        annotations[ANNOTATION_FS_TYPE] = fs_type
    d.update(mediaType=media_types(oci)["layer"], digest=digest, size=size, annotations=annotations)
    return d


def parse_config(data: bytes) -> dict[str, Any]:
    return gotypes.unmarshal(gotypes.IMAGE, data, "image config")


def parse_manifest(data: bytes) -> dict[str, Any]:
    return gotypes.unmarshal(gotypes.MANIFEST, data, "image manifest")


def parse_index(data: bytes) -> dict[str, Any]:
    return gotypes.unmarshal(gotypes.INDEX, data, "image index")


FLATTENED_BY = "overlaybd convert --flatten"


def build_config(source_config: bytes, layer_digests: list[str], *, flattened: int = 0) -> bytes:
    """Source config through the image-spec ``Image`` struct, ``diff_ids`` replaced (§4).
    ``flattened``: the number of source layers in the one layer of ``layer_digests``."""
    image = parse_config(source_config)
    image["rootfs"]["diff_ids"] = list(layer_digests)
    if flattened and image.get("history"):
        image["history"] = flatten_history(image["history"], flattened, image.get("created"))
    return go_marshal(gotypes.to_go(gotypes.IMAGE, image))


def flatten_history(history: list[dict[str, Any]], layers: int, created: str | None) -> list[dict[str, Any]]:
    """History of a flattened image: every entry kept, those that made a layer after the first
    marked ``empty_layer`` (one layer must match one non-empty entry), and a last entry saying
    what happened. Deterministic: its time is the last entry's (or the image's), never now."""
    out, seen = [], False
    for entry in history:
        entry = dict(entry)
        if not entry.get("empty_layer"):
            if seen:
                entry["empty_layer"] = True
            seen = True
        out.append(entry)
    note = gotypes.zero(gotypes.HISTORY)
    note.update(created=next((e["created"] for e in reversed(out) if e.get("created")), created),
                created_by=FLATTENED_BY, comment=f"{layers} layers flattened into one overlaybd layer",
                empty_layer=True)
    out.append(note)
    return out


def build_manifest(
    source_manifest: bytes,
    config: Descriptor,
    layers: list[dict[str, Any]],
    *,
    oci: bool,
    subject: Descriptor | None = None,
    artifact_type: str = ARTIFACT_TYPE,
) -> bytes:
    """Source manifest with config/layers/mediaType replaced; annotations kept (§5)."""
    manifest = parse_manifest(source_manifest)
    manifest["config"] = config.as_go()
    manifest["layers"] = [copy.deepcopy(layer) for layer in layers]
    manifest["mediaType"] = media_types(oci)["manifest"]
    if subject is not None:
        manifest["artifactType"] = artifact_type
        manifest["subject"] = subject.as_go()
    return go_marshal(gotypes.to_go(gotypes.MANIFEST, manifest))


def is_attestation(child: dict[str, Any]) -> bool:
    return (child.get("annotations") or {}).get(ATTESTATION_KEY) == "attestation-manifest"


def platform_string(child: dict[str, Any]) -> str:
    p = child.get("platform")
    if not p:
        return ""
    text = f"{p['os']}/{p['architecture']}"
    return f"{text}/{p['variant']}" if p.get("variant") else text


def select_children(
    index: dict[str, Any], platforms: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, Any]]]:
    """Children to convert, in index order: attestations dropped with a warning (§5), then the
    optional ``--platform`` filter (``os/arch`` matches every variant of that arch)."""
    selected = []
    for i, child in enumerate(index["manifests"] or []):
        if is_attestation(child):
            log.warning("dropping attestation manifest %s (not converted)", child["digest"])
            continue
        if platforms:
            plat = platform_string(child)
            if not any(plat == want or plat.startswith(want + "/") for want in platforms):
                continue
        selected.append((i, child))
    return selected


def build_index(
    source_index: bytes,
    converted: dict[int, Descriptor],
    *,
    oci: bool,
    subject: Descriptor | None = None,
    artifact_type: str = ARTIFACT_TYPE,
) -> bytes:
    """Index of converted children: each keeps platform/annotations, gets the new mediaType,
    digest and size; children not in ``converted`` (attestations, filtered) are removed (§5)."""
    index = parse_index(source_index)
    children = []
    for i, child in enumerate(index["manifests"] or []):
        if i not in converted:
            continue
        new = copy.deepcopy(child)
        desc = converted[i]
        new.update(mediaType=desc.media_type, digest=desc.digest, size=desc.size)
        children.append(new)
    index["manifests"] = children
    if oci:
        index["mediaType"] = OCI_INDEX
    if subject is not None:
        index["artifactType"] = artifact_type
        index["subject"] = subject.as_go()
    return go_marshal(gotypes.to_go(gotypes.INDEX, index))
