"""The work directory of one conversion (or of one stage run) and its plan.json.

Everything is written to a temporary name in the same directory and renamed, so a killed
process leaves either the previous state or the new one, never a half-written file.
:func:`scratch` makes a private, locked work directory that is removed when the work ends, and
:func:`sweep_scratch` removes the ones whose process died (``kill -9``, a lost worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.plan.model import LayerPlan, Plan
from overlaybd_provider.errors import writing

__all__ = ["Workspace", "file_digest", "scratch", "sweep_scratch"]

def file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class Workspace:
    """Paths and atomic writes inside one staging directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # layout -----------------------------------------------------------------

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest.split(":", 1)[1]

    def layer_dir(self, layer: LayerPlan) -> Path:
        return self.root / "layers" / layer.key

    def source_blob(self, layer: LayerPlan) -> Path:
        """By source digest: the native and the TurboOCI plan of one run share the download."""
        return self.root / "sources" / layer.source_digest.split(":", 1)[1]

    def source_lock(self, layer: LayerPlan) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault("source:" + layer.source_digest, threading.RLock())

    def part_blob(self, layer: LayerPlan, n: int) -> Path:
        """Source layer ``n`` of a flattened layer (``layer.parts``)."""
        return self.layer_dir(layer) / f"source-{n:03d}.blob"

    def blob_path(self, layer: LayerPlan) -> Path:
        return self.layer_dir(layer) / "overlaybd.commit"

    def blob_info_path(self, layer: LayerPlan) -> Path:
        return self.layer_dir(layer) / "blob.json"

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def layer_lock(self, layer: LayerPlan) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault(layer.key, threading.RLock())

    # atomic writes -------------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self, path: Path) -> Iterator[BinaryIO]:
        """Open a temp file next to ``path`` (``w+b``); rename over ``path`` on success. A full
        disk is a :class:`StorageError` naming ``path``."""
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with writing(path), os.fdopen(fd, "w+b") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_bytes(self, path: Path, data: bytes) -> None:
        with self.atomic(path) as f:
            f.write(data)

    def write_json(self, path: Path, doc: Any) -> None:
        self.write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")

    def read_json(self, path: Path) -> Any:
        return json.loads(path.read_bytes())

    def put_object(self, digest: str, data: bytes) -> None:
        path = self.object_path(digest)
        if not path.exists():
            self.write_bytes(path, data)

    def get_object(self, digest: str) -> bytes:
        try:
            data = self.object_path(digest).read_bytes()
        except FileNotFoundError:
            raise StageError(f"{self.root}: object {digest} missing: run pull first") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StageError(f"{self.root}: object {digest} is corrupt: rerun pull")
        return data

    # plan ----------------------------------------------------------------------

    def save_plan(self, plan: Plan) -> None:
        self.write_json(self.plan_path, plan.to_json())

    def load_plan(self) -> Plan:
        try:
            doc = self.read_json(self.plan_path)
        except FileNotFoundError:
            raise StageError(f"{self.root}: no plan.json: run the pull stage first") from None
        return Plan.from_json(doc)

    # blob state ----------------------------------------------------------------

    def blob_info(self, layer: LayerPlan, *, verify: bool = False) -> dict[str, Any] | None:
        """``{"digest", "size"}`` of the finished layer blob, or None when absent/invalid."""
        try:
            info = self.read_json(self.blob_info_path(layer))
        except (FileNotFoundError, ValueError):
            return None
        path = self.blob_path(layer)
        try:
            if path.stat().st_size != info["size"]:
                return None
        except FileNotFoundError:
            return None
        if verify and file_digest(path)[0] != info["digest"]:
            return None
        return info

    def set_blob_info(self, layer: LayerPlan, digest: str, size: int) -> None:
        self.write_json(self.blob_info_path(layer), {"digest": digest, "size": size})


_SCRATCH_LOCK = ".lock"


@contextlib.contextmanager
def scratch(base: str | os.PathLike[str] | None, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``base`` (the system temp dir when None), locked (``flock``) while
    in use and removed afterwards, whatever happens. Scratch directories left by a process that
    died are removed by the next :func:`sweep_scratch` on that machine."""
    import fcntl
    import shutil

    if base is not None:
        Path(base).mkdir(parents=True, exist_ok=True)
        sweep_scratch(base)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    lock = open(root / _SCRATCH_LOCK, "w")  # noqa: SIM115 - held until the directory is gone
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        lock.close()


def sweep_scratch(base: str | os.PathLike[str], *, min_age: float = 60.0) -> list[Path]:
    """Remove scratch directories under ``base`` whose lock no process holds (and that are at
    least ``min_age`` seconds old, so one being created is never taken); returns them."""
    import fcntl
    import shutil
    import time

    removed = []
    try:
        entries = list(Path(base).iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        lock_path = entry / _SCRATCH_LOCK
        try:
            if not entry.is_dir() or time.time() - lock_path.stat().st_mtime < min_age:
                continue
        except FileNotFoundError:
            continue
        try:
            with open(lock_path) as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        except (BlockingIOError, FileNotFoundError):
            continue  # in use by a live process, or removed meanwhile
    return removed
