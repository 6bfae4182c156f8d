"""Root of the exception hierarchy.

Every error a user can cause (bad input, registry refusal, corrupt blob...) derives from
:class:`OverlaybdError`; the CLI prints its message as one line and exits with status 2.
Each layer (formats, ext4, oci, engine) defines its own subclasses next to its code.
:class:`StorageError` (disk full, quota, read-only filesystem) is shared by all of them: where
a write happens and its path is known, :func:`writing` turns the ``OSError`` into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


class OverlaybdError(Exception):
    """An error caused by input or environment, reported to the user as one line.

    ``retryable`` says whether running the same thing again may succeed: False (the default) for
    what only a change of input or configuration fixes (bad reference, auth refused, not found,
    a corrupt or lying source, invalid options); True for transient trouble (a registry that is
    down or overloaded, a lost database connection). Orchestrators fail the first kind at once
    and retry the second."""

    retryable: bool = False
    #: key of :data:`REMEDIES` when the message ends with advice that names a CLI flag: front ends
    #: other than the CLI show their own wording (:func:`message_for`)
    remedy: str | None = None


#: The same advice in each front end's words: ``{key: {"cli": ..., "airflow": ...}}``. The
#: ``cli`` text is what the exception message carries.
REMEDIES: dict[str, dict[str, str]] = {
    "plain_http": {
        "cli": "use --plain-http or an http:// hosts.toml server",
        "airflow": "set the extra plain_http to true in the oci_registry connection",
    },
    "tls_trust": {
        "cli": "pass --tlscacert, --cert-dir or --hosts-dir (or -k to skip verification)",
        "airflow": "give the oci_registry connection the extra ca_cert (a path or the PEM text), "
                   "or set its extra insecure to true",
    },
    "client_cert": {
        "cli": "pass --tlscert/--tlskey or --cert-dir",
        "airflow": "give the oci_registry connection the extras client_cert and client_key",
    },
    "credentials": {
        "cli": "check -u USER:PASSWORD or --docker-config",
        "airflow": "check the login and password of the oci_registry connection",
    },
}


def message_for(exc: BaseException, frontend: str) -> str:
    """``str(exc)`` with its advice in ``frontend``'s words (``"cli"`` or ``"airflow"``)."""
    custom = getattr(exc, "for_frontend", None)
    if callable(custom):
        return str(custom(frontend))
    text = str(exc)
    key = getattr(exc, "remedy", None)
    if key in REMEDIES and frontend in REMEDIES[key]:
        text = text.replace(REMEDIES[key]["cli"], REMEDIES[key][frontend])
    return text


#: errno values meaning "the storage cannot take this write": reported as one line, not a traceback
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_STORAGE_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
}


class StorageError(OverlaybdError):
    """A write failed because the disk is full, over quota or read-only; ``path`` is what was
    being written (None when unknown)."""

    def __init__(self, message: str, *, path: str | None = None, errno_: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno_
        # space may be freed (staging cleaned, other jobs done); a read-only or size limit stays
        self.retryable = errno_ in (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: BaseException, path: str | os.PathLike[str] | None = None) -> StorageError | None:
    """The one-line error for an ``OSError`` with a storage errno (None for any other error).
    ``path`` names what was being written; else the error's own file name, if any."""
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    where = path if path is not None else exc.filename
    text = _STORAGE_TEXT[exc.errno]
    message = f"{text} writing {os.fspath(where)}" if where is not None else f"{text} (while writing)"
    return StorageError(message, path=None if where is None else os.fspath(where), errno_=exc.errno)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a storage ``OSError`` raised inside the block into a :class:`StorageError` naming
    ``path`` (the output the user asked for, not a temporary file beside it)."""
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, path)
        if err is None:
            raise
        raise err from None
