"""Watch a repository's tags from the triggerer: fires when a tag appears or its digest changes.

For registries that cannot send notifications. Used two ways:

* in an ``AssetWatcher`` (event-driven scheduling): runs forever in the triggerer, one event per
  poll that saw changes (payload: ``registry``, ``repository``, ``changes: [{tag, digest,
  previous}]``); the DAG scheduled on the asset reads them from ``triggering_asset_events``;
* deferred by :class:`~overlaybd_provider.sensors.tag.OciTagSensor` (``once=True``): fires once.

Polling is one ``GET /v2/<repo>/tags/list`` (paginated) plus one manifest ``HEAD`` per tag that
passes the ``tags`` / ``exclude_tags`` globs, through our synchronous registry client in a worker
thread (same auth, TLS, hosts.toml and retry code as conversions; the connection is read the same
way). Between polls: ``poll_interval`` ±20 % jitter; after failures: exponential back-off with
jitter up to ``max_backoff``. No worker slot is held.

**Restarts.** As a watcher, the last seen ``{tag: digest}`` map is kept in the watched asset's
state store (metadata DB) and written *after* the event is handed to the triggerer, so a restart
resumes from it: a tag pushed while the triggerer was down fires on the first poll after the
restart; an event handed over just before a crash may fire again (the conversion's run id is
deterministic, so the repeat is absorbed). With no stored state (first start) the first poll is a
baseline and fires nothing (``initial="baseline"``) or fires for every tag (``initial="all"``).
As a sensor trigger the known map is part of the trigger's kwargs, which the triggerer restores.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from overlaybd_provider.oci.reference import parse_reference

MAX_CHANGES_PER_EVENT = 100
STATE_KEY_PREFIX = "overlaybd.tag_watch"


def jittered(seconds: float, spread: float = 0.2) -> float:
    return max(0.1, seconds * random.uniform(1 - spread, 1 + spread))


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential (base·2^(n-1), capped) with "equal jitter": between half and all of it."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return random.uniform(ceiling / 2, ceiling)


def diff_tags(known: dict[str, str], current: dict[str, str]) -> list[dict[str, Any]]:
    """Tags that are new or point at another digest (removed tags are not events)."""
    return [
        {"tag": tag, "digest": digest, "previous": known.get(tag)}
        for tag, digest in sorted(current.items())
        if known.get(tag) != digest
    ]


class OciTagWatchTrigger(BaseEventTrigger):
    """Poll ``repository`` (``registry/repo``) for new or moved tags.

    :param repository: ``registry[:port]/path`` (no tag)
    :param registry_conn_id: ``oci_registry`` connection (auth, TLS, plain HTTP); None = anonymous
    :param tags: tag globs to watch (default all); ``exclude_tags``: globs to ignore
    :param poll_interval: seconds between polls (±20 % jitter)
    :param max_backoff: ceiling of the back-off after failed polls
    :param initial: ``baseline`` (first poll without stored state fires nothing) or ``all``
    :param once: fire once and stop (sensor use)
    :param known: ``{tag: digest}`` to compare the first poll with (sensor use)
    :param max_tags: refuse to watch more tags than this per poll (each costs one HEAD)
    """

    def __init__(
        self,
        *,
        repository: str,
        registry_conn_id: str | None = None,
        tags: list[str] | None = None,
        exclude_tags: list[str] | None = None,
        poll_interval: float = 60.0,
        max_backoff: float = 900.0,
        initial: str = "baseline",
        once: bool = False,
        known: dict[str, str] | None = None,
        max_tags: int = 500,
    ) -> None:
        super().__init__()
        ref = parse_reference(repository, default_tag=None)
        if ref.is_layout or ref.tag or ref.digest:
            raise ValueError(f"repository must be registry/repo without tag or digest, got {repository!r}")
        if initial not in ("baseline", "all"):
            raise ValueError(f"initial must be 'baseline' or 'all', got {initial!r}")
        if poll_interval <= 0 or max_backoff < poll_interval:
            raise ValueError("poll_interval > 0 and max_backoff >= poll_interval are required")
        self.repository = repository
        self.registry_conn_id = registry_conn_id or None
        self.tags = list(tags or ["*"])
        self.exclude_tags = list(exclude_tags or [])
        self.poll_interval = float(poll_interval)
        self.max_backoff = float(max_backoff)
        self.initial = initial
        self.once = bool(once)
        self.known = dict(known) if known is not None else None
        self.max_tags = int(max_tags)
        self._ref = ref
        self._client: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "repository": self.repository,
                "registry_conn_id": self.registry_conn_id,
                "tags": self.tags,
                "exclude_tags": self.exclude_tags,
                "poll_interval": self.poll_interval,
                "max_backoff": self.max_backoff,
                "initial": self.initial,
                "once": self.once,
                "known": self.known,
                "max_tags": self.max_tags,
            },
        )

    # -- registry (blocking; runs in a worker thread) ----------------------------------------------
    def _registry_client(self):
        if self._client is None:
            from overlaybd_provider.oci.client import RegistryClient
            from overlaybd_provider.oci.options import RegistryOptions

            if self.registry_conn_id:
                from overlaybd_provider.hooks.registry import OciRegistryHook

                options = OciRegistryHook(oci_registry_conn_id=self.registry_conn_id).registry_options
            else:
                options = RegistryOptions()
            # one poll must stay short: the trigger's own back-off handles longer outages
            options = replace(options, max_retries=min(options.max_retries, 2), retry_budget=30.0)
            self._client = RegistryClient(self._ref.registry, options)
        return self._client

    def watched(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, g) for g in self.tags) and not any(
            fnmatch.fnmatchcase(tag, g) for g in self.exclude_tags
        )

    def snapshot(self) -> dict[str, str]:
        """``{tag: digest}`` of the watched tags now (blocking)."""
        from overlaybd_provider.oci.errors import NotFoundError

        client = self._registry_client()
        try:
            tags = [t for t in client.list_tags(self._ref.repository) if self.watched(t)]
        except NotFoundError:
            return {}  # the repository does not exist (yet)
        if len(tags) > self.max_tags:
            raise RuntimeError(
                f"{self.repository}: {len(tags)} tags match, more than max_tags={self.max_tags}; narrow 'tags'"
            )
        current = {}
        for tag in tags:
            try:
                current[tag] = client.resolve(self._ref.repository, tag).digest
            except NotFoundError:
                continue  # deleted between the listing and the HEAD
        return current

    # -- state ---------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        key = "|".join([self.repository, ",".join(self.tags), ",".join(self.exclude_tags)])
        return f"{STATE_KEY_PREFIX}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    async def load_state(self) -> dict[str, str] | None:
        if self.known is not None:
            return dict(self.known)
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return None
        try:
            value = await store.aget(self.state_key)
        except Exception as exc:
            self.log.warning("tag watch %s: cannot read the stored state (%s); starting over", self.repository, exc)
            return None
        tags = value.get("tags") if isinstance(value, dict) else None
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None

    async def save_state(self, tags: dict[str, str]) -> None:
        self.known = None if getattr(self, "asset_state_store", None) is not None else dict(tags)
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            await store.aset(self.state_key, {"tags": tags, "updated": stamp})
        except Exception as exc:
            self.log.warning("tag watch %s: cannot store the state (%s)", self.repository, exc)

    # -- the loop ------------------------------------------------------------------------------------
    def event(self, changes: list[dict[str, Any]]) -> TriggerEvent:
        return TriggerEvent(
            {
                "registry": self._ref.registry,
                "repository": self._ref.repository,
                "changes": changes,
                "observed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        state = await self.load_state()
        failures = 0
        while True:
            try:
                current = await asyncio.to_thread(self.snapshot)
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures, self.poll_interval, self.max_backoff)
                self.log.warning("tag watch %s: poll failed (%s: %s); next try in %.0f s", self.repository,
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if state is None and self.initial == "baseline":
                self.log.info("tag watch %s: baseline of %d tag(s)", self.repository, len(current))
                state = current
                await self.save_state(state)
            else:
                changes = diff_tags(state or {}, current)
                for i in range(0, len(changes), MAX_CHANGES_PER_EVENT):
                    yield self.event(changes[i : i + MAX_CHANGES_PER_EVENT])
                if changes and self.once:
                    return
                if changes or current != state:
                    state = current
                    await self.save_state(state)
            await asyncio.sleep(jittered(self.poll_interval))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def cleanup(self) -> None:
        await asyncio.to_thread(self.close)
