"""User errors: one line naming the tar entry, exit status 2, no partial output left behind."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.ext4.apply import apply_layer

from .judge import d, f, make_tar


def _apply_fails(tmp_path: Path, data: bytes, match: str, **kw) -> None:
    tar = tmp_path / "bad.tar"
    tar.write_bytes(data)
    out = tmp_path / "out.blob"
    with pytest.raises(OverlaybdError, match=match) as info:
        apply_layer([], tar, out, **{"vsize_gb": 1, **kw})
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar"]  # no temp or spool files left


def test_hard_link_to_missing_target(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([{"name": "a/link", "type": tarfile.LNKTYPE, "linkname": "nope"}]),
                 r"a/link: hard link target 'nope' does not exist")


def test_hard_link_to_directory(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([d("dir"), {"name": "l", "type": tarfile.LNKTYPE, "linkname": "dir"}]),
                 r"l: hard link target 'dir' is a directory")


def test_name_component_too_long(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([f("ok/" + "n" * 256)]), r"name component of 256 bytes")


def test_parent_is_not_a_directory(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([f("file", b"x"), f("file/child", b"y")]),
                 r"file/child: parent /file exists and is not a directory")


def test_unsupported_entry_type(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([{"name": "vol", "type": b"V"}]), r"vol: unsupported tar entry type")


def test_truncated_member_data(tmp_path: Path) -> None:
    data = make_tar([f("small", b"s"), f("big", b"x" * 100_000)])
    _apply_fails(tmp_path, data[:60_000], r"truncated tar: entry 'big' declares 100000 bytes of data, the archive ends after 58\d\d\d$")


def test_missing_end_of_archive(tmp_path: Path) -> None:
    data = make_tar([f("a", b"x" * 512)])
    _apply_fails(tmp_path, data[:1024], r"truncated tar after entry 'a'")


def test_corrupt_header_checksum(tmp_path: Path) -> None:
    data = bytearray(make_tar([f("a", b"1"), f("b", b"2")]))
    pos = data.index(b"b\0", 512)  # second header's name field
    data[pos] = ord("c")
    _apply_fails(tmp_path, bytes(data), r"^tar header at offset 1024: checksum mismatch \(stored \d{6}, computed \d{6}\)$")


def test_corrupt_and_truncated_gzip(tmp_path: Path) -> None:
    gz = gzip.compress(make_tar([f("a", b"x" * 100_000)]))
    _apply_fails(tmp_path, gz[: len(gz) // 2], r"gzip stream is truncated|truncated tar")
    bad = bytearray(gz)
    bad[30:60] = bytes(30)
    _apply_fails(tmp_path, bytes(bad), r"corrupt gzip data|corrupt or truncated")


def test_corrupt_and_truncated_zstd(tmp_path: Path) -> None:
    zs = zstandard.ZstdCompressor().compress(make_tar([f("a", bytes(range(256)) * 400)]))
    _apply_fails(tmp_path, zs[: len(zs) // 2], r"zstd|truncated")
    bad = bytearray(zs)
    bad[20:40] = b"\xff" * 20
    _apply_fails(tmp_path, bytes(bad), r"zstd|corrupt|not a tar archive")


def test_out_of_blocks(tmp_path: Path) -> None:
    # header claims 2 GiB on a 1 GiB device: refused before any data is read
    ti = tarfile.TarInfo("huge")
    ti.size = 2 << 30
    head = ti.tobuf(tarfile.PAX_FORMAT)
    _apply_fails(tmp_path, head + bytes(1024), r"huge: out of blocks")


def test_out_of_inodes(tmp_path: Path) -> None:
    _apply_fails(tmp_path, make_tar([f(f"f{i}") for i in range(200)]), r"out of inodes",
                 mkfs_options="-N 128")


def test_cli_error_exit_and_no_output(tmp_path: Path, overlaybd_cmd: list[str]) -> None:
    tar = tmp_path / "bad.tar"
    tar.write_bytes(make_tar([{"name": "x", "type": tarfile.LNKTYPE, "linkname": "missing"}]))
    out = tmp_path / "out.blob"
    proc = subprocess.run([*overlaybd_cmd, "apply-layer", str(tar), str(out), "--vsize", "1"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("overlaybd: error: x: hard link target")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


def test_gzip_and_zstd_inputs_give_the_same_layer(tmp_path: Path) -> None:
    plain = make_tar([d("etc"), f("etc/a", b"a" * 5000)])
    digests = set()
    for name, data in (("p.tar", plain), ("g.tar.gz", gzip.compress(plain)),
                       ("z.tar.zst", zstandard.ZstdCompressor().compress(plain))):
        (tmp_path / name).write_bytes(data)
        res = apply_layer([], tmp_path / name, tmp_path / (name + ".blob"), vsize_gb=1)
        digests.add(res.digest)
        assert res.tar_bytes == len(plain)
    assert len(digests) == 1
    with open(tmp_path / "p.tar", "rb") as src:
        res = apply_layer([], io.BufferedReader(src), tmp_path / "stream.blob", vsize_gb=1)
    assert {res.digest} == digests


def _huge_entry(fmt: int, size: int) -> bytes:
    """One regular-file header declaring ``size`` bytes, followed by only 4 KiB of data."""
    ti = tarfile.TarInfo("big.bin")
    ti.size = size
    return ti.tobuf(fmt) + b"x" * 4096


@pytest.mark.parametrize("worker", ["1", "0"])  # compressor ring in a worker process, or inline
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])  # base-256 / pax size
def test_huge_entry_with_little_data_is_one_tar_error(tmp_path: Path, monkeypatch, worker: str, fmt: int) -> None:
    """10 GiB declared, 4 KiB present: the LayerTarError must win over any view of the spool ring
    still alive in its traceback (it used to become ``BufferError: cannot close exported
    pointers exist``)."""
    monkeypatch.setenv("OVERLAYBD_SPOOL_WORKER", worker)
    _apply_fails(tmp_path, _huge_entry(fmt, 10 << 30),
                 r"^truncated tar: entry 'big.bin' declares 10737418240 bytes of data, the archive ends after 4096$",
                 vsize_gb=64)


def test_truncated_plain_entry_names_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OVERLAYBD_SPOOL_WORKER", "1")
    _apply_fails(tmp_path, _huge_entry(tarfile.USTAR_FORMAT, 9 << 20),  # the fast (non-tarfile) path
                 r"^truncated tar: entry 'big.bin' declares 9437184 bytes of data, the archive ends after 4096$")


def test_cli_huge_entry_exit_2_one_line(tmp_path: Path, overlaybd_cmd: list[str]) -> None:
    tar = tmp_path / "bad.tar"
    tar.write_bytes(_huge_entry(tarfile.GNU_FORMAT, 10 << 30))
    out = tmp_path / "out.blob"
    proc = subprocess.run([*overlaybd_cmd, "apply-layer", str(tar), str(out)], capture_output=True, text=True,
                          check=False, env={**os.environ, "OVERLAYBD_SPOOL_WORKER": "1"})
    assert (proc.returncode, proc.stderr) == (2, "overlaybd: error: truncated tar: entry 'big.bin' declares "
                                                 "10737418240 bytes of data, the archive ends after 4096\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]
