"""The upstream hello-world layer: decode with every checksum, re-encode byte for byte."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path

from overlaybd_provider.formats.blob import open_layer, wrap_zfile, write_layer_blob
from overlaybd_provider.formats.lsmt import LayerStack, write_lsmt
from overlaybd_provider.formats.source import FileRange
from overlaybd_provider.formats.tarwrap import tar_prefix, tar_suffix
from overlaybd_provider.formats.zfile import ZFileReader, ZFileWriter

from .conftest import HELLO_DIGEST, HELLO_FILE_SHA256, HELLO_LSMT_SHA256, HELLO_ZFILE_SHA256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lsmt_bytes(reader) -> bytes:
    return reader.read(0, reader.size)


def test_blob_digest_and_nesting(hello_blob: Path) -> None:
    assert sha(hello_blob.read_bytes()) == HELLO_DIGEST
    with open_layer(hello_blob) as layer:
        assert layer.nesting == ["tar", "zfile", "lsmt"]
        assert (layer.tar.offset, layer.tar.size) == (1536, 639491)
        z = layer.zfile
        assert z.header.flags == 0x1B and z.header.digest == 0x0F1F3445
        assert z.load_trailer().flags == 0x16 and z.trailer.digest == 0xFFDFE161
        assert (z.info.index_offset, z.index_size, z.size) == (569127, 17463, 71528448)
        assert z.info.index_crc == 0x6DBA55B0
        assert [z.stored_length(i) for i in range(8)] == [129, 142, 861, 851, 851, 851, 851, 851]
        r = layer.lsmt
        assert r.uuid == "01BB4FCE-3EB1-B56B-05AD-F99504DAFD31"
        assert r.parent_uuid == "00000000-0000-0000-0000-000000000000"
        assert r.virtual_size == 64 << 30
        assert (r.trailer.index_offset, r.trailer.index_size) == (71512064, 768)


def test_every_checksum_and_expected_index(hello_blob: Path, hello_index: list[list[int]]) -> None:
    with open_layer(hello_blob) as layer:
        data = lsmt_bytes(layer.zfile)  # decodes all 17 463 blocks, verifying each CRC
        assert sha(data) == HELLO_LSMT_SHA256
        assert [list(e) for e in layer.lsmt.entries()] == hello_index
        assert layer.lsmt.entry(0).to_bytes().hex() == "00000000000000840800000000000000"
        assert sha(data[:4096]) == "58643c22f1052549302d664e56d2f5643a17c9aaa0162137fadaa3135f0806fa"
        assert sha(data[-4096:]) == "4179c5e2a042ea2ffa9824a0cc4c5dce4417c933257f44cfca557533ccc99f07"


def test_stack_read_matches_spec_vectors(hello_blob: Path) -> None:
    with open_layer(hello_blob) as layer:
        stack = LayerStack([layer.lsmt])
        assert sha(stack.read(0, 4096)) == "a035d2b0b02a844325dbc4864e74db08ea14d080e85e4291c5f30f09568d0e5c"
        assert sha(stack.read(1024, 1024)) == "704dcf02dd9ec3eed4f29436fd623b57ed2105d231338e203603c1fde33b67f9"
        assert stack.read(12288 * 512 - 4096, 4096) == bytes(4096)  # hole before entry 1
        h = hashlib.sha256()
        total = 0
        for ext in stack.mapped_extents():
            assert not ext.zeroed
            h.update(stack.read(ext.offset, ext.length))
            total += ext.length
        assert total == 71507968
        assert h.hexdigest() == "638252d7723b6261f654bf3d28bfacbd24cded56ef7d273d67c2bed2c7c96d2e"


def test_reencoded_lsmt_is_byte_identical(hello_blob: Path) -> None:
    with open_layer(hello_blob) as layer:
        r = layer.lsmt
        out = io.BytesIO()
        info = write_lsmt(
            out, ((e.offset, e.length, e.zeroed) for e in r.entries()), LayerStack([r]).read,
            virtual_size=r.virtual_size, uuid="01bb4fce-3eb1-b56b-05ad-f99504dafd31",
        )
    assert (info.index_size, info.valid_entries) == (768, 515)
    assert sha(out.getvalue()) == HELLO_LSMT_SHA256


def test_our_zfile_round_trips_and_block_diff(hello_blob: Path, tmp_path: Path) -> None:
    """Our LZ4 (python-lz4, LZ4 1.9.4) vs upstream's vendored 1.8.3: valid, nearly identical."""
    with open_layer(hello_blob) as layer:
        raw = lsmt_bytes(layer.zfile)
        upstream = layer.zfile
        path = tmp_path / "ours.zfile"
        with open(path, "w+b") as f:
            w = ZFileWriter(f)
            for pos in range(0, len(raw), 1 << 20):
                w.write(raw[pos : pos + (1 << 20)])
            info = w.close()
        with open(path, "rb") as f:
            ours = ZFileReader(f)
            assert ours.header.flags == 0x1B and ours.load_trailer().flags == 0x16
            assert ours.read(0, ours.size) == raw
    mine = path.read_bytes()
    theirs = hello_blob.read_bytes()[1536 : 1536 + 639491]

    def block(buf: bytes, zr: ZFileReader, i: int) -> bytes:
        return buf[zr.block_offset(i) : zr.block_offset(i + 1)]

    differing = [i for i in range(ours.index_size) if block(mine, ours, i) != block(theirs, upstream, i)]
    assert info.index_size == 17463 and info.original_file_size == len(raw)
    # python-lz4 4.4.5 bundles LZ4 1.9.4; overlaybd vendors 1.8.3. Same as the spec measured:
    # 26 of 17 463 blocks compress differently, 496 bytes shorter in total.
    assert len(differing) == 26, differing
    assert 639491 - info.size == 496


def test_wrapper_identical_for_identical_payload(hello_blob: Path) -> None:
    blob = hello_blob.read_bytes()
    payload = blob[1536 : 1536 + 639491]
    assert sha(payload) == HELLO_ZFILE_SHA256
    assert sha(tar_prefix(len(payload)) + payload + tar_suffix(len(payload))) == HELLO_DIGEST
    out = io.BytesIO()
    with open(hello_blob, "rb") as f:
        digest, size = wrap_zfile(out, FileRange(f, offset=1536, size=639491))
    assert (digest, size) == ("sha256:" + HELLO_DIGEST, len(blob)) and out.getvalue() == blob


def test_layer_blob_writer_digest(hello_blob: Path, tmp_path: Path) -> None:
    with open_layer(hello_blob) as layer:
        raw = lsmt_bytes(layer.zfile)
    path = tmp_path / "layer.blob"
    with open(path, "w+b") as f:
        info = write_layer_blob(f, [raw[: 1 << 20], raw[1 << 20 :]], threads=1)
    data = path.read_bytes()
    assert info.digest == "sha256:" + sha(data) and info.size == len(data)
    assert data[:1536] == tar_prefix(info.zfile.size)
    with open_layer(path) as again:
        assert again.nesting == ["tar", "zfile", "lsmt"]
        assert sha(lsmt_bytes(again.zfile)) == HELLO_LSMT_SHA256


def test_export_then_debugfs_hello(hello_blob: Path, tmp_path: Path, cli) -> None:
    from support.paths import require_tool

    out = tmp_path / "hello.raw"
    proc = cli("export", out, hello_blob)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == 64 << 30
    assert out.stat().st_blocks * 512 < 80 << 20  # sparse: only mapped data written
    debugfs = require_tool("debugfs")
    hello = subprocess.run([debugfs, "-R", "cat /hello", str(out)], capture_output=True, check=True).stdout
    assert sha(hello) == HELLO_FILE_SHA256
    assert list(tmp_path.iterdir()) == [out]


def test_file_range_reads_exact(hello_blob: Path) -> None:
    with open(hello_blob, "rb") as f:
        src = FileRange(f, offset=1536, size=639491)
        assert src.read(0, 5) == b"ZFile"
