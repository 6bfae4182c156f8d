"""Block and inode bitmaps of each group, read lazily through the block device.

A bitmap is kept as a Python int (bit *i* = item *i* of the group) while in use: finding the next
free bit or the next used bit is then a couple of big-int operations instead of a per-bit loop.
Padding bits past the end of the group are set, as e2fsck requires.
"""

from __future__ import annotations

from collections.abc import Callable

from overlaybd_provider.ext4.layout import BLOCK_SIZE

BITS_PER_BLOCK = BLOCK_SIZE * 8
_FULL = (1 << BITS_PER_BLOCK) - 1


def range_mask(start: int, count: int) -> int:
    return ((1 << count) - 1) << start


def next_clear(bits: int, start: int, limit: int) -> int:
    """First clear bit at or after ``start`` below ``limit``, or -1."""
    inv = (~bits & _FULL) >> start
    if inv == 0:
        return -1
    pos = start + ((inv & -inv).bit_length() - 1)
    return pos if pos < limit else -1


def next_set(bits: int, start: int, limit: int) -> int:
    """First set bit at or after ``start``, or ``limit`` when none is below it."""
    v = bits >> start
    if v == 0:
        return limit
    return min(limit, start + ((v & -v).bit_length() - 1))


def highest_set(bits: int) -> int:
    return bits.bit_length() - 1


class BitmapSet:
    """The bitmaps of one kind (block or inode) for all groups: lazy load, dirty tracking."""

    def __init__(self, read_block: Callable[[int], bytes], locate: Callable[[int], int],
                 valid_bits: Callable[[int], int]) -> None:
        self._read_block = read_block
        self._locate = locate  # group -> bitmap block number
        self._valid_bits = valid_bits  # group -> number of meaningful bits
        self._bits: dict[int, int] = {}
        self.dirty: set[int] = set()

    def get(self, group: int) -> int:
        bits = self._bits.get(group)
        if bits is None:
            raw = self._read_block(self._locate(group))
            bits = int.from_bytes(raw, "little")
            self._bits[group] = bits
        return bits

    def set_bits(self, group: int, bits: int) -> None:
        self._bits[group] = bits
        self.dirty.add(group)

    def init_group(self, group: int, bits: int) -> None:
        """Fresh bitmap (mkfs): padding past the group's end is set."""
        valid = self._valid_bits(group)
        self.set_bits(group, bits | (_FULL ^ ((1 << valid) - 1)))

    def to_block(self, group: int) -> bytes:
        valid = self._valid_bits(group)
        bits = self._bits[group] | (_FULL ^ ((1 << valid) - 1))
        return bits.to_bytes(BLOCK_SIZE, "little")

    def block_of(self, group: int) -> int:
        return self._locate(group)

    def drop_clean(self) -> None:
        """Forget clean bitmaps to bound memory (they are re-read on demand)."""
        for g in [g for g in self._bits if g not in self.dirty]:
            del self._bits[g]
