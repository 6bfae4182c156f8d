"""Images ``overlaybd verify`` did not write: upstream's converted fixtures and the upstream oracle.

Upstream ignores PAX mtimes and stores the rounded ustar field: verify must report exactly
those mtimes (correctly: the OCI semantics keep the fraction) and nothing else.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from support.obdimages import blob_layout, tar_layout, verify_cli

T0 = 1_700_000_000


def test_upstream_two_layer_fixture_is_identical(fixtures_dir: Path, tmp_path: Path) -> None:
    fx = fixtures_dir / "upstream-2layer"
    src = tar_layout(tmp_path / "src", "v1", [fx / "layer1.tar", fx / "layer2.tar"])
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.blob", fx / "layer-2.blob"])
    proc = verify_cli(src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source (")


def test_upstream_features_fixture_differs_only_by_the_rounded_pax_mtime(fixtures_dir: Path, tmp_path: Path) -> None:
    """120 000-entry two-level htree, hard links across layers, xattrs, devices, opaque dirs, as upstream
    wrote them: the only difference is /srv/frac-mtime (PAX 1700000000.75, upstream 1700000001)."""
    fx = fixtures_dir / "upstream-features"
    src = tar_layout(tmp_path / "src", "v1", [fx / "feat1.tar.gz", fx / "feat2.tar.gz"])
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.blob", fx / "layer-2.blob"])
    proc = verify_cli(src, dst)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "1 difference: 1 mtime, 0 content, 0 size, 0 missing, 0 extra, 0 type, 0 mode, 0 owner, 0 xattr, "
        "0 symlink, 0 hardlink, 0 device, 0 filesystem",
        "/srv/frac-mtime: mtime 1700000000.75 in source, 1700000001 in image",
    ]


def _frac_layers(work: Path) -> tuple[list[Path], dict[str, float]]:
    """Two layers whose fractional PAX mtimes sit on every entry type upstream writes."""
    fractional: dict[str, float] = {}

    def add(tf: tarfile.TarFile, name: str, typ: bytes = tarfile.REGTYPE, data: bytes = b"", mtime: float = T0,
            **kw: object) -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mtime, ti.mode = typ, mtime, kw.pop("mode", 0o644)
        for k, v in kw.items():
            setattr(ti, k, v)
        if mtime != int(mtime):
            fractional["/" + name.rstrip("/")] = mtime
        if typ == tarfile.REGTYPE:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        else:
            tf.addfile(ti)

    one, two = work / "frac1.tar", work / "frac2.tar"
    with tarfile.open(one, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "app/", tarfile.DIRTYPE, mode=0o755, mtime=T0 + 100.25)
        add(tf, "app/whole", data=b"whole seconds\n")
        add(tf, "app/half", data=b"half\n", mtime=T0 + 0.5)
        add(tf, "app/late", data=b"late\n", mtime=T0 + 0.999)
        add(tf, "app/link", tarfile.SYMTYPE, linkname="half", mode=0o777, mtime=T0 + 0.125)
        add(tf, "app/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666, mtime=T0 + 0.75)
        add(tf, "app/gone", data=b"deleted above\n", mtime=T0 + 0.5)
    with tarfile.open(two, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "app/.wh.gone")
        add(tf, "app/new", data=b"new\n", mtime=T0 + 7.0625)
        add(tf, "app/hard", tarfile.LNKTYPE, linkname="app/whole", mode=0o644)
    fractional.pop("/app/gone")
    return [one, two], fractional


def test_upstream_oracle_conversion_reports_only_its_rounded_mtimes(oracle_convert, tmp_path: Path) -> None:
    tars, fractional = _frac_layers(tmp_path)
    blobs = oracle_convert(tars, tmp_path / "oracle")
    src = tar_layout(tmp_path / "src", "v1", tars)
    dst = blob_layout(tmp_path / "dst", "v1", blobs)
    proc = verify_cli(src, dst, "--json")
    assert proc.returncode == 1, proc.stderr
    (plat,) = json.loads(proc.stdout)["platforms"]
    assert {c: n for c, n in plat["counts"].items() if n} == {"mtime": len(fractional)}
    got = {d["path"]: (d["source"], d["image"]) for d in plat["differences"]}
    assert set(got) == set(fractional)
    for path, (in_source, in_image) in got.items():
        assert float(in_source) == pytest.approx(fractional[path], abs=1e-9)
        assert "." not in in_image and abs(int(in_image) - fractional[path]) < 1  # whole seconds
    assert plat["e2fsck"]["ran"] and plat["e2fsck"]["exit_code"] == 0


def test_upstream_published_hello_world_shows_its_lost_found_quirk(fixtures_dir: Path) -> None:
    """docker hello-world as upstream's converter published it: the tree is right, and both the structural
    checks and e2fsck report the broken lost+found htree of upstream's mkfs (ext4-profile.md §5)."""
    layout = fixtures_dir / "hello-world-oci"
    proc = verify_cli(f"oci:{layout}:amd64", f"oci:{layout}:amd64-converted")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [
        "3 differences: 0 mtime, 0 content, 0 size, 0 missing, 0 extra, 0 type, 0 mode, 0 owner, 0 xattr, "
        "0 symlink, 0 hardlink, 0 device, 3 filesystem",
        "htree directory inode 11: block #2 not referenced by the htree",
        "e2fsck: Problem in HTREE directory inode 11: block #2 not referenced",
        "e2fsck: Invalid HTREE directory inode 11 (/lost+found).",
    ]
