"""Go ``encoding/json`` compatible marshalling (image.md header).

Upstream unmarshals every manifest, config and index into image-spec Go structs and marshals
them again, so matching its digests means copying Go's rules exactly: compact output, struct
fields in declaration order with ``omitempty`` honoured, map keys sorted (bytewise on UTF-8),
``<`` ``>`` ``&`` U+2028 U+2029 escaped as ``\\u00XX``/``\\u20XX``, ``\\b \\f \\n \\r \\t`` short
escapes, other control characters as ``\\u00XX``, invalid UTF-8 / lone surrogates as U+FFFD.

A Go struct value is represented by :class:`GoStruct` (an ordered list of ``(name, value)``
pairs already filtered for ``omitempty``); a plain ``dict`` is a Go map.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

__all__ = ["EmptyStruct", "GoBytes", "GoStruct", "go_marshal", "go_string"]


class GoStruct(list):
    """Ordered ``(json_name, value)`` pairs of a Go struct, marshalled in this order."""

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__(pairs)


class EmptyStruct:
    """Go ``struct{}`` (values of ``ExposedPorts`` / ``Volumes``): always ``{}``."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmptyStruct)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "EmptyStruct()"


class GoBytes(bytes):
    """Go ``[]byte``: marshalled as standard base64."""


_SHORT = {0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x22: '\\"', 0x5C: "\\\\"}
_HTML = {0x3C: "\\u003c", 0x3E: "\\u003e", 0x26: "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if cp in _SHORT:
        return _SHORT[cp]
    if cp in _HTML:
        return _HTML[cp]
    if cp < 0x20:
        return f"\\u{cp:04x}"
    if 0xD800 <= cp <= 0xDFFF:  # lone surrogate: Go sees invalid UTF-8 and writes U+FFFD
        return "\ufffd"
    return ch


def go_string(text: str) -> str:
    """Quote ``text`` exactly like Go's encoder (HTML-safe escaping on)."""
    out = ['"']
    start = 0
    for i, ch in enumerate(text):
        cp = ord(ch)
        if cp < 0x20 or cp in (0x22, 0x5C, 0x3C, 0x3E, 0x26, 0x2028, 0x2029) or 0xD800 <= cp <= 0xDFFF:
            out.append(text[start:i])
            out.append(_escape_char(ch))
            start = i + 1
    out.append(text[start:])
    out.append('"')
    return "".join(out)


def _utf8_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, GoBytes):
        out.append(go_string(base64.b64encode(value).decode("ascii")))
    elif isinstance(value, str):
        out.append(go_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, EmptyStruct):
        out.append("{}")
    elif isinstance(value, GoStruct):
        out.append("{")
        for n, (name, item) in enumerate(value):
            if n:
                out.append(",")
            out.append(go_string(name))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, dict):
        out.append("{")
        for n, key in enumerate(sorted(value, key=_utf8_key)):
            if n:
                out.append(",")
            out.append(go_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot marshal {type(value).__name__} as Go JSON")


def go_marshal(value: Any) -> bytes:
    """``json.Marshal(value)``: compact UTF-8 bytes, no trailing newline."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")
