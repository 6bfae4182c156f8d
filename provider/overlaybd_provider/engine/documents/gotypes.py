"""The image-spec v1.1.1 Go structs, and Go ``json.Unmarshal`` semantics for them (image.md §4, §5).

Upstream's convertor decodes the source config/manifest/index into these structs and marshals
them again; what survives (known fields only), in which order, and how odd input is treated
(case-insensitive key match, later duplicate keys win, ``null`` leaves scalars untouched, nested
structs merge) all follow from Go's decoder, so we replay it here on ``json`` pairs.

Decoded structs are ``dict``s holding every field (Go zero values filled in; ``None`` = nil);
:func:`to_go` turns them back into :class:`~.jsonenc.GoStruct` for marshalling.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.engine.documents.jsonenc import EmptyStruct, GoBytes, GoStruct
from overlaybd_provider.errors import OverlaybdError

__all__ = [
    "DESCRIPTOR",
    "IMAGE",
    "INDEX",
    "MANIFEST",
    "PLATFORM",
    "GoDecodeError",
    "Struct",
    "decode",
    "to_go",
    "zero",
]


class GoDecodeError(OverlaybdError):
    """A document Go's ``json.Unmarshal`` would reject (so upstream would fail too)."""


# Scalar kinds.
STRING, INT, BOOL, TIME, BYTES, EMPTY = "string", "int64", "bool", "time", "[]byte", "struct{}"


@dataclass(frozen=True)
class List:
    elem: Any


@dataclass(frozen=True)
class Map:
    elem: Any


@dataclass(frozen=True)
class Ptr:
    elem: Any


@dataclass(frozen=True)
class Field:
    name: str
    kind: Any
    omitempty: bool = False


@dataclass(frozen=True)
class Struct:
    go_name: str
    fields: tuple[Field, ...] = field(default_factory=tuple)

    def lookup(self, key: str) -> Field | None:
        """Go's field match: exact name first, then case-insensitive (``foldName``)."""
        for f in self.fields:
            if f.name == key:
                return f
        folded = key.casefold()
        for f in self.fields:
            if f.name.casefold() == folded:
                return f
        return None


_PLATFORM_FIELDS = (
    Field("architecture", STRING),
    Field("os", STRING),
    Field("os.version", STRING, True),
    Field("os.features", List(STRING), True),
    Field("variant", STRING, True),
)
PLATFORM = Struct("Platform", _PLATFORM_FIELDS)
DESCRIPTOR = Struct(
    "Descriptor",
    (
        Field("mediaType", STRING),
        Field("digest", STRING),
        Field("size", INT),
        Field("urls", List(STRING), True),
        Field("annotations", Map(STRING), True),
        Field("data", BYTES, True),
        Field("platform", Ptr(PLATFORM), True),
        Field("artifactType", STRING, True),
    ),
)
MANIFEST = Struct(
    "Manifest",
    (
        Field("schemaVersion", INT),
        Field("mediaType", STRING, True),
        Field("artifactType", STRING, True),
        Field("config", DESCRIPTOR),
        Field("layers", List(DESCRIPTOR)),
        Field("subject", Ptr(DESCRIPTOR), True),
        Field("annotations", Map(STRING), True),
    ),
)
INDEX = Struct(
    "Index",
    (
        Field("schemaVersion", INT),
        Field("mediaType", STRING, True),
        Field("artifactType", STRING, True),
        Field("manifests", List(DESCRIPTOR)),
        Field("subject", Ptr(DESCRIPTOR), True),
        Field("annotations", Map(STRING), True),
    ),
)
IMAGE_CONFIG = Struct(
    "ImageConfig",
    (
        Field("User", STRING, True),
        Field("ExposedPorts", Map(EMPTY), True),
        Field("Env", List(STRING), True),
        Field("Entrypoint", List(STRING), True),
        Field("Cmd", List(STRING), True),
        Field("Volumes", Map(EMPTY), True),
        Field("WorkingDir", STRING, True),
        Field("Labels", Map(STRING), True),
        Field("StopSignal", STRING, True),
        Field("ArgsEscaped", BOOL, True),
    ),
)
ROOTFS = Struct("RootFS", (Field("type", STRING), Field("diff_ids", List(STRING))))
HISTORY = Struct(
    "History",
    (
        Field("created", Ptr(TIME), True),
        Field("created_by", STRING, True),
        Field("author", STRING, True),
        Field("comment", STRING, True),
        Field("empty_layer", BOOL, True),
    ),
)
IMAGE = Struct(
    "Image",
    (
        Field("created", Ptr(TIME), True),
        Field("author", STRING, True),
        *_PLATFORM_FIELDS,  # embedded Platform: fields inlined in place
        Field("config", IMAGE_CONFIG, True),  # omitempty never omits a struct in Go
        Field("rootfs", ROOTFS),
        Field("history", List(HISTORY), True),
    ),
)


def zero(kind: Any) -> Any:
    """Go zero value of ``kind`` (nil is ``None``)."""
    if kind == STRING:
        return ""
    if kind == INT:
        return 0
    if kind == BOOL:
        return False
    if kind == EMPTY:
        return EmptyStruct()
    if isinstance(kind, Struct):
        return {f.name: zero(f.kind) for f in kind.fields}
    return None  # slices, maps, pointers, []byte, time pointer


# ---------------------------------------------------------------- decoding


class _Pairs(list):
    """A JSON object as decoded: ordered (key, value) pairs, duplicates kept."""


def _reject_constant(name: str) -> Any:
    raise GoDecodeError(f"invalid JSON: {name} is not a JSON value")


def parse_json(data: bytes | str, what: str) -> Any:
    """Parse like Go: syntax errors fail, object key order and duplicates are kept."""
    try:
        return json.loads(data, object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GoDecodeError(f"{what}: invalid JSON: {exc}") from None


def _type_error(path: str, kind: Any, value: Any) -> GoDecodeError:
    got = type(value).__name__ if not isinstance(value, _Pairs) else "object"
    name = kind.go_name if isinstance(kind, Struct) else str(kind)
    return GoDecodeError(f"json: cannot unmarshal {got} into Go value {path} of type {name}")


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})\Z"
)


def normalize_time(text: str, path: str) -> str:
    """``time.Time`` round trip: parse RFC 3339, format RFC3339Nano (trailing zeros trimmed,
    zero offset written ``Z``; the wall clock and non-zero offset are kept as given)."""
    m = _RFC3339.match(text)
    if m is None:
        raise GoDecodeError(f"{path}: parsing time {text!r} as RFC 3339 failed")
    year, month, day, hour, minute, sec, frac, zone = m.groups()
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and int(hour) < 24 and int(minute) < 60
            and int(sec) < 60):
        raise GoDecodeError(f"{path}: parsing time {text!r}: value out of range")
    frac = (frac or "")[:9].rstrip("0")
    if zone != "Z":
        sign, hh, mm = zone[0], int(zone[1:3]), int(zone[4:6])
        if hh > 24 or mm > 60:
            raise GoDecodeError(f"{path}: parsing time {text!r}: time zone offset out of range")
        zone = "Z" if hh == 0 and mm == 0 else f"{sign}{hh:02d}:{mm:02d}"
    return f"{year}-{month}-{day}T{hour}:{minute}:{sec}{'.' + frac if frac else ''}{zone}"


def decode(kind: Any, value: Any, path: str = "", into: Any = None) -> Any:
    """Decode parsed JSON ``value`` into a fresh (or existing, for structs) Go value."""
    if isinstance(kind, Ptr):
        if value is None:
            return None
        return decode(kind.elem, value, path, into)
    if isinstance(kind, Struct):
        if value is None:
            return into if into is not None else zero(kind)
        if not isinstance(value, _Pairs):
            raise _type_error(path, kind, value)
        result = into if into is not None else zero(kind)
        for key, item in value:
            f = kind.lookup(key)
            if f is None:
                continue  # unknown field: dropped, as Go does
            sub = f"{path}.{f.name}" if path else f.name
            current = result[f.name]
            if item is None and not isinstance(f.kind, (Ptr, List, Map)) and f.kind != BYTES:
                continue  # null leaves scalars and structs untouched
            result[f.name] = decode(
                f.kind, item, sub, current if isinstance(f.kind, (Struct, Ptr)) else None
            )
        return result
    if isinstance(kind, List):
        if value is None:
            return None
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise _type_error(path, kind, value)
        return [zero(kind.elem) if v is None and not isinstance(kind.elem, Ptr)
                else decode(kind.elem, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(kind, Map):
        if value is None:
            return None
        if not isinstance(value, _Pairs):
            raise _type_error(path, kind, value)
        out: dict[str, Any] = {}
        for key, item in value:
            out[key] = zero(kind.elem) if item is None else decode(kind.elem, item, f"{path}[{key}]")
        return out
    if kind == STRING:
        if not isinstance(value, str):
            raise _type_error(path, kind, value)
        return value
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            raise _type_error(path, kind, value)
        return value
    if kind == BOOL:
        if not isinstance(value, bool):
            raise _type_error(path, kind, value)
        return value
    if kind == TIME:
        if not isinstance(value, str):
            raise _type_error(path, "time.Time", value)
        return normalize_time(value, path)
    if kind == BYTES:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _type_error(path, kind, value)
        try:
            return GoBytes(base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True))
        except (binascii.Error, ValueError):
            raise GoDecodeError(f"{path}: illegal base64 data") from None
    if kind == EMPTY:
        if value is None:
            return EmptyStruct()
        if not isinstance(value, _Pairs):
            raise _type_error(path, kind, value)
        return EmptyStruct()
    raise AssertionError(kind)


def unmarshal(kind: Struct, data: bytes | str, what: str) -> dict[str, Any]:
    """``json.Unmarshal(data, &v)`` for a struct type; top-level ``null`` gives the zero value."""
    return decode(kind, parse_json(data, what), "")


# ---------------------------------------------------------------- encoding


def _is_empty(kind: Any, value: Any) -> bool:
    if isinstance(kind, Struct):
        return False  # encoding/json never omits a struct value
    if value is None:
        return True
    if isinstance(value, (str, list, dict, bytes)):
        return len(value) == 0
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value == 0
    return False


def to_go(kind: Any, value: Any) -> Any:
    """Convert a decoded value to marshallable form, dropping ``omitempty`` zero fields."""
    if isinstance(kind, Ptr):
        return None if value is None else to_go(kind.elem, value)
    if isinstance(kind, Struct):
        pairs = []
        for f in kind.fields:
            item = value.get(f.name, zero(f.kind))
            if f.omitempty and _is_empty(f.kind, item):
                continue
            pairs.append((f.name, to_go(f.kind, item)))
        return GoStruct(pairs)
    if isinstance(kind, List):
        return None if value is None else [to_go(kind.elem, v) for v in value]
    if isinstance(kind, Map):
        return None if value is None else {k: to_go(kind.elem, v) for k, v in value.items()}
    if kind == BYTES:
        return None if value is None else GoBytes(value)
    return value
