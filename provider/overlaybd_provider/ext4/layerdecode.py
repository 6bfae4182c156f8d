"""Undo a layer's gzip or zstd wrapper (detected by magic), in large chunks, one pass.

Decompressing is a third of the work of a gzip layer, and a thread cannot take it off the
converter's core: every output buffer the codec grows re-takes the GIL, which the tar/ext4
code holds nearly all the time. So on a multi-core POSIX machine the stream is decoded by a
child interpreter (``python -m overlaybd_provider.ext4.layerdecode gzip|zstd``) fed through one
pipe and read through another; on one core, for source files under 4 MiB, or with
``OVERLAYBD_DECODE_WORKER=0``, in-process. gzip uses ISA-L (python-isal: ~3x zlib on inflate),
zstd the standard library's ``compression.zstd`` (``backports.zstd`` before 3.14): both can bound
the output of one step, so a small "decompression bomb" layer cannot take the memory. Either way
truncation, corruption and trailing garbage become one :class:`LayerTarError` line.

With ``digest=True`` the decoder also hashes what it produces (the child does it on its own core
and reports the digest with its verdict), so the caller can check the layer's content against
the config's ``diff_id`` without a second pass over the data.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import stat
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from typing import BinaryIO

from isal import isal_zlib

try:  # the standard library's bounded-output zstd decoder (3.14), else its backport
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd as _zstd  # type: ignore[no-redef]

from overlaybd_provider.ext4.errors import LayerTarError
from overlaybd_provider.formats.spoolchild import SpoolChild, serve
from overlaybd_provider.malloc import keep_large_buffers
from overlaybd_provider.workers import env_choice, module_process, spare_core

__all__ = ["GZIP_MAGIC", "ZSTD_MAGIC", "DecodeJob", "content_digest", "decompressed", "start_decode"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_STEP_IN = 256 << 10  # compressed bytes per read: the unconsumed tail is copied at every step
_STEP_OUT = 4 << 20  # most bytes one decode step may produce (a bounded buffer, whatever the ratio)
_PIPE_BYTES = 1 << 20  # larger pipes: fewer wake-ups between the two processes
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WORKER_MIN_BYTES = 4 << 20  # a smaller source file is decoded in-process: a fresh interpreter costs more
_DIGEST_PREFIX = "content sha256:"  # the child's success line on stderr when asked to hash


def content_digest(stream: BinaryIO) -> str:
    """``sha256:…`` of everything ``stream`` (from :func:`decompressed` with ``digest=True``)
    produced; only valid once it was read to the end."""
    value = getattr(stream, "content_digest", None)
    if not isinstance(value, str):
        raise LayerTarError("layer stream was not hashed to its end (decompressed(..., digest=True))")
    return value


class _Decoder(io.RawIOBase):
    """Streaming multi-frame decoder (gzip members / zstd frames) that reports truncation.

    Every step returns at most ``_STEP_OUT`` bytes: a compressed stream is the source's to choose,
    and 1 MiB of deflate can expand to 1 GiB (zstd: 30 GiB), so output is never asked for in one
    piece per input chunk."""

    kind = ""

    def __init__(self, src: BinaryIO, *, digest: bool = False) -> None:
        self._src = src
        self._d = self._new()
        self._pending = b""  # compressed input handed over but not consumed yet
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._hash = hashlib.sha256() if digest else None
        self.content_digest: str | None = None

    def _new(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def _step(self) -> bytes | None:  # pragma: no cover - overridden
        """Up to ``_STEP_OUT`` more bytes (maybe none yet); ``None`` at the clean end."""
        raise NotImplementedError

    def _next_member(self) -> bytes | None:
        """After a member/frame ended: whatever follows starts the next one (``None``: the end)."""
        tail = self._d.unused_data or self._src.read(_STEP_IN)
        if not tail:
            return None
        self._d = self._new()
        return tail

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (zlib.error,)

    def readable(self) -> bool:
        return True

    def _fill(self, size: int) -> None:
        while not self._eof and (size < 0 or len(self._buf) - self._pos < size):
            try:
                out = self._step()
            except self._errors() as exc:
                raise LayerTarError(f"corrupt {self.kind} data: {exc}") from None
            if out is None:
                self._eof = True
                if self._hash is not None:
                    self.content_digest = "sha256:" + self._hash.hexdigest()
                break
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            if self._hash is not None:
                self._hash.update(out)
            self._buf += out

    def read(self, size: int = -1) -> bytes:
        self._fill(size)
        end = len(self._buf) if size < 0 else min(len(self._buf), self._pos + size)
        data = bytes(self._buf[self._pos:end])
        self._pos = end
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _GzipStream(_Decoder):
    kind = "gzip"

    def _new(self):
        return isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)

    def _step(self) -> bytes | None:
        if self._d.eof:
            tail = self._next_member()
            if tail is None:
                return None
            self._pending = tail
        elif not self._pending:
            self._pending = self._src.read(_STEP_IN)
            if not self._pending:
                out = self._d.decompress(b"", _STEP_OUT)  # output the codec still holds
                if not out and not self._d.eof:
                    raise LayerTarError(f"{self.kind} stream is truncated")
                return out
        out = self._d.decompress(self._pending, _STEP_OUT)
        self._pending = b"" if self._d.eof else self._d.unconsumed_tail
        return out

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (zlib.error, isal_zlib.error)


class _ZstdStream(_Decoder):
    kind = "zstd"

    def _new(self):
        return _zstd.ZstdDecompressor()

    def _step(self) -> bytes | None:
        if self._d.eof:
            tail = self._next_member()
            return None if tail is None else self._d.decompress(tail, _STEP_OUT)
        if not self._d.needs_input:
            return self._d.decompress(b"", _STEP_OUT)  # output the codec still holds
        raw = self._src.read(_STEP_IN)
        if not raw:
            raise LayerTarError(f"{self.kind} stream is truncated")
        return self._d.decompress(raw, _STEP_OUT)

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (_zstd.ZstdError,)


_DECODERS: dict[str, type[_Decoder]] = {"gzip": _GzipStream, "zstd": _ZstdStream}


class _Peek(io.RawIOBase):
    """Give back the sniffed magic bytes before the rest of the source."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head, self._src = head, src

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            if len(data) < size:
                data += self._src.read(size - len(data))
            return data
        return self._src.read(size)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._head and hasattr(self._src, "readinto"):
            return self._src.readinto(b) or 0
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Hashing(io.RawIOBase):
    """A plain (uncompressed) layer read through unchanged, hashed on the way."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._hash = hashlib.sha256()
        self.content_digest: str | None = None

    def readable(self) -> bool:
        return True

    def _seen(self, data: bytes | memoryview) -> None:
        if data:
            self._hash.update(data)
        elif self.content_digest is None:
            self.content_digest = "sha256:" + self._hash.hexdigest()

    def read(self, size: int = -1) -> bytes:
        data = self._src.read(size)
        self._seen(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._src.readinto(b) or 0
        self._seen(memoryview(b)[:n])
        return n


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)


class _ProcessDecoder(io.RawIOBase):
    """The decoded stream of a child process, read from its output pipe. A regular source file
    is read by the child itself (``src_fd``: its stdin is that file, from the descriptor's
    offset); any other stream is fed by a thread (reads and pipe writes release the GIL). The
    child's one-line verdict (stderr, exit status) becomes a :class:`LayerTarError` at the end."""

    def __init__(self, src: BinaryIO | None, kind: str, *, digest: bool = False, src_fd: int | None = None) -> None:
        self.kind = kind
        self.content_digest: str | None = None
        args = [kind, "--digest"] if digest else [kind]
        self._proc = module_process(__name__, args, stdin=subprocess.PIPE if src_fd is None else src_fd,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._proc.stdout is not None
        _grow_pipe(self._proc.stdout.fileno())
        self._out = self._proc.stdout
        self._feed_error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        if src_fd is None:
            assert self._proc.stdin is not None and src is not None
            _grow_pipe(self._proc.stdin.fileno())
            self._feeder = threading.Thread(target=self._feed, args=(src,), name="layer-decode-feed", daemon=True)
            self._feeder.start()
        self._done = False

    def _feed(self, src: BinaryIO) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            while chunk := src.read(_CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # the child stopped reading (it failed, or we are closing): its verdict tells
        except BaseException as exc:  # a failing source (network, disk): raised by the reader
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        """End of output: the feeder and child must both have succeeded."""
        if self._done:
            return
        self._done = True
        if self._feeder is not None:
            self._feeder.join()
        assert self._proc.stderr is not None
        message = self._proc.stderr.read().decode(errors="replace").strip()
        status = self._proc.wait()
        if self._feed_error is not None:
            raise self._feed_error
        lines = message.splitlines()
        if status:
            raise LayerTarError(lines[-1] if lines else f"{self.kind} decoder exited with status {status}")
        if lines and lines[-1].startswith(_DIGEST_PREFIX):
            self.content_digest = "sha256:" + lines[-1][len(_DIGEST_PREFIX):]

    def read(self, size: int = -1) -> bytes:
        data = self._out.read() if size is None or size < 0 else self._out.read(size)
        if not data or size is None or size < 0:
            self._finish()
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._out.readinto(b)
        if not n:
            self._finish()
        return n

    def close(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            if self._feeder is not None:
                self._feeder.join()
        for f in (self._proc.stdout, self._proc.stderr):
            if f is not None:
                f.close()
        super().close()


class _SpoolDecoder(SpoolChild):
    """A decode started ahead of its build (:func:`start_decode`): the child reads the source file
    itself and writes the tar to a spool file (``formats.spoolchild``), so it runs as fast as its
    core allows while the layers below are still being built, and the build reads the spool."""

    def __init__(self, src_fd: int, kind: str, *, digest: bool, spool_dir: str | None) -> None:
        self.kind = kind
        self.what = f"{kind} decoder"
        self.content_digest: str | None = None
        flags = [kind, "--digest"] if digest else [kind]
        super().__init__(__name__, lambda _dir, spool: [*flags, "--spool", spool], src_fd, spool_dir=spool_dir,
                         prefix="layerdecode-", spool_name="tar")

    errors = {"LayerTarError": LayerTarError}
    failure = LayerTarError

    def _accept(self, doc: dict) -> None:
        self.content_digest = doc.get("content_digest")


#: a layer's decode started ahead of its build (:func:`start_decode`), handed to :func:`decompressed`
DecodeJob = _SpoolDecoder


def _compression(head: bytes) -> str:
    """``gzip``, ``zstd`` or ``none``, from a stream's first 4 bytes."""
    return "gzip" if head[:2] == GZIP_MAGIC else "zstd" if head == ZSTD_MAGIC else "none"


def start_decode(path: str | os.PathLike[str], *, digest: bool, spool_dir: str | None) -> DecodeJob | None:
    """Start decoding gzip or zstd file ``path`` in a child now, to be read later by its build
    (``decompressed(..., job=)``); None for a plain tar, or where the child decoder is not used."""
    try:
        with open(path, "rb") as f:
            kind = _compression(f.read(4))
            if kind == "none" or not _use_worker(f):
                return None
            os.lseek(f.fileno(), 0, os.SEEK_SET)
            return _SpoolDecoder(f.fileno(), kind, digest=digest, spool_dir=spool_dir)
    except OSError:
        return None  # the build opens the source itself and reports what is wrong with it


def _use_worker(src: BinaryIO) -> bool:
    forced = env_choice("OVERLAYBD_DECODE_WORKER")
    if forced is not None:
        return forced
    if not spare_core():
        return False
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return True  # a stream of unknown length
    return not (stat.S_ISREG(st.st_mode) and st.st_size < WORKER_MIN_BYTES)


def _regular_file_fd(src: BinaryIO) -> int | None:
    """The descriptor of ``src`` when it is a plain ``open(path, "rb")`` of a regular file, which the
    child can read itself. Anything else (a wrapper that checks a digest as it is read, say) is fed
    through the pipe, so that every byte still passes through it."""
    if type(src) not in (io.BufferedReader, io.FileIO):
        return None
    try:
        fd = src.fileno()
        src.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    try:
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None


def decompressed(src: BinaryIO, *, worker: bool | None = None, digest: bool = False,
                 plain_digest: str | None = None, job: DecodeJob | None = None) -> tuple[BinaryIO, str]:
    """The uncompressed tar stream of ``src`` and the detected compression (``none``, ``gzip``
    or ``zstd``). ``worker``: decode in a child process (default: on multi-core POSIX).

    ``digest``: hash the uncompressed bytes (read the result with :func:`content_digest` at the
    end). ``plain_digest``: the caller's verified digest of ``src`` itself, which *is* the
    content digest when ``src`` turns out to be uncompressed (no second hash of the data).
    ``job``: the same file's decode, started ahead by :func:`start_decode` (``src`` is not read)."""
    if job is not None:
        return job, job.kind  # type: ignore[return-value]
    head = src.read(4)
    stream: BinaryIO = _Peek(head, src)  # type: ignore[assignment]
    kind = _compression(head)
    if kind == "none":
        if digest and plain_digest:
            stream.content_digest = plain_digest  # type: ignore[attr-defined]
        elif digest:
            stream = _Hashing(stream)  # type: ignore[assignment]
        return stream, kind
    if worker if worker is not None else _use_worker(src):
        fd = _regular_file_fd(src)
        if fd is not None:  # the child reads the file from the stream's start (head included)
            os.lseek(fd, src.tell() - len(head), os.SEEK_SET)
            return _ProcessDecoder(None, kind, digest=digest, src_fd=fd), kind  # type: ignore[return-value]
        return _ProcessDecoder(stream, kind, digest=digest), kind  # type: ignore[return-value]
    return _DECODERS[kind](stream, digest=digest), kind  # type: ignore[return-value]


def _spool_main(decoder: _Decoder, spool_path: str) -> int:
    """Child side of :class:`_SpoolDecoder` (``formats.spoolchild.serve``)."""

    def produce(emit: Callable[[bytes], None]) -> dict:
        while data := decoder.read(_CHUNK):
            emit(data)
        return {"content_digest": decoder.content_digest}

    return serve(spool_path, produce, (LayerTarError,), fallback="LayerTarError", who=f"{decoder.kind} decoder",
                 spooling="spooling the decoded tar")


def _main(argv: list[str]) -> int:
    """Child side: decode stdin to stdout (or ``--spool PATH``); on bad input one line on stderr
    and status 1."""
    spool = None
    if len(argv) >= 2 and argv[-2] == "--spool":
        spool, argv = argv[-1], argv[:-2]
    if not 1 <= len(argv) <= 2 or argv[0] not in _DECODERS or argv[1:] not in ([], ["--digest"]):
        print(f"usage: python -m {__name__} gzip|zstd [--digest] [--spool PATH]", file=sys.stderr)
        return 2
    keep_large_buffers()
    decoder = _DECODERS[argv[0]](io.FileIO(0, closefd=False), digest=len(argv) == 2)  # type: ignore[arg-type]
    if spool is not None:
        return _spool_main(decoder, spool)
    try:
        while data := decoder.read(_CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except LayerTarError as exc:
        print(exc, file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0  # the reader stopped early (it failed or was cancelled)
    if decoder.content_digest:
        print(_DIGEST_PREFIX + decoder.content_digest[len("sha256:"):], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
