"""Our reader on upstream's TurboOCIv1 output, and mixed stacks of upstream's and our layers.

Fixtures: ``fixtures/upstream-turbo`` (made by overlaybd's own ``turboOCI-apply`` and
packed like accelerated-container-image; README there). Each stack our reader exports must
be the disk upstream's reader (``obd-export``) writes for it, ``e2fsck -fn`` clean, with the
expected tree.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from overlaybd_provider.ext4.apply import apply_layer
from overlaybd_provider.ext4.turbo import apply_turbo_layer
from support.fsjudge import assert_e2fsck_clean, assert_trees_equal, expected_tree, export_stack, read_tree

from .conftest import turbo_spec
from .test_turbo_image import assert_same_disk

FEATURES_DEVIATIONS = {"/srv/frac-mtime": {"mtime": 1700000001, "mtime_ns": 0}}  # upstream ignores PAX mtime


def simple_expected(upstream_turbo: Path) -> dict[str, tuple[str, str]]:
    """``simple-expected.txt``: path -> (type letter, first 16 hex of sha256 or link target)."""
    out = {}
    for line in (upstream_turbo / "simple-expected.txt").read_text().splitlines():
        kind, path, *rest = line.split(" ")
        out[path.removeprefix(".")] = (kind, rest[-1])
    return out


def tree_summary(tree: dict) -> dict[str, tuple[str, str]]:
    out = {}
    for path, node in tree.items():
        if node.type == "file":
            out[path] = ("F", node.sha256[:16])
        elif node.type == "symlink":
            out[path] = ("L", node.target.decode())
    return out


def test_simple_ext4_stack(upstream_turbo: Path, obd_export, tmp_path: Path) -> None:
    u = upstream_turbo
    specs = [turbo_spec(u / "simple-ext4/layer-1.turbo.tar.gz", u / "L1.tar.gz"),
             turbo_spec(u / "simple-ext4/layer-2.turbo.tar.gz", u / "L2.tar")]
    ours = export_stack(specs, tmp_path / "ours.raw")
    assert_e2fsck_clean(ours)
    assert tree_summary(read_tree(ours)) == simple_expected(u)
    theirs = tmp_path / "theirs.raw"
    obd_export(theirs, [s.replace("turbo:", "turbo-blob:") for s in specs])
    assert_same_disk(ours, theirs)


def test_features_ext4_stack(upstream_turbo: Path, upstream_features: Path, obd_export, tmp_path: Path) -> None:
    """Upstream's TurboOCI layers of the feature image (120 000-entry htree, hard links across
    layers, xattrs, devices, opaque dir): our reader's disk = upstream reader's disk, and the
    tree is the OCI model's but for upstream's documented PAX-mtime rounding."""
    u, f = upstream_turbo, upstream_features
    specs = [turbo_spec(u / f"features-ext4/layer-{n}.turbo.tar.gz", f / f"feat{n}.tar.gz") for n in (1, 2)]
    ours = export_stack(specs, tmp_path / "ours.raw")
    assert_e2fsck_clean(ours)
    assert_trees_equal(read_tree(ours), expected_tree([f / "feat1.tar.gz", f / "feat2.tar.gz"]),
                       allow=FEATURES_DEVIATIONS)
    theirs = tmp_path / "theirs.raw"
    obd_export(theirs, [s.replace("turbo:", "turbo-blob:") for s in specs])
    assert_same_disk(ours, theirs)


def test_simple_erofs_stack_reads_like_upstream(upstream_turbo: Path, obd_export, tmp_path: Path) -> None:
    """The warp LSMT does not care about the filesystem: upstream's erofs TurboOCI layers read
    the same through our reader (fsck.erofs judges the disk when installed)."""
    u = upstream_turbo
    specs = [turbo_spec(u / "simple-erofs/layer-1.turbo.tar.gz", u / "L1.tar.gz"),
             turbo_spec(u / "simple-erofs/layer-2.turbo.tar.gz", u / "L2.tar")]
    ours = export_stack(specs, tmp_path / "ours.raw")
    theirs = tmp_path / "theirs.raw"
    obd_export(theirs, [s.replace("turbo:", "turbo-blob:") for s in specs])
    assert_same_disk(ours, theirs)
    fsck = shutil.which("fsck.erofs")
    if fsck:
        proc = subprocess.run([fsck, str(ours)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_simple_mixed_native_under_upstream_turbo(upstream_turbo: Path, obd_export, tmp_path: Path) -> None:
    u = upstream_turbo
    specs = [str(u / "simple-mixed/layer-1.blob"), turbo_spec(u / "simple-mixed/layer-2.turbo.tar.gz", u / "L2.tar")]
    ours = export_stack(specs, tmp_path / "ours.raw")
    assert_e2fsck_clean(ours)
    assert tree_summary(read_tree(ours)) == simple_expected(u)
    theirs = tmp_path / "theirs.raw"
    obd_export(theirs, [specs[0], specs[1].replace("turbo:", "turbo-blob:")])
    assert_same_disk(ours, theirs)


def test_our_turbo_layer_on_upstream_native_layer(upstream_turbo: Path, obd_export, tmp_path: Path) -> None:
    u = upstream_turbo
    meta = tmp_path / "l2.turbo.tar.gz"
    res = apply_turbo_layer([u / "simple-mixed/layer-1.blob"], u / "L2.tar", meta)
    assert res.source_kind == "tar" and res.gzip_spans == 0
    raw = tmp_path / "theirs.raw"
    obd_export(raw, [u / "simple-mixed/layer-1.blob", f"turbo-blob:{meta},{u / 'L2.tar'}"])
    assert_e2fsck_clean(raw)
    assert tree_summary(read_tree(raw)) == simple_expected(u)


def test_upstream_turbo_layer_under_ours(upstream_turbo: Path, obd_export, tmp_path: Path) -> None:
    """Upstream's TurboOCI layer 1 as the lower of our TurboOCI layer 2 and of our native layer 2."""
    u = upstream_turbo
    lower = turbo_spec(u / "simple-ext4/layer-1.turbo.tar.gz", u / "L1.tar.gz")
    meta = tmp_path / "l2.turbo.tar.gz"
    apply_turbo_layer([lower], u / "L2.tar", meta)
    native = tmp_path / "l2.blob"
    apply_layer([lower], u / "L2.tar", native)
    for name, top in (("turbo", f"turbo-blob:{meta},{u / 'L2.tar'}"), ("native", str(native))):
        raw = tmp_path / f"{name}.raw"
        obd_export(raw, [lower.replace("turbo:", "turbo-blob:"), top])
        assert_e2fsck_clean(raw)
        assert tree_summary(read_tree(raw)) == simple_expected(u), name


def test_meta_sizes_near_upstreams_for_fixture_sources(upstream_turbo: Path, upstream_features: Path,
                                                       tmp_path: Path) -> None:
    """Base layers, same sources as the fixtures: our meta blob <= 1.05x upstream's."""
    import json

    u = upstream_turbo
    for src, desc in ((u / "L1.tar.gz", u / "simple-ext4/layer-1.desc"),
                      (upstream_features / "feat1.tar.gz", u / "features-ext4/layer-1.desc")):
        theirs = json.loads(desc.read_text())
        res = apply_turbo_layer([], src, tmp_path / f"{src.name}.turbo.tar.gz")
        assert res.target_digest == theirs["annotations"]["containerd.io/snapshot/overlaybd/turbo-oci/target-digest"]
        print(f"\n{src.name}: meta ours {res.size} B, upstream {theirs['size']} B ({res.size / theirs['size']:.3f}x)")
        assert res.size <= 1.05 * theirs["size"]


def test_determinism_golden_digest(upstream_turbo: Path, tmp_path: Path) -> None:
    """Same bytes on every machine: the meta blob of L1.tar.gz (a 64 GiB mkfs, 4 files) has this
    digest. It changes only with an intended output change (then bump CONVERTER_FORMAT)."""
    out = tmp_path / "l1.turbo.tar.gz"
    res = apply_turbo_layer([], upstream_turbo / "L1.tar.gz", out)
    assert res.digest == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    assert res.digest == GOLDEN_L1_DIGEST, res.digest


GOLDEN_L1_DIGEST = "sha256:cb6fdaa0a319c02a3a38ea8b2d538df23fa161abc0234d4bceb51bc17d505843"
