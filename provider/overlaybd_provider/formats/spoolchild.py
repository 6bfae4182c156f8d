"""A child process that writes a stream to a spool file, read here as it grows.

Why a spool file and not a pipe: the child never waits for its reader, so it can run ahead of it (a
layer's inflate started while the layer below is still being built), and a reader that only needs
offsets can jump over data (:meth:`SpoolChild.skip_to`). The child writes the stream to the spool and,
after each chunk, the total so far as an 8-byte count on its stdout; at the end it closes stdout and
writes one JSON line on stderr: ``{"ok": true, ...}`` with what it measured, or ``{"ok": false,
"kind": ..., "message": ...}``. Consumed parts of the spool are punched out as the reader passes them
(the disk it holds stays about what is not read yet), and the spool is deleted when the stream is
closed. Subclasses name the verdict's error classes and keep what it measured (:meth:`SpoolChild._accept`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from overlaybd_provider.errors import StorageError, storage_error
from overlaybd_provider.libc import libc
from overlaybd_provider.workers import module_process

__all__ = ["SpoolChild", "serve"]

COUNT = struct.Struct("<Q")
_PUNCH_EVERY = 32 << 20
_FALLOC_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@functools.cache
def _fallocate() -> Any:
    """Linux ``fallocate(2)`` (with flags, which ``os.posix_fallocate`` lacks), or None."""
    f = getattr(libc(), "fallocate", None) if sys.platform.startswith("linux") else None
    if f is not None:
        f.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return f


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def serve(spool_path: str, produce: Callable[[Callable[[Any], None]], dict[str, Any]],
          known: tuple[type[Exception], ...], *, fallback: str, who: str, spooling: str) -> int:
    """The child's side: ``produce(emit)`` passes the stream to ``emit`` chunk by chunk (written to the
    spool, the count after each) and returns what it measured; its errors of the ``known`` classes,
    a full disk (``StorageError``: retryable) and anything else under the ``fallback`` class name
    become the verdict line. Returns the exit status."""
    total = 0
    try:
        spool = os.open(spool_path, os.O_WRONLY)
        try:
            def emit(chunk: Any) -> None:
                nonlocal total
                _write_all(spool, memoryview(chunk))
                total += len(chunk)
                _write_all(1, memoryview(COUNT.pack(total)))

            doc = {"ok": True, **produce(emit)}
        finally:
            os.close(spool)
    except known as exc:
        doc = {"ok": False, "kind": type(exc).__name__, "message": str(exc)}
    except BrokenPipeError:
        doc = {"ok": False, "kind": fallback, "message": f"{who}: the reader went away"}
    except OSError as exc:  # the spool's disk is full, say: the reader raises StorageError (retryable)
        err = storage_error(exc, os.path.dirname(spool_path))
        doc = ({"ok": False, "kind": "StorageError", "message": str(err), "errno": err.errno} if err is not None
               else {"ok": False, "kind": fallback, "message": f"{who}: {spooling}: {exc}"})
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # closes the counts pipe: the reader sees their end, then reads this line
    sys.stderr.write(json.dumps(doc) + "\n")
    return 0 if doc["ok"] else 1


class SpoolChild(io.RawIOBase):
    """The stream a child writes to its spool file, read as it is written. Forward-only:
    ``readinto``/``read`` and ``skip_to``. ``args(spool_dir, spool_path)`` gives the child's
    arguments (``python -m module ARGS``); its stdin is ``src_fd``."""

    def __init__(self, module: str, args: Any, src_fd: int, *, spool_dir: str | None, prefix: str,
                 spool_name: str) -> None:
        self._dir = tempfile.mkdtemp(prefix=prefix, dir=spool_dir)
        spool_path = os.path.join(self._dir, spool_name)
        self._fd = os.open(spool_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        argv: Sequence[str] = args(self._dir, spool_path)
        try:
            self._proc = module_process(module, argv, stdin=src_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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

    @property
    def pid(self) -> int:
        return self._proc.pid

    def readable(self) -> bool:
        return True

    #: error kinds of the verdict (class names) and the class each raises here; any other: ``failure``
    errors: dict[str, type[Exception]] = {}
    failure: type[Exception] = OSError
    #: the verdict's count of the stream's bytes, checked against what was spooled (None: no such count)
    size_key: str | None = None
    #: what the child produces, for the messages ("gzip worker", "zstd decoder")
    what = "spool child"

    def _verdict(self, doc: dict[str, Any], status: int) -> None:
        """Raise the child's error (a full disk: ``StorageError``, retryable), or check the stream's
        size and hand what the child measured to :meth:`_accept`."""
        if status or not doc.get("ok"):
            message = doc.get("message") or f"{self.what} failed"
            if doc.get("kind") == "StorageError":
                raise StorageError(message, errno_=doc.get("errno"))
            raise self.errors.get(doc.get("kind", ""), self.failure)(message)
        if self.size_key is not None and doc.get(self.size_key) != self._avail:
            raise self.failure(f"{self.what}: {self._avail} bytes spooled, {doc.get(self.size_key)} produced")
        self._accept(doc)

    def _accept(self, doc: dict[str, Any]) -> None:
        """Keep what the child measured (its verdict said ok)."""

    def _wait_for(self, pos: int) -> None:
        """Block until the child wrote up to ``pos`` or ended (then raise its error, if any)."""
        while self._avail < pos and not self._eof:
            data = os.read(self._counts, 1 << 16)
            if not data:
                self._eof = True
                self._finish()
                return
            data = self._pending + data
            whole = len(data) - len(data) % COUNT.size
            if whole:
                self._avail = COUNT.unpack_from(data, whole - COUNT.size)[0]
            self._pending = data[whole:]

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
            doc = {"ok": False, "message": last or f"{self.what} exited with status {status}"}
        if not isinstance(doc, dict):
            doc = {"ok": False, "message": last}
        self._verdict(doc, status)

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
