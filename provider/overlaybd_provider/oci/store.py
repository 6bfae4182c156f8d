"""Image stores: a registry repository and an OCI layout directory behind one protocol.

Sources and sinks are siblings (go-containerregistry's ``remote`` / ``layout``): the engine reads
from one store and writes to another without knowing which kind either is. Source and destination
may be different repositories of different registries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.errors import OciError
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.options import RegistryOptions
from overlaybd_provider.oci.reference import Reference, parse_reference

log = logging.getLogger(__name__)

__all__ = ["Descriptor", "ImageStore", "LayoutStore", "RemoteStore", "open_store"]


@runtime_checkable
class ImageStore(Protocol):
    """What the engine needs from a place images live in."""

    @property
    def location(self) -> str: ...

    def resolve(self, reference: str | None = None) -> Descriptor: ...

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]: ...

    def fetch_blob(self, digest: str, dest: str | os.PathLike[str], size: int | None = None) -> int: ...

    def open_blob(self, digest: str, size: int | None = None) -> BinaryIO: ...

    def has_blob(self, digest: str) -> bool: ...

    def push_blob(self, path: str | os.PathLike[str], digest: str, size: int, media_type: str | None = None,
                  *, verify: bool = True) -> bool: ...

    def mount_blob(self, digest: str, size: int, from_store: ImageStore) -> bool: ...

    def check_push(self) -> None: ...

    def push_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Descriptor: ...

    def tag(self, digest: str, tag: str) -> Descriptor: ...

    def close(self) -> None: ...


class RemoteStore:
    """One repository of a registry."""

    def __init__(self, client: RegistryClient, repository: str, default_reference: str | None = None):
        self.client = client
        self.repository = repository
        self.default_reference = default_reference

    def __repr__(self) -> str:
        return f"RemoteStore({self.location!r})"

    @property
    def registry(self) -> str:
        return self.client.registry

    @property
    def location(self) -> str:
        return f"{self.client.registry}/{self.repository}"

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        """Check that the registry answers and accepts the credentials."""
        self.client.ping()

    def check_push(self) -> None:
        """Raise unless this repository accepts our pushes (auth, reachability)."""
        self.client.check_push(self.repository)

    def resolve(self, reference: str | None = None) -> Descriptor:
        reference = reference or self.default_reference
        if not reference:
            raise OciError(f"{self.location}: no tag or digest to resolve")
        return self.client.resolve(self.repository, reference)

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        return self.client.get_manifest(self.repository, reference)

    def fetch_blob(self, digest: str, dest: str | os.PathLike[str], size: int | None = None) -> int:
        return self.client.fetch_blob(self.repository, digest, Path(dest), size)

    def open_blob(self, digest: str, size: int | None = None) -> BinaryIO:
        return self.client.open_blob(self.repository, digest, size)  # type: ignore[return-value]

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_exists(self.repository, digest)

    def push_blob(self, path: str | os.PathLike[str], digest: str, size: int, media_type: str | None = None,
                  *, verify: bool = True) -> bool:
        return self.client.push_blob(self.repository, Path(path), digest, size, verify=verify)

    def mount_blob(self, digest: str, size: int, from_store: ImageStore) -> bool:
        """Make the blob present here. ``True`` when no bytes were uploaded (already present or
        mounted from another repository of the same registry); otherwise it is streamed across
        (through a temporary file, so uploads can be retried) and ``False`` is returned."""
        if self.has_blob(digest):
            return True
        if (
            isinstance(from_store, RemoteStore)
            and from_store.client.push_origin == self.client.push_origin
            and from_store.repository != self.repository
            and self.client.mount_blob(self.repository, digest, from_store.repository)
        ):
            log.debug("mounted %s from %s into %s", digest, from_store.repository, self.repository)
            return True
        if isinstance(from_store, LayoutStore):
            self.push_blob(from_store.blob_path(digest), digest, size)
            return False
        with tempfile.TemporaryDirectory(prefix="overlaybd-blob-") as tmp:
            spool = Path(tmp) / "blob"
            from_store.fetch_blob(digest, spool, size)
            self.push_blob(spool, digest, size)
        return False

    def push_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Descriptor:
        digest = self.client.push_manifest(self.repository, data, media_type, tag or _digest(data))
        return Descriptor(media_type=media_type, digest=digest, size=len(data))

    def tag(self, digest: str, tag: str) -> Descriptor:
        data, media_type, _ = self.get_manifest(digest)
        return self.push_manifest(data, media_type, tag)


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def open_store(
    reference: str | Reference, options: RegistryOptions | None = None
) -> tuple[RemoteStore | LayoutStore, Reference]:
    """Store for a reference text (``[docker://]NAME[:TAG][@DIGEST]`` or ``oci:PATH[:TAG|@DIGEST]``)
    plus the parsed reference. Layout stores are created on the first write."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if ref.path is not None:
        return LayoutStore(ref.path, ref.target), ref
    client = RegistryClient(ref.registry, options or RegistryOptions())
    return RemoteStore(client, ref.repository, ref.target), ref

