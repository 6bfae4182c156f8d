"""Random-access byte sources: the one I/O seam of the format readers.

Readers never seek a caller's file object; they call ``source.read(offset, length)`` on a
:class:`ByteSource` (a window of a file, a decompressed ZFile, ...). Short reads inside the
declared size are reported as :class:`TruncatedError` naming the file and offset.
"""

from __future__ import annotations

import io
import os
import threading
from typing import BinaryIO, Protocol, runtime_checkable

from overlaybd_provider.formats.errors import TruncatedError


@runtime_checkable
class ByteSource(Protocol):
    """Something with a ``size``, a ``name`` and ``read(offset, length) -> bytes``."""

    name: str

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class FileRange:
    """A window ``[base, base+size)`` of a file object, read with ``os.pread`` when possible.

    ``read`` returns exactly ``length`` bytes or raises :class:`TruncatedError`; reads past
    the window are an error as well (callers check their ranges against ``size``).
    """

    def __init__(self, f: BinaryIO, *, offset: int = 0, size: int | None = None, name: str | None = None):
        self._f = f
        self._base = offset
        self.name = name or str(getattr(f, "name", "<stream>"))
        try:
            self._fd: int | None = f.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None
        self._lock = threading.Lock()
        if size is None:
            size = self._total_size() - offset
            if size < 0:
                raise TruncatedError(f"{self.name}: file shorter than offset {offset}")
        self._size = size

    @property
    def base(self) -> int:
        """Absolute offset of this window in the underlying file (for error messages)."""
        return self._base

    def _total_size(self) -> int:
        if self._fd is not None:
            return os.fstat(self._fd).st_size
        with self._lock:
            pos = self._f.tell()
            end = self._f.seek(0, io.SEEK_END)
            self._f.seek(pos)
        return end

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise TruncatedError(
                f"{self.name}: read of {length} bytes at offset {offset} is beyond the end ({self._size} bytes)"
            )
        if self._fd is not None:
            data = os.pread(self._fd, length, self._base + offset)
            while len(data) < length:
                more = os.pread(self._fd, length - len(data), self._base + offset + len(data))
                if not more:
                    break
                data += more
        else:
            with self._lock:
                self._f.seek(self._base + offset)
                data = self._f.read(length)
        if len(data) != length:
            raise TruncatedError(
                f"{self.name}: truncated: wanted {length} bytes at offset {offset}, file ends after {len(data)}"
            )
        return data


class SubRange:
    """A window of another :class:`ByteSource`."""

    def __init__(self, parent: ByteSource, offset: int, size: int, name: str | None = None):
        if offset + size > parent.size:
            raise TruncatedError(
                f"{parent.name}: truncated: {size} bytes at offset {offset} exceed the file ({parent.size} bytes)"
            )
        self._parent = parent
        self._base = offset
        self._size = size
        self.name = name or parent.name

    @property
    def base(self) -> int:
        return getattr(self._parent, "base", 0) + self._base

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise TruncatedError(
                f"{self.name}: read of {length} bytes at offset {offset} is beyond the end ({self._size} bytes)"
            )
        return self._parent.read(self._base + offset, length)


def as_source(
    f: BinaryIO | ByteSource, *, offset: int = 0, size: int | None = None, name: str | None = None
) -> ByteSource:
    """Wrap a file object (or window an existing source) as a :class:`ByteSource`."""
    if isinstance(f, (FileRange, SubRange)) or (
        not hasattr(f, "seek") and isinstance(f, ByteSource)
    ):
        if offset == 0 and size is None and name is None:
            return f
        return SubRange(f, offset, f.size - offset if size is None else size, name)
    return FileRange(f, offset=offset, size=size, name=name)  # type: ignore[arg-type]
