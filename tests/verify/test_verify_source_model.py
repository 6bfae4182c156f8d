"""verify's source model and the tests' own OCI model (``support.tarmodel``) agree path by path.

Two implementations of the changeset rules written independently (the product's streams with
``tarfile`` in stream mode and keeps hashes only; the test model reads whole tars): the same
tree for the feature layers, the upstream feature fixture and the Debian image means neither
has a private reading of whiteouts, opaque directories, hard links or PAX records.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from overlaybd_provider.verify.run import build_source
from overlaybd_provider.verify.source import Node, link_groups
from support.debimage import build_debian_image
from support.tarmodel import apply_layers


def _flat(root: Node) -> dict[str, tuple]:
    groups = {i: tuple(sorted(p.decode("utf-8", "surrogateescape") for p in paths))
              for i, paths in link_groups(root).items()}
    out: dict[str, tuple] = {}
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        shown = path.decode("utf-8", "surrogateescape") or "/"
        out[shown] = (node.kind, node.mode, node.uid, node.gid, node.mtime, node.mtime_ns,
                      None if node.kind == "dir" else node.size, node.sha256.hex() if node.sha256 else None,
                      node.target, node.rdev, dict(node.xattrs or {}), groups.get(id(node), ()))
        stack.extend((path + b"/" + name, child) for name, child in (node.children or {}).items())
    return out


def _model(tars: list[Path]) -> dict[str, tuple]:
    return {p: (n.type, n.mode, n.uid, n.gid, n.mtime, n.mtime_ns, n.size, n.sha256, n.target, n.rdev,
                dict(n.xattrs), n.hardlinks) for p, n in apply_layers(tars).items()}


def _ours(tars: list[Path]) -> dict[str, tuple]:
    layers = [(t.name, (lambda t=t: t.open("rb")), None) for t in tars]
    return _flat(build_source(layers).root)


def _assert_same(tars: list[Path]) -> int:
    ours, model = _ours(tars), _model(tars)
    diffs = [(p, ours.get(p), model.get(p)) for p in sorted(ours.keys() | model.keys()) if ours.get(p) != model.get(p)]
    assert not diffs, diffs[:10]
    return len(ours)


def test_feature_layers(feature_tars: list[Path]) -> None:
    assert _assert_same(feature_tars) > 2500


def test_upstream_feature_fixture(fixtures_dir: Path) -> None:
    fx = fixtures_dir / "upstream-features"
    assert _assert_same([fx / "feat1.tar.gz", fx / "feat2.tar.gz"]) > 120_000


@pytest.mark.slow
def test_debian_image(tmp_path: Path) -> None:
    image = build_debian_image(tmp_path)
    assert _assert_same(image.tars) > 1000
