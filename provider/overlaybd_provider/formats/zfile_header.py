"""The 512-byte ZFile header/trailer record (zfile.md §2-§4)."""

from __future__ import annotations

import dataclasses
import struct

from overlaybd_provider.formats.crc import crc32c_raw

# zfile.md §2
ZFILE_MAGIC0 = b"ZFile\x00\x01\x00"
ZFILE_MAGIC1 = b"tuji.yyf@Alibaba"
ZFILE_HEADER_SIZE = 512
ZFILE_STRUCT_SIZE = 96
# magic0, magic1, size, digest, flags, index_offset, index_size, original_file_size, index_crc,
# reserved_0, block_size, algo, level, use_dict, padding, reserved, dict_size, verify, padding
_ZFILE_HT = struct.Struct("<8s16sIIQQQQII I4B II B7x")
assert _ZFILE_HT.size == ZFILE_STRUCT_SIZE

# zfile.md §3
FLAG_HEADER = 0x01
FLAG_DATA = 0x02
FLAG_SEALED = 0x04
FLAG_HEADER_OVERWRITE = 0x08
FLAG_DIGEST = 0x10
FLAG_INDEX_COMPRESSED = 0x20
FLAGS_PROVISIONAL_HEADER = FLAG_HEADER | FLAG_DATA | FLAG_DIGEST  # 0x13
FLAGS_TRAILER = FLAG_DATA | FLAG_SEALED | FLAG_DIGEST  # 0x16
FLAGS_FINAL_HEADER = FLAG_HEADER | FLAG_DATA | FLAG_HEADER_OVERWRITE | FLAG_DIGEST  # 0x1B

# zfile.md §2/§5
ALGO_LZ4 = 1
ALGO_ZSTD = 2
ALGORITHMS = {"lz4": ALGO_LZ4, "zstd": ALGO_ZSTD}
ALGORITHM_NAMES = {v: k for k, v in ALGORITHMS.items()}
BLOCK_SIZES = (4096, 8192, 16384, 32768, 65536)
MAX_BLOCK_SIZE = 65536
MAX_STORED_BLOCK = 65536  # overlaybd's inner read buffer (zfile.md §5 reader limit)
MAX_INDEX_SIZE = 1_000_000_000
BLOCK_CRC_SEED = 100007  # zfile.md §5 "salt"
_DIGEST_SLICE = slice(28, 32)


@dataclasses.dataclass(frozen=True)
class ZFileHeader:
    """One header or trailer. Field names follow overlaybd's ``CompressionFile::HeaderTrailer``."""

    flags: int
    index_offset: int = 0
    index_size: int = 0
    original_file_size: int = 0
    index_crc: int = 0
    block_size: int = 4096
    algo: int = ALGO_LZ4
    level: int = 0
    use_dict: int = 0
    dict_size: int = 0
    verify: int = 1
    size: int = ZFILE_STRUCT_SIZE
    digest: int = 0
    raw: bytes = b""

    @property
    def is_header(self) -> bool:
        return bool(self.flags & FLAG_HEADER)

    @property
    def has_digest(self) -> bool:
        return bool(self.flags & FLAG_DIGEST)

    @property
    def algorithm(self) -> str:
        return ALGORITHM_NAMES.get(self.algo, f"unknown({self.algo})")

    def to_bytes(self) -> bytes:
        """Serialise with a fresh digest when the digest flag is set (zfile.md §4)."""
        packed = _ZFILE_HT.pack(
            ZFILE_MAGIC0, ZFILE_MAGIC1, self.size, 0, self.flags, self.index_offset, self.index_size,
            self.original_file_size, self.index_crc, 0, self.block_size, self.algo, self.level,
            self.use_dict, 0, 0, self.dict_size, self.verify,
        )
        buf = bytearray(packed.ljust(ZFILE_HEADER_SIZE, b"\0"))
        if self.flags & FLAG_DIGEST:
            buf[_DIGEST_SLICE] = crc32c_raw(buf).to_bytes(4, "little")
        return bytes(buf)

    @classmethod
    def from_bytes(cls, buf: bytes) -> ZFileHeader:
        """Parse 512 bytes; magic and digest are checked by the caller (it knows the file name)."""
        (_m0, _m1, size, digest, flags, index_offset, index_size, original_file_size, index_crc, _r0,
         block_size, algo, level, use_dict, _pad, _r1, dict_size, verify) = _ZFILE_HT.unpack_from(buf)
        return cls(
            flags=flags, index_offset=index_offset, index_size=index_size,
            original_file_size=original_file_size, index_crc=index_crc, block_size=block_size,
            algo=algo, level=level, use_dict=use_dict, dict_size=dict_size, verify=verify,
            size=size, digest=digest, raw=bytes(buf[:ZFILE_HEADER_SIZE]),
        )

    @property
    def magic_ok(self) -> bool:
        return self.raw[:8] == ZFILE_MAGIC0 and self.raw[8:24] == ZFILE_MAGIC1

    def digest_ok(self) -> bool:
        buf = bytearray(self.raw)
        buf[_DIGEST_SLICE] = b"\0\0\0\0"
        return crc32c_raw(buf) == self.digest

    def as_dict(self) -> dict[str, int | str]:
        return {
            "size": self.size, "digest": f"0x{self.digest:08X}", "flags": f"0x{self.flags:X}",
            "index_offset": self.index_offset, "index_size": self.index_size,
            "original_file_size": self.original_file_size, "index_crc": f"0x{self.index_crc:08X}",
            "block_size": self.block_size, "algo": self.algo, "level": self.level,
            "use_dict": self.use_dict, "dict_size": self.dict_size, "verify": self.verify,
        }


def is_zfile_header(buf: bytes) -> bool:
    """zfile.md §7 step 1 without the digest: both magics and the header flag."""
    if len(buf) < ZFILE_STRUCT_SIZE or buf[:8] != ZFILE_MAGIC0 or buf[8:24] != ZFILE_MAGIC1:
        return False
    return bool(buf[32] & FLAG_HEADER)
