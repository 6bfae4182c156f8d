"""Reading an OCI layer tar as a stream: plain, gzip or zstd (detected by magic), one pass.

:class:`TarReader` parses plain ustar/GNU headers and per-member pax headers itself from a
large buffer (per-file cost matters: layers hold 100 000s of small files) and hands every
other header (GNU long names, GNU sparse, global pax, base-256 numbers, bad checksums) to the
stdlib ``tarfile`` header code on the same stream, so the results are tarfile's in every case;
``tests/ext4/test_ext4_tarstream.py`` compares the two. Decompression happens in front of it
in large chunks (:mod:`.layerdecode`). Every failure of the input is turned into one :class:`LayerTarError` line.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from typing import BinaryIO
from zlib import adler32 as _adler32

from overlaybd_provider.ext4.errors import LayerTarError
from overlaybd_provider.ext4.layerdecode import decompressed

try:  # compiled (docs/accelerator.md): the header's byte sum and octal numbers in C loops
    import cython

    _COMPILED: bool = cython.compiled
except ImportError:  # a plain install has no Cython, and these modules run as Python
    _COMPILED = False

__all__ = ["ForwardReader", "LayerTarError", "TarMember", "TarReader", "decompressed", "open_tar_stream"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ForwardReader:
    """A forward-only "seekable" view of a stream, so tarfile can run in ``r:`` mode.

    tarfile's stream mode (``r|``) re-slices its whole buffer on every read, which is quadratic
    in small members; ``r:`` mode only ever seeks forward when reading sequentially, which we
    serve by skipping. Also counts the bytes consumed (= uncompressed tar size).
    """

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.count = 0
        #: ``skip_to(pos)`` of a source that can pass over bytes without reading them (the spool
        #: of :mod:`formats.gzworker`): file data a TurboOCI build maps by offset is never copied
        self._skip_to = getattr(inner, "skip_to", None)

    def tell(self) -> int:
        return self.count

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise io.UnsupportedOperation("ForwardReader seeks only to absolute positions")
        if pos < self.count:
            raise LayerTarError(f"tar reader tried to seek back from {self.count} to {pos}")
        if self._skip_to is not None:
            self.count = self._skip_to(pos)
            return self.count
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

    def readinto(self, b: memoryview) -> int:
        n = self._inner.readinto(b) or 0
        self.count += n
        return n


_OCTAL = b"01234567"
_HIGH_BYTES = bytes(range(128, 256))


def _stored_checksum(field: bytes) -> int | None:
    """The checksum field read as Go's ``archive/tar`` (containerd's extractor) reads it: octal
    digits padded with spaces or NULs, up to the first NUL; None when it is not a number."""
    digits = field.strip(b" \0")
    p = digits.find(b"\0")
    if p >= 0:
        digits = digits[:p]
    if digits.translate(None, _OCTAL):
        return None
    return int(digits, 8) if digits else 0


def check_header(h: bytes, offset: int) -> None:
    """Refuse a non-zero 512-byte header whose checksum is wrong. POSIX sums the bytes as
    unsigned, some old tars as signed chars: either is accepted (GNU, ustar and v7 alike)."""
    stored = _stored_checksum(h[148:156])
    unsigned = 256 + sum(h) - sum(h[148:156])
    if stored == unsigned:
        return
    rest = h[:148] + h[156:]
    signed = unsigned - 256 * (len(rest) - len(rest.translate(None, _HIGH_BYTES)))
    if stored == signed:
        return
    shown = f"{stored:06o}" if stored is not None else repr(h[148:156])
    computed = f"{unsigned:06o}" + (f" or {signed:06o} signed" if signed != unsigned else "")
    prefix = "not a tar archive: " if offset == 0 else ""
    raise LayerTarError(f"{prefix}tar header at offset {offset}: checksum mismatch "
                        f"(stored {shown}, computed {computed})")


class _TarInfo(tarfile.TarInfo):
    """Checks every header's checksum strictly (tarfile, like Python's ``int()``, accepts a
    field such as ``"\\x1d12345"``) and records why the header loop ended: tarfile silently stops
    on a truncated or corrupt header after the first member, which must be an error for us
    (no partial layers)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            # tarfile.TarInfo.fromtarfile, with the checksum checked where the offset is known
            fileobj = tarfile_.fileobj
            offset = fileobj.tell()  # type: ignore[union-attr]
            buf = fileobj.read(tarfile.BLOCKSIZE)  # type: ignore[union-attr]
            if len(buf) == tarfile.BLOCKSIZE and buf != _ZERO_HEADER:
                check_header(buf, offset)
            obj = cls.frombuf(buf, tarfile_.encoding, tarfile_.errors)
            obj.offset = offset
            return obj._proc_member(tarfile_)  # type: ignore[attr-defined]
        except tarfile.EOFHeaderError:
            tarfile_._obd_end = None  # type: ignore[attr-defined]
            raise
        except tarfile.HeaderError as exc:
            tarfile_._obd_end = f"{type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
            raise


class TarMember:
    """The fields of one plain ustar/GNU header, named like ``tarfile.TarInfo``'s."""

    __slots__ = ("devmajor", "devminor", "gid", "linkname", "mode", "mtime", "name", "offset_data",
                 "size", "type", "uid")
    pax_headers: dict[str, str] = {}  # shared by all plain members, never mutated
    sparse = None

    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    def isreg(self) -> bool:
        return self.type in _REGULAR_TYPES


class PaxMember(TarMember):
    """A plain member that had a pax header of its own."""

    __slots__ = ("pax_headers",)


class _Slow(Exception):
    """The header needs tarfile's full parser (pax, GNU long names, sparse, odd numbers)."""


_BLOCK = tarfile.BLOCKSIZE
_ZERO_HEADER = bytes(_BLOCK)
_REGULAR_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
_PLAIN_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.LNKTYPE,
                          tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
                          tarfile.FIFOTYPE))
_ENCODING = tarfile.ENCODING
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # tarfile's own record pattern
_PAX_NUMBERS = {"mtime": float, "uid": int, "gid": int, "size": int}  # pax fields tarfile applies
_PAX_FAST_MAX = 1 << 16
_ERRORS = "surrogateescape"
_NO_DEVICE = frozenset((b"0000000\0" * 2, bytes(16)))  # devmajor/devminor of every non-device entry


def _number(field: bytes) -> int:
    """An octal header number (what ``tarfile.nti`` accepts); base-256 goes the slow way."""
    if field[0] & 0x80:
        raise _Slow
    p = field.find(b"\0")
    if p >= 0:
        field = field[:p]
    try:
        return int(field.strip() or b"0", 8)
    except ValueError:
        raise _Slow from None


def _text(field: bytes) -> str:
    p = field.find(b"\0")
    if p >= 0:
        field = field[:p]
    return field.decode(_ENCODING, _ERRORS)


def _checksum(h: bytes) -> None:
    if _COMPILED and type(h) is bytes and len(h) == _BLOCK:
        computed = _unsigned_sum(h)
        if _checksum_written(h, computed):
            return
        field = h[148:156]
    else:
        # the unsigned byte sum, from adler32's low half (1 + sum mod 65521: exact for 256 bytes)
        field = h[148:156]
        computed = 256 + (_adler32(h[:256]) & 0xFFFF) + (_adler32(h[256:]) & 0xFFFF) - 2 - sum(field)
        if field == b"%06o\0 " % computed:  # how tar writers store it: no need to parse the field
            return
    if _stored_checksum(field) != computed:
        raise _Slow  # maybe a signed-char checksum, or a corrupt header: the full parser decides


# The three helpers below run in C when compiled (tarstream.pxd types their locals); in Python
# they are correct but slower than the adler32 and ``int(field, 8)`` forms, which therefore stay
# the pure build's path. Each gives the same number as that form wherever it answers at all.

def _unsigned_sum(h: bytes) -> int:
    """The checksum a header should hold: its 512 bytes summed as unsigned, the checksum
    field counted as eight spaces."""
    total = 256
    for i in range(148):
        total += h[i]
    for i in range(156, 512):
        total += h[i]
    return total


def _checksum_written(h: bytes, computed: int) -> bool:
    """Whether the checksum field holds ``computed`` as tar writers store it: six octal digits,
    NUL, space (``b"%06o\\0 " % computed``; a byte sum is below 8**6)."""
    if h[154] != 0 or h[155] != 32:
        return False
    for k in range(6):  # noqa: SIM110 - a C loop when compiled, where all() would build a generator
        if h[148 + k] != 48 + ((computed >> (3 * (5 - k))) & 7):
            return False
    return True


def _octal_field(h: bytes, start: int, end: int) -> int:
    """``int(h[start:end], 8)`` when every byte there is an octal digit and ``h[end]`` is NUL
    (the usual ``"0000644\\0"``); -1 otherwise (the caller parses it the general way)."""
    value = 0
    for i in range(start, end):
        c = h[i]
        if c < 48 or c > 55:
            return -1
        value = value * 8 + (c - 48)
    if h[end] != 0:
        return -1
    return value


def _numbers(m: TarMember, h: bytes) -> None:
    """mode, uid, gid, size and mtime of a header into ``m``."""
    try:  # the usual "0000644\0" form; anything else gets tarfile's nti rules
        m.mode, m.uid, m.gid, m.size, m.mtime = (int(h[100:107], 8), int(h[108:115], 8),
                                                 int(h[116:123], 8), int(h[124:135], 8),
                                                 int(h[136:147], 8))
        if h[107] or h[115] or h[123] or h[135] or h[147]:
            raise ValueError
    except ValueError:
        m.mode = _number(h[100:108])
        m.uid = _number(h[108:116])
        m.gid = _number(h[116:124])
        m.size = _number(h[124:136])
        m.mtime = _number(h[136:148])


def _parse_plain(h: bytes, cls: type[TarMember] = TarMember) -> TarMember:
    """``TarInfo.frombuf`` + ``_proc_builtin`` for a plain header, or _Slow for anything else."""
    kind = h[156:157]
    if kind not in _PLAIN_TYPES or h == _ZERO_HEADER:
        raise _Slow
    _checksum(h)
    m = cls()
    name = _text(h[0:100])
    if _COMPILED and type(h) is bytes and len(h) == _BLOCK:
        mode, uid, gid = _octal_field(h, 100, 107), _octal_field(h, 108, 115), _octal_field(h, 116, 123)
        size, mtime = _octal_field(h, 124, 135), _octal_field(h, 136, 147)
        if mode >= 0 and uid >= 0 and gid >= 0 and size >= 0 and mtime >= 0:
            m.mode, m.uid, m.gid, m.size, m.mtime = mode, uid, gid, size, mtime
        else:
            _numbers(m, h)
    else:
        _numbers(m, h)
    m.linkname = _text(h[157:257]) if h[157] else ""
    if h[329:345] in _NO_DEVICE:
        m.devmajor = m.devminor = 0
    else:
        m.devmajor = _number(h[329:337])
        m.devminor = _number(h[337:345])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if h[345] != 0:
        prefix = _text(h[345:500])
        if prefix:
            name = prefix + "/" + name
            if kind == tarfile.DIRTYPE:
                name = name.rstrip("/")
    m.name, m.type = name, kind
    return m


class TarReader:
    """One forward pass over a tar stream: ``for member in reader`` and ``extractfile(member)``.

    Plain headers (the bulk of a layer) are parsed here from a large buffer, with the same
    results as ``tarfile``; anything else (pax and GNU long-name headers, GNU sparse, base-256
    numbers, a bad checksum) is handed to ``tarfile``'s own header code on the same stream, so
    behaviour is tarfile's. Members are not kept. After iterating, ``_obd_end`` is None only
    for a proper end marker.
    """

    def __init__(self, stream: ForwardReader) -> None:
        self._src = stream
        self._buf = b""
        self._pos = 0
        self._base = stream.count  # stream offset of _buf[0]
        self._eof = False
        # what tarfile's header code reads from its TarFile object
        self.fileobj = self
        self.encoding = _ENCODING
        self.errors = _ERRORS
        self.pax_headers: dict[str, str] = {}
        self.offset = 0  # next header position
        self._obd_end: str | None = None
        self._first: TarMember | tarfile.TarInfo | None = None
        self._done = False
        try:
            self._first = self._next()
        except tarfile.ReadError as exc:
            raise LayerTarError(f"not a tar archive: {exc}") from None
        if self._first is None:
            self._done = True

    # -- buffered stream ---------------------------------------------------------------------
    def tell(self) -> int:
        return self._base + self._pos

    def seekable(self) -> bool:
        return True

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._src.read(_CHUNK)
        if not chunk:
            self._eof = True
            return False
        rest = self._buf[self._pos:]
        self._base += self._pos
        self._buf = rest + chunk if rest else chunk
        self._pos = 0
        return True

    def read(self, size: int = -1) -> bytes:
        buf, pos = self._buf, self._pos
        if 0 <= size <= len(buf) - pos:
            self._pos = pos + size
            return buf[pos:pos + size]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._base += len(buf)
        self._buf, self._pos = b"", 0
        while (size < 0 or have < size) and not self._eof:
            chunk = self._src.read(_CHUNK if size < 0 else max(size - have, _CHUNK))
            if not chunk:
                self._eof = True
                break
            if size >= 0 and have + len(chunk) > size:
                take = size - have
                parts.append(chunk[:take])
                self._buf, self._pos = chunk, take  # the rest stays buffered
                break
            parts.append(chunk)
            have += len(chunk)
            self._base += len(chunk)
        return b"".join(parts)

    def readinto(self, b: memoryview) -> int:
        """Fill ``b`` from the buffer, then straight from the stream (no intermediate bytes).

        Every view made here is released on the way out, also when the stream raises: ``b``
        may be a slice of the compressor's shared ring, which cannot be unmapped while a view
        of it is alive (a traceback would otherwise keep them alive)."""
        with memoryview(b) as outer, outer.cast("B") as view:
            buf, pos = self._buf, self._pos
            done = min(len(buf) - pos, len(view))
            if done:
                view[:done] = memoryview(buf)[pos:pos + done]
                self._pos = pos + done
            if done < len(view):
                self._base += len(buf)
                self._buf, self._pos = b"", 0
                while done < len(view) and not self._eof:
                    with view[done:] as rest:
                        n = self._src.readinto(rest)
                    if not n:
                        self._eof = True
                        break
                    done += n
                    self._base += n
            return done

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise io.UnsupportedOperation("TarReader seeks only to absolute positions")
        cur = self._base + self._pos
        if pos < cur:
            raise LayerTarError(f"tar reader tried to seek back from {cur} to {pos}")
        if pos - cur <= len(self._buf) - self._pos:
            self._pos += pos - cur
            return pos
        self._buf, self._pos = b"", 0
        self._base = self._src.seek(pos)  # past the buffer: the stream skips (or reads and drops)
        if self._base < pos:
            self._eof = True
        return self._base

    # -- members -------------------------------------------------------------------------------
    def __iter__(self):
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while not self._done:
            member = self._next()
            if member is None:
                self._done = True
                return
            yield member

    def _next(self) -> TarMember | tarfile.TarInfo | None:
        pos = self._base + self._pos
        if self.offset != pos:
            if self.offset < pos:
                raise LayerTarError(f"tar reader tried to seek back from {pos} to {self.offset}")
            skip = self.offset - pos
            if skip <= len(self._buf) - self._pos:  # the rest of the member is buffered: it exists
                self._pos += skip
            else:
                self.seek(self.offset - 1)
                if not self.read(1):
                    raise tarfile.ReadError("unexpected end of data")
        if not self.pax_headers:
            try:
                return self._plain()
            except _Slow:
                pass
        return self._tarfile_header()

    def _plain(self) -> TarMember | None:
        """Parse a plain header (or a pax header and its plain member) from the buffer, or raise
        _Slow leaving the position unchanged."""
        pos = self._pos
        if len(self._buf) - pos < _BLOCK:
            self._more()
            pos = self._pos
            if len(self._buf) - pos < _BLOCK:
                raise _Slow
        h = self._buf[pos:pos + _BLOCK]
        if h[156:157] == tarfile.XHDTYPE:
            return self._pax(h, pos)
        m = _parse_plain(h)
        pos += _BLOCK
        self._pos = pos
        data = self._base + pos
        m.offset_data = data
        self.offset = data + (-(-m.size // _BLOCK) * _BLOCK if m.type in _REGULAR_TYPES else 0)
        return m

    def _pax(self, h: bytes, pos: int) -> TarMember:
        """A per-member pax header followed by a plain header: ``tarfile._proc_pax`` for the
        records that do not change how the archive is read (no GNU sparse, no hdrcharset)."""
        _checksum(h)
        size = _number(h[124:136])
        if size > _PAX_FAST_MAX:
            raise _Slow
        padded = -(-size // _BLOCK) * _BLOCK
        need = _BLOCK + padded + _BLOCK
        while len(self._buf) - pos < need:
            if not self._more():
                raise _Slow
            pos = self._pos
        buf = self._buf
        records = buf[pos + _BLOCK:pos + _BLOCK + size]
        if b"GNU.sparse." in records or b"hdrcharset" in records:
            raise _Slow
        pax: dict[str, str] = {}
        p = 0
        while True:
            match = _PAX_RECORD.match(records, p)
            if not match:
                break
            length = int(match.group(1))
            if length == 0:
                raise _Slow
            value = records[match.end(2) + 1:match.start(1) + length - 1]
            pax[match.group(2).decode("utf-8", _ERRORS)] = value.decode("utf-8", _ERRORS)
            p += length
        m = _parse_plain(buf[pos + _BLOCK + padded:pos + need], PaxMember)
        for key, value in pax.items():
            if key == "path":
                m.name = value.rstrip("/")
            elif key == "linkpath":
                m.linkname = value
            elif key in _PAX_NUMBERS:
                try:
                    number: float = _PAX_NUMBERS[key](value)
                except ValueError:
                    number = 0
                setattr(m, key, number)
        m.pax_headers = pax
        pos += need
        self._pos = pos
        data = self._base + pos
        m.offset_data = data
        self.offset = data + (-(-m.size // _BLOCK) * _BLOCK if m.type in _REGULAR_TYPES else 0)
        return m

    def _tarfile_header(self) -> tarfile.TarInfo | None:
        """tarfile's header code on this stream (the error mapping of ``TarFile.next``)."""
        at_start = self.offset == 0
        try:
            return _TarInfo.fromtarfile(self)  # type: ignore[arg-type]
        except tarfile.EOFHeaderError:
            self._after_zero_block()
            return None
        except tarfile.SubsequentHeaderError as exc:
            raise tarfile.ReadError(str(exc)) from None
        except (tarfile.InvalidHeaderError, tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as exc:
            if at_start:
                raise tarfile.ReadError("empty file" if isinstance(exc, tarfile.EmptyHeaderError)
                                        else str(exc)) from None
            return None

    def _after_zero_block(self) -> None:
        """A zero block ends the archive only if what follows is another zero block (or nothing):
        a header after a single zero block is refused, as Go's ``archive/tar`` does, instead of
        silently dropping the rest of the layer (upstream's apply would read on)."""
        offset = self.tell()
        nxt = self.read(_BLOCK)
        if not nxt.strip(b"\0"):
            return
        if len(nxt) == _BLOCK:
            check_header(nxt, offset)
        raise LayerTarError(f"tar header at offset {offset} follows a single zero block "
                            f"(an archive ends with two)")

    # -- member data ---------------------------------------------------------------------------
    def take_buffered(self, member: TarMember | tarfile.TarInfo) -> memoryview | None:
        """The data of a plain member when the buffer holds all of it and the reader stands at
        its start (small files: the usual case), as a view of the buffer, which is moved past it;
        None otherwise (then use :meth:`extractfile`)."""
        if not isinstance(member, TarMember):
            return None
        pos, size = self._pos, member.size
        if self._base + pos != member.offset_data or len(self._buf) - pos < size:
            return None
        self._pos = pos + size
        return memoryview(self._buf)[pos:pos + size]

    def extractfile(self, member: TarMember | tarfile.TarInfo) -> _MemberData | tarfile.ExFileObject:
        if isinstance(member, TarMember):
            return _MemberData(self, member.offset_data, member.size, member.name)
        return tarfile.ExFileObject(self, member)  # type: ignore[arg-type]


class _MemberData:
    """The data of a plain member, read straight from the reader's buffer."""

    __slots__ = ("_left", "_name", "_reader", "_size", "_start")

    def __init__(self, reader: TarReader, start: int, size: int, name: str) -> None:
        self._reader, self._start, self._left = reader, start, size
        self._size, self._name = size, name

    def _truncated(self, got: int) -> LayerTarError:
        done = self._size - self._left + got
        return LayerTarError(f"truncated tar: entry {self._name!r} declares {self._size} bytes of data, "
                             f"the archive ends after {done}")

    def read(self, size: int = -1) -> bytes:
        r = self._reader
        if self._start >= 0:
            if r.tell() != self._start:
                r.seek(self._start)
            self._start = -1
        if size < 0 or size > self._left:
            size = self._left
        data = r.read(size)
        if len(data) != size:
            raise self._truncated(len(data))
        self._left -= size
        return data

    def readinto(self, b: memoryview) -> int:
        r = self._reader
        if self._start >= 0:
            if r.tell() != self._start:
                r.seek(self._start)
            self._start = -1
        with memoryview(b) as outer, outer.cast("B") as whole, whole[:self._left] as view:
            n = r.readinto(view)
            if n != len(view):
                raise self._truncated(n)
        self._left -= n
        return n


def open_tar_stream(stream: ForwardReader) -> TarReader:
    """Sequential tar reader; after iterating, ``_obd_end`` is None only for a proper end marker."""
    return TarReader(stream)
