"""Reading an OCI layer tar as a stream: plain, gzip or zstd (detected by magic), one pass.

The stdlib ``tarfile`` in stream mode (``r|``) parses ustar/GNU/PAX headers (long names and link
names, base-256 numbers, PAX overrides, GNU sparse maps) and reads member data sequentially;
decompression happens in front of it in large chunks. Every failure of the input is turned
into one :class:`LayerTarError` line.
"""

from __future__ import annotations

import io
import logging
import tarfile
import zlib
from typing import BinaryIO

import zstandard

from overlaybd_provider.ext4.errors import Ext4Error

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class LayerTarError(Ext4Error):
    """The layer tar (or its gzip/zstd wrapper) is truncated, corrupt or unsupported."""


class ForwardReader:
    """A forward-only "seekable" view of a stream, so tarfile can run in ``r:`` mode.

    tarfile's stream mode (``r|``) re-slices its whole buffer on every read, which is quadratic
    in small members; ``r:`` mode only ever seeks forward when reading sequentially, which we
    serve by skipping. Also counts the bytes consumed (= uncompressed tar size).
    """

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.count = 0

    def tell(self) -> int:
        return self.count

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise io.UnsupportedOperation("ForwardReader seeks only to absolute positions")
        if pos < self.count:
            raise LayerTarError(f"tar reader tried to seek back from {self.count} to {pos}")
        while self.count < pos:
            chunk = self._inner.read(min(pos - self.count, _CHUNK))
            if not chunk:
                break
            self.count += len(chunk)
        return self.count

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.count += len(data)
        return data


class _Decoder(io.RawIOBase):
    """Streaming multi-frame decoder (gzip members / zstd frames) that reports truncation."""

    kind = ""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._d = self._new()
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def _new(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (zlib.error,)

    def readable(self) -> bool:
        return True

    def _fill(self, size: int) -> None:
        while not self._eof and (size < 0 or len(self._buf) - self._pos < size):
            raw = self._src.read(_CHUNK)
            try:
                if not raw:
                    if not self._d.eof:
                        raise LayerTarError(f"{self.kind} stream is truncated")
                    self._eof = True
                    break
                out = self._d.decompress(raw)
                while self._d.eof and self._d.unused_data:
                    rest = self._d.unused_data
                    self._d = self._new()
                    out += self._d.decompress(rest)
            except self._errors() as exc:
                raise LayerTarError(f"corrupt {self.kind} data: {exc}") from None
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += out

    def read(self, size: int = -1) -> bytes:
        self._fill(size)
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _GzipStream(_Decoder):
    kind = "gzip"

    def _new(self):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)


class _ZstdStream(_Decoder):
    kind = "zstd"

    def _new(self):
        return zstandard.ZstdDecompressor().decompressobj()

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (zstandard.ZstdError,)


class _Peek(io.RawIOBase):
    """Give back the sniffed magic bytes before the rest of the source."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head, self._src = head, src

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._src.read(size - len(data))
            return data
        return self._src.read(size)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def decompressed(src: BinaryIO) -> tuple[BinaryIO, str]:
    """The uncompressed tar stream of ``src`` and the detected compression."""
    head = src.read(4)
    stream: BinaryIO = _Peek(head, src)  # type: ignore[assignment]
    if head[:2] == GZIP_MAGIC:
        return _GzipStream(stream), "gzip"  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        return _ZstdStream(stream), "zstd"  # type: ignore[return-value]
    return stream, "none"


class _TarInfo(tarfile.TarInfo):
    """Records why the header loop ended: tarfile silently stops on a truncated or corrupt
    header after the first member, which must be an error for us (no partial layers)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            tarfile_._obd_end = None  # type: ignore[attr-defined]
            raise
        except tarfile.HeaderError as exc:
            tarfile_._obd_end = f"{type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
            raise


def open_tar_stream(stream: ForwardReader) -> tarfile.TarFile:
    """Sequential TarFile; after iterating, ``_obd_end`` is None only for a proper end marker."""
    try:
        return tarfile.open(fileobj=stream, mode="r:", errors="surrogateescape",  # type: ignore[arg-type]
                            tarinfo=_TarInfo)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise LayerTarError(f"not a tar archive: {exc}") from None
