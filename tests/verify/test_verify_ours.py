"""``overlaybd verify`` on our own conversions: identical images pass (exit 0) with every check run."""

from __future__ import annotations

from support.obdimages import verify_cli


def test_features_image_verifies_identical(feature_images: tuple[str, str]) -> None:
    src, dst = feature_images
    proc = verify_cli(src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("0 differences: the image matches its source ("), proc.stdout
    assert "structural checks passed, e2fsck clean" in proc.stdout
    assert proc.stderr == ""
