"""A stack of LSMT layers read as one block device (lsmt.md §7)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from overlaybd_provider.formats.errors import StackError
from overlaybd_provider.formats.lsmt_index import SECTOR, ZERO_UUID, sector_span
from overlaybd_provider.formats.lsmt_reader import LSMTReader

log = logging.getLogger(__name__)

MAX_LAYERS = 255


class MappedExtent(NamedTuple):
    """A run of the merged device served by one layer. All values in **bytes**.

    ``source_offset`` is where the data starts inside that layer's LSMT (0 when ``zeroed``),
    or, for ``tag`` 1 of a TurboOCI warp layer, inside its target (``layer.source_for(tag)``).
    """

    offset: int
    length: int
    layer: int
    zeroed: bool
    source_offset: int
    tag: int = 0


class LayerStack:
    """Layers bottom-first; the top-most layer with an entry for a sector wins, and a zeroed
    entry masks lower data.

    ``check_chain``: see :func:`check_chain`.
    """

    def __init__(self, layers: Sequence[LSMTReader], *, check_chain: bool = True):
        self.layers = list(layers)
        if len(self.layers) > MAX_LAYERS:
            raise StackError(f"{len(self.layers)} layers: overlaybd stacks at most {MAX_LAYERS}")
        if check_chain:
            _check_chain(self.layers)
        self.virtual_size = next((r.virtual_size for r in reversed(self.layers) if r.virtual_size > 0), 0)
        log.debug("stack of %d layers, virtual size %d", len(self.layers), self.virtual_size)

    def _segments(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(sector_start, sector_end, layer, entry)`` for mapped parts of ``[start, end)``."""
        layers = self.layers
        ptr = [r.first_entry_at_or_after(start) for r in layers]
        tops = list(range(len(layers) - 1, -1, -1))
        pos = start
        while pos < end:
            limit = end
            winner = -1
            for li in tops:
                r = layers[li]
                ends = r.ends
                j = ptr[li]
                n = len(ends)
                while j < n and ends[j] <= pos:
                    j += 1
                ptr[li] = j
                if j >= n:
                    continue
                s = r.offsets[j]
                if s <= pos:
                    winner = li
                    if ends[j] < limit:
                        limit = ends[j]
                    break
                if s < limit:
                    limit = s
            if winner >= 0:
                yield pos, limit, winner, ptr[winner]
            pos = limit

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the merged device (zeros where unmapped)."""
        s0, s1 = sector_span(offset, length, self.virtual_size)
        if length == 0:
            return b""
        base = s0 * SECTOR
        out = bytearray((s1 - s0) * SECTOR)
        for s, e, li, j in self._segments(s0, s1):
            r = self.layers[li]
            if not r.zeroed_flags[j]:
                lo = (s - s0) * SECTOR
                out[lo : lo + (e - s) * SECTOR] = r.read_entry_data(j, s, e - s)
        if base == offset and len(out) == length:
            return bytes(out)
        return bytes(out[offset - base : offset - base + length])

    def mapped_extents(self) -> Iterator[MappedExtent]:
        """Merged view in LBA order: contiguous runs of the same layer are joined."""
        cur: list[int] | None = None  # offset, end, layer, zeroed, source_offset (sectors), tag
        for s, e, li, j in self._segments(0, 1 << 50):
            r = self.layers[li]
            z = r.zeroed_flags[j]
            tag = r.tags[j]
            src = 0 if z else r.moffsets[j] + (s - r.offsets[j])
            if (
                cur is not None
                and cur[1] == s
                and cur[2] == li
                and cur[3] == z
                and cur[5] == tag
                and (z or cur[4] + (cur[1] - cur[0]) == src)
            ):
                cur[1] = e
                continue
            if cur is not None:
                yield _extent(cur)
            cur = [s, e, li, z, src, tag]
        if cur is not None:
            yield _extent(cur)


def _check_chain(layers: Sequence[LSMTReader]) -> None:
    """Every non-zero ``parent_uuid`` must be the ``uuid`` of the layer right below it, so the
    bottom layer must have none: this catches layers given in the wrong order and an upper
    layer without its lower. A zero parent is accepted at any height: upstream's converted
    layer 0 has one even when it sits on the base layer (image.md §3), layers made without
    uuids have one, and overlaybd itself never checks the chain (lsmt.md §4)."""
    for i, layer in enumerate(layers):
        parent = layer.parent_uuid
        below = layers[i - 1] if i else None
        if parent == ZERO_UUID or (below is not None and parent == below.uuid):
            continue
        owner = next((j for j, other in enumerate(layers) if j != i and other.uuid == parent), None)
        if owner is not None:
            where = "above it" if owner > i else f"not directly below it ({below.name} is)"  # type: ignore[union-attr]
            raise StackError(f"{layer.name}: parent_uuid {parent} is the uuid of {layers[owner].name}, which "
                             f"is {where}: give the layers bottom first")
        if below is None:
            raise StackError(f"{layer.name}: parent_uuid {parent}, but it is the bottom layer: "
                             f"its lower layer is missing")
        raise StackError(f"{layer.name}: parent_uuid {parent} does not match uuid {below.uuid} of the "
                         f"layer below ({below.name})")


def _extent(c: list[int]) -> MappedExtent:
    return MappedExtent(c[0] * SECTOR, (c[1] - c[0]) * SECTOR, c[2], bool(c[3]), c[4] * SECTOR, c[5])
