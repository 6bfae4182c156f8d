"""Upstream vectors from ../shared/fixtures (skipped when absent)."""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from overlaybd_provider.formats.blob import open_layer
from overlaybd_provider.formats.errors import BlockTooLargeError
from overlaybd_provider.formats.lsmt import LayerStack
from overlaybd_provider.formats.zfile import ZFileWriter

from .conftest import BASE_LSMT_SHA256, HELLO_FILE_SHA256, assert_user_error


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hello_matches_docker_layer(fixtures_dir: Path, hello_blob: Path, tmp_path: Path, cli) -> None:
    from support.paths import require_tool

    gz = fixtures_dir / "hello-world-oci/blobs/sha256/719385e32844401d57ecfd3eacab360bf551a1491c05b85806ed8f1b08d792f6"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(gz.read_bytes()))) as tar:
        expected = tar.extractfile("hello").read()
    assert _sha(expected) == HELLO_FILE_SHA256
    out = tmp_path / "hw.raw"
    assert cli("export", out, hello_blob).returncode == 0
    got = subprocess.run([require_tool("debugfs"), "-R", "cat /hello", str(out)], capture_output=True, check=True)
    assert got.stdout == expected


def test_upstream_two_layer_stack_is_e2fsck_clean(fixtures_dir: Path, tmp_path: Path, cli) -> None:
    from support.paths import require_tool

    d = fixtures_dir / "upstream-2layer"
    out = tmp_path / "two.raw"
    proc = cli("export", out, d / "layer-1.blob", d / "layer-2.blob")
    assert proc.returncode == 0, proc.stderr
    fsck = subprocess.run([require_tool("e2fsck"), "-fn", str(out)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    motd = subprocess.run([require_tool("debugfs"), "-R", "ls -l /data", str(out)], capture_output=True, text=True)
    assert "delete-me" not in motd.stdout


def test_upstream_uuid_chain(fixtures_dir: Path) -> None:
    d = fixtures_dir / "upstream-2layer"
    with open_layer(d / "layer-1.blob") as l1, open_layer(d / "layer-2.blob") as l2:
        assert l1.lsmt.uuid == "7AF54F0E-0391-D18C-D3F9-D7B2018BA113"
        assert l2.lsmt.parent_uuid == l1.lsmt.uuid
        stack = LayerStack([l1.lsmt, l2.lsmt])
        assert stack.virtual_size == 64 << 30
        layers_used = {e.layer for e in stack.mapped_extents()}
        assert layers_used == {0, 1}


def test_broken_chain_through_cli(fixtures_dir: Path, hello_blob: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "x.raw"
    proc = cli("export", out, hello_blob, fixtures_dir / "upstream-2layer/layer-2.blob")
    assert_user_error(proc, "layer-2.blob", "parent_uuid 7AF54F0E", "01BB4FCE")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_legacy_base_layer(base_layer: Path, tmp_path: Path, cli) -> None:
    from support.paths import require_tool

    with open_layer(base_layer) as layer:
        assert layer.nesting == ["zfile", "lsmt"]
        z = layer.zfile
        assert not z.header.has_digest and z.header.flags & 0x8 == 0
        assert (z.info.index_offset, z.index_size, z.size) == (4207947, 132309, 541937664)
        h = hashlib.sha256()
        for pos in range(0, z.size, 16 << 20):
            h.update(z.read(pos, 16 << 20))
        assert h.hexdigest() == BASE_LSMT_SHA256
        r = layer.lsmt
        assert r.uuid == "C02FB491-B4D4-4904-8684-A014D032AF78"
        assert (r.entry_count, r.zeroed_count) == (8323, 8209)
        assert [tuple(r.entry(i))[:4] for i in range(3)] == [(0, 8272, 8, 0), (8272, 120, 8280, 1), (8392, 8, 8280, 0)]
    out = tmp_path / "base.raw"
    assert cli("export", out, base_layer).returncode == 0
    fsck = subprocess.run([require_tool("e2fsck"), "-fn", str(out)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_plain_ustar_wrapper_payload_at_512(base_layer: Path, tmp_path: Path) -> None:
    """The base-layer blob form (image.md §7): ustar without PAX, payload at 512."""
    blob = tmp_path / "base.tar"
    with tarfile.open(blob, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tar.gettarinfo(base_layer, arcname="overlaybd.commit")
        info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o444, 0, 0, "", "", 0
        with open(base_layer, "rb") as f:
            tar.addfile(info, f)
    with open_layer(blob) as layer:
        assert layer.nesting == ["tar", "zfile", "lsmt"]
        assert (layer.tar.offset, layer.tar.size, layer.tar.pax) == (512, base_layer.stat().st_size, False)
        assert layer.lsmt.uuid == "C02FB491-B4D4-4904-8684-A014D032AF78"


def test_zstd_64k_negative_vector(fixtures_dir: Path, tmp_path: Path, cli) -> None:
    """Upstream wrote it but cannot read it; we can read it and refuse to write such a blob."""
    blob = fixtures_dir / "upstream-2layer/layer-1.zstd-64k.blob"
    with open_layer(blob) as layer, open_layer(fixtures_dir / "upstream-2layer/layer-1.blob") as ref:
        z = layer.zfile
        assert (z.algorithm, z.block_size) == ("zstd", 65536)
        assert max(z.stored_length(i) for i in range(z.index_size)) > 65536
        assert z.read(0, z.size) == ref.zfile.read(0, ref.zfile.size)
        raw = z.read(0, z.size)
    for algorithm in ("zstd", "lz4"):
        with pytest.raises(BlockTooLargeError, match="--bs 32"):
            w = ZFileWriter(io.BytesIO(), algorithm=algorithm, block_size=65536)
            w.write(raw)
            w.close()
    out = tmp_path / "z64.blob"
    proc = cli("zfile", "--algorithm", "zstd", "--bs", "64", blob, out)
    assert_user_error(proc, "65536", "--bs 32")
    assert list(tmp_path.iterdir()) == []
    assert cli("zfile", "--algorithm", "zstd", "--bs", "32", blob, out).returncode == 0
    with open_layer(out) as again:
        assert again.zfile.block_size == 32768
        assert max(again.zfile.stored_length(i) for i in range(again.zfile.index_size)) <= 65536


def test_export_refuses_a_wrong_order_or_a_missing_lower(fixtures_dir: Path, tmp_path: Path, cli) -> None:
    d = fixtures_dir / "upstream-2layer"
    l1, l2 = d / "layer-1.blob", d / "layer-2.blob"
    out = tmp_path / "x.raw"
    line = assert_user_error(cli("export", out, l2, l1), "layer-2.blob", "layer-1.blob")
    assert line == (f"overlaybd: error: {l2}: parent_uuid 7AF54F0E-0391-D18C-D3F9-D7B2018BA113 is the uuid of "
                    f"{l1}, which is above it: give the layers bottom first (--force stacks them anyway)")
    line = assert_user_error(cli("export", out, l2), "layer-2.blob")
    assert line == (f"overlaybd: error: {l2}: parent_uuid 7AF54F0E-0391-D18C-D3F9-D7B2018BA113, but it is the "
                    f"bottom layer: its lower layer is missing (--force stacks them anyway)")
    assert list(tmp_path.iterdir()) == []
    assert cli("export", "--force", out, l2).returncode == 0  # e.g. to look at one upper layer alone
    assert out.stat().st_size == 64 << 30


@pytest.mark.parametrize("stack", [
    ["upstream-2layer/layer-1.blob", "upstream-2layer/layer-2.blob"],
    ["upstream-features/layer-1.blob", "upstream-features/layer-2.blob"],
    ["baselayer", "upstream-2layer/layer-1.blob", "upstream-2layer/layer-2.blob"],  # layer 0: zero parent
])
def test_upstream_stacks_pass_the_chain_check(fixtures_dir: Path, base_layer: Path, stack) -> None:
    files = [base_layer if s == "baselayer" else fixtures_dir / s for s in stack]
    layers = [open_layer(f) for f in files]
    try:
        assert len(LayerStack([lf.lsmt for lf in layers]).layers) == len(files)
    finally:
        for lf in layers:
            lf.close()
