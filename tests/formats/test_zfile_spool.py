"""The compressed spool's shared ring after an error: closing it must never hide that error."""

from __future__ import annotations

import pytest
from overlaybd_provider.formats.zfile_codec import BatchCompressor
from overlaybd_provider.formats.zfile_header import ALGORITHMS
from overlaybd_provider.formats.zfile_spool import CompressedSpool

BS = 4096


class _Boom(Exception):
    pass


def _fill_then_fail(view: memoryview) -> None:
    part = view[:BS]  # a derived view, alive in this frame (and so in the traceback) after the raise
    part[:] = b"x" * BS
    raise _Boom("the input ended")


def test_close_after_fill_error_keeps_the_error(tmp_path) -> None:
    spool = CompressedSpool(BatchCompressor(ALGORITHMS["lz4"], BS), spool_dir=str(tmp_path), worker=True)
    with pytest.raises(_Boom, match="the input ended"):
        try:
            spool.append_from(8 * BS, _fill_then_fail)
        finally:
            spool.close()  # used to raise BufferError: cannot close exported pointers exist
    spool.close()  # idempotent


def test_close_while_a_view_is_still_held(tmp_path) -> None:
    spool = CompressedSpool(BatchCompressor(ALGORITHMS["lz4"], BS), spool_dir=str(tmp_path), worker=True)
    kept: list[memoryview] = []
    with pytest.raises(_Boom):
        spool.append_from(2 * BS, lambda view: (kept.append(view[:10]), _fill_then_fail(view)))
    spool.close()
    assert kept[0].tobytes() == b"x" * 10  # the mapping outlives close while a view needs it
    kept.clear()
