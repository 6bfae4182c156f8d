"""Registry push notifications → :class:`PushEvent` records.

Accepted bodies (JSON):

* the CNCF distribution registry's envelope ``{"events": [...]}`` (``notifications.endpoints``;
  media type ``application/vnd.docker.distribution.events.v1+json``, v2 in newer releases);
* a Harbor webhook in the *Default* format (``{"type": "PUSH_ARTIFACT", "event_data": ...}``) or
  the *CloudEvents* format (``{"specversion": "1.0", "type": "harbor.artifact.pushed", ...}``).

A body that is not one of these, or whose events lack or garble the fields a push needs, raises
:class:`PayloadError` and nothing of it is used (the endpoint answers 400). Well-formed events
that are not manifest pushes (pulls, blob pushes, deletes, scans, untagged pushes) are returned
as :class:`Ignored` with the reason. Nothing from the body is trusted: names, tags and digests are
validated with the image-reference grammar before use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.oci.errors import InvalidReferenceError
from overlaybd_provider.oci.mediatypes import MANIFEST_TYPES
from overlaybd_provider.oci.reference import is_digest, parse_reference

DISTRIBUTION = "distribution"
HARBOR = "harbor"
HARBOR_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})
MAX_EVENTS = 1000
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


class PayloadError(OverlaybdError):
    """The notification body is not a distribution envelope or Harbor webhook we can read."""


@dataclass(frozen=True)
class PushEvent:
    """One manifest pushed under a tag."""

    kind: str  # DISTRIBUTION | HARBOR
    registry: str  # host[:port] as the pusher named it
    repository: str
    tag: str
    digest: str
    media_type: str | None = None  # the manifest's, when the notification says (distribution)
    user_agent: str | None = None
    actor: str | None = None
    event_id: str | None = None
    scheme: str | None = None  # http/https of the registry URL in the notification, when given

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def pinned(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class Ignored:
    what: str
    reason: str
    #: routine traffic (pulls, blob uploads) not worth keeping in the decision history
    quiet: bool = False


@dataclass
class Notification:
    kind: str
    events: list[PushEvent] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _str(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise PayloadError(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where}.{key} must be a string, got {_short(value)}")
    return value


def _checked_name(registry: str, repository: str, where: str) -> tuple[str, str]:
    """Validate ``registry/repository`` with the reference grammar (registry kept as given)."""
    host = registry.strip().lower()
    if not host or "/" in host or "@" in host:
        raise PayloadError(f"{where}: invalid registry host {_short(registry)}")
    try:
        ref = parse_reference(f"localhost/{repository}", default_tag=None)
    except InvalidReferenceError as exc:
        raise PayloadError(f"{where}: {exc}") from None
    if ref.tag or ref.digest:
        raise PayloadError(f"{where}: repository {_short(repository)} carries a tag or digest")
    return host, ref.repository


def _checked_digest(value: str, where: str) -> str:
    if not is_digest(value):
        raise PayloadError(f"{where}: invalid digest {_short(value)}")
    return value


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"the body is not JSON ({type(exc).__name__})") from None


def parse_notification(body: bytes) -> Notification:
    """Read a distribution envelope or a Harbor webhook (raises :class:`PayloadError`)."""
    doc = _obj(_load(body), "the body")
    if "events" in doc:
        return _distribution(doc)
    if "specversion" in doc:
        return _harbor_cloudevent(doc)
    if "event_data" in doc and "type" in doc:
        return _harbor_default(doc)
    raise PayloadError(
        "not a registry notification: expected a distribution envelope {\"events\": [...]} or a Harbor "
        "webhook (PUSH_ARTIFACT)"
    )


# -- distribution -------------------------------------------------------------------------------


def _distribution(doc: dict[str, Any]) -> Notification:
    events = doc["events"]
    if not isinstance(events, list):
        raise PayloadError("events must be a list")
    if len(events) > MAX_EVENTS:
        raise PayloadError(f"too many events in one envelope ({len(events)} > {MAX_EVENTS})")
    out = Notification(DISTRIBUTION)
    for i, raw in enumerate(events):
        where = f"events[{i}]"
        event = _obj(raw, where)
        action = _str(event, "action", where)
        target = _obj(event.get("target"), f"{where}.target")
        repository = _str(target, "repository", f"{where}.target")
        digest = _str(target, "digest", f"{where}.target", required=action == "push")
        media_type = _str(target, "mediaType", f"{where}.target", required=False)
        tag = _str(target, "tag", f"{where}.target", required=False)
        label = f"{repository}{':' + tag if tag else ''}{'@' + digest if digest else ''}"
        url = _str(target, "url", f"{where}.target", required=False)
        if action != "push":
            out.ignored.append(Ignored(label, f"action {action!r}, not a push", quiet=True))
            continue
        assert digest is not None and repository is not None
        if media_type not in MANIFEST_TYPES:  # blobs and other objects: not read any further
            blob = "/blobs/" in (url or "") or not media_type
            out.ignored.append(Ignored(label, f"not an image manifest ({media_type or 'no media type'})", quiet=blob))
            continue
        _checked_digest(digest, f"{where}.target")
        request = event.get("request")
        request = _obj(request, f"{where}.request") if request is not None else {}
        parts = urlsplit(url) if url else None
        host = (parts.netloc if parts and parts.netloc else None) or _str(request, "host", f"{where}.request", required=False)
        if not host:
            raise PayloadError(f"{where}: no registry host (target.url or request.host)")
        registry, repository = _checked_name(host, repository, where)
        if tag is None:
            out.ignored.append(Ignored(f"{registry}/{label}", "pushed by digest, no tag"))
            continue
        if not _TAG_RE.match(tag):
            raise PayloadError(f"{where}.target: invalid tag {_short(tag)}")
        actor = event.get("actor") if isinstance(event.get("actor"), dict) else {}
        out.events.append(
            PushEvent(
                kind=DISTRIBUTION,
                registry=registry,
                repository=repository,
                tag=tag,
                digest=digest,
                media_type=media_type,
                user_agent=_str(request, "useragent", f"{where}.request", required=False),
                actor=_str(actor, "name", f"{where}.actor", required=False),
                event_id=_str(event, "id", where, required=False),
                scheme=parts.scheme if parts and parts.scheme in ("http", "https") else None,
            )
        )
    return out


# -- Harbor -------------------------------------------------------------------------------------


def _harbor_default(doc: dict[str, Any]) -> Notification:
    kind = _str(doc, "type", "the webhook")
    data = _obj(doc.get("event_data"), "event_data")
    return _harbor(kind or "", data, _str(doc, "operator", "the webhook", required=False), None)


def _harbor_cloudevent(doc: dict[str, Any]) -> Notification:
    kind = _str(doc, "type", "the CloudEvent")
    data = doc.get("data")
    if kind not in HARBOR_PUSH_TYPES:
        out = Notification(HARBOR)
        out.ignored.append(Ignored(str(kind), "not an artifact push"))
        return out
    data = _obj(data, "data")
    # Harbor 2.8+ CloudEvents carry the Default payload's event_data fields under data
    data = _obj(data.get("event_data"), "data.event_data") if "event_data" in data else data
    return _harbor(kind or "", data, _str(doc, "operator", "the CloudEvent", required=False), _str(doc, "id", "the CloudEvent", required=False))


def _harbor(kind: str, data: dict[str, Any], operator: str | None, event_id: str | None) -> Notification:
    out = Notification(HARBOR)
    if kind not in HARBOR_PUSH_TYPES:
        out.ignored.append(Ignored(kind, "not an artifact push"))
        return out
    repo = _obj(data.get("repository"), "event_data.repository")
    full = _str(repo, "repo_full_name", "event_data.repository", required=False)
    if full is None:
        namespace = _str(repo, "namespace", "event_data.repository")
        full = f"{namespace}/{_str(repo, 'name', 'event_data.repository')}"
    resources = data.get("resources")
    if not isinstance(resources, list) or not resources:
        raise PayloadError("event_data.resources must be a non-empty list")
    if len(resources) > MAX_EVENTS:
        raise PayloadError(f"too many resources ({len(resources)} > {MAX_EVENTS})")
    for i, raw in enumerate(resources):
        where = f"event_data.resources[{i}]"
        res = _obj(raw, where)
        digest = _checked_digest(_str(res, "digest", where) or "", where)
        url = _str(res, "resource_url", where)
        assert url is not None
        host = url.split("/", 1)[0]
        registry, repository = _checked_name(host, full, where)
        tag = _str(res, "tag", where, required=False)
        if not tag or tag == digest or is_digest(tag):
            out.ignored.append(Ignored(f"{registry}/{repository}@{digest}", "pushed by digest, no tag"))
            continue
        if not _TAG_RE.match(tag):
            raise PayloadError(f"{where}: invalid tag {_short(tag)}")
        out.events.append(
            PushEvent(
                kind=HARBOR,
                registry=registry,
                repository=repository,
                tag=tag,
                digest=digest,
                actor=operator,
                event_id=event_id,
            )
        )
    return out
