"""Write a command's output file atomically: a temporary name in the same directory, renamed
on success and removed on any failure, so bad input never leaves partial output behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from overlaybd_provider.errors import OverlaybdError, storage_error


class OutputError(OverlaybdError):
    """The output file cannot be created or written."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a ``w+b`` file next to ``path``; it replaces ``path`` only if the block succeeds."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory")
    try:
        f = open(tmp, "w+b")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        storage = storage_error(exc, target)
        if storage is not None:
            raise storage from None
        raise OutputError(f"{target}: cannot create output: {exc.strerror or exc}") from None
    try:
        yield f
        f.flush()
        f.close()
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # closing flushes again: on a full disk that fails too
            f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        storage = storage_error(exc, target)
        if storage is not None:
            raise storage from None
        raise
