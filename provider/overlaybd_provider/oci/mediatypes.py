"""Media types of Docker schema 2 and OCI image-spec objects, in one enum.

Spec: image-spec ``media-types.md``; Docker "Image Manifest V2, Schema 2". The five that oras-py
names (``oras.defaults``) take its constants; oras-py has no name for the rest (configs, zstd,
non-distributable and foreign layers, the empty descriptor) nor an enum or a shape-based detector.
"""

from __future__ import annotations

import json
from enum import Enum

from oras import defaults as _oras


class MediaType(str, Enum):
    DOCKER_MANIFEST = _oras.docker_manifest_media_type
    DOCKER_MANIFEST_LIST = _oras.docker_manifest_list_media_type
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
    DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    OCI_MANIFEST = _oras.default_manifest_media_type
    OCI_INDEX = _oras.default_index_media_type
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = _oras.default_blob_media_type
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
    OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
    OCI_EMPTY = "application/vnd.oci.empty.v1+json"

    def __str__(self) -> str:
        return self.value


INDEX_TYPES = frozenset({MediaType.OCI_INDEX.value, MediaType.DOCKER_MANIFEST_LIST.value})
IMAGE_MANIFEST_TYPES = frozenset({MediaType.OCI_MANIFEST.value, MediaType.DOCKER_MANIFEST.value})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
CONFIG_TYPES = frozenset({MediaType.OCI_CONFIG.value, MediaType.DOCKER_CONFIG.value})

#: ``Accept`` list for manifest requests: without it a registry may down-convert to schema 1. The same
#: four types as oras-py's ``default_manifest_accepted_media_types``, indexes first as before.
MANIFEST_ACCEPT = (
    MediaType.OCI_INDEX.value,
    MediaType.DOCKER_MANIFEST_LIST.value,
    MediaType.OCI_MANIFEST.value,
    MediaType.DOCKER_MANIFEST.value,
)
MANIFEST_ACCEPT_HEADER = ", ".join(MANIFEST_ACCEPT)


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_image_manifest(media_type: str) -> bool:
    return media_type in IMAGE_MANIFEST_TYPES


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFEST_TYPES


def detect_manifest_type(data: bytes) -> str:
    """Media type of manifest bytes: the ``mediaType`` field, else guessed from the shape (OCI allows
    omitting it)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if isinstance(doc.get("manifests"), list):
        return MediaType.OCI_INDEX.value
    if isinstance(doc.get("config"), dict):
        return MediaType.OCI_MANIFEST.value
    if doc.get("schemaVersion") == 1:
        return MediaType.DOCKER_MANIFEST_V1_SIGNED.value
    return ""
