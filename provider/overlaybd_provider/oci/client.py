"""Registry client for the distribution API (``/v2/``): resolve, manifests, blobs, uploads, mounts.

Request machinery (auth, retries, mirrors, limits) is in :mod:`.requester`, uploads in
:mod:`.upload`. Bodies are streamed both ways; manifests and blobs are verified against digests. oras-py's
``Registry`` is not used: its ``get_manifest`` returns parsed JSON (no bytes to verify) and its
``download_blob`` writes unverified bytes in place with no resume (docs/oci.md, "oras-py and our code").
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import urljoin

import requests

from overlaybd_provider.oci.auth import repository_scope
from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.digest import (
    COPY_CHUNK,
    VerifyingReader,
    atomic_output,
    check,
    new_hasher,
    verify_bytes,
)
from overlaybd_provider.oci.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
)
from overlaybd_provider.oci.hosts import Endpoint
from overlaybd_provider.oci.mediatypes import MANIFEST_ACCEPT_HEADER, detect_manifest_type
from overlaybd_provider.oci.redact import redact_url
from overlaybd_provider.oci.reference import is_digest
from overlaybd_provider.oci.requester import RegistryRequester
from overlaybd_provider.oci.retry import RETRYABLE_EXCEPTIONS, RetryState
from overlaybd_provider.oci.upload import BlobUploads

__all__ = ["RegistryClient"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 << 20


class RegistryClient(BlobUploads, RegistryRequester):
    """Client bound to one registry (as named in references, e.g. ``docker.io`` or ``host:5000``).
    Methods take the repository; see :class:`RegistryRequester` for the request machinery."""

    def ping(self) -> None:
        """``GET /v2/`` with credentials: raises unless the registry accepts us (connection test)."""
        endpoint = self._endpoints("push" if any("push" in e.capabilities for e in self.endpoints) else "pull")[0]
        with self.limiter.slot():
            self._send(endpoint, "GET", f"{endpoint.base_url}/", scopes=[], what="API root").close()

    # -- manifests --------------------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest or index a tag or digest names (HEAD, falling back to GET)."""

        def head(endpoint: Endpoint) -> Descriptor:
            url = self._url(endpoint, repository, "manifests", reference)
            with self.limiter.slot():
                r = self._send(endpoint, "HEAD", url, scopes=[repository_scope(repository, "pull")],
                               headers={"Accept": MANIFEST_ACCEPT_HEADER}, what=f"manifest {repository}:{reference}")
            media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
            digest = r.headers.get("Docker-Content-Digest", "")
            length = r.headers.get("Content-Length", "")
            if media_type and length.isdigit() and (digest or is_digest(reference)) and media_type != "application/json":
                if is_digest(reference) and digest and digest != reference:
                    raise DigestMismatchError(want=reference, got=digest, size=int(length), what="manifest")
                return Descriptor(media_type=media_type, digest=reference if is_digest(reference) else digest, size=int(length))
            data, media_type, digest = self._get_manifest_at(endpoint, repository, reference)
            return Descriptor(media_type=media_type, digest=digest, size=len(data))

        return self._pull(head)

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """``(bytes, media_type, digest)``; verified when ``reference`` is a digest."""
        return self._pull(lambda endpoint: self._get_manifest_at(endpoint, repository, reference))

    def _get_manifest_at(self, endpoint: Endpoint, repository: str, reference: str) -> tuple[bytes, str, str]:
        url = self._url(endpoint, repository, "manifests", reference)
        with self.limiter.slot():
            r = self._send(endpoint, "GET", url, scopes=[repository_scope(repository, "pull")],
                           headers={"Accept": MANIFEST_ACCEPT_HEADER}, stream=True,
                           what=f"manifest {repository}:{reference}")
            try:
                data = r.raw.read(MAX_MANIFEST_SIZE + 1, decode_content=True)
            finally:
                r.close()
        if len(data) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"manifest {repository}:{reference} is larger than {MAX_MANIFEST_SIZE} bytes")
        media_type = r.headers.get("Content-Type", "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "text/plain", "application/octet-stream"):
            media_type = detect_manifest_type(data) or media_type
        if is_digest(reference):
            verify_bytes(data, reference, what=f"manifest {repository}@{reference}")
            return data, media_type, reference
        digest = f"sha256:{_sha256(data)}"
        header = r.headers.get("Docker-Content-Digest", "")
        if header.startswith("sha256:") and header != digest:
            raise DigestMismatchError(want=header, got=digest, size=len(data), what=f"manifest {repository}:{reference}")
        return data, media_type, digest

    def push_manifest(self, repository: str, data: bytes, media_type: str, reference: str) -> str:
        """PUT a manifest or index under a tag or its digest; returns its digest."""
        digest = f"sha256:{_sha256(data)}"
        if is_digest(reference):
            verify_bytes(data, reference, what=f"manifest {repository}@{reference}")
        endpoint = self._endpoints("push")[0]
        url = self._url(endpoint, repository, "manifests", reference)
        with self.limiter.slot():
            r = self._send(endpoint, "PUT", url, scopes=[repository_scope(repository, "pull", "push")],
                           headers={"Content-Type": media_type}, body=data, ok=(200, 201, 202),
                           what=f"manifest {repository}:{reference}")
        r.close()
        echoed = r.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            log.warning("registry stored manifest %s as %s", digest, echoed)
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        endpoint = self._endpoints("push")[0]
        with self.limiter.slot():
            self._send(endpoint, "DELETE", self._url(endpoint, repository, "manifests", digest),
                       scopes=[repository_scope(repository, "pull", "push", "delete")], ok=(200, 202),
                       what=f"manifest {repository}@{digest}").close()

    def list_tags(self, repository: str) -> list[str]:
        endpoint = self._endpoints("pull")[0]
        url = self._url(endpoint, repository, "tags", "list")
        tags: list[str] = []
        while url:
            with self.limiter.slot():
                r = self._send(endpoint, "GET", url, scopes=[repository_scope(repository, "pull")],
                               what=f"tags of {repository}")
            tags.extend((r.json() or {}).get("tags") or [])
            nxt = r.links.get("next", {}).get("url")
            url = urljoin(endpoint.origin, nxt) if nxt else ""
        return sorted(tags)

    # -- blobs ------------------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: str) -> int | None:
        """Size of the blob if the repository has it (HEAD), else ``None``."""
        endpoint = self._endpoints("pull")[0]
        url = self._url(endpoint, repository, "blobs", digest)
        try:
            with self.limiter.slot():
                r = self._send(endpoint, "HEAD", url, scopes=[repository_scope(repository, "pull")],
                               what=f"blob {digest}")
        except NotFoundError:
            return None
        r.close()
        length = r.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else -1

    def blob_exists(self, repository: str, digest: str) -> bool:
        return self.blob_size(repository, digest) is not None

    def open_blob(self, repository: str, digest: str, size: int | None = None) -> VerifyingReader:
        """Stream of the blob, verified at EOF (raises :class:`DigestMismatchError`)."""

        def get(endpoint: Endpoint) -> requests.Response:
            return self._send(endpoint, "GET", self._url(endpoint, repository, "blobs", digest),
                              scopes=[repository_scope(repository, "pull")], headers={"Accept-Encoding": "identity"},
                              stream=True, what=f"blob {digest}")

        release = self.limiter.hold()
        try:
            r = self._pull(get)
        except BaseException:
            release()
            raise
        r.raw.decode_content = False

        def close() -> None:
            r.close()
            release()

        return VerifyingReader(r.raw, digest, size, on_close=close)

    def fetch_blob(self, repository: str, digest: str, dest: str | Path, size: int | None = None) -> int:
        """Download a blob to ``dest`` (via a temporary file, renamed when verified); resumes
        with ``Range`` after a broken connection. Returns the size."""
        return self._pull(lambda endpoint: self._fetch_at(endpoint, repository, digest, Path(dest), size))

    def _fetch_at(self, endpoint: Endpoint, repository: str, digest: str, dest: Path, size: int | None) -> int:
        url = self._url(endpoint, repository, "blobs", digest)
        state = RetryState.from_options(self.options)
        with self.limiter.slot(), atomic_output(dest) as out:
            hasher, written = new_hasher(digest), 0
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                r = self._send(endpoint, "GET", url, scopes=[repository_scope(repository, "pull")],
                               headers={**headers, "Accept-Encoding": "identity"}, stream=True, ok=(200, 206),
                               what=f"blob {digest}")
                try:
                    if written and r.status_code == 200:
                        out.seek(0)
                        out.truncate()
                        hasher, written = new_hasher(digest), 0
                    for chunk in r.raw.stream(COPY_CHUNK, decode_content=False):  # the blob's own bytes
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        if size is not None and written > size:
                            check(digest, hasher, written, size)
                    break
                except RETRYABLE_EXCEPTIONS as exc:
                    state.progress(written)
                    state.last_error = f"{type(exc).__name__} after {written} bytes"
                    if not state.wait():
                        raise RegistryUnavailableError(
                            f"{state.summary()}: {state.last_error}", method="GET", url=redact_url(url)
                        ) from None
                    log.info("resuming blob %s at byte %d", digest, written)
                finally:
                    r.close()
            check(digest, hasher, written, size)
        return written

    def delete_blob(self, repository: str, digest: str) -> None:
        endpoint = self._endpoints("push")[0]
        with self.limiter.slot():
            self._send(endpoint, "DELETE", self._url(endpoint, repository, "blobs", digest),
                       scopes=[repository_scope(repository, "pull", "push", "delete")], ok=(200, 202),
                       what=f"blob {digest}").close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
