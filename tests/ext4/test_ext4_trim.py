"""Discarded blocks (a flattened layer's freed blocks) are left out of the sealed pieces, and the
free runs come from the block bitmap."""

from __future__ import annotations

import pytest
from overlaybd_provider.ext4.blockdev import OverlayBlockDevice
from overlaybd_provider.ext4.layout import BLOCK_SIZE
from overlaybd_provider.ext4.trim import _zero_runs


def test_zero_runs_of_a_bitmap() -> None:
    assert _zero_runs(0b1111, 4) == []
    assert _zero_runs(0, 5) == [(0, 5)]
    assert _zero_runs(0b1001_0110, 8) == [(0, 1), (3, 1), (5, 2)]
    assert _zero_runs(0b1, 1 << 12) == [(1, (1 << 12) - 1)]


def test_discard_splits_pieces_and_keeps_slots() -> None:
    dev = OverlayBlockDevice(None, block_count=100)
    try:
        dev.write_blocks(0, b"r" * (10 * BLOCK_SIZE))
        dev.write_block(20, b"s" * BLOCK_SIZE)
        before = list(dev.pieces())
        dev.discard([(2, 3), (8, 5)])
        after = list(dev.pieces())
        assert [(b, n) for b, n, _c, _s in after] == [(0, 2), (5, 3), (20, 1)]
        run_slot = before[0][3]
        assert after[0][3] == run_slot and after[1][3] == run_slot + 5  # same bytes, fewer blocks
        assert after[2] == before[-1]
    finally:
        dev.close()


def test_discard_refuses_a_device_with_lowers() -> None:
    class Lower:
        virtual_size = 1 << 20

        def read(self, offset: int, length: int) -> bytes:
            return bytes(length)

    dev = OverlayBlockDevice(Lower(), block_count=256)  # type: ignore[arg-type]
    try:
        with pytest.raises(ValueError, match="without a lower"):
            dev.discard([(0, 1)])
    finally:
        dev.close()
