"""The per-entry fast paths of the tar apply (issue #16) write exactly the bytes of the general path.

``TarReader.take_buffered`` hands a small file's data straight from the tar buffer to
``ChangesetApplier._small_file`` and ``CompressedSpool.append_padded``; with it disabled every
file goes through ``extractfile`` → ``Filesystem.write_data`` → ``_set_meta``. Both must give the
same layer blob, for plain, pax and GNU archives, with the compressor inline and in its process.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from pathlib import Path

import pytest
from overlaybd_provider.ext4 import apply
from overlaybd_provider.ext4.apply import apply_layer
from overlaybd_provider.ext4.tarstream import TarReader


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
