"""Is a pushed manifest a container image we should convert? (Reads the manifest, once.)

Registries send push notifications for everything stored as a manifest: cosign signatures and
attestations, SBOMs and other OCI artifacts, Helm charts, and our own overlaybd images. The
notification rarely says which (Harbor's gives no media type at all), so the manifest decides:

* ``subject`` set → a referrer (signature, SBOM, attestation) of another manifest;
* ``artifactType`` set, or a config media type that is not an image config → an artifact
  (Helm charts: ``application/vnd.cncf.helm.config.v1+json``);
* a layer that is not a tar layer → not a filesystem image (cosign's simple-signing payloads);
* a layer with ``containerd.io/snapshot/overlaybd/*`` annotations → already overlaybd (a loop);
* an index is judged by its first image manifest (attestation manifests are skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from overlaybd_provider.oci.mediatypes import CONFIG_TYPES, IMAGE_MANIFEST_TYPES, INDEX_TYPES, MANIFEST_TYPES

OVERLAYBD_ANNOTATION_PREFIX = "containerd.io/snapshot/overlaybd/"
TAR_LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
ATTESTATION_KEY = "vnd.docker.reference.type"

Fetch = Callable[[str], tuple[bytes, str]]  # digest -> (manifest bytes, media type)


def _doc(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def manifest_verdict(doc: dict[str, Any], media_type: str, fetch: Fetch | None = None) -> str | None:
    """``None`` for a convertible image, else why not. ``fetch`` reads an index's child manifest."""
    media_type = media_type or str(doc.get("mediaType") or "")
    if media_type not in MANIFEST_TYPES:
        return f"not an image manifest ({media_type or 'unknown media type'})"
    if doc.get("subject"):
        return "a referrer of another manifest (signature, SBOM or attestation)"
    if doc.get("artifactType"):
        return f"an OCI artifact ({doc['artifactType']})"
    if media_type in INDEX_TYPES:
        children = [c for c in doc.get("manifests") or [] if isinstance(c, dict)]
        images = [
            c for c in children
            if c.get("mediaType") in IMAGE_MANIFEST_TYPES
            and (c.get("annotations") or {}).get(ATTESTATION_KEY) != "attestation-manifest"
        ]
        if not images:
            return "an index without image manifests"
        if fetch is None:
            return None
        data, child_type = fetch(str(images[0].get("digest")))
        return manifest_verdict(_doc(data), child_type, None)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    config_type = str(config.get("mediaType") or "")
    if config_type not in CONFIG_TYPES:
        return f"not a container image (config {config_type or 'missing'})"
    for layer in doc.get("layers") or []:
        if not isinstance(layer, dict):
            return "malformed layer descriptor"
        if any(str(k).startswith(OVERLAYBD_ANNOTATION_PREFIX) for k in layer.get("annotations") or {}):
            return "already an overlaybd image (converter output)"
        layer_type = str(layer.get("mediaType") or "")
        if not layer_type.startswith(TAR_LAYER_PREFIXES):
            return f"not a filesystem image (layer {layer_type or 'without media type'})"
    return None


def inspect_pushed(client: Any, repository: str, digest: str) -> str | None:
    """Read the pushed manifest (by digest, verified) with a :class:`RegistryClient` and judge it."""

    def fetch(child: str) -> tuple[bytes, str]:
        data, media_type, _ = client.get_manifest(repository, child)
        return data, media_type

    data, media_type = fetch(digest)
    return manifest_verdict(_doc(data), media_type, fetch)
