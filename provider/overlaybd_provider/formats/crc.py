"""overlaybd's checksum: CRC-32C without the usual initial/final inversion (overlaybd-format.md).

It is what the x86 ``crc32`` instruction computes when chained from ``seed``; the ``crc32c``
package computes the standard (inverted) form, so we invert around it.
"""

from __future__ import annotations

import crc32c as _crc32c

_MASK = 0xFFFFFFFF


def crc32c_raw(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """Return ``CRC32C_RAW(data, seed)``; ``crc32c_raw(b"123456789") == 0x58E3FA20``."""
    return ~_crc32c.crc32c(data, ~seed & _MASK) & _MASK
