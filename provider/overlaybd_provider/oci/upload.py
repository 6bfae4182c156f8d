"""Blob uploads: monolithic PUT, streamed PATCH chunks with resume, cross-repository mounts.

File slices are request bodies and the hash tolerates re-sent chunks, so a 1 GiB layer is never
held in memory and retries do not corrupt the digest (distribution ``docs/spec/api.md``, "Pushing
An Image"; the chunked protocol is POST, PATCH with ``Content-Range``, PUT ``?digest=``).
oras-py's ``upload_blob`` reads a whole blob into memory, so only its URL helper is used here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin

import requests
from oras.utils import append_url_params

from overlaybd_provider.oci.auth import repository_scope
from overlaybd_provider.oci.digest import COPY_CHUNK, digest_file, new_hasher
from overlaybd_provider.oci.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
)
from overlaybd_provider.oci.hosts import Endpoint
from overlaybd_provider.oci.redact import redact_url
from overlaybd_provider.oci.retry import RetryState

log = logging.getLogger(__name__)


class ProgressiveHasher:
    """Hashes bytes as they are sent. A retried chunk is re-read from its start; bytes already
    hashed are skipped, so the digest covers each offset exactly once."""

    def __init__(self, digest: str):
        self.want = digest
        self._hasher: hashlib._Hash = new_hasher(digest)
        self.upto = 0
        self.gap = False

    def update_at(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset > self.upto:
            self.gap = True
            return
        if end <= self.upto:
            return
        self._hasher.update(memoryview(data)[self.upto - offset:])
        self.upto = end

    def hexdigest(self) -> str:
        return f"{self.want.partition(':')[0]}:{self._hasher.hexdigest()}"

    @property
    def hasher(self) -> hashlib._Hash:
        return self._hasher


class FileSlice:
    """``length`` bytes of ``path`` from ``offset`` as a file-like request body.

    It has ``__len__`` (requests sets Content-Length from it) and no ``fileno`` (which would make
    requests measure the whole file). Every read is reported to ``hasher``.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, length: int, hasher: ProgressiveHasher | None):
        self._f = open(Path(path), "rb")  # noqa: SIM115 - closed by close() or at EOF
        self._f.seek(offset)
        self._pos = offset
        self._left = length
        self._length = length
        self._hasher = hasher

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            self.close()
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left, COPY_CHUNK * 4)
        data = self._f.read(n)
        if not data:
            raise OSError(f"{self._f.name}: file shorter than expected at offset {self._pos}")
        if self._hasher is not None:
            self._hasher.update_at(self._pos, data)
        self._pos += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class BlobUploads:
    """Upload half of the registry client (mixed into ``RegistryClient``): monolithic PUT for
    small blobs, streamed PATCH chunks resumed from the registry's offset after a failure, and
    cross-repository mounts."""

    def _start_upload(self, endpoint: Endpoint, repository: str, query: dict | None = None,
                      scopes: Sequence[str] = ()) -> requests.Response:
        url = self._url(endpoint, repository, "blobs/uploads", "", query)
        scopes = [repository_scope(repository, "pull", "push"), *scopes]
        return self._send(endpoint, "POST", url, scopes=scopes, headers={"Content-Length": "0"},
                          ok=(201, 202), what=f"upload to {repository}")

    def _location(self, endpoint: Endpoint, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError("upload response without Location", status=response.status_code,
                                method=response.request.method or "", url=redact_url(response.request.url or ""))
        return urljoin(endpoint.origin + "/", location)

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount (``POST ?mount=&from=``). ``False`` when the registry declined
        (it then opened an upload session, which is cancelled)."""
        endpoint = self._endpoints("push")[0]
        with self.limiter.slot():
            r = self._start_upload(endpoint, repository, {"mount": digest, "from": from_repository},
                                   scopes=[repository_scope(from_repository, "pull")])
            r.close()
            if r.status_code == 201:
                return True
            self._cancel(endpoint, repository, self._location(endpoint, r))
        return False

    def check_push(self, repository: str) -> None:
        """Raise unless we may push to ``repository``: open an upload session and cancel it (what
        ``crane``'s CheckPushPermission does). Costs two requests; saves building a whole image
        only to be refused at the end."""
        endpoint = self._endpoints("push")[0]
        with self.limiter.slot():
            r = self._start_upload(endpoint, repository)
            r.close()
            self._cancel(endpoint, repository, self._location(endpoint, r))

    def _cancel(self, endpoint: Endpoint, repository: str, location: str) -> None:
        try:
            self._send(endpoint, "DELETE", location, scopes=[repository_scope(repository, "pull", "push")],
                       ok=(200, 202, 204, 404), retry=False).close()
        except RegistryError as exc:
            log.debug("cancelling upload failed: %s", exc)

    def push_blob(self, repository: str, path: str | Path, digest: str, size: int, *, verify: bool = True) -> bool:
        """Upload a file as a blob unless present. Small blobs go in one PUT, larger ones in
        ``chunk_size`` PATCHes streamed from the file. Returns ``False`` if it already existed.

        ``verify=False``: the caller computed ``digest`` itself while writing the file (a layer
        this process just sealed), so it is not hashed again here; the registry still checks it
        before it commits the upload (a mismatch is refused, ``DIGEST_INVALID``)."""
        if self.blob_exists(repository, digest):
            return False
        actual = Path(path).stat().st_size
        if actual != size:
            got, _ = digest_file(path, digest.partition(":")[0])
            raise DigestMismatchError(want=digest, got=got, size=actual, want_size=size)
        endpoint = self._endpoints("push")[0]
        with self.limiter.slot():
            if size <= self.options.chunk_size:
                self._push_monolithic(endpoint, repository, Path(path), digest, size, verify)
            else:
                self._push_chunked(endpoint, repository, Path(path), digest, size, verify)
        return True

    def _push_monolithic(self, endpoint: Endpoint, repository: str, path: Path, digest: str, size: int,
                         verify: bool = True) -> None:
        if verify:
            hasher = ProgressiveHasher(digest)
            _hash_file(path, size, hasher)
            self._verify_upload(hasher, digest, size)
        state = RetryState.from_options(self.options)
        location: str | None = None
        while True:
            if location is None:
                location = self._location(endpoint, self._start_upload(endpoint, repository))
                resent = False
            url = append_url_params(location, {"digest": digest})
            try:
                self._send(endpoint, "PUT", url, scopes=[repository_scope(repository, "pull", "push")],
                           headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                           body=(lambda: FileSlice(path, 0, size, None)) if size else b"", ok=(201, 204),
                           retry=False, what=f"blob {digest}").close()
                return
            except RegistryUnavailableError as exc:
                if not state.wait(exc.retry_after):
                    self._cancel(endpoint, repository, location)
                    raise RegistryUnavailableError(f"{state.summary()}: {exc.reason}", status=exc.status,
                                                   method="PUT", url=exc.url) from None
                if not resent:
                    # the same PUT on the same session first: that retry is one request, so no
                    # pattern of failures (every 2nd request, say) lines up with every retry
                    log.info("retrying PUT of %s in the same upload session after %s", digest, exc.reason)
                    resent = True
                    continue
                if self.blob_exists(repository, digest):  # committed, only the answers were lost
                    return
                self._cancel(endpoint, repository, location)
                location = None  # a new session
            except RegistryError as exc:
                if not resent or exc.status in (401, 403):
                    raise
                # the resent PUT found the session gone or spoiled (the first one reached the
                # registry after all): committed, or start over in a new session
                if self.blob_exists(repository, digest):
                    return
                log.info("upload of %s: session lost after a failed PUT (%s); starting a new one", digest, exc)
                self._cancel(endpoint, repository, location)
                location = None

    def _push_chunked(self, endpoint: Endpoint, repository: str, path: Path, digest: str, size: int,
                      verify: bool = True) -> None:
        scopes = [repository_scope(repository, "pull", "push")]
        hasher = ProgressiveHasher(digest) if verify else None
        state = RetryState.from_options(self.options)
        location = self._location(endpoint, self._start_upload(endpoint, repository))
        offset = 0
        resent = False  # the PATCH about to be sent repeats one that failed
        while offset < size:
            n = min(self.options.chunk_size, size - offset)
            start = offset
            try:
                r = self._send(endpoint, "PATCH", location, scopes=scopes,
                               headers={"Content-Type": "application/octet-stream",
                                        "Content-Range": f"{start}-{start + n - 1}", "Content-Length": str(n)},
                               body=lambda s=start, n=n: FileSlice(path, s, n, hasher), ok=(202,), retry=False,
                               what=f"blob {digest}")
                r.close()
                location = self._location(endpoint, r)
                offset = start + n
                resent = False
                state.progress(offset)
            except RegistryUnavailableError as exc:
                if not state.wait(exc.retry_after):
                    self._cancel(endpoint, repository, location)
                    raise RegistryUnavailableError(f"{state.summary()}: {exc.reason}", status=exc.status,
                                                   method="PATCH", url=exc.url) from None
                if not resent:
                    # first resend the same chunk (one request: no failure pattern lines up with
                    # every retry); if the registry did store something it refuses the resend
                    # (416, or it drops the connection), and the next retry asks where it stands
                    log.info("retrying PATCH %d-%d of %s after %s", start, start + n - 1, digest, exc.reason)
                    resent = True
                    continue
                resent = False
                location, offset = self._upload_status(endpoint, repository, location, start)
                log.info("resuming upload of %s at byte %d", digest, offset)
            except RegistryError as exc:
                if not resent or exc.status in (401, 403):
                    raise
                resent = False
                location, offset = self._upload_status(endpoint, repository, location, start)
                log.info("resuming upload of %s at byte %d", digest, offset)
        if hasher is not None and (hasher.gap or hasher.upto != size):
            hasher = ProgressiveHasher(digest)
            _hash_file(path, size, hasher)
        try:
            if hasher is not None:
                self._verify_upload(hasher, digest, size)
        except DigestMismatchError:
            self._cancel(endpoint, repository, location)
            raise
        try:
            self._send(endpoint, "PUT", append_url_params(location, {"digest": digest}), scopes=scopes,
                       headers={"Content-Length": "0"}, ok=(201, 204), what=f"blob {digest}").close()
        except (NotFoundError, RegistryUnavailableError):
            # The registry may have committed the blob and lost only its answer: the retried PUT then
            # finds no upload session (404 BLOB_UPLOAD_UNKNOWN). The blob is content-addressed and
            # the registry verified the digest before committing, so its presence is success.
            if not self.blob_exists(repository, digest):
                raise
            log.info("upload of %s: the commit's answer was lost, but the blob is there", digest)

    def _upload_status(self, endpoint: Endpoint, repository: str, location: str, confirmed: int) -> tuple[str, int]:
        """Where an interrupted upload stands (``GET`` on the session: ``Range: 0-LAST``); a fresh
        session from byte 0 when the registry lost it. distribution answers ``0-0`` for an empty
        upload too, so ``0-0`` before any confirmed chunk means nothing was received."""
        try:
            r = self._send(endpoint, "GET", location, scopes=[repository_scope(repository, "pull", "push")],
                           ok=(204,), what="upload status")
            r.close()
            received = r.headers.get("Range", "")
            end = int(received.rpartition("-")[2]) + 1 if "-" in received else 0
            if received.strip() == "0-0" and confirmed == 0:
                end = 0
            return self._location(endpoint, r), end
        except (RegistryError, ValueError):
            return self._location(endpoint, self._start_upload(endpoint, repository)), 0

    @staticmethod
    def _verify_upload(hasher: ProgressiveHasher, digest: str, size: int) -> None:
        got = hasher.hexdigest()
        if got != digest or hasher.upto != size:
            raise DigestMismatchError(want=digest, got=got, size=hasher.upto, want_size=size)



def _hash_file(path: Path, size: int, hasher: ProgressiveHasher) -> None:
    with open(path, "rb") as f:
        offset = 0
        while chunk := f.read(min(COPY_CHUNK, size - offset) if size > offset else 0):
            hasher.update_at(offset, chunk)
            offset += len(chunk)
        if f.read(1):
            hasher.update_at(offset, b"\0")  # longer than announced: the size check fails
