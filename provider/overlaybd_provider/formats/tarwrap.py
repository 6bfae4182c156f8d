"""The one-member tar around a layer's ZFile (layer-blob.md §2-§3).

Writing reproduces ``overlaybd-commit -t`` byte for byte (PAX header with the size record,
payload always at 1536, odd space-padded numeric fields). Probing follows overlaybd's own
tar detection, which also accepts the plain ustar form of the legacy base layer (payload at 512).
"""

from __future__ import annotations

import dataclasses

from overlaybd_provider.formats.errors import BadMagicError, TruncatedError
from overlaybd_provider.formats.source import ByteSource

BLOCK = 512
PAYLOAD_OFFSET_PAX = 1536
PAYLOAD_OFFSET_PLAIN = 512
MEMBER_NAME = b"overlaybd.commit"
PAX_NAME = b"overlaybd.pax"
_MAX_HEADERS = 16

# ustar header field offsets (layer-blob.md §2.1/§2.3; POSIX ustar)
_NAME, _MODE, _UID, _GID, _SIZE, _MTIME, _CHKSUM, _TYPE = 0, 100, 108, 116, 124, 136, 148, 156
_MAGIC, _VERSION, _UNAME, _GNAME = 257, 263, 265, 297


def _pax_record(key: str, value: str) -> bytes:
    """PAX record ``"<len> key=value\\n"`` whose length counts its own digits."""
    body = f" {key}={value}\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return f"{length}{body}".encode()


def _finish(header: bytearray) -> bytes:
    """Store the ustar checksum as ``"%6o \\0"`` (layer-blob.md §2.4)."""
    header[_CHKSUM : _CHKSUM + 8] = b" " * 8
    header[_CHKSUM : _CHKSUM + 8] = b"%6o \0" % sum(header)
    return bytes(header)


def tar_prefix(payload_size: int, *, uname: bytes = b"root", gname: bytes = b"root") -> bytes:
    """The 1536 bytes in front of the ZFile: PAX header, PAX data, member header."""
    record = _pax_record("size", str(payload_size))
    if len(record) > BLOCK:
        raise ValueError("PAX record does not fit one block")
    pax = bytearray(BLOCK)
    pax[_NAME : _NAME + len(PAX_NAME)] = PAX_NAME
    pax[_SIZE : _SIZE + 12] = b"%11o " % len(record)
    pax[_TYPE] = ord("x")
    pax[_MAGIC : _MAGIC + 6] = b"ustar\0"
    pax[_VERSION : _VERSION + 2] = b"00"
    member = bytearray(BLOCK)
    member[_NAME : _NAME + len(MEMBER_NAME)] = MEMBER_NAME
    member[_MODE : _MODE + 8] = b"%6o \0" % 0o100644
    member[_UID : _UID + 8] = b"%6o \0" % 0
    member[_GID : _GID + 8] = b"%6o \0" % 0
    member[_SIZE : _SIZE + 12] = b"%11o " % 0
    member[_MTIME : _MTIME + 12] = b"%11o " % 0
    member[_TYPE] = ord("0")
    member[_MAGIC : _MAGIC + 6] = b"ustar\0"
    member[_VERSION : _VERSION + 2] = b"00"
    member[_UNAME : _UNAME + len(uname)] = uname
    member[_GNAME : _GNAME + len(gname)] = gname
    return _finish(pax) + record.ljust(BLOCK, b"\0") + _finish(member)


def tar_suffix(payload_size: int) -> bytes:
    """Zero padding of the payload to 512 plus the two end-of-archive blocks."""
    return b"\0" * (-payload_size % BLOCK + 2 * BLOCK)


def blob_size(payload_size: int) -> int:
    return PAYLOAD_OFFSET_PAX + payload_size + len(tar_suffix(payload_size))


# -- reading ------------------------------------------------------------------------
def _checksum_ok(header: bytes) -> bool:
    try:
        stored = int(header[_CHKSUM : _CHKSUM + 8].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    blanked = header[:_CHKSUM] + b" " * 8 + header[_CHKSUM + 8 :]
    unsigned = sum(blanked)
    signed = unsigned - 256 * sum(1 for b in blanked if b > 127)
    return stored in (unsigned, signed)


def is_tar_header(header: bytes) -> bool:
    """overlaybd's test: ``ustar`` magic (5 bytes), version ``00``, valid checksum."""
    return (
        len(header) >= BLOCK
        and header[_MAGIC : _MAGIC + 5] == b"ustar"
        and header[_VERSION : _VERSION + 2] == b"00"
        and _checksum_ok(header)
    )


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


@dataclasses.dataclass(frozen=True)
class TarPayload:
    """Where the first member's bytes are: ``offset``/``size`` in the blob, whether PAX was used."""

    offset: int
    size: int
    pax: bool
    member_name: str


def probe_tar(src: ByteSource) -> TarPayload | None:
    """Return the payload of the first member, or ``None`` if ``src`` is not a ustar archive."""
    if src.size < BLOCK or not is_tar_header(src.read(0, BLOCK)):
        return None
    pos = 0
    pax_seen = False
    pax_size = 0
    for _ in range(_MAX_HEADERS):
        if pos + BLOCK > src.size:
            break
        header = src.read(pos, BLOCK)
        if not is_tar_header(header):
            raise BadMagicError(f"{src.name}: bad tar header at offset {pos}")
        size = _number(header[_SIZE : _SIZE + 12])
        kind = header[_TYPE : _TYPE + 1]
        if kind in (b"x", b"g", b"L", b"K"):
            if pos + BLOCK + size > src.size:
                raise TruncatedError(f"{src.name}: truncated tar: extended header at offset {pos}")
            if kind == b"x":
                pax_size = _pax_size(src.read(pos + BLOCK, size)) or pax_size
            pax_seen = pax_seen or kind in (b"x", b"g")
            pos += BLOCK + size + (-size % BLOCK)
            continue
        offset = PAYLOAD_OFFSET_PAX if pax_seen else PAYLOAD_OFFSET_PLAIN
        payload_size = pax_size if pax_size > 0 else size
        if offset + payload_size > src.size:
            raise TruncatedError(
                f"{src.name}: truncated tar: member of {payload_size} bytes at offset {offset} "
                f"but the file has {src.size} bytes"
            )
        name = header[_NAME : _NAME + 100].split(b"\0", 1)[0].decode("utf-8", "replace")
        return TarPayload(offset, payload_size, pax_seen, name)
    raise TruncatedError(f"{src.name}: truncated tar: no member header found")


def _pax_size(data: bytes) -> int:
    for line in data.split(b"\n"):
        _, _, kv = line.partition(b" ")
        key, _, value = kv.partition(b"=")
        if key == b"size":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
