"""Walk the image's directory tree and the source model side by side and record every difference.

The walk is iterative (depth is not bounded by Python's stack), visits names in sorted order
(deterministic output) and drives the checker's passes 2-4 on the way: each directory is read
and checked once, each entry is counted for link counts and connectivity. File contents are
hashed through the stack reader only where the source model has a hash (``--sample``), once per
inode. Nothing of the image tree is kept beyond the current directory and the hard-link groups.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.verify.ext4read import Ext4Reader, FileMap, InodeRec, decode_dev
from overlaybd_provider.verify.findings import Findings, show_path
from overlaybd_provider.verify.fsck import Checker
from overlaybd_provider.verify.source import Node
from overlaybd_provider.verify.xattrs import read_values

_SHOW_HEX = 16
_EMPTY = hashlib.sha256(b"").digest()
_SHOW_LINKS = 6


@dataclass
class WalkStats:
    paths: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0


def fmt_mtime(sec: int, nsec: int) -> str:
    return f"{sec}.{nsec:09d}".rstrip("0") if nsec else str(sec)


def _ignore(_text: str) -> None:
    """Mapping problems were reported by pass 1."""


def _short(value: bytes | None) -> str:
    if value is None:
        return "missing"
    text = repr(value)
    return f"{len(value)} bytes {text[:40]}{'...' if len(text) > 40 else ''}"


class ContentHashes:
    """sha256 of every regular file's content by inode, computed during pass 1 (``on_file``)."""

    def __init__(self, reader: Ext4Reader) -> None:
        self.r = reader
        self.digests: dict[int, bytes] = {}
        self.bytes = 0

    def __call__(self, rec: InodeRec, fm: FileMap) -> None:
        if rec.size == 0:
            return
        h = hashlib.sha256()
        for chunk in self.r.read_data(fm, rec.size):
            h.update(chunk)
        self.digests[rec.ino] = h.digest()
        self.bytes += rec.size


class TreeComparer:
    def __init__(self, reader: Ext4Reader, checker: Checker, findings: Findings,
                 hashes: ContentHashes | None = None) -> None:
        self.r = reader
        self.checker = checker
        self.f = findings
        self.stats = WalkStats()
        self._hashes: dict[int, bytes] = hashes.digests if hashes is not None else {}
        self._links: list[tuple[bytes, int, int]] = []  # path, id(source node), image inode
        self._counted: set[int] = set()  # inodes whose content was compared

    def run(self, src_root: Node, link_groups: dict[int, list[bytes]]) -> WalkStats:
        r = self.r
        rec = r.inode(L.ROOT_INO)
        if not rec.is_dir() or not self.checker.in_use(L.ROOT_INO):
            self.checker.bad("the root inode (2) is not an in-use directory: the tree cannot be compared")
            self.checker.finish()
            return self.stats
        self.checker.reference(L.ROOT_INO, rec, b"/")
        self._compare(b"", src_root, rec)
        stack: list[tuple[bytes, Node | None, InodeRec, int]] = [(b"", src_root, rec, L.ROOT_INO)]
        while stack:
            path, src, drec, parent = stack.pop()
            stack.extend(reversed(self._directory(path, src, drec, parent)))
        self._check_links(link_groups)
        self.checker.finish()
        return self.stats

    def _directory(self, path: bytes, src: Node | None, rec: InodeRec,
                   parent: int) -> list[tuple[bytes, Node | None, InodeRec, int]]:
        r, checker = self.r, self.checker
        listing = checker.listing(rec)
        if listing.parent and listing.parent != parent:
            checker.bad(f"directory inode {rec.ino} ({show_path(path)}): '..' is {listing.parent}, should be {parent}")
        entries = listing.entries
        src_children = src.children if src is not None and src.children is not None else {}
        filetype = bool(r.sb.s_feature_incompat & L.INCOMPAT_FILETYPE)
        todo: list[tuple[bytes, Node | None, InodeRec, int]] = []
        subdirs = 0
        for name in sorted(entries.keys() | src_children.keys()):
            cpath = path + b"/" + name
            s = src_children.get(name)
            e = entries.get(name)
            if e is None:
                self._missing(cpath, s)
                continue
            cino, ftype = e
            if not checker.in_use(cino):
                checker.bad(f"{show_path(cpath)}: entry points at unused inode {cino}")
                if s is not None:
                    self._missing(cpath, s)
                continue
            crec = r.inode(cino)
            is_dir = crec.is_dir()
            subdirs += is_dir
            if filetype and L.MODE_TO_FT.get(crec.ftype) != ftype:
                checker.bad(f"{show_path(cpath)}: directory entry file type {ftype} does not match "
                            f"inode {cino} ({crec.kind})")
            descend = checker.reference(cino, crec, cpath)
            self.stats.paths += 1
            if s is None:
                self.f.add("extra", cpath, f"{show_path(cpath)}: {crec.kind} in the image, not in the source",
                           None, crec.kind)
            elif self._compare(cpath, s, crec):
                if s.links > 1 or crec.links > 1:
                    self._links.append((cpath, id(s), cino))
            elif s.children:
                for cname in sorted(s.children):
                    self._missing(cpath + b"/" + cname, s.children[cname])
            if is_dir and descend:
                todo.append((cpath, s if s is not None and s.children is not None else None, crec, rec.ino))
        checker.dir_links(rec, subdirs)
        return todo

    def _missing(self, path: bytes, node: Node | None) -> None:
        stack = [(path, node)]
        while stack:
            p, n = stack.pop()
            if n is None:
                continue
            self.f.add("missing", p, f"{show_path(p)}: {n.kind} in the source, missing from the image", n.kind, None)
            if n.children:
                stack.extend((p + b"/" + c, n.children[c]) for c in sorted(n.children, reverse=True))

    # -- one path ----------------------------------------------------------------------------------
    def _compare(self, path: bytes, s: Node, rec: InodeRec) -> bool:
        """Compare metadata (and content); False when the types differ."""
        shown = show_path(path)
        add = self.f.add
        kind = rec.kind
        if s.kind != kind:
            add("type", path, f"{shown}: {s.kind} in source, {kind} in image", s.kind, kind)
            return False
        mode = rec.mode & 0o7777
        if s.mode != mode:
            add("mode", path, f"{shown}: mode {s.mode:04o} in source, {mode:04o} in image", s.mode, mode)
        if (s.uid, s.gid) != (rec.uid, rec.gid):
            add("owner", path, f"{shown}: owner {s.uid}:{s.gid} in source, {rec.uid}:{rec.gid} in image",
                [s.uid, s.gid], [rec.uid, rec.gid])
        if (s.mtime, s.mtime_ns) != (rec.mtime, rec.mtime_ns):
            a, b = fmt_mtime(s.mtime, s.mtime_ns), fmt_mtime(rec.mtime, rec.mtime_ns)
            add("mtime", path, f"{shown}: mtime {a} in source, {b} in image", a, b)
        self._xattrs(path, s, rec)
        if kind == "file":
            self._file(path, s, rec)
        elif kind == "symlink":
            target = self._symlink_target(rec)
            if target != s.target:
                add("symlink", path, f"{shown}: symlink target {s.target!r} in source, {target!r} in image",
                    _text(s.target), _text(target))
        elif kind in ("chr", "blk"):
            dev = decode_dev(rec.i_block)
            if s.rdev != dev:
                a = f"{s.rdev[0]}:{s.rdev[1]}" if s.rdev else "none"
                add("device", path, f"{shown}: device {a} in source, {dev[0]}:{dev[1]} in image", a,
                    f"{dev[0]}:{dev[1]}")
        return True

    def _xattrs(self, path: bytes, s: Node, rec: InodeRec) -> None:
        block = self.r.dev.block(rec.file_acl) if rec.file_acl and self.r.in_fs(rec.file_acl) else None
        got = read_values(rec.ibody, block) or {}
        want = s.xattrs or {}
        if got == want:
            return
        names = sorted(want.keys() | got.keys())
        parts = [f"{n} {_short(want.get(n))} in source, {_short(got.get(n))} in image"
                 for n in names if want.get(n) != got.get(n)]
        self.f.add("xattr", path, f"{show_path(path)}: xattr " + "; ".join(parts),
                   {n: v.hex() for n, v in want.items()}, {n: v.hex() for n, v in got.items()})

    def _file(self, path: bytes, s: Node, rec: InodeRec) -> None:
        if s.size != rec.size:
            self.f.add("size", path, f"{show_path(path)}: size {s.size} in source, {rec.size} in image",
                       s.size, rec.size)
            return
        if s.sha256 is None:
            return
        digest = _EMPTY if rec.size == 0 else self._hashes.get(rec.ino)
        if digest is None:
            h = hashlib.sha256()
            fm = self.r.file_map(rec, _ignore)
            for chunk in self.r.read_data(fm, rec.size):
                h.update(chunk)
            digest = h.digest()
            if rec.links > 1:
                self._hashes[rec.ino] = digest
        if rec.size and rec.ino not in self._counted:
            self._counted.add(rec.ino)
            self.stats.files_hashed += 1
            self.stats.bytes_hashed += rec.size
        if digest != s.sha256:
            a, b = s.sha256.hex(), digest.hex()
            self.f.add("content", path, f"{show_path(path)}: content sha256 {a[:_SHOW_HEX]}... in source, "
                       f"{b[:_SHOW_HEX]}... in image", a, b)

    def _symlink_target(self, rec: InodeRec) -> bytes:
        if self.r.is_fast_symlink(rec):
            return rec.i_block[:min(rec.size, 60)]
        return self.r.symlink_target(rec, self.r.file_map(rec, _ignore))

    def _check_links(self, link_groups: dict[int, list[bytes]]) -> None:
        multi = self.checker.multi
        for path, sid, ino in self._links:
            want = sorted(link_groups.get(sid, [path]))
            got = sorted(multi.get(ino, [path]))
            if want != got:
                self.f.add("hardlink", path, f"{show_path(path)}: hard links {_paths(want)} in source, "
                           f"{_paths(got)} in image", [show_path(p) for p in want], [show_path(p) for p in got])


def _paths(paths: list[bytes]) -> str:
    shown = " ".join(show_path(p) for p in paths[:_SHOW_LINKS])
    return shown + (f" (+{len(paths) - _SHOW_LINKS})" if len(paths) > _SHOW_LINKS else "")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")
