"""The TurboOCI source inflate (``CheckpointingGunzip`` + ``GzIndexWriter``) in a child process.

Inflating the source and deflating the gzip.meta windows is a third of a TurboOCI layer build, and
it cannot share the converter's core (the tar/ext4 code holds the GIL nearly all the time). So on a
multi-core POSIX machine, for sources of 4 MiB and more, a child interpreter (``python -m
overlaybd_provider.formats.gzworker``) reads the source file itself (its descriptor is the child's
stdin), runs exactly the same inflate and checkpoint selection, writes the tar to a pipe and the
finished gzip.meta to a file, and reports digests and sizes as one JSON line. The bytes are those of
the in-process path (``OVERLAYBD_GZ_WORKER=0`` forces it; tested equal). Errors keep their class and
message (corrupt data, a multi-member gzip: ``NotTurboCapable``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Any, BinaryIO

from overlaybd_provider.formats.gzcheckpoint import CheckpointingGunzip, GzipSourceError, NotTurboCapable
from overlaybd_provider.formats.gzindex import GzIndexInfo, GzIndexWriter
from overlaybd_provider.workers import env_choice, module_process, spare_core

__all__ = ["open_checkpointing"]

WORKER_MIN_BYTES = 4 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
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


class _Worker(io.RawIOBase):
    """The child's tar stream; digests, sizes and the gzip.meta once it ended."""

    def __init__(self, src: BinaryIO, *, name: str, hash_output: bool, spool_dir: str | None) -> None:
        self._dir = tempfile.mkdtemp(prefix="gzworker-", dir=spool_dir)
        self._index_path = os.path.join(self._dir, "gzip.meta")
        args = [self._index_path, name, "1" if hash_output else "0"]
        self._proc = module_process(__name__, args, stdin=src.fileno(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        assert self._proc.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._proc.stdout.fileno(), _F_SETPIPE_SZ, 1 << 20)
        self._out = self._proc.stdout
        self._done = False
        self._info: dict[str, Any] = {}
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        n = self._out.readinto(b)
        if not n:
            self._finish()
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._out.read() if size is None or size < 0 else self._out.read(size)
        if not data or size is None or size < 0:
            self._finish()
        return data

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
            raise _ERRORS.get(doc.get("kind", ""), GzipSourceError)(doc.get("message") or "gzip worker failed")
        self._info = doc
        self.ended = True

    def _get(self, key: str) -> Any:
        if not self._done:
            raise GzipSourceError("gzip worker: read the stream to its end first")
        return self._info[key]

    digest = property(lambda self: self._get("digest"))
    content_digest = property(lambda self: self._get("content_digest"))
    compressed_size = property(lambda self: self._get("compressed_size"))
    uncompressed_size = property(lambda self: self._get("uncompressed_size"))

    def finish_index(self, out: BinaryIO) -> GzIndexInfo:
        with open(self._index_path, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        return GzIndexInfo(**self._get("index"))

    def close(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        super().close()


def _use_worker(src: BinaryIO) -> bool:
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False  # not a file: the child could not read it
    if not stat.S_ISREG(st.st_mode):
        return False
    forced = env_choice("OVERLAYBD_GZ_WORKER")
    if forced is not None:
        return forced
    return spare_core() and st.st_size - src.tell() >= WORKER_MIN_BYTES


def open_checkpointing(src: BinaryIO, *, name: str, hash_output: bool, spool_dir: str | None
                       ) -> _InProcess | _Worker:
    """The inflated tar of gzip ``src`` (read from its current position), recording gzip.meta;
    ``finish_index(out)`` writes the index once the stream was read to its end."""
    if _use_worker(src):
        os.lseek(src.fileno(), src.tell(), os.SEEK_SET)  # the child reads the descriptor from here
        return _Worker(src, name=name, hash_output=hash_output, spool_dir=spool_dir)
    return _InProcess(src, name=name, hash_output=hash_output, spool_dir=spool_dir)


def _main(argv: list[str]) -> int:
    index_path, name, hash_output = argv[0], argv[1], argv[2] == "1"
    src = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(1, "wb", buffering=0)
    try:
        # the tar is hashed inline: a hashing thread cost 0.7 s more CPU per 524 MB on 2 cores (queue
        # hand-offs and GIL switches against the converter) and saved no wall time (bench/RESULTS.md)
        g = _InProcess(src, name=name, hash_output=hash_output, spool_dir=os.path.dirname(index_path))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := g.readinto(view):
            out.write(view[:n])
        out.close()
        with open(index_path, "wb") as f:
            info = g.finish_index(f)
        doc = {"ok": True, "digest": g.digest, "content_digest": g.content_digest,
               "compressed_size": g.compressed_size, "uncompressed_size": g.uncompressed_size,
               "index": dataclasses.asdict(info)}
    except (GzipSourceError, NotTurboCapable) as exc:
        doc = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
    except BrokenPipeError:
        doc = {"ok": False, "kind": "GzipSourceError", "message": f"{name}: the reader went away"}
    sys.stderr.write(json.dumps(doc) + "\n")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
