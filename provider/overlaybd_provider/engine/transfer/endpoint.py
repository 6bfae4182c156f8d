"""The few image-store operations the engine uses, on top of ``oci.store`` (docs/architecture.md).

Kept in one place so the engine talks to sources and sinks (registry or OCI layout) through a
narrow, verified seam: every fetched object is checked against its digest and size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlaybd_provider.engine.errors import EngineError
from overlaybd_provider.oci.errors import DigestMismatchError, NotFoundError
from overlaybd_provider.oci.options import RegistryOptions

__all__ = ["Endpoint", "open_endpoint"]

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """A store bound to one reference: ``host``/``repo`` identify it for the dedup database."""

    text: str
    store: Any
    reference: Any
    options: RegistryOptions

    @property
    def host(self) -> str:
        ref = self.reference
        return "oci-layout" if ref.is_layout else ref.registry

    @property
    def repo(self) -> str:
        ref = self.reference
        return str(ref.path) if ref.is_layout else ref.repository

    @property
    def tag(self) -> str | None:
        return self.reference.tag

    @property
    def is_registry(self) -> bool:
        return not self.reference.is_layout

    def sibling(self, repo: str) -> Endpoint:
        """The same registry, another repository (cross-repo mounts, manifest cache)."""
        return open_endpoint(f"{self.reference.registry}/{repo}", self.options)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # reads -------------------------------------------------------------------

    def resolve(self) -> tuple[str, str, int]:
        """``(media_type, digest, size)`` of the reference's tag or digest."""
        desc = self.store.resolve()
        return desc.media_type, desc.digest, desc.size

    def get_manifest(self, digest: str, size: int | None = None) -> bytes:
        data, _media_type, _digest = self.store.get_manifest(digest)
        data = bytes(data)
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest or (size is not None and size != len(data)):
            raise EngineError(f"{self.text}: manifest {digest} does not match its digest/size")
        return data

    def fetch_blob(self, digest: str, size: int, dest: Path) -> None:
        """Download to ``dest``; the store verifies digest and size."""
        self.store.fetch_blob(digest, dest, size)

    def has_blob(self, digest: str) -> bool:
        return bool(self.store.has_blob(digest))

    def has_manifest(self, digest: str) -> bool:
        try:
            self.store.get_manifest(digest)
        except NotFoundError:
            return False
        return True

    # writes ------------------------------------------------------------------

    def push_blob_file(self, path: Path, digest: str, size: int, *, verify: bool = True) -> bool:
        """Push unless present; True when bytes were uploaded. ``verify=False``: ``digest`` was
        computed while this file was written here (``store.push_blob``)."""
        if self.store.has_blob(digest):
            return False
        self.store.push_blob(path, digest, size, verify=verify)
        return True

    def push_blob_bytes(self, data: bytes, digest: str, spool_dir: Path) -> bool:
        if self.store.has_blob(digest):
            return False
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".push.", dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self.store.push_blob(tmp, digest, len(data))
        finally:
            os.unlink(tmp)
        return True

    def mount_blob(self, digest: str, size: int, from_repo: str) -> bool:
        """Make a blob of ``from_repo`` (same registry) present here: cross-repo mount, or a copy
        when the registry declines the mount. False when the blob cannot be had (stale row)."""
        if not self.is_registry:
            return False
        other = self.sibling(from_repo)
        try:
            mounted = self.store.mount_blob(digest, size, other.store)
            log.debug("%s: %s from %s %s", self.text, digest, from_repo, "mounted" if mounted else "copied")
            return True
        except (NotFoundError, DigestMismatchError) as exc:
            log.info("%s: blob %s not available from %s: %s", self.text, digest, from_repo, exc)
            return False
        finally:
            other.close()

    def check_push(self) -> None:
        """Fail now, before any heavy work, when the target refuses our pushes."""
        self.store.check_push()

    def push_manifest(self, data: bytes, media_type: str, tag: str | None) -> None:
        self.store.push_manifest(data, media_type, tag)


def open_endpoint(text: str, options: RegistryOptions | None, *, connect: bool = True) -> Endpoint:
    """``connect=False``: identity only (host/repo/tag), no store behind it."""
    from overlaybd_provider.oci.reference import parse_reference

    options = options or RegistryOptions()
    if not connect:
        return Endpoint(text, None, parse_reference(text), options)
    from overlaybd_provider.oci.store import open_store

    store, reference = open_store(text, options)
    return Endpoint(text, store, reference, options)
