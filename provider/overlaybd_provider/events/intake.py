"""The webhook's back half: fold bursts, read the pushed manifest, start the runs.

The endpoint answers 202 as soon as a notification is authenticated and planned; the planned
conversions wait here for the burst window (``fold_seconds``, counted from the first event of a
destination). Within the window every event for the same DAG and destination replaces the
previous one (the newest digest wins), so a tag pushed several times in a row, or a multi-tag
push whose destination does not name the tag, starts one run. After the window one thread reads
the manifest (skipping signatures, SBOMs, charts and overlaybd images, see :mod:`.inspect`) and
creates the run with its deterministic id; a run id that exists already is success, which also
makes a second API-server worker, a registry redelivery or the tag watcher harmless.

State is in memory: pending conversions of an API server that stops inside the window are lost
(the registry's own queue is in memory too). The nightly DAG or a tag watcher closes that gap.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from overlaybd_provider.events.payloads import Ignored
from overlaybd_provider.events.planner import Planned

log = logging.getLogger(__name__)

HISTORY = 200


@dataclass(frozen=True)
class Decision:
    """What became of one pushed image (shown by ``GET /overlaybd/webhook/recent``)."""

    at: str
    source: str
    outcome: str  # queued | created | exists | ignored | failed
    reason: str = ""
    digest: str | None = None
    destination: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    rule: str | None = None
    queued_for: float | None = None  # seconds from the first event to the run's creation


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_OPTIONS_TTL = 60.0
_options_cache: dict[str | None, tuple[float, Any]] = {}
_options_lock = threading.Lock()


def _registry_options(conn_id: str | None) -> Any:
    """Options of a source connection, kept a minute: a busy registry does not re-read the
    connection (nor re-write inline PEM files) for every push."""
    from overlaybd_provider.oci.options import RegistryOptions

    now = time.monotonic()
    with _options_lock:
        hit = _options_cache.get(conn_id)
        if hit is not None and hit[0] > now:
            return hit[1]
    if conn_id:
        from overlaybd_provider.hooks.registry import OciRegistryHook

        options = OciRegistryHook(oci_registry_conn_id=conn_id).registry_options
    else:
        options = RegistryOptions()
    options = replace(options, max_retries=1, retry_budget=15.0, timeout=min(options.timeout, 10.0))
    with _options_lock:
        _options_cache[conn_id] = (now + _OPTIONS_TTL, options)
    return options


def check_manifest(planned: Planned) -> str | None:
    """Read the pushed manifest with the rule's source connection and judge it (see :mod:`.inspect`)."""
    from overlaybd_provider.events.inspect import inspect_pushed
    from overlaybd_provider.oci.client import RegistryClient

    options = _registry_options(planned.src_registry_conn_id)
    client = RegistryClient(planned.event.registry, options)
    try:
        return inspect_pushed(client, planned.event.repository, planned.event.digest)
    finally:
        client.close()


def default_create_run(dag_id: str, run_id: str, conf: dict[str, Any], note: str | None) -> str:
    from overlaybd_provider.events.runs import create_run

    return create_run(dag_id, run_id, conf, note)


class Intake:
    """Pending conversions keyed by ``(dag_id, destination)``, released by one daemon thread."""

    def __init__(
        self,
        *,
        create_run: Callable[[str, str, dict[str, Any], str | None], str] = default_create_run,
        inspect: Callable[[Planned], str | None] = check_manifest,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._create_run = create_run
        self._inspect = inspect
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: dict[tuple[str, str], tuple[float, float, Planned]] = {}
        self._busy = 0
        self._history: collections.deque[Decision] = collections.deque(maxlen=HISTORY)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- producer side (the request handler) ---------------------------------------------------
    def submit(self, planned: Iterable[Planned], fold_seconds: float) -> None:
        now = self._clock()
        with self._cond:
            for item in planned:
                due, first, _ = self._pending.get(item.fold_key, (now + fold_seconds, now, item))
                self._pending[item.fold_key] = (due, first, item)
                self._history.append(
                    Decision(at=_now(), source=item.event.ref, outcome="queued", digest=item.event.digest,
                             destination=item.destination, dag_id=item.dag_id, run_id=item.run_id, rule=item.rule)
                )
            self._ensure_thread()
            self._cond.notify_all()

    def note_ignored(self, ignored: Iterable[Ignored]) -> None:
        with self._cond:
            for item in ignored:
                self._history.append(Decision(at=_now(), source=item.what, outcome="ignored", reason=item.reason))

    def recent(self) -> list[dict[str, Any]]:
        with self._cond:
            return [asdict(d) for d in reversed(self._history)]

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending or being processed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- consumer side ---------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="overlaybd-webhook-intake", daemon=True)
            self._thread.start()

    def _take_due(self) -> list[tuple[float, Planned]]:
        now = self._clock()
        due = [k for k, (when, _, _) in self._pending.items() if when <= now]
        out = []
        for key in due:
            _, first, item = self._pending.pop(key)
            out.append((first, item))
        return out

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    ready = self._take_due()
                    if ready:
                        self._busy += len(ready)
                        break
                    wait = min((w for w, _, _ in self._pending.values()), default=None)
                    self._cond.wait(None if wait is None else max(0.01, wait - self._clock()))
                else:
                    return
            for first, item in ready:
                try:
                    decision = self._process(item, first)
                except Exception as exc:  # keep the thread alive whatever one conversion does
                    log.exception("webhook: %s → %s failed", item.event.ref, item.destination)
                    decision = self._decision(item, "failed", f"{type(exc).__name__}: {exc}", first)
                with self._cond:
                    self._history.append(decision)
                    self._busy -= 1
                    self._cond.notify_all()

    def _decision(self, item: Planned, outcome: str, reason: str, first: float) -> Decision:
        return Decision(
            at=_now(), source=item.event.ref, outcome=outcome, reason=reason, digest=item.event.digest,
            destination=item.destination, dag_id=item.dag_id, run_id=item.run_id, rule=item.rule,
            queued_for=round(self._clock() - first, 3),
        )

    def _process(self, item: Planned, first: float) -> Decision:
        from overlaybd_provider.events.runs import RunRejected

        try:
            verdict = self._inspect(item)
        except Exception as exc:  # cannot read it: convert anyway, the run will show the problem
            log.warning("webhook: could not read the manifest of %s (%s); converting anyway", item.event.pinned,
                        f"{type(exc).__name__}: {exc}")
            verdict = None
        if verdict is not None:
            log.info("webhook: ignoring %s@%s: %s", item.event.ref, item.event.digest, verdict)
            return self._decision(item, "ignored", verdict, first)
        note = f"Pushed {item.event.ref} ({item.event.digest}); rule {item.rule!r} via overlaybd webhook"
        try:
            outcome = self._create_run(item.dag_id, item.run_id, item.conf, note)
        except RunRejected as exc:
            log.error("webhook: %s → %s: %s", item.event.ref, item.destination, exc)
            return self._decision(item, "failed", str(exc), first)
        log.info("webhook: %s run %s of %s: %s → %s (rule %s)", outcome, item.run_id, item.dag_id,
                 item.event.pinned, item.destination, item.rule)
        return self._decision(item, outcome, "", first)
