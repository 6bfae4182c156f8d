"""Where the stage operators keep files between tasks.

A staging area is one directory per conversion (``<base>/<dag>/<run>/<image>``). With a local base
(the default, ``$AIRFLOW_HOME/overlaybd/staging``) every stage works in it directly, which is right
for the Local executor or workers sharing a volume. With an object-storage base
(``s3://conn@bucket/prefix``, anything ``ObjectStoragePath`` opens) consecutive stages may run on
different Celery workers: each stage downloads the area into a local cache first and uploads what
it wrote afterwards, file by file, streaming, skipping files already present with the same size
(stage outputs are content-addressed or written once, so name + size identifies them).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_COPY_CHUNK = 8 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _conf(key: str) -> str | None:
    try:
        from airflow.sdk.configuration import conf

        return conf.get("overlaybd", key, fallback=None) or None
    except Exception:
        return None


def default_staging_base() -> str:
    """``[overlaybd] staging_base``, else ``$AIRFLOW_HOME/overlaybd/staging``."""
    configured = _conf("staging_base")
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME") or str(Path("~/airflow").expanduser())
    return str(Path(home) / "overlaybd" / "staging")


def safe_component(text: str, limit: int = 80) -> str:
    """A path component from free text (image references contain ``/`` and ``:``)."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return cleaned[:limit]


def staging_key(dag_id: str, run_id: str, label: str) -> str:
    return "/".join(safe_component(p) for p in (dag_id, run_id, label))


def is_object_storage(base: str) -> bool:
    return "://" in base


@dataclass(frozen=True)
class StagingArea:
    """One conversion's staging directory: ``location`` is what travels in XCom."""

    location: str

    @property
    def remote(self) -> bool:
        return is_object_storage(self.location)

    @classmethod
    def for_task(cls, base: str | None, key: str) -> StagingArea:
        base = (base or default_staging_base()).rstrip("/")
        return cls(f"{base}/{key}")

    def _remote_path(self):
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(self.location)

    def local_dir(self) -> Path:
        """The directory stages read and write (a per-area cache for remote areas)."""
        if not self.remote:
            return Path(self.location)
        cache_root = _conf("staging_cache") or os.path.join(tempfile.gettempdir(), "overlaybd-staging-cache")
        scheme, _, rest = self.location.partition("://")
        return Path(cache_root) / safe_component(scheme) / rest.replace("@", "_at_").lstrip("/")

    @contextmanager
    def stage(self) -> Iterator[Path]:
        """Yield the local directory, synchronised from the store before and back to it after.

        For a remote area the local copy is dropped once uploaded (also after a failure): the
        store is the one authoritative copy, and workers do not accumulate every image they touched.
        """
        local = self.local_dir()
        local.mkdir(parents=True, exist_ok=True)
        if not self.remote:
            yield local
            return
        try:
            got = self.download(local)
            log.info("staging: fetched %d file(s) from %s", got, self.location)
            yield local
            sent = self.upload(local)
            log.info("staging: stored %d file(s) to %s", sent, self.location)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def exists(self) -> bool:
        """Whether the area holds anything (in the store for a remote area)."""
        if self.remote:
            return self._remote_path().exists()
        return self.local_dir().exists()

    def download(self, local: Path) -> int:
        remote = self._remote_path()
        if not remote.exists():
            return 0
        count = 0
        for src in remote.rglob("*"):
            if not src.is_file():
                continue
            rel = str(src.path)[len(str(remote.path)) :].lstrip("/")
            dst = local / rel
            size = src.stat().st_size
            if dst.is_file() and dst.stat().st_size == size:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".part")
            with src.open("rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, _COPY_CHUNK)
            os.replace(tmp, dst)
            count += 1
        return count

    def upload(self, local: Path) -> int:
        remote = self._remote_path()
        remote.mkdir(parents=True, exist_ok=True)
        count = 0
        for src in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".part")):
            rel = src.relative_to(local).as_posix()
            dst = remote / rel
            if dst.exists() and dst.stat().st_size == src.stat().st_size:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, dst.open("wb") as fout:
                shutil.copyfileobj(fin, fout, _COPY_CHUNK)
            count += 1
        return count

    def cleanup(self) -> None:
        """Remove the area (after the record stage): local files and, if remote, the stored copy."""
        local = self.local_dir()
        shutil.rmtree(local, ignore_errors=True)
        if self.remote:
            remote = self._remote_path()
            if remote.exists():
                remote.fs.rm(remote.path, recursive=True)
