"""Machine-local, content-addressed cache of converted layer blobs (docs/dedup.md, "Blob cache").

A reused lower that was built or downloaded on this machine is linked from here instead of being
downloaded again. Entries are ``<root>/sha256/<hex>`` plus a ``<hex>.json`` sidecar that records
the digest and a stat fingerprint (size, inode, mtime_ns) taken when *we* wrote the entry
atomically after hashing it. A hit is trusted only when the file still has that fingerprint: a
truncated, rewritten or replaced entry fails the check and is dropped (the caller downloads and
verifies the digest as before). A same-size in-place edit that also restores the mtime would pass;
that takes deliberate tampering with a directory owned by the user, which is outside the threat
model (the registry copy is the authority; the dedup database trusts the registry the same way).
Pass ``verify=True`` to :meth:`BlobCache.get` to re-hash instead.

LRU: each hit touches the sidecar; :meth:`BlobCache.trim` evicts the least recently used entries
until the total is under ``max_bytes``. Concurrent processes are safe: every write is a temp
file + rename, and eviction of an entry in use only unlinks a name (open files and hard links in
work directories keep their data).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_MAX_BYTES", "BlobCache", "default_cache_dir"]

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 20 << 30


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/overlaybd/blobs`` (``~/.cache/overlaybd/blobs`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overlaybd" / "blobs"


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_mtime_ns]


def _link_or_copy(src: Path, dest: Path) -> None:
    """Place ``src``'s content at ``dest`` atomically: hard link when possible, else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class BlobCache:
    """Blobs by ``sha256:`` digest under ``root``, bounded to ``max_bytes`` (LRU)."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _paths(self, digest: str) -> tuple[Path, Path]:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        base = self.root / algo
        return base / hexdigest, base / f"{hexdigest}.json"

    def get(self, digest: str, size: int, dest: Path, *, verify: bool = False) -> bool:
        """Link the cached blob to ``dest`` (atomically); False on a miss or an invalid entry."""
        blob, meta = self._paths(digest)
        try:
            info = json.loads(meta.read_bytes())
            st = blob.stat()
        except (FileNotFoundError, ValueError):
            return False
        ok = info.get("digest") == digest and st.st_size == size and info.get("stat") == _fingerprint(st)
        if ok and verify:
            from overlaybd_provider.engine.transfer.workspace import file_digest

            ok = file_digest(blob) == (digest, size)
        if not ok:
            log.warning("blob cache: entry %s is invalid (changed since written): dropped", digest)
            self._drop(digest)
            return False
        _link_or_copy(blob, dest)
        with contextlib.suppress(OSError):
            os.utime(meta)  # LRU mark
        log.debug("blob cache: hit %s", digest)
        return True

    def put(self, path: Path, digest: str, size: int) -> None:
        """Add ``path`` whose digest/size the caller has verified (built or downloaded+checked)."""
        if self.max_bytes <= 0 or size > self.max_bytes:
            return
        blob, meta = self._paths(digest)
        try:
            if blob.exists() and meta.exists():
                return
            blob.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, blob)
            st = blob.stat()
            if st.st_size != size:
                raise OSError(f"{path}: size {st.st_size} != {size}")
            data = json.dumps({"digest": digest, "size": size, "stat": _fingerprint(st)}).encode()
            fd, tmp = tempfile.mkstemp(prefix=f".{meta.name}.", suffix=".tmp", dir=meta.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, meta)
        except OSError as exc:  # the cache is an optimisation: never fail a conversion over it
            log.warning("blob cache: cannot add %s: %s", digest, exc)
            return
        self.trim()

    def _drop(self, digest: str) -> None:
        for p in self._paths(digest):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def entries(self) -> list[tuple[float, int, str]]:
        """``(last_used, size, digest)`` of every complete entry, oldest first."""
        out = []
        base = self.root / "sha256"
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            hexdigest = name[:-5]
            try:
                used = (base / name).stat().st_mtime
                size = (base / hexdigest).stat().st_size
            except FileNotFoundError:
                continue
            out.append((used, size, f"sha256:{hexdigest}"))
        return sorted(out)

    def trim(self) -> None:
        """Evict least recently used entries until the total size is at most ``max_bytes``."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, digest in entries:
            if total <= self.max_bytes:
                break
            log.debug("blob cache: evict %s (%d bytes)", digest, size)
            self._drop(digest)
            total -= size
