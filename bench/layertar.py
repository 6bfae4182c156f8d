"""Deterministic layer tars for the benchmark corpus: sorted entries, one fixed mtime, uid/gid 0.

``LayerWriter`` adds each parent directory once and streams big members from chunk iterators;
``describe_layer`` caches the facts a benchmark needs (size, entry count, diff id) in a sidecar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MTIME = 1_600_000_000


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tar and what a throughput figure needs about it."""

    path: Path
    tar_bytes: int
    entries: int
    diff_id: str

    @property
    def name(self) -> str:
        return self.path.stem



def _tarinfo(name: str, *, size: int = 0, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class LayerWriter:
    """Writes a layer tar, adding each parent directory once, and counts entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".part")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed in close())
        self._dirs: set[str] = set()
        self.entries = 0

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._tar.addfile(_tarinfo(d, kind=tarfile.DIRTYPE, mode=0o755))
                self.entries += 1

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        self._tar.addfile(_tarinfo(name, size=len(data), mode=mode), io.BytesIO(data))
        self.entries += 1

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes]) -> None:
        self._parents(name)
        self._tar.addfile(_tarinfo(name, size=size), _ChunkReader(chunks))
        self.entries += 1

    def add_tree(self, root: Path) -> None:
        """Adds a real directory tree (sorted walk, lstat kinds and modes, hard links kept)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            names = sorted(dirnames + filenames)
            for entry in names:
                full = os.path.join(dirpath, entry)
                arc = entry if rel_dir == "." else f"{rel_dir}/{entry}"
                if entry in dirnames:
                    if arc in self._dirs:
                        continue
                    self._dirs.add(arc)
                self._parents(arc)
                self._tar.add(full, arcname=arc, recursive=False, filter=_normalize)
                self.entries += 1

    def add_member(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Copies one member of another layer tar (directories only once)."""
        if member.isdir():
            name = member.name.rstrip("/")
            if name in self._dirs:
                return
            self._dirs.add(name)
        self._tar.addfile(member, tf.extractfile(member) if member.isreg() else None)
        self.entries += 1

    def close(self) -> Layer:
        self._tar.close()
        self._tmp.replace(self.path)
        return describe_layer(self.path, self.entries)


class _ChunkReader(io.RawIOBase):
    """File-like view of an iterator of byte chunks, so big members stream into the tar."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._chunk = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Returns exactly ``n`` bytes unless the chunks run out (tarfile insists on full reads)."""
        parts: list[bytes] = []
        want = n
        while want != 0:
            if self._pos >= len(self._chunk):
                self._chunk, self._pos = next(self._it, b""), 0
                if not self._chunk:
                    break
            end = len(self._chunk) if want < 0 else self._pos + want
            part = self._chunk[self._pos : end]
            self._pos += len(part)
            parts.append(part)
            if want > 0:
                want -= len(part)
        return b"".join(parts)


def describe_layer(path: Path, entries: int | None = None) -> Layer:
    """Layer facts, cached in a ``.json`` sidecar (sha256 of a 500 MB tar costs a second or two)."""
    side = path.with_suffix(".json")
    if side.exists() and entries is None:
        meta = json.loads(side.read_text())
        if meta.get("tar_bytes") == path.stat().st_size:
            return Layer(path, meta["tar_bytes"], meta["entries"], meta["diff_id"])
    if entries is None:
        with tarfile.open(path) as tf:
            entries = sum(1 for _ in tf)
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    layer = Layer(path, path.stat().st_size, entries, "sha256:" + h.hexdigest())
    side.write_text(json.dumps({"tar_bytes": layer.tar_bytes, "entries": entries, "diff_id": layer.diff_id}))
    return layer


def cached(path: Path) -> Layer | None:
    if path.exists() and path.with_suffix(".json").exists():
        return describe_layer(path)
    return None


def merge_layers(path: Path, layers: Iterable[Layer]) -> Layer:
    """One layer holding every entry of ``layers`` (later ones win), for the single-layer apply test."""
    done = cached(path)
    if done:
        return done
    srcs = list(layers)
    keep: dict[Path, set[str]] = {}
    seen: set[str] = set()
    for src in reversed(srcs):  # an upper layer's file hides the same path below
        with tarfile.open(src.path) as tf:
            names = {m.name for m in tf if not m.isdir()}
        keep[src.path] = names - seen
        seen |= names
    w = LayerWriter(path)
    for src in srcs:
        with tarfile.open(src.path) as tf:
            for member in tf:
                if member.isdir() or member.name in keep[src.path]:
                    w.add_member(tf, member)
    return w.close()
