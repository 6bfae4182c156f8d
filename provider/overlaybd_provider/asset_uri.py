"""``oci://`` asset URIs: one Airflow asset per image (``oci://REGISTRY/REPOSITORY[:TAG][@DIGEST]``).

Registered through ``asset-uris`` in :mod:`overlaybd_provider.get_provider_info`, so Airflow runs
:func:`normalize_uri` on every ``Asset("oci://...")``: the registry host is lower-cased, Docker Hub
aliases become ``docker.io`` and one-component Hub names get ``library/`` (as image references do),
and anything that is not a valid image name is rejected. A URI without tag or digest names the
whole repository (what a tag watcher observes). No Airflow import here: the normalizer is loaded by
the provider manager in every Airflow process.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from overlaybd_provider.oci.errors import InvalidReferenceError
from overlaybd_provider.oci.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, Reference, parse_reference

SCHEME = "oci"
_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::[0-9]+)?$"
)


def _parse(host: str, path: str) -> Reference:
    """Registry ``host`` plus ``/repo[:tag][@digest]``; the host is never mistaken for a Hub namespace."""
    host = host.lower()
    if not _HOST_RE.match(host):
        raise InvalidReferenceError(f"invalid registry host {host!r} in an {SCHEME}:// URI")
    name = path.lstrip("/")
    if not name:
        raise InvalidReferenceError(f"{SCHEME}://{host} names no repository")
    # parse the path as if it lived on a registry called "localhost": validates repository, tag, digest
    try:
        ref = parse_reference(f"localhost/{name}", default_tag=None)
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(str(exc).replace("'localhost/", f"'{SCHEME}://{host}/")) from None
    registry = DOCKER_HUB if host in DOCKER_HUB_ALIASES else host
    repository = ref.repository
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return Reference(registry=registry, repository=repository, tag=ref.tag, digest=ref.digest)


def normalize_uri(parts: SplitResult) -> SplitResult:
    """Airflow's URI normalizer for ``oci``: canonical host and repository, or ``ValueError``."""
    if parts.query or parts.fragment:
        raise ValueError(f"{SCHEME}:// URIs take no query or fragment: {parts.geturl()!r}")
    try:
        ref = _parse(parts.netloc, parts.path)
    except InvalidReferenceError as exc:
        raise ValueError(str(exc)) from None
    path = f"/{ref.repository}" + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    return SplitResult(SCHEME, ref.registry, path, "", "")


def image_uri(reference: str | Reference, *, tag: bool = True) -> str | None:
    """The asset URI of an image reference; ``None`` for OCI-layout references (no registry).
    With ``tag=False`` the repository's URI (what a tag watcher's asset names)."""
    ref = parse_reference(reference, default_tag=None) if isinstance(reference, str) else reference
    if ref.is_layout:
        return None
    text = f"{SCHEME}://{ref.registry}/{ref.repository}"
    if tag:
        text += (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    return normalize_uri(urlsplit(text)).geturl()


def parse_image_uri(uri: str) -> Reference:
    """The image reference an ``oci://`` URI names (``InvalidReferenceError`` if it is not one)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != SCHEME:
        raise InvalidReferenceError(f"not an {SCHEME}:// URI: {uri!r}")
    return _parse(parts.netloc, parts.path)
