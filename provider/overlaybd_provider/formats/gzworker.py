"""The TurboOCI source inflate (``CheckpointingGunzip`` + ``GzIndexWriter``) in a child process.

Inflating the source and deflating the gzip.meta windows is most of a TurboOCI layer build, and it
cannot share the converter's core (the tar/ext4 code holds the GIL nearly all the time). So on a
multi-core POSIX machine, for sources of 4 MiB and more, a child interpreter (``python -m
overlaybd_provider.formats.gzworker``) reads the source file itself (its descriptor is the child's
stdin), runs exactly the same inflate and checkpoint selection and writes the tar to a *spool file*,
telling the converter after each chunk how far it got (8-byte counts on a pipe). The finished
gzip.meta goes to a file, digests and sizes to one JSON line. The bytes are those of the in-process
path (``OVERLAYBD_GZ_WORKER=0`` forces it; tested equal). Errors keep their class and message
(corrupt data, a multi-member gzip: ``NotTurboCapable``).

Why a spool file and not a pipe (``formats.spoolchild``): the child never waits for the converter,
so it can run a layer ahead (:func:`start_inflate`, started by the engine while the layer below is
built), and a TurboOCI build does not read file data at all (it maps it by offset): ``skip_to``
jumps over it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
import sys
from typing import Any, BinaryIO

from overlaybd_provider.formats.gzcheckpoint import CheckpointingGunzip, GzipSourceError, NotTurboCapable
from overlaybd_provider.formats.gzindex import GzIndexInfo, GzIndexWriter
from overlaybd_provider.formats.spoolchild import SpoolChild, serve
from overlaybd_provider.workers import env_choice, spare_core

__all__ = ["InflateJob", "open_checkpointing", "start_inflate", "worker_wanted"]

WORKER_MIN_BYTES = 4 << 20
_ERRORS: dict[str, type[Exception]] = {"NotTurboCapable": NotTurboCapable, "GzipSourceError": GzipSourceError}


class _InProcess:
    """The in-process form, with the worker's interface."""

    def __init__(self, src: BinaryIO, *, name: str, hash_output: bool, spool_dir: str | None) -> None:
        self._index = GzIndexWriter(spool_dir=spool_dir)
        self._g = CheckpointingGunzip(src, self._index, name=name, hash_output=hash_output)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._g, attr)

    def readinto(self, b: Any) -> int:
        return self._g.readinto(b)

    def read(self, size: int = -1) -> bytes:
        return self._g.read(size)

    def finish_index(self, out: BinaryIO) -> GzIndexInfo:
        return self._index.finish(out, gzip_file_size=self._g.compressed_size,
                                  uncompressed_size=self._g.uncompressed_size)

    def close(self) -> None:
        self._g.close()
        self._index.close()


class _Worker(SpoolChild):
    """The child's tar stream, read from its spool file as the child writes it
    (:class:`~overlaybd_provider.formats.spoolchild.SpoolChild`); digests, sizes and the
    gzip.meta once it ended."""

    def __init__(self, src_fd: int, *, name: str, hash_output: bool, spool_dir: str | None) -> None:
        self._info: dict[str, Any] = {}

        def args(directory: str, spool_path: str) -> list[str]:
            self._index_path = os.path.join(directory, "gzip.meta")
            return [self._index_path, spool_path, name, "1" if hash_output else "0"]

        super().__init__(__name__, args, src_fd, spool_dir=spool_dir, prefix="gzworker-", spool_name="tar")

    errors = _ERRORS
    failure = GzipSourceError
    size_key = "uncompressed_size"
    what = "gzip worker"

    def _accept(self, doc: dict[str, Any]) -> None:
        self._info = doc

    def _get(self, key: str) -> Any:
        if not self._info:
            raise GzipSourceError("gzip worker: read the stream to its end first")
        return self._info[key]

    digest = property(lambda self: self._get("digest"))
    content_digest = property(lambda self: self._get("content_digest"))
    compressed_size = property(lambda self: self._get("compressed_size"))
    uncompressed_size = property(lambda self: self._get("uncompressed_size"))

    def finish_index(self, out: BinaryIO) -> GzIndexInfo:
        info = GzIndexInfo(**self._get("index"))
        with open(self._index_path, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        return info


#: a child inflate started ahead of its build (:func:`start_inflate`), handed to ``open_checkpointing``
InflateJob = _Worker


def worker_wanted(size: int) -> bool:
    """The child inflate is used for a gzip source of ``size`` bytes (what is left to read)."""
    forced = env_choice("OVERLAYBD_GZ_WORKER")
    if forced is not None:
        return forced and os.name == "posix"
    return spare_core() and size >= WORKER_MIN_BYTES


def _use_worker(src: BinaryIO) -> bool:
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False  # not a file: the child could not read it
    return stat.S_ISREG(st.st_mode) and worker_wanted(st.st_size - src.tell())


def start_inflate(path: str | os.PathLike[str], *, name: str, hash_output: bool,
                  spool_dir: str | None) -> InflateJob | None:
    """Start inflating gzip file ``path`` (from its start) in a child now, to be read later by the
    build (``open_checkpointing(..., job=)``); None when the child inflate is not used here."""
    try:
        with open(path, "rb") as f:
            if not worker_wanted(os.fstat(f.fileno()).st_size):
                return None
            return _Worker(f.fileno(), name=name, hash_output=hash_output, spool_dir=spool_dir)
    except OSError:
        return None  # the build opens the source itself and reports what is wrong with it


def open_checkpointing(src: BinaryIO, *, name: str, hash_output: bool, spool_dir: str | None,
                       job: InflateJob | None = None) -> _InProcess | _Worker:
    """The inflated tar of gzip ``src`` (read from its current position), recording gzip.meta;
    ``finish_index(out)`` writes the index once the stream was read to its end. ``job``: the
    same source's inflate, already started by :func:`start_inflate` (from the start of the file)."""
    if job is not None:
        return job
    if _use_worker(src):
        os.lseek(src.fileno(), src.tell(), os.SEEK_SET)  # the child reads the descriptor from here
        return _Worker(src.fileno(), name=name, hash_output=hash_output, spool_dir=spool_dir)
    return _InProcess(src, name=name, hash_output=hash_output, spool_dir=spool_dir)


def _main(argv: list[str]) -> int:
    index_path, spool_path, name, hash_output = argv[0], argv[1], argv[2], argv[3] == "1"
    src = os.fdopen(0, "rb", buffering=0)

    def produce(emit: Any) -> dict[str, Any]:
        # the tar is hashed inline: a hashing thread cost 0.7 s more CPU per 524 MB on 2 cores (queue
        # hand-offs and GIL switches against the converter) and saved no wall time (bench/RESULTS.md)
        g = _InProcess(src, name=name, hash_output=hash_output, spool_dir=os.path.dirname(index_path))
        view = memoryview(bytearray(1 << 20))
        while n := g.readinto(view):
            emit(view[:n])
        with open(index_path, "wb") as f:
            info = g.finish_index(f)
        return {"digest": g.digest, "content_digest": g.content_digest, "compressed_size": g.compressed_size,
                "uncompressed_size": g.uncompressed_size, "index": dataclasses.asdict(info)}

    return serve(spool_path, produce, (GzipSourceError, NotTurboCapable), fallback="GzipSourceError", who=name,
                 spooling="spooling the inflated tar")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
