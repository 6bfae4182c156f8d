"""Tag-watch events (from :class:`~overlaybd_provider.triggers.tag_watch.OciTagWatchTrigger`) →
the same planned conversions as pushes notified by webhook.

Used by the ``overlaybd_watch`` DAG's plan task: the watcher's asset events become
:class:`~.payloads.PushEvent` records, go through the same rules, loop checks and manifest checks
as webhook pushes, and come out as ``TriggerDagRunOperator`` kwargs with the same deterministic
run ids, so a registry that has both a webhook and a watcher converts each image once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.events.payloads import PushEvent
from overlaybd_provider.events.planner import Planned, plan_events
from overlaybd_provider.events.rules import RuleSet
from overlaybd_provider.oci.reference import is_digest

log = logging.getLogger(__name__)

WATCH = "watch"
WATCH_KEYS = frozenset(
    {"repository", "registry_conn_id", "tags", "exclude_tags", "poll_interval", "max_backoff", "initial", "max_tags"}
)


class WatchConfigError(OverlaybdError):
    """The watch list (Variable ``overlaybd_watch``) cannot be used."""


def parse_watches(text: str | None) -> list[dict[str, Any]]:
    """``watches: [{repository, registry_conn_id, tags, exclude_tags, poll_interval, ...}]``."""
    if text is None or not str(text).strip():
        return []
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WatchConfigError(f"watch list is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(doc, Mapping):
        doc = doc.get("watches") or []
    if not isinstance(doc, list):
        raise WatchConfigError("watch list must be a list (or a mapping with 'watches')")
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, Mapping) or not item.get("repository"):
            raise WatchConfigError(f"watches[{i}] needs a repository (registry/repo)")
        unknown = set(item) - WATCH_KEYS
        if unknown:
            raise WatchConfigError(f"watches[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        out.append(dict(item))
    return out


def push_events(payload: Mapping[str, Any]) -> list[PushEvent]:
    """PushEvents from one watcher event payload (changes whose digest is well formed)."""
    registry, repository = payload.get("registry"), payload.get("repository")
    if not isinstance(registry, str) or not isinstance(repository, str):
        return []
    events = []
    for change in payload.get("changes") or []:
        if not isinstance(change, Mapping):
            continue
        tag, digest = change.get("tag"), change.get("digest")
        if isinstance(tag, str) and isinstance(digest, str) and is_digest(digest):
            events.append(PushEvent(kind=WATCH, registry=registry, repository=repository, tag=tag, digest=digest))
    return events


def watch_payloads(triggering_asset_events: Any) -> list[Mapping[str, Any]]:
    """The trigger payloads in a run's ``triggering_asset_events`` (each event once)."""
    seen, out = set(), []
    for key in triggering_asset_events or {}:
        for event in triggering_asset_events[key]:
            extra = getattr(event, "extra", None) or {}
            payload = extra.get("payload") if isinstance(extra, Mapping) else None
            ident = (getattr(getattr(event, "asset", None), "uri", None), str(getattr(event, "timestamp", "")))
            if isinstance(payload, Mapping) and ident not in seen:
                seen.add(ident)
                out.append(payload)
    return out


def plan_watch(
    payloads: Iterable[Mapping[str, Any]],
    rules: RuleSet,
    inspect: Callable[[Planned], str | None] | None = None,
) -> list[dict[str, Any]]:
    """``TriggerDagRunOperator`` kwargs for every change a rule converts (after the manifest check)."""
    events = [e for p in payloads for e in push_events(p)]
    plan = plan_events(events, rules)
    for item in plan.ignored:
        log.info("not converting %s: %s", item.what, item.reason)
    folded: dict[tuple[str, str], Planned] = {}
    for item in plan.planned:
        folded[item.fold_key] = item
    out = []
    for item in folded.values():
        verdict = None
        if inspect is not None:
            try:
                verdict = inspect(item)
            except Exception as exc:
                log.warning("could not read the manifest of %s (%s); converting anyway", item.event.pinned, exc)
        if verdict is not None:
            log.info("not converting %s@%s: %s", item.event.ref, item.event.digest, verdict)
            continue
        log.info("converting %s (%s) → %s as %s run %s", item.event.ref, item.event.digest, item.destination,
                 item.dag_id, item.run_id)
        out.append({"trigger_dag_id": item.dag_id, "trigger_run_id": item.run_id, "conf": item.conf})
    return out
