"""``overlaybd apply-layer --turbo-oci``, ``inspect`` and ``export`` of TurboOCIv1 layers; bad input.

Every bad input is one ``overlaybd: error:`` line with exit status 2 and leaves no output file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from overlaybd_provider.formats.turbo import target_media_type, turbo_capability

from .conftest import assert_user_error


def test_apply_inspect_export(upstream_turbo: Path, cli, tmp_path: Path) -> None:
    u = upstream_turbo
    m1, m2 = tmp_path / "l1.tgz", tmp_path / "l2.tgz"
    proc = cli("apply-layer", "--turbo-oci", u / "L1.tar.gz", m1)
    assert proc.returncode == 0, proc.stderr
    digest = "sha256:" + hashlib.sha256(m1.read_bytes()).hexdigest()
    assert f"{m1}: {digest} {m1.stat().st_size} bytes" in proc.stdout
    assert "containerd.io/snapshot/overlaybd/version: 0.1.0-turbo.ociv1" in proc.stdout
    src_digest = "sha256:" + hashlib.sha256((u / "L1.tar.gz").read_bytes()).hexdigest()
    assert f"containerd.io/snapshot/overlaybd/turbo-oci/target-digest: {src_digest}" in proc.stdout
    assert "gzip index 5 spans" in proc.stdout

    proc = cli("apply-layer", "--turbo-oci", "--json", "--lower", f"turbo:{m1},{u / 'L1.tar.gz'}",
               "--source-media-type", "application/vnd.docker.image.rootfs.diff.tar", u / "L2.tar", m2)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["digest"] == "sha256:" + hashlib.sha256(m2.read_bytes()).hexdigest()
    assert res["diff_id"] == "sha256:" + hashlib.sha256(gzip.decompress(m2.read_bytes())).hexdigest()
    assert res["annotations"]["containerd.io/snapshot/overlaybd/turbo-oci/target-media-type"] == \
        "application/vnd.docker.image.rootfs.diff.tar"
    assert res["source_kind"] == "tar" and res["gzip_spans"] == 0

    proc = cli("inspect", "--json", f"turbo:{m1},{u / 'L1.tar.gz'}")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["target"]["digest"] == src_digest and info["gzip_index"]["spans"] == 5
    assert info["lsmt"]["target_bytes"] >= 5_000_000
    proc = cli("inspect", m1)  # the meta blob alone
    assert proc.returncode == 0, proc.stderr
    assert "spans: 5" in proc.stdout and "ext4.fs.meta" in proc.stdout

    raw = tmp_path / "disk.raw"
    proc = cli("export", raw, f"turbo:{m1},{u / 'L1.tar.gz'}", f"turbo:{m2},{u / 'L2.tar'}")
    assert proc.returncode == 0, proc.stderr
    from support.fsjudge import assert_e2fsck_clean, run_debugfs

    assert_e2fsck_clean(raw)
    assert run_debugfs(raw, ["cat /sub/new.txt"]).strip().endswith("\nnew in layer 2")


@pytest.fixture
def bad_sources(upstream_turbo: Path, tmp_path: Path) -> dict[str, Path]:
    good = (upstream_turbo / "L1.tar.gz").read_bytes()
    import zstandard

    out = {}
    for name, data in {
        "truncated.tar.gz": good[:3_000_000],
        "corrupt.tar.gz": good[:100] + bytes(b ^ 0x5A for b in good[100:400]) + good[400:],
        "badcrc.tar.gz": good[:-5] + bytes([good[-5] ^ 1]) + good[-4:],
        "twomembers.tar.gz": good + good,
        "layer.tar.zst": zstandard.ZstdCompressor().compress((upstream_turbo / "L2.tar").read_bytes()),
    }.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


@pytest.mark.parametrize(("name", "needle"), [
    ("truncated.tar.gz", "gzip stream is truncated"),
    ("corrupt.tar.gz", "corrupt gzip data"),
    ("badcrc.tar.gz", "incorrect data check"),
    ("twomembers.tar.gz", "cannot be TurboOCI"),
    ("layer.tar.zst", "zstd-compressed layer"),
])
def test_bad_source_is_one_line(bad_sources: dict[str, Path], cli, tmp_path: Path, name: str, needle: str) -> None:
    out = tmp_path / "out.tgz"
    assert_user_error(cli("apply-layer", "--turbo-oci", bad_sources[name], out), needle)
    assert not out.exists() and not list(tmp_path.glob(".out.tgz*"))


def test_digest_mismatch_and_erofs_are_refused(upstream_turbo: Path, cli, tmp_path: Path) -> None:
    out = tmp_path / "out.tgz"
    wrong = "sha256:" + "0" * 64
    assert_user_error(cli("apply-layer", "--turbo-oci", "--expected-digest", wrong, upstream_turbo / "L1.tar.gz", out),
                      "does not match the expected", wrong)
    assert_user_error(cli("apply-layer", "--turbo-oci", "--fstype", "erofs", upstream_turbo / "L1.tar.gz", out),
                      "TurboOCI with --fstype erofs is not supported yet")
    assert not out.exists()


def test_reader_refuses_mismatched_sources(upstream_turbo: Path, cli, tmp_path: Path) -> None:
    u = upstream_turbo
    meta = u / "simple-ext4/layer-1.turbo.tar.gz"
    raw = tmp_path / "x.raw"
    assert_user_error(cli("export", raw, f"turbo:{meta},{u / 'L2.tar'}"), "is a plain tar", "gzip.meta")
    (tmp_path / "short.tar.gz").write_bytes((u / "L1.tar.gz").read_bytes()[:4_000_000])
    assert_user_error(cli("export", raw, f"turbo:{meta},{tmp_path / 'short.tar.gz'}"), "gzip index is for a")
    tar_meta = u / "simple-ext4/layer-2.turbo.tar.gz"
    (tmp_path / "tiny.tar").write_bytes(bytes(1024))
    assert_user_error(cli("export", raw, f"turbo:{tar_meta},{tmp_path / 'tiny.tar'}"), "not a gzip or tar layer")
    assert_user_error(cli("export", raw, f"turbo:{meta}"), "expected turbo:META_BLOB,SOURCE_BLOB")
    (tmp_path / "broken.tgz").write_bytes(meta.read_bytes()[:5000])
    assert_user_error(cli("export", raw, f"turbo:{tmp_path / 'broken.tgz'},{u / 'L1.tar.gz'}"), "truncated")
    assert not raw.exists()


def test_capability_question() -> None:
    """What the engine asks before choosing TurboOCI for a layer."""
    assert turbo_capability("application/vnd.oci.image.layer.v1.tar+gzip") == (True, "gzip")
    assert turbo_capability("application/vnd.docker.image.rootfs.diff.tar.gzip") == (True, "gzip")
    assert turbo_capability("application/vnd.oci.image.layer.v1.tar") == (True, "tar")
    ok, why = turbo_capability("application/vnd.oci.image.layer.v1.tar+zstd")
    assert not ok and "zstd" in why
    assert turbo_capability(None, b"\x28\xb5\x2f\xfd" + bytes(600))[0] is False
    assert turbo_capability("application/vnd.oci.image.layer.v1.tar+gzip", b"\x28\xb5\x2f\xfd")[0] is False
    assert target_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip", True) == \
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert target_media_type("application/vnd.oci.image.layer.v1.tar", False) == "application/vnd.oci.image.layer.v1.tar"


def test_inspect_refuses_a_plain_gzip_layer(upstream_turbo: Path, cli) -> None:
    assert_user_error(cli("inspect", upstream_turbo / "L1.tar.gz"), "is not a TurboOCIv1 meta blob")


def test_diff_id_is_checked(upstream_turbo: Path, tmp_path: Path) -> None:
    """The config's diff_id (sha256 of the uncompressed tar) is verified for gzip and tar sources."""
    from overlaybd_provider.ext4.errors import DiffIdMismatchError
    from overlaybd_provider.ext4.turbo import apply_turbo_layer

    for src in (upstream_turbo / "L1.tar.gz", upstream_turbo / "L2.tar"):
        data = src.read_bytes()
        plain = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        good = "sha256:" + hashlib.sha256(plain).hexdigest()
        out = tmp_path / f"{src.name}.turbo.tar.gz"
        apply_turbo_layer([], src, out, diff_id=good)
        assert out.is_file()
        out.unlink()
        with pytest.raises(DiffIdMismatchError, match="does not match the config's diff_id"):
            apply_turbo_layer([], src, out, diff_id="sha256:" + "1" * 64)
        assert not out.exists()
