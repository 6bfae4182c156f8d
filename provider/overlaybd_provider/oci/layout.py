"""OCI image-layout directory as a source and a sink (image-spec ``image-layout.md``).

``oci-layout`` + ``index.json`` + ``blobs/<alg>/<hex>``. Tags are ``org.opencontainers.image.ref.name``
annotations of ``index.json`` entries. A new layout gets its (empty) ``index.json`` before its
``oci-layout`` marker and before any blob, so a failed write leaves a valid, maybe empty layout. Blobs are written to a temporary file, verified, then renamed;
``index.json`` is rewritten atomically under an exclusive lock on ``oci-layout``, so concurrent
writers (threads or processes) do not lose each other's tags.

File names, the layout version and the index schema version are oras-py's (``oras.defaults``).
``oras.layout.Layout`` is not used: it writes blobs and ``index.json`` in place (no temporary file,
no digest check, no lock), replaces ``index.json`` with a single entry on each pull, refuses Docker
media types and layouts whose version is not exactly ``1.0.0``, and maps a digest to a path
without validating it (docs/oci.md, "oras-py and our code").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from oras import defaults as _oras

from overlaybd_provider.errors import writing
from overlaybd_provider.oci.descriptor import REF_NAME_ANNOTATION, Descriptor
from overlaybd_provider.oci.digest import (
    COPY_CHUNK,
    VerifyingReader,
    atomic_output,
    check,
    new_hasher,
    verify_bytes,
)
from overlaybd_provider.oci.errors import LayoutError, NotFoundError
from overlaybd_provider.oci.mediatypes import MediaType, detect_manifest_type
from overlaybd_provider.oci.reference import is_digest, validate_digest

log = logging.getLogger(__name__)

LAYOUT_FILE: str = _oras.oci_layout_file  # "oci-layout"
INDEX_FILE: str = _oras.oci_image_index_file  # "index.json"
LAYOUT_VERSION: str = _oras.oci_layout_version_pin  # "1.0.0"
BLOBS_DIR: str = _oras.oci_blobs_dir  # "blobs"
INDEX_SCHEMA_VERSION: int = _oras.oci_index_schema_version  # 2
MAX_MANIFEST_SIZE = 4 << 20


def _empty_index() -> dict[str, Any]:
    return {"schemaVersion": INDEX_SCHEMA_VERSION, "mediaType": MediaType.OCI_INDEX.value, "manifests": []}


class LayoutStore:
    """An OCI layout directory; created on the first write when it does not exist."""

    def __init__(self, path: str | os.PathLike[str], default_reference: str | None = None):
        self.path = Path(path)
        #: what ``resolve()`` without argument resolves (the tag or digest of the ``oci:`` reference)
        self.default_reference = default_reference

    def __repr__(self) -> str:
        return f"LayoutStore({str(self.path)!r})"

    @property
    def location(self) -> str:
        return f"oci:{self.path}"

    def close(self) -> None:
        pass

    # -- structure --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = validate_digest(digest).partition(":")
        return self.path / BLOBS_DIR / algorithm / encoded

    def _check_layout(self) -> None:
        marker = self.path / LAYOUT_FILE
        if not marker.is_file():
            raise LayoutError(f"{self.path}: not an OCI image layout (no {LAYOUT_FILE} file)")
        try:
            version = json.loads(marker.read_text()).get("imageLayoutVersion")
        except (ValueError, AttributeError):
            raise LayoutError(f"{marker}: not valid JSON") from None
        if not isinstance(version, str) or not version.startswith("1."):
            raise LayoutError(f"{marker}: unsupported imageLayoutVersion {version!r}")

    def _ensure_layout(self) -> None:
        """Create the layout before anything is written into it: an empty ``index.json`` first,
        then the ``oci-layout`` marker, so the directory is a valid (maybe empty) layout at every
        moment, also when the write that follows fails (docs/oci.md, "Layouts after a failure").
        A layout without ``index.json`` (left by an older version) gets one here too."""
        if (self.path / LAYOUT_FILE).is_file():
            if not (self.path / INDEX_FILE).is_file():
                self._create_empty_index()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / BLOBS_DIR / "sha256").mkdir(parents=True, exist_ok=True)
        self._create_empty_index()
        with atomic_output(self.path / LAYOUT_FILE) as f:  # idempotent: racing creators write the same
            f.write(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}, separators=(",", ":")).encode())

    def _create_empty_index(self) -> None:
        """``index.json`` with no manifests, only if there is none: written aside and hard-linked
        into place, so a racing writer's tags are never replaced by the empty index."""
        empty = _empty_index()
        index = self.path / INDEX_FILE
        tmp = self.path / f".{INDEX_FILE}.empty-{os.getpid()}-{threading.get_ident()}"
        with writing(index):
            try:
                with open(tmp, "wb") as f:
                    f.write(json.dumps(empty, separators=(",", ":")).encode())
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, index)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)

    def check_push(self) -> None:
        """Raise unless the layout can be written here (created when missing)."""
        try:
            self._ensure_layout()
            with tempfile.NamedTemporaryFile(dir=self.path / BLOBS_DIR / "sha256", prefix=".probe."):
                pass
        except OSError as exc:
            raise LayoutError(f"{self.path}: cannot write the OCI layout: {exc.strerror or exc}") from None

    def read_index(self) -> dict[str, Any]:
        self._check_layout()
        path = self.path / INDEX_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:  # a layout being written that has no tag yet
            return _empty_index()
        except ValueError as exc:
            raise LayoutError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise LayoutError(f"{path}: not an image index")
        return doc

    def index_entries(self) -> list[Descriptor]:
        return [Descriptor.from_dict(m) for m in self.read_index().get("manifests", [])]

    def _write_index(self, doc: dict[str, Any]) -> None:
        with atomic_output(self.path / INDEX_FILE) as f:
            f.write(json.dumps(doc, separators=(",", ":")).encode())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_layout()
        with open(self.path / LAYOUT_FILE, "rb") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # -- reading ----------------------------------------------------------------------------------

    def resolve(self, reference: str | None = None) -> Descriptor:
        """Index entry for a tag or digest; with no reference, ``default_reference`` or else the
        only entry of the index."""
        entries = self.index_entries()
        reference = reference or self.default_reference
        if reference is None:
            if len(entries) == 1:
                return entries[0]
            raise LayoutError(f"{self.path}: holds {len(entries)} images; name one with :TAG or @DIGEST")
        if is_digest(reference):
            for entry in entries:
                if entry.digest == reference:
                    return entry
            blob = self.blob_path(reference)
            if not blob.is_file():
                raise NotFoundError(f"manifest {reference} not found in {self.location}")
            size = blob.stat().st_size
            data = self._read_small(blob, reference) if size <= MAX_MANIFEST_SIZE else b""
            return Descriptor(media_type=detect_manifest_type(data), digest=reference, size=size)
        matches = [e for e in entries if e.ref_name == reference]
        if not matches:
            raise NotFoundError(f"tag {reference!r} not found in {self.location}")
        if len(matches) > 1:
            raise LayoutError(f"{self.path}: tag {reference!r} names {len(matches)} index entries")
        return matches[0]

    def _read_small(self, path: Path, digest: str) -> bytes:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_SIZE + 1)
        if len(data) > MAX_MANIFEST_SIZE:
            raise LayoutError(f"{path}: manifest larger than {MAX_MANIFEST_SIZE} bytes")
        verify_bytes(data, digest, what=f"manifest {digest} in {self.location}")
        return data

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        desc = self.resolve(reference)
        path = self.blob_path(desc.digest)
        if not path.is_file():
            raise NotFoundError(f"manifest {desc.digest} missing from {self.location}")
        data = self._read_small(path, desc.digest)
        return data, desc.media_type or detect_manifest_type(data), desc.digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str, size: int | None = None) -> VerifyingReader:
        try:
            raw: BinaryIO = open(self.blob_path(digest), "rb")  # noqa: SIM115 - owned by the reader
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} not found in {self.location}") from None
        return VerifyingReader(raw, digest, size)

    def fetch_blob(self, digest: str, dest: str | os.PathLike[str], size: int | None = None) -> int:
        with self.open_blob(digest, size) as reader:
            return _copy_verified(reader, Path(dest), digest, size)

    # -- writing ----------------------------------------------------------------------------------

    def push_blob(self, path: str | os.PathLike[str], digest: str, size: int, media_type: str | None = None,
                  *, verify: bool = True) -> bool:
        """Copy a file in as a blob (verified). ``False`` if the blob was already there. The copy
        is hashed whatever ``verify`` says: no registry checks a layout's blobs after us."""
        if self.has_blob(digest):
            return False
        self._ensure_layout()
        with open(path, "rb") as src:
            _copy_verified(src, self.blob_path(digest), digest, size)
        return True

    def push_blob_stream(self, stream: BinaryIO, digest: str, size: int | None) -> None:
        self._ensure_layout()
        _copy_verified(stream, self.blob_path(digest), digest, size)

    def mount_blob(self, digest: str, size: int, from_store: Any) -> bool:
        """Make the blob present; ``True`` when no bytes had to be copied."""
        if self.has_blob(digest):
            return True
        with from_store.open_blob(digest, size) as reader:
            self.push_blob_stream(reader, digest, size)
        return False

    def push_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> Descriptor:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has_blob(digest):
            self._ensure_layout()
            with atomic_output(self.blob_path(digest)) as f:
                f.write(data)
        desc = Descriptor(media_type=media_type, digest=digest, size=len(data))
        if tag is not None:
            self._set_tag(desc, tag)
        return desc

    def tag(self, digest: str, tag: str) -> Descriptor:
        data, media_type, _ = self.get_manifest(digest)
        desc = Descriptor(media_type=media_type, digest=digest, size=len(data))
        self._set_tag(desc, tag)
        return desc

    def _set_tag(self, desc: Descriptor, tag: str) -> None:
        with self._locked():
            doc = self.read_index()
            kept = [m for m in doc.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag]
            entry = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size,
                               annotations={REF_NAME_ANNOTATION: tag}, platform=desc.platform)
            doc["manifests"] = [*kept, entry.to_dict()]
            self._write_index(doc)
        log.debug("tagged %s as %s in %s", desc.digest, tag, self.path)


def _copy_verified(src: BinaryIO, dest: Path, digest: str, size: int | None) -> int:
    hasher, written = new_hasher(digest), 0
    with atomic_output(dest) as out:
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
            hasher.update(chunk)
            written += len(chunk)
            if size is not None and written > size:
                break
        check(digest, hasher, written, size)
    return written
