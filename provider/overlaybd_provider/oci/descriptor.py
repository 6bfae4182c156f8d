"""Content descriptors and platforms (image-spec ``descriptor.md``, ``image-index.md``).

``to_dict`` emits the image-spec Go field order (mediaType, digest, size, urls, annotations, data,
platform, artifactType) so that marshalled output matches upstream; unknown fields survive a round
trip in ``extra``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oras.defaults import oci_ref_name_annotation

from overlaybd_provider.oci.errors import OciError

REF_NAME_ANNOTATION: str = oci_ref_name_annotation  # "org.opencontainers.image.ref.name"

_DESCRIPTOR_KEYS = ("mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType")
_PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant", "features")


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        if self.features:
            out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Platform:
        return cls(
            architecture=str(doc.get("architecture", "")),
            os=str(doc.get("os", "")),
            variant=doc.get("variant") or None,
            os_version=doc.get("os.version") or None,
            os_features=tuple(doc.get("os.features") or ()),
            features=tuple(doc.get("features") or ()),
        )

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    data: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(REF_NAME_ANNOTATION)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.data is not None:
            out["data"] = self.data
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Descriptor:
        try:
            digest = doc["digest"]
            size = int(doc["size"])
        except (KeyError, TypeError, ValueError):
            raise OciError(f"descriptor without a valid digest/size: {dict(doc)!r}") from None
        platform = doc.get("platform")
        return cls(
            media_type=str(doc.get("mediaType", "")),
            digest=str(digest),
            size=size,
            annotations=dict(doc.get("annotations") or {}),
            platform=Platform.from_dict(platform) if isinstance(platform, Mapping) else None,
            urls=tuple(doc.get("urls") or ()),
            artifact_type=doc.get("artifactType") or None,
            data=doc.get("data"),
            extra={k: v for k, v in doc.items() if k not in _DESCRIPTOR_KEYS},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Descriptor:
        return cls.from_dict(json.loads(text))
