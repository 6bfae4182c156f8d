"""The compressed spool's shared ring after an error: closing it must never hide that error."""

from __future__ import annotations

import pytest
from overlaybd_provider.formats import zfile_spool
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


def test_worker_disk_full_keeps_the_errno(small_fs, monkeypatch) -> None:
    """The compressor process writes the spool: its ENOSPC reaches the parent as ENOSPC, so the
    CLI reports a full disk instead of a traceback."""
    import errno
    import random

    monkeypatch.setattr(zfile_spool, "ASSIST_BACKLOG", 1000)  # the worker compresses every job
    full = small_fs("1m")
    spool = CompressedSpool(BatchCompressor(ALGORITHMS["lz4"], BS), spool_dir=str(full), worker=True)
    try:
        with pytest.raises(OSError) as info:
            spool.append(random.Random(5).randbytes(4 << 20))  # incompressible: 4 MiB stored
            spool.sync()
        assert info.value.errno == errno.ENOSPC and "block compressor failed" in str(info.value)
    finally:
        spool.close()
    assert list(full.iterdir()) == []
