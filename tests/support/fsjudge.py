"""Test oracle for converted images: real e2fsprogs reads the ext4, an independent model reads the tars.

Used by every test area that produces a filesystem::

    from support.fsjudge import (Node, export_stack, assert_e2fsck_clean, read_tree,
                                 expected_tree, assert_trees_equal)

    export_stack([layer1_blob, layer2_blob], raw)        # `overlaybd export RAW BLOB...`
    assert_e2fsck_clean(raw)                              # e2fsck -fn: exit 0, no problem lines
    actual = read_tree(raw)                               # {path: Node} through debugfs
    expected = expected_tree([layer1_tar, layer2_tar])    # OCI changeset model, bottom layer first
    assert_trees_equal(actual, expected, allow={"/srv/frac-mtime": {"mtime": 1700000001, "mtime_ns": 0}})

Paths are absolute ('/' is the root, '/lost+found' included), names decoded as UTF-8 with
surrogateescape so any byte string round-trips. ``Node`` fields that cannot be predicted
from a tar are ``None`` on both sides (directory sizes). ``hardlinks`` is the sorted tuple
of every path sharing the node's inode when there is more than one, else ``()``.
POSIX ACL xattrs are compared in a canonical form (ids of USER_OBJ/GROUP_OBJ/MASK/OTHER
entries set to 0xffffffff, as the kernel's getxattr returns them).

Reading is in :mod:`support.debugfs`, ``Node`` in :mod:`support.fsnode`. The model
(:mod:`support.tarmodel`) is deliberately written from the OCI image-spec layer
rules, not from the converter's code. The pytest fixture ``fsjudge`` returns this module.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import pytest

from support.debugfs import DEBUGFS_ENV, _tool, read_tree, run_debugfs, split_by_command
from support.fsnode import EMPTY_SHA256, Node, canonical_xattr
from support.paths import overlaybd_cli

__all__ = [
    "DEBUGFS_ENV", "EMPTY_SHA256", "Node", "assert_e2fsck_clean", "assert_trees_equal",
    "canonical_xattr", "diff_trees", "e2fsck", "expected_tree", "export_available", "export_stack",
    "read_tree", "run_debugfs", "split_by_command",
]


_E2FSCK_OK = re.compile(
    r"^(e2fsck \d.*|Pass [1-5][A-Z]?: .*|.*: \d+/\d+ files \(.*\), \d+/\d+ blocks|"
    r"\s*Using EXT2FS Library.*)$"
)


def e2fsck(image: str | os.PathLike[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [_tool("e2fsck"), "-fn", str(image)], capture_output=True, env=DEBUGFS_ENV, check=False
    )
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return proc.returncode, text


def assert_e2fsck_clean(image: str | os.PathLike[str]) -> str:
    """``e2fsck -fn`` exits 0 and prints nothing but its banner, pass headers and summary.
    Returns the output, for tests that read the summary line."""
    rc, text = e2fsck(image)
    problems = [ln for ln in text.splitlines() if ln.strip() and not _E2FSCK_OK.match(ln)]
    if rc != 0 or problems:
        pytest.fail(f"e2fsck -fn {image} is not clean (exit {rc}):\n{text}")
    return text


def export_stack(blob_paths: Sequence[str | os.PathLike[str]], raw_path: str | os.PathLike[str]) -> Path:
    """Flatten layer blobs (bottom first) into a raw ext4 image with ``overlaybd export``."""
    cmd = [*overlaybd_cli(), "export", str(raw_path), *map(str, blob_paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(raw_path)


def export_available() -> bool:
    """True once the ``overlaybd export`` sub-command exists."""
    proc = subprocess.run([*overlaybd_cli(), "export", "--help"], capture_output=True, check=False)
    return proc.returncode == 0


def expected_tree(tar_paths: Sequence[str | os.PathLike[str]]) -> dict[str, Node]:
    """The tree an OCI runtime would see after extracting ``tar_paths`` (bottom layer first)."""
    from support.tarmodel import apply_layers

    return apply_layers(tar_paths)


def diff_trees(
    actual: Mapping[str, Node],
    expected: Mapping[str, Node],
    *,
    allow: Mapping[str, Mapping[str, object]] | None = None,
    ignore: Callable[[str], bool] | None = None,
) -> list[str]:
    """Human-readable differences, sorted by path.

    ``allow`` maps a path to field values the actual side may show *instead of* the expected
    ones (documented, explicit deviations such as upstream's whole-second mtimes);
    ``ignore(path)`` drops paths from both sides.
    """
    allow = allow or {}
    out: list[str] = []
    for path in sorted(set(actual) | set(expected)):
        if ignore is not None and ignore(path):
            continue
        a, e = actual.get(path), expected.get(path)
        if a is None:
            out.append(f"{path}: missing from the image (expected {e.type})")
            continue
        if e is None:
            out.append(f"{path}: unexpected {a.type} in the image")
            continue
        allowed = allow.get(path, {})
        for f in fields(Node):
            if not f.compare:
                continue
            av, ev = getattr(a, f.name), getattr(e, f.name)
            if av == ev or (f.name in allowed and av == allowed[f.name]):
                continue
            out.append(f"{path}: {f.name} is {_show(f.name, av)}, expected {_show(f.name, ev)}")
    return out


def _show(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {bytes(v)[:40]!r}" for k, v in sorted(value.items())) + "}"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def assert_trees_equal(
    actual: Mapping[str, Node],
    expected: Mapping[str, Node],
    *,
    allow: Mapping[str, Mapping[str, object]] | None = None,
    ignore: Callable[[str], bool] | None = None,
    max_lines: int = 40,
) -> None:
    """Fail with the first differences (path: field is X, expected Y) when the trees differ."""
    diffs = diff_trees(actual, expected, allow=allow, ignore=ignore)
    if diffs:
        shown = "\n".join(diffs[:max_lines])
        more = f"\n... and {len(diffs) - max_lines} more" if len(diffs) > max_lines else ""
        pytest.fail(f"{len(diffs)} difference(s) between image and expected tree:\n{shown}{more}")


@pytest.fixture(scope="session")
def upstream_features_raw(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """upstream-features layer-1 + layer-2 blobs exported once per session (a sparse 64 GiB raw)."""
    if not export_available():
        pytest.skip("`overlaybd export` is not available")
    fx = fixtures_dir / "upstream-features"
    raw = tmp_path_factory.mktemp("upstream-features") / "stack.raw"
    return export_stack([fx / "layer-1.blob", fx / "layer-2.blob"], raw)


@pytest.fixture(scope="session")
def fsjudge():
    """This module, for tests that prefer a fixture to an import."""
    import support.fsjudge as module

    return module
