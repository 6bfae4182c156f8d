"""An independent model of OCI layer changesets: what a container sees after extracting layer tars.

Written from the OCI image-spec "Image Layer Filesystem Changeset" rules and Linux
semantics, *not* from the converter (so it can judge it):

* layers are applied bottom first onto a fresh ext4 root ('/' 0755 root:root mtime 0 and
  '/lost+found' 0700) — ``./`` entries set the root's metadata;
* ``.wh.NAME`` removes NAME (recursively) from lower layers, ``.wh..wh..opq`` removes every
  lower child of its directory; neither ever hides an entry of its own layer, whatever the
  order inside the tar; other ``.wh..wh.*`` names are ignored;
* a later entry replaces an earlier non-directory; a non-directory replaces a directory
  (recursively); two directories merge and the later header's metadata wins;
* missing parents are implied as 0755 root:root directories with mtime 0 (a directory keeps
  the mtime of the last header naming it: adding children does not change it);
* hard links share the inode they point to at link time (a later replacement of the target
  creates a new inode and does not affect earlier links); a link header's owner, mode,
  mtime and xattrs are applied to that shared inode, as an extractor does on the link path;
* mtime: PAX ``mtime`` with fractions (floor seconds + nanoseconds), else the ustar field;
* xattrs from ``SCHILY.xattr.*``; ``user.*`` ones only on regular files and directories
  (Linux refuses them elsewhere); symlinks always have mode 0777.

Entry point: :func:`apply_layers`, used through ``support.fsjudge.expected_tree``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from support.fsnode import Node, canonical_xattr

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(eq=False)
class _Inode:
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_ns: int = 0
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


class _Tree:
    def __init__(self) -> None:
        self.nodes: dict[str, _Inode] = {
            "/": _Inode("dir", 0o755, 0, 0, 0),
            "/lost+found": _Inode("dir", 0o700, 0, 0, 0),
        }
        self.children: dict[str, set[str]] = {"/": {"/lost+found"}, "/lost+found": set()}

    def add(self, path: str, node: _Inode) -> None:
        self.nodes[path] = node
        self.children.setdefault(posixpath.dirname(path), set()).add(path)
        if node.type == "dir":
            self.children.setdefault(path, set())

    def remove(self, path: str, spare: set[str]) -> None:
        """Remove ``path`` and everything below it, except paths in ``spare`` (and their parents)."""
        if path not in self.nodes:
            return
        for child in sorted(self.children.get(path, ())):
            self.remove(child, spare)
        if path in spare or self.children.get(path):
            return
        del self.nodes[path]
        self.children.pop(path, None)
        self.children[posixpath.dirname(path)].discard(path)

    def mkdir_p(self, path: str, touched: set[str]) -> None:
        if path in self.nodes:
            if self.nodes[path].type != "dir":
                raise AssertionError(f"tar model: parent {path} exists and is not a directory")
            return
        self.mkdir_p(posixpath.dirname(path), touched)
        self.add(path, _Inode("dir", 0o755, 0, 0, 0))
        touched.add(path)


def clean_path(name: str) -> str:
    """Lexical cleaning as extractors do: absolute, no '.', '..' resolved and clamped at '/'."""
    return posixpath.normpath("/" + name.lstrip("/"))


def _mtime(member: tarfile.TarInfo) -> tuple[int, int]:
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime), 0
    value = Decimal(text)
    sec = int(value.to_integral_value(rounding=ROUND_FLOOR))
    ns = int((value - sec) * 1_000_000_000)
    return sec, ns


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    out = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            out[name] = canonical_xattr(name, value.encode("utf-8", "surrogateescape"))
    return out


@contextmanager
def _open_tar(path: str | os.PathLike[str]) -> Iterator[tarfile.TarFile]:
    """Plain, gzip or zstd tar; compressed ones are first inflated to a temporary file.

    tarfile's own stream mode reads compressed input in tiny pieces and is several times
    slower on layers with 100 000+ members.
    """
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] != b"\x1f\x8b" and magic != b"\x28\xb5\x2f\xfd":
            with tarfile.open(fileobj=raw, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
                yield tf
            return
        with tempfile.TemporaryFile() as plain:
            if magic[:2] == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw) as src:
                    shutil.copyfileobj(src, plain, 1 << 20)
            else:
                import zstandard

                zstandard.ZstdDecompressor().copy_stream(raw, plain)
            plain.seek(0)
            with tarfile.open(fileobj=plain, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
                yield tf


def _content_sha256(tf: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    h = hashlib.sha256()
    if member.size == 0:
        return h.hexdigest()
    f = tf.extractfile(member)
    if f is not None:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _set_meta(node: _Inode, member: tarfile.TarInfo) -> None:
    node.uid, node.gid = member.uid, member.gid
    node.mtime, node.mtime_ns = _mtime(member)
    node.mode = 0o777 if node.type == "symlink" else member.mode & 0o7777
    for name, value in _xattrs(member).items():
        if name.startswith("user.") and node.type not in ("file", "dir"):
            continue
        node.xattrs[name] = value


def _apply_layer(tree: _Tree, tar_path: str | os.PathLike[str]) -> None:
    touched: set[str] = set()
    with _open_tar(tar_path) as tf:
        for member in tf:
            path = clean_path(member.name)
            base = posixpath.basename(path)
            parent = posixpath.dirname(path)
            if path != "/":
                tree.mkdir_p(parent, touched)
            if base == OPAQUE:
                for child in sorted(tree.children.get(parent, ())):
                    tree.remove(child, touched)
                continue
            if base.startswith(WHITEOUT):
                hidden = base[len(WHITEOUT) :]
                if not hidden.startswith(WHITEOUT):
                    tree.remove(posixpath.join(parent, hidden), touched)
                continue
            existing = tree.nodes.get(path)
            if member.isdir():
                if existing is not None and existing.type == "dir":
                    node = existing
                else:
                    if existing is not None:
                        tree.remove(path, set())
                    node = _Inode("dir", 0o755, 0, 0, 0)
                    tree.add(path, node)
            elif member.islnk():
                target = clean_path(member.linkname)
                node = tree.nodes.get(target)
                if node is None or node.type == "dir":
                    raise AssertionError(f"tar model: {tar_path}: hard link {path} -> missing {target}")
                if existing is not None and existing is not node:
                    tree.remove(path, set())
                tree.add(path, node)
            else:
                if existing is not None:
                    tree.remove(path, set())
                node = _new_leaf(tf, member, path, tar_path)
                tree.add(path, node)
            _set_meta(node, member)
            touched.add(path)


def _new_leaf(tf: tarfile.TarFile, member: tarfile.TarInfo, path: str, tar_path: object) -> _Inode:
    if member.isreg():
        return _Inode("file", 0, 0, 0, 0, size=member.size, sha256=_content_sha256(tf, member))
    if member.issym():
        target = member.linkname.encode("utf-8", "surrogateescape")
        return _Inode("symlink", 0o777, 0, 0, 0, size=len(target), target=target)
    if member.ischr() or member.isblk():
        kind = "chr" if member.ischr() else "blk"
        return _Inode(kind, 0, 0, 0, 0, size=0, rdev=(member.devmajor, member.devminor))
    if member.isfifo():
        return _Inode("fifo", 0, 0, 0, 0, size=0)
    raise AssertionError(f"tar model: {tar_path}: {path} has unsupported tar type {member.type!r}")


def apply_layers(tar_paths: Sequence[str | os.PathLike[str]]) -> dict[str, Node]:
    """{path: Node} after applying every layer tar (bottom first) to a fresh ext4 root."""
    tree = _Tree()
    for tar_path in tar_paths:
        _apply_layer(tree, tar_path)
    groups: dict[int, list[str]] = {}
    for path, node in tree.nodes.items():
        groups.setdefault(id(node), []).append(path)
    out: dict[str, Node] = {}
    for path, node in tree.nodes.items():
        group = groups[id(node)]
        out[path] = Node(
            type=node.type, mode=node.mode, uid=node.uid, gid=node.gid, mtime=node.mtime,
            mtime_ns=node.mtime_ns, size=None if node.type == "dir" else node.size,
            sha256=node.sha256, target=node.target, rdev=node.rdev, xattrs=dict(node.xattrs),
            hardlinks=tuple(sorted(group)) if len(group) > 1 else (),
        )
    return out
