"""Copy an image (manifest or whole index) between stores, blobs first, tag last.

Children are pushed by digest and only the top object gets the tag, so a failure part-way (a
digest mismatch, a refused upload) leaves nothing tagged at the destination.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.errors import NotFoundError, OciError
from overlaybd_provider.oci.mediatypes import is_image_manifest, is_index
from overlaybd_provider.oci.store import ImageStore

log = logging.getLogger(__name__)


@dataclass
class CopyReport:
    descriptor: Descriptor
    manifests: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    skipped_foreign: list[str] = field(default_factory=list)


def copy_image(src: ImageStore, dst: ImageStore, reference: str | None = None, tag: str | None = None) -> CopyReport:
    """Copy what ``reference`` names in ``src`` to ``dst`` (tagged ``tag``, else by digest)."""
    top = src.resolve(reference)
    report = CopyReport(descriptor=top)
    data, media_type = _copy_tree(src, dst, top.digest, report)
    desc = dst.push_manifest(data, media_type, tag)
    report.descriptor = Descriptor(media_type=media_type, digest=desc.digest, size=desc.size,
                                   annotations=top.annotations, platform=top.platform)
    return report


def _copy_tree(src: ImageStore, dst: ImageStore, digest: str, report: CopyReport) -> tuple[bytes, str]:
    data, media_type, _ = src.get_manifest(digest)
    try:
        doc = json.loads(data)
    except ValueError:
        raise OciError(f"{src.location}: manifest {digest} is not JSON") from None
    if is_index(media_type):
        for child in doc.get("manifests") or []:
            child_desc = Descriptor.from_dict(child)
            child_data, child_type = _copy_tree(src, dst, child_desc.digest, report)
            dst.push_manifest(child_data, child_type)
    elif is_image_manifest(media_type):
        for blob in [doc.get("config"), *(doc.get("layers") or [])]:
            if not isinstance(blob, dict):
                raise OciError(f"{src.location}: manifest {digest} has a malformed descriptor")
            _copy_blob(src, dst, Descriptor.from_dict(blob), report)
    else:
        raise OciError(f"{src.location}: {digest} has unsupported media type {media_type!r}")
    report.manifests += 1
    return data, media_type


def _copy_blob(src: ImageStore, dst: ImageStore, desc: Descriptor, report: CopyReport) -> None:
    try:
        reused = dst.mount_blob(desc.digest, desc.size, src)
    except NotFoundError:
        if desc.urls:
            log.warning("skipping foreign layer %s (served from %s)", desc.digest, desc.urls[0])
            report.skipped_foreign.append(desc.digest)
            return
        raise
    if reused:
        report.blobs_skipped += 1
    else:
        report.blobs_copied += 1
        report.bytes_copied += desc.size
