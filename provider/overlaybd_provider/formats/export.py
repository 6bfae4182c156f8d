"""Materialise a layer stack as a sparse raw image (what ``overlaybd export`` writes).

Only mapped data is written; unmapped and zeroed ranges stay holes, and so do all-zero
chunks of stored data (upstream stores written zeros as data). Memory is bounded by one
copy chunk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import BinaryIO

from overlaybd_provider.formats.stack import LayerStack

log = logging.getLogger(__name__)

_CHUNK = 4 << 20
_ZEROS = bytes(_CHUNK)


@dataclasses.dataclass(frozen=True)
class ExportStats:
    virtual_size: int
    extents: int
    mapped_bytes: int
    written_bytes: int


def export_raw(stack: LayerStack, out: BinaryIO) -> ExportStats:
    """Write the merged device to ``out`` (a regular file, truncated to the virtual size)."""
    fd = out.fileno()
    size = stack.virtual_size
    out.truncate(size)
    extents = mapped = written = 0
    for ext in stack.mapped_extents():
        extents += 1
        if ext.zeroed:
            continue
        mapped += ext.length
        source = stack.layers[ext.layer].source_for(ext.tag)
        for k in range(0, ext.length, _CHUNK):
            n = min(_CHUNK, ext.length - k)
            data = source.read(ext.source_offset + k, n)
            if data == (_ZEROS if n == _CHUNK else bytes(n)):
                continue
            os.pwrite(fd, data, ext.offset + k)
            written += n
    log.debug("exported %d extents, %d mapped bytes, %d written", extents, mapped, written)
    return ExportStats(size, extents, mapped, written)
