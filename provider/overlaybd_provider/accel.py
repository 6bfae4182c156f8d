"""The optional compiled accelerator: the hot modules of the ext4 writer and the formats, compiled by
Cython from the same ``.py`` sources (``setup.py`` builds them when Cython and a C compiler are there).

Why the same sources: a compiled module runs the very code of its pure-Python fallback, so the two give
byte-identical output by construction (tests/accel checks it on real layers), and ``pip install`` on a
machine with no compiler simply keeps the ``.py`` files.

Which one runs is decided here, not by Python's import order (which would prefer any ``.so`` next to a
``.py``, even one compiled from an older source): a compiled module is loaded only when the accelerator
is enabled (``OVERLAYBD_ACCEL`` is not ``0``) and the build manifest records the sha256 of the very
source beside it; otherwise the ``.py`` is imported. This module imports nothing but the standard
library: ``setup.py`` loads it by path to learn the module list.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "overlaybd_provider"
ENV = "OVERLAYBD_ACCEL"
MANIFEST = "_accel_built.json"

# The per-entry and per-block paths of apply-layer, the TurboOCI builder and the lower-stack reads.
MODULES: tuple[str, ...] = tuple(
    f"{PACKAGE}.{name}"
    for name in (
        "ext4.alloc",
        "ext4.bitmap",
        "ext4.blockdev",
        "ext4.changeset",
        "ext4.dirent",
        "ext4.dirhash",
        "ext4.directory",
        "ext4.dual",
        "ext4.dxedit",
        "ext4.extent",
        "ext4.fs",
        "ext4.htree",
        "ext4.inode",
        "ext4.namespace",
        "ext4.seal",
        "ext4.tarstream",
        "ext4.turbo",
        "ext4.xattr",
        "formats.lsmt_index",
        "formats.lsmt_reader",
        "formats.lsmt_writer",
        "formats.stack",
        "formats.tarwrap",
        "formats.turbo",
        "formats.zfile_codec",
        "formats.zfile_reader",
        "formats.zfile_spool",
        "formats.zfile_writer",
    )
)


def source_path(root: Path, module: str) -> Path:
    """The ``.py`` of ``module`` under ``root`` (the directory that holds the package)."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    """sha256 of a module's ``.py`` and, when there is one, of the augmenting ``.pxd`` beside it (its
    attribute declarations are compiled in too: an edited ``.pxd`` makes the build stale as well)."""
    digest = hashlib.sha256(path.read_bytes())
    declarations = path.with_suffix(".pxd")
    if declarations.is_file():
        digest.update(b"\0pxd\0" + declarations.read_bytes())
    return digest.hexdigest()


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _manifest(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / PACKAGE / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _compiled_file(directory: Path, leaf: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = directory / f"{leaf}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _build_state(source: Path, manifest: dict[str, str], module: str) -> tuple[str, Path | None]:
    """``("compiled", file)`` when a build of this very source is beside it, else ``("missing",
    None)`` (no build, or none recorded) or ``("stale", None)`` (built from another source)."""
    compiled = _compiled_file(source.parent, source.stem)
    if compiled is None or module not in manifest:
        return "missing", None
    if manifest[module] != source_digest(source):
        return "stale", None
    return "compiled", compiled


class _Finder:
    """A ``sys.meta_path`` finder (any object with ``find_spec``: ``importlib.abc`` would cost every
    process 5 ms of imports) that resolves the accelerated modules to their compiled file or their
    source, never to a stale build."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._use_compiled = enabled()
        self._manifest = _manifest(root) if self._use_compiled else {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _MODULE_SET:
            return None
        source = source_path(self._root, fullname)
        if not source.is_file():
            return None  # not this installation's layout (a zip, say): Python's own finders decide
        compiled = _build_state(source, self._manifest, fullname)[1] if self._use_compiled else None
        if compiled is not None:
            loader = importlib.machinery.ExtensionFileLoader(fullname, str(compiled))
            return importlib.util.spec_from_file_location(fullname, compiled, loader=loader)
        return importlib.util.spec_from_file_location(fullname, source)


_MODULE_SET = frozenset(MODULES)
_finder: _Finder | None = None


def install() -> None:
    """Put the finder in front of Python's own (once per process; the package ``__init__`` calls it)."""
    global _finder
    if _finder is None:
        _finder = _Finder(_package_root())
        sys.meta_path.insert(0, _finder)


def status() -> dict[str, str]:
    """Per accelerated module: ``compiled``, ``python`` (fallback), ``stale`` (a build of another
    source: the ``.py`` runs) or ``missing`` (no build), for what this process runs or would run."""
    if not enabled():
        return dict.fromkeys(MODULES, "python")
    root = _package_root()
    manifest = _manifest(root)
    return {module: _build_state(source_path(root, module), manifest, module)[0] for module in MODULES}


def summary() -> str:
    """One line for ``overlaybd --version`` and the benches: how many hot modules run compiled."""
    states = status()
    compiled = sum(1 for state in states.values() if state == "compiled")
    if not enabled():
        return f"accelerator off ({ENV}=0): pure Python"
    if compiled == len(states):
        return f"accelerator on: {compiled} modules compiled"
    other = sorted({state for state in states.values() if state != "compiled"})
    return f"accelerator partial: {compiled}/{len(states)} modules compiled ({', '.join(other)} for the rest)"


def report(require: bool = False) -> int:
    """Print the state of every module (``overlaybd --accelerator``); with ``require``, exit status 1 unless
    every one runs compiled (CI uses it so a broken build cannot pass as the fallback)."""
    states = status()
    print(summary())
    for module, state in states.items():
        print(f"  {state:8s} {module}")
    return 1 if require and any(state != "compiled" for state in states.values()) else 0
