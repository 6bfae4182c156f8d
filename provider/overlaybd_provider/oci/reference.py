"""Image references: docker-style names and ``oci:PATH[:TAG|@DIGEST]`` layout references.

Grammar from distribution's ``reference`` package (``reference/regexp.go``, ``normalize.go``):
the first path component is a registry host when it contains ``.`` or ``:``, is ``localhost`` or has
upper-case letters; otherwise the name lives on Docker Hub (``docker.io``), where one-component
names get the ``library/`` namespace. ``index.docker.io`` is an alias of ``docker.io``, and the
Docker Hub API is served by ``registry-1.docker.io``. Those names and the default tag come from
oras-py's ``oras.defaults``; the parsing is ours, because ``oras.container.Container`` does not
normalise Docker Hub names (``busybox`` stays ``docker.io/busybox``, ``index.docker.io`` stays as
written), reads ``localhost/foo`` as a Docker Hub repository and validates no component
(docs/oci.md, "oras-py and our code").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from oras.defaults import default_tag as _ORAS_DEFAULT_TAG
from oras.defaults import registry as _oras_hub

from overlaybd_provider.oci.errors import InvalidReferenceError

DOCKER_HUB: str = _oras_hub.index_name  # "docker.io"
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, _oras_hub.index_hostname, "registry.hub.docker.com"})
DOCKER_HUB_ENDPOINT: str = _oras_hub.default_v2_registry["host"]  # "registry-1.docker.io"
DEFAULT_TAG: str = _ORAS_DEFAULT_TAG  # "latest"
LAYOUT_PREFIX = "oci:"

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_NAME_MAX = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is well formed (``sha256`` must be 64 lower-case hex), else raise."""
    if not _DIGEST_RE.match(digest):
        raise InvalidReferenceError(f"invalid digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    if algorithm == "sha256" and not _HEX64_RE.match(encoded):
        raise InvalidReferenceError(f"invalid sha256 digest {digest!r}: want 64 lower-case hex digits")
    if algorithm == "sha512" and not re.match(r"^[a-f0-9]{128}$", encoded):
        raise InvalidReferenceError(f"invalid sha512 digest {digest!r}: want 128 lower-case hex digits")
    return digest


def is_digest(text: str) -> bool:
    try:
        validate_digest(text)
    except InvalidReferenceError:
        return False
    return True


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``registry``/``repository`` are set for registry references, ``path`` for
    OCI layouts. With both tag and digest, the digest is what gets resolved."""

    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: Path | None = None

    @property
    def is_layout(self) -> bool:
        return self.path is not None

    @property
    def endpoint_host(self) -> str:
        """Host[:port] that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` for registries, the directory for layouts."""
        if self.path is not None:
            return f"{LAYOUT_PREFIX}{self.path}"
        return f"{self.registry}/{self.repository}"

    @property
    def target(self) -> str | None:
        """What to resolve: the digest when present, else the tag (may be ``None`` for layouts)."""
        return self.digest or self.tag

    def with_tag(self, tag: str | None) -> Reference:
        if tag is not None and not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=validate_digest(digest))

    def __str__(self) -> str:
        text = self.name
        if self.path is not None:
            if self.digest:
                return f"{text}@{self.digest}"
            return f"{text}:{self.tag}" if self.tag else text
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Parse ``text``; a registry reference without tag or digest gets ``default_tag``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError("empty image reference")
    text = text.strip()
    if text.startswith(LAYOUT_PREFIX):
        return parse_layout_reference(text[len(LAYOUT_PREFIX):])
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    return _parse_docker(text, default_tag)


def parse_layout_reference(rest: str) -> Reference:
    """``PATH[:TAG|@DIGEST]``, split like skopeo's ``oci:`` transport (at the first ``:``; a path
    therefore cannot contain ``:``)."""
    path_text, tag, digest = rest, None, None
    at = rest.rfind("@")
    if at > 0 and _DIGEST_RE.match(rest[at + 1:]):
        path_text, digest = rest[:at], validate_digest(rest[at + 1:])
    elif ":" in rest:
        path_text, _, tag = rest.partition(":")
        if not tag or not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r} in layout reference oci:{rest}")
    if not path_text:
        raise InvalidReferenceError(f"layout reference oci:{rest} has no directory")
    return Reference(path=Path(path_text), tag=tag, digest=digest)


def _parse_docker(text: str, default_tag: str | None) -> Reference:
    original = text
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        validate_digest(digest)
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r} in reference {original!r}")
    first, sep, remainder = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise InvalidReferenceError(f"invalid registry host {registry!r} in reference {original!r}")
    else:
        registry, path = DOCKER_HUB, text
    if registry.lower() in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path:
        raise InvalidReferenceError(f"reference {original!r} has no repository")
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidReferenceError(
                f"invalid repository component {component!r} in reference {original!r}"
                + (" (repository names must be lower case)" if component.lower() != component else "")
            )
    if len(registry) + 1 + len(path) > _NAME_MAX:
        raise InvalidReferenceError(f"repository name longer than {_NAME_MAX} characters: {original!r}")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)
