"""On-disk records of an LSMT layer: the 4 KiB header/trailer (lsmt.md §1-§2, §4) and the
16-byte index entry (lsmt.md §3)."""

from __future__ import annotations

import dataclasses
import struct
import uuid as _uuid
from typing import NamedTuple

# lsmt.md §1
LSMT_MAGIC0 = b"LSMT\x00\x01\x02\x00"
LSMT_MAGIC1 = bytes.fromhex("657E63D29444084CA2D2C8EC4FCFAE8A")
LSMT_HT_SIZE = 4096
LSMT_STRUCT_SIZE = 390
SECTOR = 512
# magic0, magic1, size, flags, index_offset, index_size, virtual_size, uuid, parent_uuid,
# reserved, version, sub_version, user_tag
_LSMT_HT = struct.Struct("<8s16sIIQQQ37s37sHBB256s")
assert _LSMT_HT.size == LSMT_STRUCT_SIZE

# lsmt.md §2
FLAG_HEADER = 0x1
FLAG_DATA = 0x2
FLAG_SEALED = 0x4
FLAGS_SEALED_HEADER = FLAG_HEADER | FLAG_DATA | FLAG_SEALED  # 0x7
FLAGS_SEALED_TRAILER = FLAG_DATA | FLAG_SEALED  # 0x6

# lsmt.md §3
_ENTRY = struct.Struct("<QQ")
ENTRY_SIZE = 16
INVALID_OFFSET = (1 << 50) - 1
MAX_ENTRY_LENGTH = (1 << 14) - 1  # 16383 sectors
MAX_MOFFSET = (1 << 55) - 1
MAX_INDEX_ENTRIES = 1_000_000
INDEX_ALIGN_ENTRIES = 256  # index padded to a multiple of 4096 bytes
# TurboOCI warp files (``SegmentType`` in overlaybd lsmt/index.h): where an entry's data lives
TAG_META = 0  # fsMeta: in this file's data area
TAG_TARGET = 1  # remoteData: in the target (the uncompressed source layer), moffset in its sectors
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


class IndexEntry(NamedTuple):
    """One mapping, all in 512-byte sectors: LBA ``offset``, ``length``, file position ``moffset``."""

    offset: int
    length: int
    moffset: int
    zeroed: int = 0
    tag: int = 0

    def to_bytes(self) -> bytes:
        return _ENTRY.pack(
            self.offset | (self.length << 50),
            self.moffset | (self.zeroed << 55) | (self.tag << 56),
        )

    @classmethod
    def from_bytes(cls, buf: bytes, pos: int = 0) -> IndexEntry:
        w0, w1 = _ENTRY.unpack_from(buf, pos)
        return cls(w0 & INVALID_OFFSET, w0 >> 50, w1 & MAX_MOFFSET, (w1 >> 55) & 1, w1 >> 56)

    @property
    def end(self) -> int:
        return self.offset + self.length


PADDING_ENTRY = IndexEntry(INVALID_OFFSET, 0, 0).to_bytes()


def sector_span(offset: int, length: int, virtual_size: int) -> tuple[int, int]:
    """Sectors ``[s0, s1)`` covering a read of ``length`` bytes at ``offset`` of a device of
    ``virtual_size`` bytes (0: unbounded); the checks every device reader makes first."""
    if offset < 0 or length < 0:
        raise ValueError("negative offset or length")
    if virtual_size and offset + length > virtual_size:
        raise ValueError(f"read [{offset}, {offset + length}) beyond the device size {virtual_size}")
    return offset // SECTOR, -(-(offset + length) // SECTOR)


def iter_entries(buf: bytes, *, tags: bool = False):
    """Yield ``(offset, length, moffset, zeroed)`` of every valid entry (padding skipped, tags
    reset), or with ``tags`` ``(offset, length, moffset, zeroed, tag)``."""
    for w0, w1 in _ENTRY.iter_unpack(buf):
        off = w0 & INVALID_OFFSET
        if off != INVALID_OFFSET:
            if tags:
                yield off, w0 >> 50, w1 & MAX_MOFFSET, (w1 >> 55) & 1, w1 >> 56
            else:
                yield off, w0 >> 50, w1 & MAX_MOFFSET, (w1 >> 55) & 1


def normalize_uuid(value: str | bytes | _uuid.UUID | None) -> str:
    """Return the upper-case 36-char text overlaybd stores; empty/None → all-zero (lsmt.md §4)."""
    if value is None or value == "" or value == b"":
        return ZERO_UUID
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return str(_uuid.UUID(str(value))).upper()


@dataclasses.dataclass(frozen=True)
class LSMTHeader:
    """One 4 KiB header or trailer (field names from overlaybd's ``HeaderTrailer``)."""

    flags: int
    index_offset: int = 0
    index_size: int = 0
    virtual_size: int = 0
    uuid: str = ZERO_UUID
    parent_uuid: str = ZERO_UUID
    version: int = 1
    sub_version: int = 1
    user_tag: bytes = b""
    size: int = LSMT_STRUCT_SIZE
    magic_ok: bool = True

    def to_bytes(self) -> bytes:
        if len(self.user_tag) > 256:
            raise ValueError("LSMT user_tag is limited to 256 bytes")
        packed = _LSMT_HT.pack(
            LSMT_MAGIC0, LSMT_MAGIC1, self.size, self.flags, self.index_offset, self.index_size,
            self.virtual_size, normalize_uuid(self.uuid).encode() + b"\0",
            normalize_uuid(self.parent_uuid).encode() + b"\0", 0, self.version, self.sub_version,
            self.user_tag,
        )
        return packed.ljust(LSMT_HT_SIZE, b"\0")

    @classmethod
    def from_bytes(cls, buf: bytes) -> LSMTHeader:
        (m0, m1, size, flags, index_offset, index_size, virtual_size, uuid, parent, _res, version,
         sub_version, user_tag) = _LSMT_HT.unpack_from(buf)
        return cls(
            flags=flags, index_offset=index_offset, index_size=index_size, virtual_size=virtual_size,
            uuid=_uuid_text(uuid), parent_uuid=_uuid_text(parent), version=version,
            sub_version=sub_version, user_tag=user_tag.rstrip(b"\0"), size=size,
            magic_ok=m0 == LSMT_MAGIC0 and m1 == LSMT_MAGIC1,
        )

    def as_dict(self) -> dict[str, int | str]:
        return {
            "flags": f"0x{self.flags:X}", "index_offset": self.index_offset, "index_size": self.index_size,
            "virtual_size": self.virtual_size, "uuid": self.uuid, "parent_uuid": self.parent_uuid,
            "version": f"{self.version}.{self.sub_version}",
            "user_tag": self.user_tag.decode("utf-8", "replace"),
        }


def _uuid_text(raw: bytes) -> str:
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    try:
        return normalize_uuid(text)
    except ValueError:
        return ZERO_UUID  # overlaybd treats an unparsable uuid as absent


def is_lsmt_header(buf: bytes) -> bool:
    """lsmt.md §7: both magics and the header flag."""
    return (
        len(buf) >= 32
        and buf[:8] == LSMT_MAGIC0
        and buf[8:24] == LSMT_MAGIC1
        and bool(int.from_bytes(buf[28:32], "little") & FLAG_HEADER)
    )
