"""LSMT layers: the public entry points (records in ``lsmt_index``, reading in
``lsmt_reader``, writing in ``lsmt_writer``, stacking in ``stack``)."""

from __future__ import annotations

from overlaybd_provider.formats.lsmt_index import (
    SECTOR,
    ZERO_UUID,
    IndexEntry,
    LSMTHeader,
    normalize_uuid,
)
from overlaybd_provider.formats.lsmt_reader import LSMTReader
from overlaybd_provider.formats.lsmt_writer import LSMTInfo, LSMTWriter, write_lsmt
from overlaybd_provider.formats.stack import MAX_LAYERS, LayerStack, MappedExtent

__all__ = [
    "MAX_LAYERS",
    "SECTOR",
    "ZERO_UUID",
    "IndexEntry",
    "LSMTHeader",
    "LSMTInfo",
    "LSMTReader",
    "LSMTWriter",
    "LayerStack",
    "MappedExtent",
    "normalize_uuid",
    "write_lsmt",
]
