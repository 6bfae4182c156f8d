"""The per-entry fast paths of the tar apply (issue #16) write exactly the bytes of the general path.

``TarReader.take_buffered`` hands a small file's data straight from the tar buffer to
``ChangesetApplier._small_file`` and ``CompressedSpool.append_padded``; with it disabled every
file goes through ``extractfile`` → ``Filesystem.write_data`` → ``_set_meta``. Both must give the
same layer blob, for plain, pax and GNU archives, with the compressor inline and in its process.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import random
import tarfile
from pathlib import Path

import pytest
from overlaybd_provider.ext4 import apply
from overlaybd_provider.ext4.apply import apply_layer
from overlaybd_provider.ext4.blockdev import OverlayBlockDevice
from overlaybd_provider.ext4.changeset import LayerEntryError, clean_path
from overlaybd_provider.ext4.tarstream import TarReader
from overlaybd_provider.formats.zfile_codec import BatchCompressor
from overlaybd_provider.formats.zfile_header import ALGORITHMS


def _tar(fmt: int, seed: int) -> bytes:
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.mtime = kw.pop("mtime", 1_700_000_000)  # type: ignore[assignment]
            for key, value in kw.items():
                setattr(ti, key, value)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)

        add("etc", type=tarfile.DIRTYPE, mode=0o755)
        for i in range(300):
            size = rng.choice([0, 1, 100, 511, 512, 4095, 4096, 4097, 9000, 70_000])
            add(f"etc/f{i:03d}", rng.randbytes(size) if i % 3 else b"x" * size,
                mode=rng.choice([0o644, 0o600, 0o4755, 0o777]), uid=rng.choice([0, 1000, 70_000, 2_000_000]),
                gid=rng.choice([0, 50, 65_536]), mtime=rng.choice([0, 1_600_000_000, 2**33 - 1]))
        add("big", rng.randbytes(3 << 20), mode=0o644)  # larger than the reader's buffer
        add("etc/f007", b"replaced later in the same layer", mode=0o640)  # last wins
        add("etc/link", type=tarfile.LNKTYPE, linkname="etc/f001", mode=0o644)
        add("etc/sym", type=tarfile.SYMTYPE, linkname="f002", mode=0o777)
    return buf.getvalue()


def _blob(tmp: Path, data: bytes, name: str) -> str:
    src = tmp / f"{name}.tar"
    src.write_bytes(data)
    out = tmp / f"{name}.blob"
    res = apply_layer([], src, out, vsize_gb=1)
    assert res.digest == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    return res.digest


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("worker", ["0", "1"])
def test_fast_paths_write_the_bytes_of_the_general_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fmt: int, worker: str) -> None:
    monkeypatch.setenv("OVERLAYBD_SPOOL_WORKER", worker)
    data = _tar(fmt, seed=fmt)
    fast = _blob(tmp_path, data, "fast")
    taken: list[int] = []

    # subclasses handed to apply_layer: a compiled TarReader is an extension type, whose methods
    # cannot be replaced on the class itself
    class Counting(TarReader):
        def take_buffered(self, member):  # type: ignore[no-untyped-def]
            view = super().take_buffered(member)
            if view is not None:
                taken.append(len(view))
            return view

    class General(TarReader):
        def take_buffered(self, member):  # type: ignore[no-untyped-def]
            return None

    monkeypatch.setattr(apply, "open_tar_stream", Counting)
    assert _blob(tmp_path, data, "counted") == fast
    assert len(taken) > 150  # the fast path was really used (most small files of plain headers)
    monkeypatch.setattr(apply, "open_tar_stream", General)
    assert _blob(tmp_path, data, "general") == fast


def _reference_clean(name: bytes) -> tuple[bytes, ...]:
    """What extractors do: resolve '.', '..' and empty parts lexically, clamped at the root."""
    return tuple(part for part in posixpath.normpath(b"/" + name.lstrip(b"/")).split(b"/") if part)


def test_clean_path_fast_check_agrees_with_the_lexical_cleaning() -> None:
    rng = random.Random(16)
    parts = [b"a", b"etc", b".", b"..", b"", b".hidden", b"x.y", b"..z", b"z..", b"n" * 200, b"\xff\xfe"]
    for _ in range(20_000):
        name = b"/".join(rng.choice(parts) for _ in range(rng.randint(1, 6)))
        assert clean_path(name, "t") == _reference_clean(name), name
    assert clean_path(b"usr/lib/x86_64-linux-gnu/libc.so.6", "t") == (b"usr", b"lib", b"x86_64-linux-gnu", b"libc.so.6")
    with pytest.raises(LayerEntryError, match="name component of 256 bytes"):
        clean_path(b"a/" + b"n" * 256, "t")


@pytest.mark.parametrize("compressed", [False, True])
def test_block_device_overlap_window_never_hides_a_written_block(tmp_path: Path, compressed: bool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Random writes of every kind, mostly ascending data ranges as a layer writes them with scattered
    metadata blocks between: each overlap answer equals a search of everything written, every block
    reads back its last write (a stale clear window would append over a written block; a held single
    must be rewritten or flushed before a read), and the pieces cover exactly what was written."""
    monkeypatch.setenv("OVERLAYBD_SPOOL_WORKER", "0")
    rng = random.Random(12 if compressed else 11)
    comp = BatchCompressor(ALGORITHMS["lz4"], 4096) if compressed else None
    dev = OverlayBlockDevice(None, block_count=4096, spool_dir=str(tmp_path), compressor=comp)
    truth: dict[int, bytes] = {}
    cursor = 0
    try:
        for step in range(3000):
            kind = rng.random()
            if kind < 0.15:  # a metadata block anywhere, often just ahead of the data
                n = rng.choice([rng.randrange(4096), min(4095, cursor + rng.randrange(8))])
                data = rng.randbytes(8) * 512
                dev.write_block(n, data)
                truth[n] = data
                continue
            if kind < 0.2:  # a burst of metadata in block order (as mkfs and a flush write it)
                first = rng.randrange(4096 - 40)
                for n in range(first, first + rng.randint(2, 40)):
                    data = bytearray(rng.randbytes(8) * 512)  # a buffer the caller then reuses
                    dev.write_block(n, data)
                    truth[n] = bytes(data)
                    data[:8] = b"reused!!"
                    if rng.random() < 0.2:  # rewrite one still held, or read one back
                        back = rng.randrange(first, n + 1)
                        if rng.random() < 0.5:
                            truth[back] = rng.randbytes(8) * 512
                            dev.write_block(back, truth[back])
                        else:
                            assert dev.read_block(back) == truth[back]
                continue
            count = rng.choice([1, 1, 2, 3, 17])
            n = cursor if kind < 0.85 else rng.randrange(4096 - count)  # ascending data, or anywhere
            if n + count > 4096:
                cursor, n = 0, 0
            for probe in (n, max(0, n - 2)):
                assert dev._overlaps_upper(probe, count) == any(b in truth for b in range(probe, probe + count)), step
            raw = rng.randbytes(count * 4096 - rng.randrange(4096))
            dev.write_padded(n, raw)
            padded = raw + bytes(count * 4096 - len(raw))
            for i in range(count):
                truth[n + i] = padded[i * 4096:(i + 1) * 4096]
            cursor = n + count
        for n in range(4096):
            assert dev.read_block(n) == truth.get(n, bytes(4096)), n
        assert dev.blocks_written == len(truth)
        # the seal's view: every written block once, in block order (runs of singles merged),
        # raw pieces reading back from their slots
        seen: list[int] = []
        for blk, cnt, zslots, slot in dev.pieces():
            seen.extend(range(blk, blk + cnt))
            if not zslots:
                assert dev.read_raw_slots(slot, cnt) == b"".join(truth[blk + k] for k in range(cnt)), blk
        assert seen == sorted(truth)
    finally:
        dev.close()
