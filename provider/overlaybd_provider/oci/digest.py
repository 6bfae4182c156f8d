"""Streaming digests: hash while copying, verify against a descriptor, write atomically.

oras-py has none of these; its ``utils.get_file_hash`` reads 4 KiB at a time (about half the speed
of :func:`digest_file`) and returns no size, so it is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from overlaybd_provider.errors import writing
from overlaybd_provider.oci.errors import DigestMismatchError, OciError
from overlaybd_provider.oci.reference import validate_digest

COPY_CHUNK = 1 << 20
_ALGORITHMS = ("sha256", "sha384", "sha512")


def new_hasher(digest: str) -> hashlib._Hash:
    algorithm = validate_digest(digest).partition(":")[0]
    if algorithm not in _ALGORITHMS:
        raise OciError(f"unsupported digest algorithm {algorithm!r} in {digest}")
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def digest_file(path: str | os.PathLike[str], algorithm: str = "sha256") -> tuple[str, int]:
    """``(digest, size)`` of a file, read in bounded chunks."""
    hasher = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return f"{algorithm}:{hasher.hexdigest()}", size


def check(want: str, hasher: hashlib._Hash, size: int, want_size: int | None, what: str = "blob") -> None:
    got = f"{want.partition(':')[0]}:{hasher.hexdigest()}"
    if got != want or (want_size is not None and want_size != size):
        raise DigestMismatchError(want=want, got=got, size=size, want_size=want_size, what=what)


def verify_bytes(data: bytes, want: str, want_size: int | None = None, what: str = "manifest") -> None:
    hasher = new_hasher(want)
    hasher.update(data)
    check(want, hasher, len(data), want_size, what)


class VerifyingReader:
    """File-like wrapper that hashes what is read and raises at EOF if digest or size differ.

    Reading past ``size`` bytes counts as a mismatch too, so an over-long stream cannot slip by.
    """

    def __init__(self, raw: BinaryIO, digest: str, size: int | None = None, *, on_close=None):
        self._raw = raw
        self._want = digest
        self._size = size
        self._hasher = new_hasher(digest)
        self._count = 0
        self._done = False
        self._on_close = on_close

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        data = self._raw.read(n) if n is not None and n >= 0 else self._raw.read()
        if data:
            self._hasher.update(data)
            self._count += len(data)
            if self._size is not None and self._count > self._size:
                self._done = True
                check(self._want, self._hasher, self._count, self._size)
        if not data or (n is None or n < 0):
            self._done = True
            check(self._want, self._hasher, self._count, self._size)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            if self._on_close is not None:
                self._on_close()
                self._on_close = None

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def atomic_output(dest: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``dest`` and rename onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    with writing(dest):  # a full disk names ``dest``, not the temporary file
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(name)
    f = os.fdopen(fd, "wb")
    try:
        with writing(dest):
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes again: on a full disk that fails too
            f.close()
        tmp.unlink(missing_ok=True)
        raise
