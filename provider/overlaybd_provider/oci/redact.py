"""Secrets out of logs and messages: the one place that decides what is redacted.

``redact_url`` (user-info, secret-looking query values such as the upload ``_state`` token,
``token``, ``access_token``, signatures), ``redact_headers`` (``Authorization``, cookies, token
headers, the ``Location`` URL) and ``redact_text`` (the same inside any log line, plus
``Authorization: ...`` / ``Bearer ...`` values). :class:`RedactingFilter` applies
``redact_text`` to log records; it is installed on urllib3's loggers (whose request lines,
shown by ``-v``, carry full upload URLs) and on the CLI's log handler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-registry-auth"})
_SECRET_WORDS = re.compile(r"token|secret|passw|signature|credential|auth|^sig$|session|key|^_state$", re.I)
#: loggers of libraries that log request URLs themselves (``-v`` shows them)
LIBRARY_LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry", "requests", "oras")

_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@", re.I)
_AUTH_VALUE = re.compile(r"\b((?:proxy-)?authorization)(\s*[:=]\s*)(?:(?:basic|bearer|digest|token)\s+)?"
                         r"[^\s,;&\"'<>]+", re.I)
_SCHEME_TOKEN = re.compile(r"\b(Bearer|Basic)\s+(?!<redacted>)[A-Za-z0-9._~+/=-]{8,}")
_PARAM = re.compile(r"(?<![\w.-])([A-Za-z0-9_.-]+)=(?!<redacted>)([^&\s\"',;<>]*)")
_JSON_FIELD = re.compile(r"\"([A-Za-z0-9_.-]+)\"(\s*:\s*)\"([^\"]*)\"")


def redact_url(url: str) -> str:
    """URL without user-info and with secret-looking query values replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_WORDS.search(k) else v) for k, v in pairs], safe="<>:/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _SECRET_HEADERS or "token" in lower or "secret" in lower:
            out[name] = REDACTED
        elif lower == "location":
            out[name] = redact_url(value)
        else:
            out[name] = value
    return out


def redact_text(text: str) -> str:
    """``text`` with credentials in URLs, secret query/form values, JSON secret fields and
    authorization values replaced (for log lines that embed URLs or headers)."""
    if "=" not in text and "@" not in text and ":" not in text and " " not in text:
        return text
    text = _USERINFO.sub(r"\1", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}" if _SECRET_WORDS.search(m.group(1)) else m.group(0), text)
    return _JSON_FIELD.sub(
        lambda m: f'"{m.group(1)}"{m.group(2)}"{REDACTED}"' if _SECRET_WORDS.search(m.group(1)) else m.group(0), text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message through :func:`redact_text` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is logging's business, not ours
            return True
        clean = redact_text(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()


def install_redaction(*targets: logging.Logger | logging.Handler) -> None:
    """Put the filter on ``targets`` (default: the library loggers); idempotent."""
    for target in targets or tuple(logging.getLogger(name) for name in LIBRARY_LOGGERS):
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
