"""``overlaybd verify`` on our own conversions: identical images pass (exit 0) with every check run."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.debimage import build_debian_image
from support.obdimages import convert, tar_layout, verify_cli


def test_features_image_verifies_identical(feature_images: tuple[str, str]) -> None:
    src, dst = feature_images
    proc = verify_cli(src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source ("), proc.stdout
    assert "structural checks passed, e2fsck clean" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.slow
def test_debian_image_verifies_identical(tmp_path: Path) -> None:
    """Three layers of real Debian packages (hard-linked perl and gzip, ping's capability xattr,
    hundreds of block symlinks, whiteouts of files and trees, opaque dirs refilled in the same layer;
    plain, gzip and zstd layers) converted by us: identical."""
    image = build_debian_image(tmp_path / "work")
    src = tar_layout(tmp_path / "src", "v1", image.tars)
    dst = convert(src, f"oci:{tmp_path / 'dst'}:v1")
    proc = verify_cli(src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source (")
