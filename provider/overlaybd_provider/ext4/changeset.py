"""Applying one OCI layer tar (a changeset) to the filesystem: ext4-profile.md §7, corrected.

Where upstream's ``overlaybd-apply`` is wrong we follow the OCI image-spec changeset rules:
PAX mtime/uid/gid are honoured (seconds + nanoseconds), GNU sparse members are expanded,
a later entry for the same path replaces an earlier one of the same layer (last wins), and
whiteouts / opaque markers hide lower-layer entries only, never entries of this layer,
whatever their order in the archive. Symlinks are never followed: every path resolves
lexically inside the root (``..`` at the root stays at the root).
"""

from __future__ import annotations

import logging
import math
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from overlaybd_provider.ext4 import layout as L
from overlaybd_provider.ext4.errors import Ext4Error
from overlaybd_provider.ext4.fs import Filesystem
from overlaybd_provider.ext4.inode import Inode
from overlaybd_provider.ext4.namespace import KEEP_ALL, KEEP_CHILDREN, KEEP_NONE, DirState, Namespace, Path
from overlaybd_provider.ext4.tarstream import LayerTarError, TarMember
from overlaybd_provider.malloc import collector_paused

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = b".wh."
WHITEOUT_META_PREFIX = b".wh..wh."
OPAQUE_MARKER = b".wh..wh..opq"
FAST_SYMLINK_MAX = 59
SYMLINK_MAX = L.BLOCK_SIZE - 1
_XATTR_PAX = "SCHILY.xattr."

ID_MAX = 0xFFFFFFFF
#: ext4 with 256-byte inodes: signed 32-bit seconds plus two epoch bits in *_extra (the kernel's
#: EXT4_TIMESTAMP_MIN .. EXT4_EXTRA_TIMESTAMP_MAX, years 1901..2446)
TIME_MIN = -(1 << 31)
TIME_MAX = (1 << 34) - 1 + TIME_MIN
_PAX_INT = re.compile(r"[+-]?[0-9]+")

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_DEVICES = {tarfile.CHRTYPE: L.S_IFCHR, tarfile.BLKTYPE: L.S_IFBLK, tarfile.FIFOTYPE: L.S_IFIFO}


class LayerEntryError(Ext4Error):
    """A tar entry cannot be applied (bad name, missing link target, unsupported type...)."""


@dataclass
class ApplyStats:
    entries: int = 0
    files: int = 0
    dirs: int = 0
    data_bytes: int = 0
    clamped_times: int = 0  # entries whose mtime was outside ext4's range


def to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def clean_path(name: bytes, what: str, *, entry: bool = False) -> Path:
    """Lexically cleaned path components; never escapes the root. For an ``entry`` name, a last
    component that is a whiteout may be longer than 255 bytes: the whiteout itself is never
    written, only its target must fit (``.wh.`` + a 255-byte name is 259 bytes)."""
    comps = name.split(b"/")
    if (b"" not in comps and b"." not in comps and b".." not in comps
            and (len(name) <= 255 or max(map(len, comps)) <= 255)):  # a short name has no long part
        return tuple(comps)  # already clean (the usual case)
    parts: list[bytes] = []
    long_last = False  # the last part kept is a long whiteout name (checked by the applier)
    for comp in comps:
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if parts:
                parts.pop()
            long_last = False
            continue
        if long_last:  # a long whiteout name that turned out not to be the last component
            _too_long(parts[-1], what)
        if len(comp) > 255:
            if not (entry and comp.startswith(WHITEOUT_PREFIX)):
                _too_long(comp, what)
            long_last = True
        parts.append(comp)
    return tuple(parts)


def _too_long(comp: bytes, what: str) -> None:
    raise LayerEntryError(f"{what}: name component of {len(comp)} bytes (ext4 allows 255)")


def entry_mtime(ti: tarfile.TarInfo) -> tuple[int, int]:
    """(seconds, nanoseconds) from PAX ``mtime`` (floor + fraction) or the ustar field; not yet
    limited to what ext4 stores (:func:`clamp_time`). An infinite PAX value is one past a limit."""
    text = ti.pax_headers.get("mtime")
    if text is not None:
        try:
            value = Decimal(text)
            if value.is_infinite():
                return (TIME_MAX + 1 if value > 0 else TIME_MIN - 1), 0
            sec = int(value.to_integral_value(rounding="ROUND_FLOOR"))
            nsec = int((value - sec) * 1_000_000_000)
            return sec, min(nsec, 999_999_999)
        except (InvalidOperation, ValueError):
            pass
    mtime = ti.mtime
    if isinstance(mtime, float) and not math.isfinite(mtime):
        return (0 if math.isnan(mtime) else TIME_MAX + 1 if mtime > 0 else TIME_MIN - 1), 0
    return int(mtime), 0


def clamp_time(sec: int, nsec: int) -> tuple[int, int] | None:
    """The time clamped to ext4's range (as the kernel's ``timestamp_truncate``: nanoseconds
    dropped), or None when it fits."""
    if TIME_MIN <= sec <= TIME_MAX:
        return None
    return max(TIME_MIN, min(TIME_MAX, sec)), 0


def _owner_id(ti: tarfile.TarInfo, field: str, what: str) -> int:
    """uid/gid as ext4 stores it (32 bits); out of range is refused, never wrapped (2^40 would
    become 0, root). A PAX value that is not a number is refused too (tarfile would make it 0)."""
    text = ti.pax_headers.get(field) if ti.pax_headers else None
    if text is not None and not _PAX_INT.fullmatch(text):
        raise LayerEntryError(f"{what}: PAX {field} {text!r} is not a number")
    value = int(text) if text is not None else getattr(ti, field)
    if not 0 <= value <= ID_MAX:
        raise LayerEntryError(f"{what}: {field} {value} outside 0..{ID_MAX}")
    return value


def encode_dev(major: int, minor: int) -> bytes:
    """i_block for a device node (kernel ``ext4_set_inode``: old or new encoding)."""
    words = [0] * 15
    if major < 256 and minor < 256:
        words[0] = (major << 8) | minor
    else:
        words[1] = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return b"".join(w.to_bytes(4, "little") for w in words)


class ChangesetApplier:
    """Applies tar entries in order; ``finish`` re-applies directory times and flushes."""

    def __init__(self, fs: Filesystem, ns: Namespace) -> None:
        self.fs, self.ns = fs, ns
        self.layer_files: set[Path] = set()
        self.layer_dirs: set[Path] = set()
        self.dir_times: dict[Path, tuple[int, int]] = {}
        self.stats = ApplyStats()
        self._last_parent_path: Path | None = None
        self._last_parent: DirState | None = None
        self._times_of: tarfile.TarInfo | None = None  # the entry _times last looked at
        self._times_val = (0, 0)
        self.first_clamped: tuple[str, int] | None = None  # (entry, its mtime) for the warning
        self._take = lambda ti: None  # set by apply_tar: the reader's take_buffered, when it has one

    # -- bookkeeping ---------------------------------------------------------------------
    def _keep(self, path: Path) -> int:
        if path in self.layer_files:
            return KEEP_ALL
        if path in self.layer_dirs:
            return KEEP_CHILDREN
        return KEEP_NONE

    def _mark(self, path: Path, is_dir: bool) -> None:
        if is_dir:
            self.layer_files.discard(path)
            self.layer_dirs.add(path)
        else:
            self.layer_files.add(path)
            self.layer_dirs.discard(path)
        for i in range(len(path) - 1, 0, -1):
            anc = path[:i]
            if anc in self.layer_dirs:
                break
            self.layer_dirs.add(anc)

    def _parent(self, parent_path: Path, what: str) -> DirState:
        if parent_path == self._last_parent_path:  # consecutive entries share their directory
            return self._last_parent  # type: ignore[return-value]
        d = self._walk_parent(parent_path, what)
        self._last_parent_path, self._last_parent = parent_path, d
        return d

    def _remove(self, parent: DirState, parent_path: Path, name: bytes, keep=None) -> None:
        self._last_parent_path = self._last_parent = None  # a removal may take a cached directory
        self.ns.remove(parent, parent_path, name, keep)

    def _walk_parent(self, parent_path: Path, what: str) -> DirState:
        d = self.ns.root()
        for i, comp in enumerate(parent_path):
            e = d.entries.get(comp)
            if e is None:
                d = self.ns.mkdir(d, comp, lambda inode: None)
                self.layer_dirs.add(parent_path[:i + 1])  # implied parents belong to this layer
            elif e[1] == L.FT_DIR:
                d = self.ns.dir(e[0])
            else:
                shown = b"/".join(parent_path[:i + 1]).decode("utf-8", "replace")
                raise LayerEntryError(f"{what}: parent /{shown} exists and is not a directory")
        return d

    # -- metadata ---------------------------------------------------------------------------
    def _times(self, ti: tarfile.TarInfo, what: str) -> tuple[int, int]:
        """The entry's (seconds, nanoseconds) as stored, clamped to ext4's range; each entry is
        counted once however often its time is applied."""
        if ti is self._times_of:
            return self._times_val
        sec, nsec = entry_mtime(ti)
        clamped = clamp_time(sec, nsec)
        if clamped is not None:
            self.stats.clamped_times += 1
            if self.first_clamped is None:
                self.first_clamped = (what, sec)
            sec, nsec = clamped
        self._times_of, self._times_val = ti, (sec, nsec)
        return sec, nsec

    def _set_meta(self, inode: Inode, ti: tarfile.TarInfo, what: str, *, chmod: bool = True) -> None:
        inode.uid, inode.gid = _owner_id(ti, "uid", what), _owner_id(ti, "gid", what)
        inode.l_i_version += 1
        pax = ti.pax_headers
        attrs = {k[len(_XATTR_PAX):]: to_bytes(v) for k, v in pax.items()
                 if k.startswith(_XATTR_PAX)} if pax else {}
        if inode.file_type not in (L.S_IFREG, L.S_IFDIR):
            # Linux refuses user.* xattrs on other file types (EPERM, ignored by extractors)
            attrs = {k: v for k, v in attrs.items() if not k.startswith("user.")}
        if attrs:
            try:
                if inode.file_acl or any(inode.ibody):  # setxattr semantics: merge, new wins
                    merged = self.fs.read_xattrs(inode)
                    merged.update(attrs)
                    attrs = merged
                self.fs.set_xattrs(inode, attrs, what)
            except Ext4Error as exc:
                raise LayerEntryError(f"{what}: {exc}") from None
        inode.set_times(*self._times(ti, what))
        inode.l_i_version += 1
        if chmod:
            inode.i_mode = (inode.i_mode & L.S_IFMT) | (ti.mode & 0o7777)
            inode.l_i_version += 1

    # -- entries ------------------------------------------------------------------------------
    def apply_entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        what = ti.name
        self.fs.alloc.context = what
        self.stats.entries += 1
        path = clean_path(to_bytes(ti.name), what, entry=True)
        kind = ti.type
        is_dir = ti.isdir()
        if not (is_dir or kind in _REGULAR or kind in _DEVICES or kind in (tarfile.LNKTYPE, tarfile.SYMTYPE)):
            raise LayerEntryError(f"{what}: unsupported tar entry type {kind!r}")
        if not path:
            if is_dir:
                self._update_dir(L.ROOT_INO, path, ti, what)
            return
        parent_path, base = path[:-1], path[-1]
        parent = self._parent(parent_path, what)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, parent_path, base, what)
            return
        link_ino = None
        if kind == tarfile.LNKTYPE:
            target = clean_path(to_bytes(ti.linkname), what)
            found = self.ns.lookup_path(target) if target else None
            if found is None:
                raise LayerEntryError(f"{what}: hard link target {ti.linkname!r} does not exist")
            if found[1] == L.FT_DIR:
                raise LayerEntryError(f"{what}: hard link target {ti.linkname!r} is a directory")
            link_ino = found[0]
        existing = parent.entries.get(base)
        if existing is not None:
            if existing[1] == L.FT_DIR and is_dir:
                self._update_dir(existing[0], path, ti, what)
                self._mark(path, True)
                return
            if link_ino is not None and existing[0] == link_ino:
                self._mark(path, False)
                return
            self._remove(parent, parent_path, base)
        if is_dir:
            d = self.ns.mkdir(parent, base, lambda inode: self._set_meta(inode, ti, what))
            self.dir_times[path] = self._times(ti, what)
            self.stats.dirs += 1
            del d
        elif link_ino is not None:
            self.ns.link(parent, base, link_ino, what)
            inode = self.fs.get_inode(link_ino)
            self._set_meta(inode, ti, what, chmod=(inode.file_type != L.S_IFLNK))
            self.fs.put_inode(link_ino, inode)
        else:
            self._create(tf, ti, parent, base, what)
        self._mark(path, is_dir)

    def _whiteout(self, parent: DirState, parent_path: Path, base: bytes, what: str) -> None:
        if base == OPAQUE_MARKER:
            for cname in sorted(parent.entries):
                self._remove(parent, parent_path, cname, self._keep)
        elif not base.startswith(WHITEOUT_META_PREFIX):  # other .wh..wh.* entries are ignored
            target = base[len(WHITEOUT_PREFIX):]
            if len(target) > 255:
                raise LayerEntryError(f"{what}: whiteout of a name of {len(target)} bytes (ext4 allows 255)")
            if target and target in parent.entries:
                self._remove(parent, parent_path, target, self._keep)

    def _update_dir(self, ino: int, path: Path, ti: tarfile.TarInfo, what: str) -> None:
        inode = self.fs.get_inode(ino)
        self._set_meta(inode, ti, what)
        self.fs.put_inode(ino, inode)
        self.dir_times[path] = self._times(ti, what)
        self.stats.dirs += 1

    def _create(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: DirState, base: bytes,
                what: str) -> None:
        fs = self.fs
        kind = ti.type
        if type(ti) is TarMember and ti.size and kind in _REGULAR and not fs.dev.turbo:
            data = self._take(ti)
            if data is not None:
                self._small_file(ti, parent, base, what, data)
                return
        if kind in _REGULAR:
            ino, inode = fs.new_inode(L.S_IFREG | (ti.mode & 0o7777))
            if ti.size and fs.dev.turbo and getattr(ti, "sparse", None) is None:
                fs.map_target_data(inode, ti.offset_data, ti.size)  # TurboOCI: data stays in the source
                self.stats.data_bytes += ti.size
            elif ti.size and (data := self._take(ti)) is not None:
                fs.write_buffered(inode, data)  # a small file still in the tar buffer: one copy
                self.stats.data_bytes += ti.size
            elif ti.size:
                src = tf.extractfile(ti)
                if src is None:
                    raise LayerEntryError(f"{what}: cannot read member data")
                fs.write_data(inode, src.read, ti.size, what, readinto=getattr(src, "readinto", None))
                self.stats.data_bytes += ti.size
            ftype = L.FT_REG_FILE
            self.stats.files += 1
        elif kind == tarfile.SYMTYPE:
            target = to_bytes(ti.linkname)
            if not target or len(target) > SYMLINK_MAX:
                raise LayerEntryError(f"{what}: symlink target of {len(target)} bytes (allowed 1..{SYMLINK_MAX})")
            ino, inode = fs.new_inode(L.S_IFLNK | 0o777)
            if len(target) <= FAST_SYMLINK_MAX:
                inode.i_block = target + bytes(60 - len(target))
                inode.size = len(target)
            else:
                fs.write_small_block(inode, target)
            ftype = L.FT_SYMLINK
        else:
            fmt = _DEVICES[kind]
            ino, inode = fs.new_inode(fmt | (ti.mode & 0o7777))
            if fmt != L.S_IFIFO:
                inode.i_block = encode_dev(ti.devmajor, ti.devminor)
            ftype = L.MODE_TO_FT[fmt]
        self._set_meta(inode, ti, what, chmod=(kind != tarfile.SYMTYPE))
        fs.put_inode(ino, inode)
        self.ns.add_entry(parent, base, ino, ftype)

    def _small_file(self, ti: TarMember, parent: DirState, base: bytes, what: str, data: memoryview) -> None:
        """:meth:`_create` + :meth:`_set_meta` of a regular file from a plain header (no pax
        records: no xattrs, ustar times and ids) whose data is in the tar buffer: the bulk of
        a layer's entries, so the steps are inlined; the inode bytes are the same."""
        fs = self.fs
        uid, gid = ti.uid, ti.gid
        if not (0 <= uid <= ID_MAX and 0 <= gid <= ID_MAX):
            _owner_id(ti, "uid", what)  # raises the error of the general path
            _owner_id(ti, "gid", what)
        ino, inode = fs.new_inode(L.S_IFREG | (ti.mode & 0o7777))
        fs.write_buffered(inode, data)
        stats = self.stats
        stats.data_bytes += ti.size
        stats.files += 1
        inode.i_uid, inode.l_i_uid_high = uid & 0xFFFF, uid >> 16
        inode.i_gid, inode.l_i_gid_high = gid & 0xFFFF, gid >> 16
        inode.set_times(*self._times(ti, what))
        inode.l_i_version = 3  # owner, times and mode set, as _set_meta counts them
        fs.put_inode(ino, inode)
        parent.entries[base] = (ino, L.FT_REG_FILE)  # Namespace.add_entry
        parent.dirty = True

    # -- end of archive ----------------------------------------------------------------------
    def finish(self) -> None:
        """Directory times again (children never touch them here, but a merged dir may have
        been re-declared), then rebuild changed directories and flush all metadata."""
        for path in sorted(self.dir_times):
            found = self.ns.lookup_path(path)
            if found is None or found[1] != L.FT_DIR:
                continue
            inode = self.fs.get_inode(found[0])
            inode.set_times(*self.dir_times[path])
            inode.l_i_version += 1
            self.fs.put_inode(found[0], inode)
        self.ns.flush()
        self.fs.flush()


def tar_failure(tf: tarfile.TarFile, current: tarfile.TarInfo | None, last: str,
                exc: BaseException) -> LayerTarError:
    """The one line for a tar that broke while ``current``'s data was read (a truncated member:
    how much of it arrived), or after entry ``last``."""
    if current is not None and current.size and hasattr(tf, "tell"):
        got = max(0, min(current.size, tf.tell() - current.offset_data))
        return LayerTarError(f"truncated tar: entry {current.name!r} declares {current.size} bytes of data, "
                             f"the archive ends after {got}")
    return LayerTarError(f"corrupt or truncated tar after entry {last!r}: {exc}")


def apply_members(tf: tarfile.TarFile, apply_entry: Callable[[tarfile.TarInfo], None],
                  finish: Callable[[], None]) -> None:
    """Every member of ``tf`` through ``apply_entry``, the end of the archive checked, then
    ``finish``: all with the cycle collector paused (``malloc.collector_paused``). A tar that
    breaks becomes one :class:`LayerTarError` naming the entry it broke in or after."""
    last = "<start of archive>"
    current = None  # the entry being applied (its data is being read)
    with collector_paused():
        try:
            for ti in tf:
                current = ti
                apply_entry(ti)
                last, current = ti.name, None
        except (tarfile.TarError, EOFError) as exc:
            raise tar_failure(tf, current, last, exc) from None
        check_tar_end(tf, last)
        finish()


def check_tar_end(tf: tarfile.TarFile, last: str) -> None:
    """Raise when the tar reader stopped early on something it could not read as an end."""
    end = getattr(tf, "_obd_end", None)
    if end is not None:
        raise LayerTarError(f"corrupt or truncated tar after entry {last!r}: {end}")


def apply_tar(fs: Filesystem, tf: tarfile.TarFile, *, name: str = "layer") -> ApplyStats:
    """Apply every member of an open stream-mode tarfile, then flush; ``name`` (the layer's
    file) is for the one warning about clamped times."""
    ns = Namespace(fs)
    applier = ChangesetApplier(fs, ns)
    take = getattr(tf, "take_buffered", None)
    if take is not None:
        applier._take = take
    apply_members(tf, lambda ti: applier.apply_entry(tf, ti), applier.finish)
    if applier.first_clamped is not None:
        entry, sec = applier.first_clamped
        n = applier.stats.clamped_times
        log.warning("%s: %d %s ext4 cannot store, clamped to %d..%d (first: %r, mtime %d)", name, n,
                    "entry has a time" if n == 1 else "entries have times", TIME_MIN, TIME_MAX, entry, sec)
    return applier.stats
