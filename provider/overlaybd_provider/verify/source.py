"""What a container sees after extracting the source layers: the OCI changeset rules, streamed.

Written from the image-spec ("Image Layer Filesystem Changeset") and docker/containerd's
extraction, not from our converter, so that it can judge the converter; the tar parser is
the standard library's ``tarfile`` (not the converter's own header reader). Rules:

* layers apply bottom first onto a fresh ext4 root (``/`` 0755 root:root mtime 0 and
  ``/lost+found`` 0700); a ``./`` entry sets the root's metadata;
* ``.wh.NAME`` removes NAME (recursively) and ``.wh..wh..opq`` every child of its directory,
  but never what the same layer itself created, whatever the order in the tar; other
  ``.wh..wh.*`` names are ignored;
* a later entry replaces an earlier non-directory (and a non-directory replaces a directory
  tree); two directories merge, the later header's metadata wins; missing parents are implied
  as 0755 root:root directories with mtime 0;
* hard links share the inode the target path has at that moment, in this layer or a lower one;
  the link header's owner, mode, mtime and xattrs go to that shared inode (docker's extractor);
* mtime: PAX ``mtime`` with its fraction (floor seconds + nanoseconds), else the ustar field;
  PAX uid/gid/size/path/linkpath honoured; xattrs from ``SCHILY.xattr.*`` (``user.*`` only on
  files and directories, which is all Linux allows); symlinks have mode 0777.

Memory: per path its metadata and the sha256 of its content (32 bytes), never the content.
The caller checks the uncompressed stream against the config's ``diff_id``.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import BinaryIO

from overlaybd_provider.verify.errors import SourceLayerError
from overlaybd_provider.verify.xattrs import canonical

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
_XATTR_PAX = "SCHILY.xattr."
_READ = 1 << 20
_LEAF_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "chr", tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo"}


class Node:
    """One inode of the model; directories have ``children``, hard-linked paths share a node."""

    __slots__ = ("children", "gid", "kind", "links", "mode", "mtime", "mtime_ns", "rdev", "sha256", "size",
                 "target", "uid", "xattrs")

    def __init__(self, kind: str, mode: int = 0o755) -> None:
        self.kind = kind
        self.mode = mode
        self.uid = self.gid = self.mtime = self.mtime_ns = 0
        self.size = 0
        self.sha256: bytes | None = None
        self.target: bytes | None = None
        self.rdev: tuple[int, int] | None = None
        self.xattrs: dict[str, bytes] | None = None
        self.links = 0
        self.children: dict[bytes, Node] | None = {} if kind == "dir" else None


def _clean(name: str) -> list[bytes]:
    """Lexical cleaning: absolute, no '.', '..' resolved and clamped at the root."""
    parts: list[bytes] = []
    for comp in name.encode("utf-8", "surrogateescape").split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(comp)
    return parts


def entry_mtime(member: tarfile.TarInfo) -> tuple[int, int]:
    text = member.pax_headers.get("mtime")
    if text is not None:
        try:
            value = Decimal(text)
            sec = int(value.to_integral_value(rounding=ROUND_FLOOR))
            return sec, min(int((value - sec) * 1_000_000_000), 999_999_999)
        except (InvalidOperation, ValueError):
            pass
    return int(member.mtime), 0


class SourceTree:
    """The merged tree of the layers applied so far (:meth:`apply_layer`, bottom first)."""

    def __init__(self, *, hash_content: Callable[[bytes], bool] | None = None) -> None:
        self.root = Node("dir")
        lpf = Node("dir", 0o700)
        self.root.children[b"lost+found"] = lpf  # type: ignore[index]
        self.hash_content = hash_content
        self.entries = 0
        self.hashed_bytes = 0
        self._touched: set[bytes] = set()
        self._layer = ""

    # -- one layer -------------------------------------------------------------------------------
    def apply_layer(self, stream: BinaryIO, *, name: str) -> None:
        """Apply one uncompressed layer tar, then read ``stream`` to its end (so that a hashing or
        verifying stream sees every byte, also the padding after the end-of-archive blocks)."""
        self._layer = name
        self._touched = set()
        last = "<start of archive>"
        try:
            with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
                while True:
                    member = tf.next()
                    if member is None:
                        break
                    tf.members.clear()  # stream mode would keep every header in memory
                    self._entry(tf, member)
                    last = member.name
            while stream.read(_READ):
                pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SourceLayerError(f"{name}: corrupt or truncated tar after entry {last!r}: {exc}") from None
        self._touched = set()

    def _fail(self, member: tarfile.TarInfo, text: str) -> SourceLayerError:
        return SourceLayerError(f"{self._layer}: {member.name}: {text}")

    def _parent(self, parts: list[bytes], member: tarfile.TarInfo) -> Node:
        node = self.root
        for i, comp in enumerate(parts):
            assert node.children is not None
            child = node.children.get(comp)
            if child is None:
                child = node.children[comp] = Node("dir")
                self._touched.add(b"/".join(parts[:i + 1]))
            elif child.children is None:
                raise self._fail(member, f"parent /{b'/'.join(parts[:i + 1]).decode('utf-8', 'replace')} "
                                         "exists and is not a directory")
            node = child
        return node

    def _entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        parts = _clean(member.name)
        if not parts:
            if member.isdir():
                self._meta(self.root, member)
            return
        parent = self._parent(parts[:-1], member)
        children = parent.children
        assert children is not None
        base = parts[-1]
        path = b"/".join(parts)
        if base == OPAQUE:
            ppath = b"/".join(parts[:-1])
            for cname in sorted(children):
                self._remove(children, ppath, cname, spare=True)
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT):]
            if not hidden.startswith(WHITEOUT) and hidden in children:
                self._remove(children, b"/".join(parts[:-1]), hidden, spare=True)
            return
        existing = children.get(base)
        if member.isdir():
            if existing is not None and existing.children is not None:
                node = existing
            else:
                if existing is not None:
                    self._remove(children, b"/".join(parts[:-1]), base, spare=False)
                node = children[base] = Node("dir")
        elif member.islnk():
            node = self._lookup(_clean(member.linkname))
            if node is None or node.children is not None:
                raise self._fail(member, f"hard link target {member.linkname!r} does not exist or is a directory")
            if existing is not node:
                if existing is not None:
                    self._remove(children, b"/".join(parts[:-1]), base, spare=False)
                children[base] = node
                node.links += 1
        else:
            if existing is not None:
                self._remove(children, b"/".join(parts[:-1]), base, spare=False)
            node = children[base] = self._leaf(tf, member, path)
            node.links = 1
        self._meta(node, member)
        self._touched.add(path)

    def _leaf(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: bytes) -> Node:
        if member.isreg():
            node = Node("file", 0)
            node.size = member.size
            if self.hash_content is None or self.hash_content(b"/" + path):
                node.sha256 = self._content(tf, member)
            return node
        kind = _LEAF_KINDS.get(member.type)
        if kind is None:
            raise self._fail(member, f"unsupported tar entry type {member.type!r}")
        node = Node(kind, 0)
        if kind == "symlink":
            node.target = member.linkname.encode("utf-8", "surrogateescape")
            node.size = len(node.target)
        elif kind != "fifo":
            node.rdev = (member.devmajor, member.devminor)
        return node

    def _content(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        h = hashlib.sha256()
        if member.size:
            f = tf.extractfile(member)
            if f is None:
                raise self._fail(member, "cannot read the member's data")
            left = member.size
            while left:
                chunk = f.read(min(left, _READ))
                if not chunk:
                    raise self._fail(member, f"data ends {left} bytes early")
                h.update(chunk)
                left -= len(chunk)
            self.hashed_bytes += member.size
        return h.digest()

    def _meta(self, node: Node, member: tarfile.TarInfo) -> None:
        node.uid, node.gid = member.uid, member.gid
        node.mtime, node.mtime_ns = entry_mtime(member)
        node.mode = 0o777 if node.kind == "symlink" else member.mode & 0o7777
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX):
                continue
            name = key[len(_XATTR_PAX):]
            if name.startswith("user.") and node.kind not in ("file", "dir"):
                continue  # Linux refuses user.* xattrs on other types (EPERM, ignored by extractors)
            if node.xattrs is None:
                node.xattrs = {}
            node.xattrs[name] = canonical(name, value.encode("utf-8", "surrogateescape"))

    def _lookup(self, parts: list[bytes]) -> Node | None:
        node = self.root
        for comp in parts:
            if node.children is None:
                return None
            nxt = node.children.get(comp)
            if nxt is None:
                return None
            node = nxt
        return node

    def _remove(self, children: dict[bytes, Node], ppath: bytes, name: bytes, *, spare: bool) -> None:
        """Remove ``name`` and its subtree; with ``spare``, keep what this layer created (and
        the directories leading to it). Iterative: tar depth is not bounded by Python's stack."""
        stack: list[tuple[dict[bytes, Node], bytes, bytes, bool]] = [(children, ppath, name, False)]
        touched = self._touched if spare else ()
        while stack:
            kids, pp, nm, expanded = stack.pop()
            node = kids.get(nm)
            if node is None:
                continue
            path = pp + b"/" + nm if pp else nm
            if node.children is not None and node.children and not expanded:
                stack.append((kids, pp, nm, True))
                stack.extend((node.children, path, c, False) for c in sorted(node.children, reverse=True))
                continue
            if path in touched or (node.children is not None and node.children):
                continue
            del kids[nm]
            if node.children is None:
                node.links -= 1


def link_groups(root: Node) -> dict[int, list[bytes]]:
    """id(node) -> every path (``b"/a/b"``) of the non-directory nodes with more than one name."""
    out: dict[int, list[bytes]] = {}
    stack: list[tuple[bytes, Node]] = [(b"", root)]
    while stack:
        path, node = stack.pop()
        for name, child in (node.children or {}).items():
            cpath = path + b"/" + name
            if child.children is not None:
                stack.append((cpath, child))
            elif child.links > 1:
                out.setdefault(id(child), []).append(cpath)
    return out
