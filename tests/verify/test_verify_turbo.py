"""``overlaybd verify`` reads TurboOCIv1 images: upstream's own TurboOCI layers (meta blob + the
original source blob named by ``turbo-oci/target-digest``), native and TurboOCI layers mixed,
and a TurboOCI layer paired with the wrong source is reported, not trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.obdimages import blob_layout, tar_layout, verify_cli


@pytest.fixture(scope="module")
def turbo(fixtures_dir: Path) -> Path:
    d = fixtures_dir / "upstream-turbo"
    if not (d / "simple-ext4" / "layer-1.desc").is_file():
        pytest.skip("fixtures/upstream-turbo is not available")
    return d


def _desc(path: Path) -> dict:
    return json.loads(path.read_text())


def test_upstream_turbo_ext4_image_is_identical(turbo: Path, tmp_path: Path) -> None:
    src = tar_layout(tmp_path / "src", "v1", [turbo / "L1.tar.gz", turbo / "L2.tar"], compress=False)
    fx = turbo / "simple-ext4"
    descs = [_desc(fx / f"layer-{n}.desc") for n in (1, 2)]
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.turbo.tar.gz", fx / "layer-2.turbo.tar.gz"],
                      descriptors=descs)  # the source blobs are only in the source image: fetched from there
    proc = verify_cli(src, dst, "--fsck", "always")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source (")
    assert "e2fsck clean" in proc.stdout


def test_upstream_mixed_native_and_turbo_layers(turbo: Path, tmp_path: Path) -> None:
    src = tar_layout(tmp_path / "src", "v1", [turbo / "L1.tar.gz", turbo / "L2.tar"], compress=False)
    fx = turbo / "simple-mixed"
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.blob", fx / "layer-2.turbo.tar.gz"],
                      descriptors=[{}, _desc(fx / "layer-2.desc")])
    proc = verify_cli(src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_upstream_turbo_features_image(turbo: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    """Hard links across layers, xattrs, devices, opaque dirs, a 120 000-entry htree, through
    TurboOCI: only upstream's rounded PAX mtime differs (as for its native conversion)."""
    feats = fixtures_dir / "upstream-features"
    src = tar_layout(tmp_path / "src", "v1", [feats / "feat1.tar.gz", feats / "feat2.tar.gz"])
    fx = turbo / "features-ext4"
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.turbo.tar.gz", fx / "layer-2.turbo.tar.gz"],
                      descriptors=[_desc(fx / f"layer-{n}.desc") for n in (1, 2)])
    proc = verify_cli(src, dst)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("1 difference: 1 mtime, 0 content,"), proc.stdout
    assert proc.stdout.splitlines()[1] == "/srv/frac-mtime: mtime 1700000000.75 in source, 1700000001 in image"


def test_turbo_layer_whose_target_is_missing_is_an_error(turbo: Path, tmp_path: Path) -> None:
    """The target named by the annotation is in neither image: exit 2, one line, no traceback."""
    src = tar_layout(tmp_path / "src", "v1", [turbo / "L1.tar.gz", turbo / "L2.tar"], compress=False)
    fx = turbo / "simple-ext4"
    descs = [_desc(fx / f"layer-{n}.desc") for n in (1, 2)]
    descs[1]["annotations"]["containerd.io/snapshot/overlaybd/turbo-oci/target-digest"] = "sha256:" + "0" * 64
    dst = blob_layout(tmp_path / "dst", "v1", [fx / "layer-1.turbo.tar.gz", fx / "layer-2.turbo.tar.gz"],
                      descriptors=descs)
    proc = verify_cli(src, dst)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sha256:" + "0" * 64 in proc.stderr and "Traceback" not in proc.stderr
