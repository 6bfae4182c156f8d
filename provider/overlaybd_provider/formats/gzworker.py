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

Why a spool file and not a pipe: the child never waits for the converter, so it can run a layer
ahead (:func:`start_inflate`, started by the engine while the layer below is built), and a TurboOCI
build does not read file data at all (it maps it by offset): :meth:`_Worker.skip_to` jumps over it.
Consumed parts of the spool are punched out as the reader passes them (the disk it holds stays about
what is not read yet), and it is deleted when the stream is closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from typing import Any, BinaryIO

from overlaybd_provider.errors import StorageError, storage_error
from overlaybd_provider.formats.gzcheckpoint import CheckpointingGunzip, GzipSourceError, NotTurboCapable
from overlaybd_provider.formats.gzindex import GzIndexInfo, GzIndexWriter
from overlaybd_provider.libc import libc
from overlaybd_provider.workers import env_choice, module_process, spare_core

__all__ = ["InflateJob", "open_checkpointing", "start_inflate", "worker_wanted"]

WORKER_MIN_BYTES = 4 << 20
_ERRORS: dict[str, type[Exception]] = {"NotTurboCapable": NotTurboCapable, "GzipSourceError": GzipSourceError}
_COUNT = struct.Struct("<Q")
_PUNCH_EVERY = 32 << 20
_FALLOC_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@functools.cache
def _fallocate() -> Any:
    """Linux ``fallocate(2)`` (with flags, which ``os.posix_fallocate`` lacks), or None."""
    f = getattr(libc(), "fallocate", None) if sys.platform.startswith("linux") else None
    if f is not None:
        f.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return f


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


class _Worker(io.RawIOBase):
    """The child's tar stream, read from its spool file as the child writes it; digests, sizes and
    the gzip.meta once it ended. Forward-only: ``readinto``/``read`` and ``skip_to``."""

    def __init__(self, src_fd: int, *, name: str, hash_output: bool, spool_dir: str | None) -> None:
        self._dir = tempfile.mkdtemp(prefix="gzworker-", dir=spool_dir)
        self._index_path = os.path.join(self._dir, "gzip.meta")
        spool_path = os.path.join(self._dir, "tar")
        self._fd = os.open(spool_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        args = [self._index_path, spool_path, name, "1" if hash_output else "0"]
        try:
            self._proc = module_process(__name__, args, stdin=src_fd, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        except BaseException:
            os.close(self._fd)
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        assert self._proc.stdout is not None
        self._counts = self._proc.stdout.fileno()
        self._pending = b""
        self._avail = 0  # spool bytes the child has written
        self._pos = 0  # next byte to hand out
        self._punched = 0
        self._punch = _fallocate() is not None
        self._eof = False  # the child closed its end: _avail is final
        self._done = False
        self._info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self._proc.pid

    def readable(self) -> bool:
        return True

    def _wait_for(self, pos: int) -> None:
        """Block until the child wrote up to ``pos`` or ended (then raise its error, if any)."""
        while self._avail < pos and not self._eof:
            data = os.read(self._counts, 1 << 16)
            if not data:
                self._eof = True
                self._finish()
                return
            data = self._pending + data
            whole = len(data) - len(data) % _COUNT.size
            if whole:
                self._avail = _COUNT.unpack_from(data, whole - _COUNT.size)[0]
            self._pending = data[whole:]

    def _advance(self, pos: int) -> None:
        self._pos = pos
        if pos - self._punched >= _PUNCH_EVERY and self._punch:
            end = pos & ~0xFFFF
            if _fallocate()(self._fd, _FALLOC_PUNCH, self._punched, end - self._punched) == 0:
                self._punched = end
            else:
                self._punch = False  # not on this file system: the spool keeps its disk until closed

    def _readable_now(self, want: int) -> int:
        """How many of ``want`` bytes at the position can be read (waiting for one); 0 at the end."""
        if want <= 0:
            return 0
        self._wait_for(self._pos + 1)
        return max(0, min(want, self._avail - self._pos))

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        with memoryview(b) as outer, outer.cast("B") as view:
            n = self._readable_now(len(view))
            if not n:
                return 0
            with view[:n] as part:
                got = os.preadv(self._fd, [part], self._pos)
        self._advance(self._pos + got)
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        n = self._readable_now(size)
        if not n:
            return b""
        data = os.pread(self._fd, n, self._pos)
        self._advance(self._pos + len(data))
        return data

    def skip_to(self, pos: int) -> int:
        """Move to ``pos`` without reading (file data a TurboOCI build maps by offset); the
        position reached is less only at the end of the stream."""
        self._wait_for(pos)
        self._advance(max(self._pos, min(pos, self._avail)))
        return self._pos

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        assert self._proc.stderr is not None
        text = self._proc.stderr.read().decode(errors="replace").strip()
        status = self._proc.wait()
        last = text.splitlines()[-1] if text else ""
        try:
            doc = json.loads(last)
        except ValueError:
            doc = {"ok": False, "kind": "GzipSourceError",
                   "message": last or f"gzip worker exited with status {status}"}
        if status or not doc.get("ok"):
            message = doc.get("message") or "gzip worker failed"
            if doc.get("kind") == "StorageError":
                raise StorageError(message, errno_=doc.get("errno"))
            raise _ERRORS.get(doc.get("kind", ""), GzipSourceError)(message)
        if doc["uncompressed_size"] != self._avail:
            raise GzipSourceError(f"gzip worker: {self._avail} bytes spooled, {doc['uncompressed_size']} inflated")
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

    def close(self) -> None:
        if self.closed:
            return
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        os.close(self._fd)
        shutil.rmtree(self._dir, ignore_errors=True)
        super().close()


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


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _main(argv: list[str]) -> int:
    index_path, spool_path, name, hash_output = argv[0], argv[1], argv[2], argv[3] == "1"
    src = os.fdopen(0, "rb", buffering=0)
    spool = os.open(spool_path, os.O_WRONLY)
    try:
        # the tar is hashed inline: a hashing thread cost 0.7 s more CPU per 524 MB on 2 cores (queue
        # hand-offs and GIL switches against the converter) and saved no wall time (bench/RESULTS.md)
        g = _InProcess(src, name=name, hash_output=hash_output, spool_dir=os.path.dirname(index_path))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total = 0
        while n := g.readinto(view):
            _write_all(spool, view[:n])
            total += n
            _write_all(1, memoryview(_COUNT.pack(total)))
        os.close(spool)
        with open(index_path, "wb") as f:
            info = g.finish_index(f)
        doc = {"ok": True, "digest": g.digest, "content_digest": g.content_digest,
               "compressed_size": g.compressed_size, "uncompressed_size": g.uncompressed_size,
               "index": dataclasses.asdict(info)}
    except (GzipSourceError, NotTurboCapable) as exc:
        doc = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
    except BrokenPipeError:
        doc = {"ok": False, "kind": "GzipSourceError", "message": f"{name}: the reader went away"}
    except OSError as exc:  # the spool's disk is full, say: the parent raises StorageError (retryable)
        err = storage_error(exc, os.path.dirname(spool_path))
        doc = ({"ok": False, "kind": "StorageError", "message": str(err), "errno": err.errno} if err is not None
               else {"ok": False, "kind": "GzipSourceError", "message": f"{name}: spooling the inflated tar: {exc}"})
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # closes the counts pipe: the reader sees their end, then reads this line
    sys.stderr.write(json.dumps(doc) + "\n")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
