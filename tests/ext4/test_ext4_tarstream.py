"""The fast tar reader must see exactly what ``tarfile`` sees, for every header flavour.

Plain headers are parsed by ``TarReader`` itself; pax, GNU long names, GNU sparse (old and pax
0.0/0.1/1.0), base-256 numbers and bad headers go through tarfile's code. Archives come from
GNU tar and from Python's tarfile; each is compared member by member (fields and data) and
for how the archive ends (clean end marker, truncation, corruption).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from overlaybd_provider.ext4.tarstream import (
    ForwardReader,
    LayerTarError,
    TarMember,
    _TarInfo,
    open_tar_stream,
)

FIELDS = ("name", "type", "linkname", "mode", "uid", "gid", "mtime", "size", "devmajor", "devminor",
          "pax_headers", "sparse")


def _members(iterable, extract) -> list[dict]:
    out = []
    for m in iterable:
        rec = {k: getattr(m, k) for k in FIELDS}
        rec["data"] = extract(m).read() if m.isreg() else None
        out.append(rec)
    return out


def _ours(data: bytes):
    try:
        r = open_tar_stream(ForwardReader(io.BytesIO(data)))
        return _members(r, r.extractfile), r._obd_end
    except (tarfile.TarError, LayerTarError) as exc:
        text = str(exc)
        if text.startswith("truncated tar: entry "):  # tarfile's "unexpected end of data", with the entry
            return "error", "unexpected end of data"
        return "error", text.removeprefix("not a tar archive: ")


def _reference(data: bytes):
    try:
        with tarfile.open(fileobj=ForwardReader(io.BytesIO(data)), mode="r:",  # type: ignore[arg-type]
                          errors="surrogateescape", tarinfo=_TarInfo) as tf:
            return _members(tf, tf.extractfile), getattr(tf, "_obd_end", None)
    except (tarfile.TarError, LayerTarError) as exc:  # _TarInfo checks checksums for both sides
        return "error", str(exc).removeprefix("not a tar archive: ")


def _same(data: bytes) -> None:
    ours, ref = _ours(data), _reference(data)
    assert ours == ref


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"hello\n")
    os.symlink("f", src / "a" / "s")
    os.link(src / "a" / "f", src / "a" / "h")
    deep = src / "a" / ("x" * 120)
    deep.mkdir()
    (deep / ("y" * 130)).write_bytes(b"long")
    with open(src / "a" / "sparse", "wb") as fh:
        fh.truncate(3 << 20)
        fh.seek(3 << 20)
        fh.write(b"tail")
    (src / "a" / "üni").write_bytes("ünï".encode())
    return src


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize("args", [
    ["--format=gnu"], ["--format=gnu", "--sparse"], ["--format=posix", "--sparse"],
    ["--format=posix", "--sparse", "--sparse-version=0.0"],
    ["--format=posix", "--sparse", "--sparse-version=0.1"], ["--format=ustar"], ["--format=v7"],
])
def test_gnu_tar_archives(tree: Path, tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "t.tar"
    names = ["a/f", "a/s", "a/h", "a/b", "a/sparse"] if args[0] in ("--format=ustar", "--format=v7") else ["."]
    subprocess.run(["tar", *args, "-cf", str(out), "-C", str(tree), *names], check=True)
    data = out.read_bytes()
    _same(data)
    r = open_tar_stream(ForwardReader(io.BytesIO(data)))
    kinds = {type(m) for m in r}
    if "--format=posix" not in args:  # GNU tar's posix format puts a pax header on every member
        assert TarMember in kinds  # the fast path really ran


def _python_archives() -> dict[str, bytes]:
    out = {}
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for i in range(40):
                long = fmt != tarfile.USTAR_FORMAT and i % 3 == 0
                ti = tarfile.TarInfo(f"d{i % 4}/{'n' * (150 if long else 5)}{i}")
                ti.size, ti.mtime, ti.mode = i * 37, 1_700_000_000 + i, 0o640 | (i & 7)
                if fmt != tarfile.USTAR_FORMAT and i % 5 == 0:
                    ti.uid = 1 << 30  # base-256 (GNU) or pax uid
                if fmt == tarfile.PAX_FORMAT and i % 2:
                    ti.pax_headers = {"mtime": "1700000000.5", "SCHILY.xattr.user.a": "v"}
                if i % 7 == 0:
                    ti.type, ti.size = tarfile.SYMTYPE, 0
                    ti.linkname = "t" * (120 if long else 3)
                if i % 11 == 0:
                    ti.type, ti.size, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 0, 4, 64
                tf.addfile(ti, io.BytesIO(b"z" * ti.size))
            d = tarfile.TarInfo("dir/")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        out[str(fmt)] = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "5.25"}) as tf:
        for i in range(3):
            ti = tarfile.TarInfo(f"g{i}")
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"abc"))
    out["global"] = buf.getvalue()
    return out


@pytest.mark.parametrize("name", ["0", "1", "2", "global"])
def test_python_archives_and_damaged_copies(name: str) -> None:
    data = _python_archives()[name]
    _same(data)
    for cut in (0, 100, 512, 1000, 1536, len(data) // 2, len(data) - 10240):
        _same(data[:cut])
    for pos in (5, 512 + 5, 148, 2048 + 130, len(data) // 3):
        bad = bytearray(data)
        bad[pos] ^= 0x11
        _same(bytes(bad))


def test_end_marker_and_count() -> None:
    data = _python_archives()["0"] + bytes(4096)
    fr = ForwardReader(io.BytesIO(data))
    r = open_tar_stream(fr)
    n = sum(1 for _ in r)
    while fr.read(1 << 20):
        pass
    assert n == 41 and r._obd_end is None and fr.count == len(data)


# -- header checksums (item: a wrong checksum used to be accepted or reported without a place) ----

def _with_checksum(h: bytes, *, signed: bool = False, field: bytes | None = None) -> bytes:
    """A header with its checksum recomputed (unsigned or signed-char sum) or ``field`` stored."""
    h = bytearray(h)
    h[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in h)
    h[148:156] = field if field is not None else b"%06o\0 " % total
    return bytes(h)


def _v7(h: bytes) -> bytes:
    """The old (pre-POSIX) form of a plain header: no magic, version, owner names or prefix."""
    h = bytearray(h)
    h[257:500] = bytes(243)
    return _with_checksum(bytes(h))


def _archive(fmt: str, names: tuple[str, ...] = ("a", "b", "c"), *, signed: bool = False) -> bytes:
    tar_fmt = tarfile.GNU_FORMAT if fmt == "gnu" else tarfile.USTAR_FORMAT
    out = b""
    for name in names:
        ti = tarfile.TarInfo(name)
        ti.size = 3
        h = ti.tobuf(tar_fmt, encoding="utf-8")
        h = _v7(h) if fmt == "v7" else h
        out += _with_checksum(h, signed=signed) + b"xyz".ljust(512, b"\0")
    return out + bytes(1024)


def _names(data: bytes) -> list[str]:
    return [m.name for m in open_tar_stream(ForwardReader(io.BytesIO(data)))]


@pytest.mark.parametrize("fmt", ["gnu", "ustar", "v7"])
@pytest.mark.parametrize("signed", [False, True])
def test_both_checksum_conventions_are_accepted(fmt: str, signed: bool) -> None:
    names = ("caf\u00e9", "\u00fcber/na\u00efve", "plain")  # bytes >= 128: signed and unsigned sums differ
    assert _names(_archive(fmt, names, signed=signed)) == list(names)


@pytest.mark.parametrize("fmt", ["gnu", "ustar", "v7"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_wrong_checksum_is_refused_naming_the_header_offset(fmt: str, which: int) -> None:
    data = bytearray(_archive(fmt))
    at = which * 1024
    stored = int(data[at + 148:at + 154], 8)
    data[at + 1] = ord("!")  # the name changes, the stored checksum does not
    computed = stored + ord("!")
    prefix = "not a tar archive: " if at == 0 else ""
    with pytest.raises(LayerTarError) as info:
        _names(bytes(data))
    assert str(info.value) == (f"{prefix}tar header at offset {at}: checksum mismatch "
                               f"(stored {stored:06o}, computed {computed:06o})")


def test_wrong_checksum_of_pax_and_long_name_headers() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("first")
        tf.addfile(ti)
        ti = tarfile.TarInfo("p" * 150)  # pax header + member header
        ti.pax_headers = {"comment": "c" * 70_000}  # larger than the fast pax path takes
        tf.addfile(ti)
    data = buf.getvalue()
    pax_at = 512
    member_at = pax_at + 512 + -(-int(data[pax_at + 124:pax_at + 135], 8) // 512) * 512
    assert data[pax_at + 156:pax_at + 157] == b"x" and data[member_at + 156:member_at + 157] == b"0"
    for at in (pax_at, member_at):
        bad = bytearray(data)
        bad[at + 120] ^= 1  # gid field
        with pytest.raises(LayerTarError, match=rf"^tar header at offset {at}: checksum mismatch"):
            _names(bytes(bad))


def test_malformed_checksum_field_is_refused() -> None:
    """Python's int() skips the control character; Go's archive/tar (and so containerd) does not."""
    good = _archive("gnu")
    value = int(good[148:154], 8)
    data = _with_checksum(good[:512], field=b"\x1d%05o\0 " % value) + good[512:]
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:  # tarfile itself takes it
        assert tf.getnames() == ["a", "b", "c"]
    with pytest.raises(LayerTarError, match=r"offset 0: checksum mismatch \(stored b'\\x1d"):
        _names(data)
    # padding the field with spaces or NULs, or junk after its NUL, is fine (Go reads the same)
    for field in (b" %06o " % value, b"\0%06o\0" % value, b"%07o\0" % value, b"%06o\0X" % value):
        assert _names(_with_checksum(good[:512], field=field) + good[512:]) == ["a", "b", "c"]


def test_end_of_archive_blocks() -> None:
    body = _archive("ustar")[:-1024]
    for end in (bytes(1024), bytes(512), bytes(1024) + b"trailing junk after the end"):
        r = open_tar_stream(ForwardReader(io.BytesIO(body + end)))
        assert [m.name for m in r] == ["a", "b", "c"] and r._obd_end is None
    # a header after a single zero block: Go refuses it, upstream applies it; never drop it silently
    with pytest.raises(LayerTarError, match=r"^tar header at offset 3584 follows a single zero block"):
        _names(body + bytes(512) + _archive("ustar", ("late",)))
    bad = bytearray(_archive("ustar", ("late",)))
    bad[1] = ord("?")
    with pytest.raises(LayerTarError, match=r"^tar header at offset 3584: checksum mismatch"):
        _names(body + bytes(512) + bytes(bad))
