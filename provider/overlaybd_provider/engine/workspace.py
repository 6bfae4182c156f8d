"""The staging directory of one conversion (docs/engine-stages.md) and its plan.json.

Everything is written to a temporary name in the same directory and renamed, so a killed
process leaves either the previous state or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.errors import writing

__all__ = ["ImagePlan", "LayerPlan", "Plan", "Workspace", "file_digest"]

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    """One layer of one image: its source, chain identity and what to do with it."""

    index: int
    source_digest: str
    source_size: int
    source_media_type: str
    diff_id: str
    chain_id: str
    uuid: str
    parent_uuid: str
    action: str = "build"  # build | reuse
    dedup: str = "miss"  # miss | hit | mount | local (reused from this staging dir)
    digest: str | None = None  # converted blob, once known
    size: int | None = None

    @property
    def key(self) -> str:
        return self.chain_id.split(":", 1)[1]


@dataclass
class ImagePlan:
    """One manifest to convert (the source itself, or one child of its index)."""

    platform: str
    child: int | None
    source_digest: str
    source_media_type: str
    source_size: int
    config_digest: str
    layers: list[LayerPlan] = field(default_factory=list)
    cached: dict[str, Any] | None = None  # manifest cache hit: {"digest", "size", "repo"}

    @property
    def label(self) -> str:
        return self.platform or self.source_digest[7:19]


@dataclass
class Plan:
    source: str
    target: str
    source_digest: str
    source_media_type: str
    source_size: int
    is_index: bool
    options: dict[str, Any]
    layer_format: str
    manifest_format: str
    images: list[ImagePlan] = field(default_factory=list)
    version: int = PLAN_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Plan:
        if doc.get("version") != PLAN_VERSION:
            raise StageError(f"plan.json version {doc.get('version')!r} is not {PLAN_VERSION}")
        images = []
        for img in doc["images"]:
            layers = [LayerPlan(**layer) for layer in img["layers"]]
            images.append(ImagePlan(**{**img, "layers": layers}))
        return cls(**{**doc, "images": images})


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
        return self.layer_dir(layer) / "source.blob"

    def lsmt_path(self, layer: LayerPlan) -> Path:
        return self.layer_dir(layer) / "layer.lsmt"

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
