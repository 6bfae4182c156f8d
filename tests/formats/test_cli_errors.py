"""Corrupt and invalid input through the CLI: exit 2, one line naming file and offset,
no traceback, no output left behind."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from overlaybd_provider.formats.crc import crc32c_raw
from overlaybd_provider.formats.lsmt import LSMTWriter
from overlaybd_provider.formats.zfile import ZFileWriter
from overlaybd_provider.formats.zfile_header import ZFileHeader

from .conftest import assert_user_error

PAYLOAD = 1536  # ZFile offset inside the hello-world blob
INDEX_OFFSET = 569127  # jump table offset inside that ZFile


def patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    blob = bytearray(src.read_bytes())
    blob[at : at + len(data)] = data
    dst.write_bytes(blob)
    return dst


def check_both(cli, path: Path, tmp_path: Path, *needles: str) -> None:
    """``inspect`` and ``export`` both fail cleanly, and export leaves no file."""
    assert_user_error(cli("inspect", path), str(path), *needles)
    out = tmp_path / "out.raw"
    assert_user_error(cli("export", out, path), str(path), *needles)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.raw")]


def test_truncated_blob(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = tmp_path / "cut.blob"
    bad.write_bytes(hello_blob.read_bytes()[:300_000])
    check_both(cli, bad, tmp_path, "truncated", "offset 1536")


def test_truncated_bare_zfile(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = tmp_path / "cut.zfile"
    bad.write_bytes(hello_blob.read_bytes()[PAYLOAD : PAYLOAD + 600_000])
    check_both(cli, bad, tmp_path, "truncated", "jump table")


def test_wrong_magic(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = patched(hello_blob, tmp_path / "magic.blob", PAYLOAD, b"X")
    check_both(cli, bad, tmp_path, "not an overlaybd layer")


def test_header_digest_mismatch(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = patched(hello_blob, tmp_path / "digest.blob", PAYLOAD + 300, b"\x01")
    check_both(cli, bad, tmp_path, "header digest mismatch", f"offset {PAYLOAD}")


def test_jump_table_crc_mismatch(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = patched(hello_blob, tmp_path / "index.blob", PAYLOAD + INDEX_OFFSET + 40, b"\x07")
    check_both(cli, bad, tmp_path, "jump table CRC mismatch", f"offset {PAYLOAD + INDEX_OFFSET}")


def test_block_crc_mismatch(hello_blob: Path, tmp_path: Path, cli) -> None:
    bad = patched(hello_blob, tmp_path / "block.blob", PAYLOAD + 512 + 20, b"\xee")
    check_both(cli, bad, tmp_path, "block 0", "CRC mismatch", f"offset {PAYLOAD + 512}")


def _rebuild_zfile(raw: bytes, lengths: list[int], body: bytes) -> bytes:
    """A ZFile with the given jump table and blocks, headers/CRCs recomputed (valid container)."""
    table = struct.pack(f"<{len(lengths)}I", *lengths)
    fields = dict(index_offset=512 + len(body), index_size=len(lengths), original_file_size=len(raw),
                  index_crc=crc32c_raw(table))
    return (ZFileHeader(flags=0x1B, **fields).to_bytes() + body + table
            + ZFileHeader(flags=0x16, **fields).to_bytes())


def _blocks(raw: bytes) -> tuple[list[bytes], list[int]]:
    out = io.BytesIO()
    zw = ZFileWriter(out, threads=1)
    zw.write(raw)
    info = zw.close()
    blob = out.getvalue()
    lengths = list(struct.unpack_from(f"<{info.index_size}I", blob, info.index_offset))
    blocks, pos = [], 512
    for n in lengths:
        blocks.append(blob[pos : pos + n])
        pos += n
    return blocks, lengths


@pytest.fixture
def small_lsmt() -> bytes:
    raw = io.BytesIO()
    w = LSMTWriter(raw, virtual_size=1 << 20, uuid="")
    w.add_data(0, b"abc" * 4096)
    w.close()
    return raw.getvalue()


def test_bad_block_length(small_lsmt: bytes, tmp_path: Path, cli) -> None:
    blocks, lengths = _blocks(small_lsmt)
    lengths[1] += lengths[0] - 3
    lengths[0] = 3
    bad = tmp_path / "len.zfile"
    bad.write_bytes(_rebuild_zfile(small_lsmt, lengths, b"".join(blocks)))
    check_both(cli, bad, tmp_path, "block 0", "bad stored length 3", "offset 512")


def test_decompression_failure(small_lsmt: bytes, tmp_path: Path, cli) -> None:
    blocks, lengths = _blocks(small_lsmt)
    body = bytearray(blocks[0][:-4])
    body[0] = 0xF0  # a literal run longer than the block
    blocks[0] = bytes(body) + crc32c_raw(bytes(body), 100007).to_bytes(4, "little")
    bad = tmp_path / "lz4.zfile"
    bad.write_bytes(_rebuild_zfile(small_lsmt, lengths, b"".join(blocks)))
    check_both(cli, bad, tmp_path, "block 0", "decompress")


def _bare_lsmt(cli, hello_blob: Path, tmp_path: Path) -> tuple[bytearray, int]:
    lsmt = tmp_path / "hello.lsmt"
    assert cli("zfile", "--decompress", hello_blob, lsmt).returncode == 0
    data = bytearray(lsmt.read_bytes())
    lsmt.unlink()
    return data, 71512064


def test_index_entry_out_of_range(hello_blob: Path, tmp_path: Path, cli) -> None:
    data, index = _bare_lsmt(cli, hello_blob, tmp_path)
    data[index + 5 * 16 + 8 : index + 5 * 16 + 16] = struct.pack("<Q", 10**9)
    bad = tmp_path / "range.lsmt"
    bad.write_bytes(data)
    check_both(cli, bad, tmp_path, "entry 5", "moffset out of the data area", f"byte {index + 80}")


def test_index_entries_overlapping(hello_blob: Path, tmp_path: Path, cli) -> None:
    data, index = _bare_lsmt(cli, hello_blob, tmp_path)
    data[index + 16 : index + 24] = struct.pack("<Q", 100 | (256 << 50))
    bad = tmp_path / "overlap.lsmt"
    bad.write_bytes(data)
    check_both(cli, bad, tmp_path, "entry 1", "overlaps")


def test_broken_uuid_chain(tmp_path: Path, cli) -> None:
    paths = []
    for name, uuid, parent in (("a", "aaaaaaaa-0000-0000-0000-000000000001", ""),
                               ("b", "bbbbbbbb-0000-0000-0000-000000000002", "cccccccc-0000-0000-0000-000000000003")):
        p = tmp_path / f"{name}.lsmt"
        with open(p, "wb") as f:
            w = LSMTWriter(f, virtual_size=1 << 20, uuid=uuid, parent_uuid=parent)
            w.add_data(0, b"x" * 4096)
            w.close()
        paths.append(p)
    out = tmp_path / "out.raw"
    assert_user_error(cli("export", out, *paths), "b.lsmt", "parent_uuid CCCCCCCC", "AAAAAAAA")
    assert not out.exists()
    assert cli("export", "--ignore-uuid-chain", out, *paths).returncode == 0
    assert out.read_bytes()[:4096] == b"x" * 4096


def test_missing_and_not_a_layer(tmp_path: Path, cli) -> None:
    assert_user_error(cli("export", tmp_path / "o.raw", tmp_path / "missing.blob"), "missing.blob", "cannot open")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello" * 2000)
    assert_user_error(cli("zfile", junk, tmp_path / "o.blob"), "junk.bin", "not an overlaybd layer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.bin"]


def test_unwritable_output(hello_blob: Path, tmp_path: Path, cli) -> None:
    assert_user_error(cli("export", tmp_path, hello_blob), str(tmp_path), "is a directory")
    assert_user_error(cli("zfile", hello_blob, tmp_path / "no/such/dir.blob"), "cannot create output")


def test_inspect_json(hello_blob: Path, cli) -> None:
    import json

    proc = cli("inspect", "--json", hello_blob)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["nesting"] == ["tar", "zfile", "lsmt"]
    assert info["tar"]["payload_offset"] == 1536 and info["tar"]["payload_size"] == 639491
    assert info["zfile"]["header"]["flags"] == "0x1B" and info["zfile"]["trailer"]["flags"] == "0x16"
    assert info["zfile"]["index_size"] == 17463 and info["zfile"]["algorithm"] == "lz4"
    assert info["lsmt"]["entries"] == 515 and info["lsmt"]["mapped_bytes"] == 71507968
    assert info["lsmt"]["uuid"] == "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31"
    assert info["lsmt"]["virtual_size"] == 64 << 30
