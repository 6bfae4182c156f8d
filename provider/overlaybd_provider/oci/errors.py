"""Errors raised by the OCI layer.

They keep the structured facts a caller may act on (status, method, the registry's error list,
digests) and render as one line. URLs are redacted before they are stored; secrets never enter
an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from overlaybd_provider.errors import OverlaybdError


class OciError(OverlaybdError):
    """Root of the errors raised under ``overlaybd_provider.oci``."""


class InvalidReferenceError(OciError):
    """A reference text that is neither a docker-style name nor ``oci:PATH[:TAG|@DIGEST]``."""


class LayoutError(OciError):
    """An OCI image-layout directory that is missing, malformed or lacks a requested entry."""


class DigestMismatchError(OciError):
    """Content whose digest or size differs from the descriptor that named it."""

    def __init__(self, *, want: str, got: str, size: int, want_size: int | None = None, what: str = "blob"):
        self.algorithm = want.partition(":")[0]
        self.want = want
        self.got = got
        self.size = size
        self.want_size = want_size
        if want_size is not None and want_size != size:
            detail = f"size {size} bytes, expected {want_size}"
        else:
            detail = f"digest {got} over {size} bytes"
        super().__init__(f"{what} {want}: content does not match ({detail})")


class RegistryError(OciError):
    """An HTTP exchange with a registry that failed.

    ``errors`` is the registry's ``{"errors": [{"code", "message", "detail"}]}`` list (may be empty).
    ``url`` is already redacted (no query secrets, no credentials).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        url: str = "",
        errors: Sequence[Mapping[str, Any]] = (),
    ):
        self.status = status
        self.method = method
        self.url = url
        self.errors = [dict(e) for e in errors]
        self.reason = message
        parts = [f"{method} {url}".strip()] if method or url else []
        if status is not None:
            parts.append(str(status))
        parts.append(message)
        codes = "; ".join(
            f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in self.errors
        )
        if codes:
            parts.append(codes)
        super().__init__(": ".join(parts))

    @property
    def codes(self) -> list[str]:
        return [str(e.get("code", "")) for e in self.errors]


class NotFoundError(RegistryError):
    """The manifest, blob or repository does not exist (HTTP 404 or an *_UNKNOWN code)."""


class AuthError(RegistryError):
    """Credentials were refused or are required (HTTP 401/403, or the token server said no)."""


class TLSError(RegistryError):
    """The TLS handshake failed (unknown CA, wrong host name, client certificate required). Not
    retried: it is a configuration problem."""


class RegistryUnavailableError(RegistryError):
    """A transient failure (5xx, 429, connection reset, timeout). Raised once retries are exhausted
    (the message says how many attempts and seconds); ``retry_after`` carries the server's hint."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
