"""Build leases: two conversions that need the same new layer at the same time build it once.

Before a layer is built, its lease ``(target host, chain id, format id)`` is taken in the dedup
database. A conversion that finds the lease held by someone else waits, polling for the row the
holder records when its blob is pushed, and reuses it (hit or cross-repository mount); if the
holder dies its lease expires (``ttl``) and a waiter takes over. Held leases are renewed by one
background thread; they are released once the layer is recorded, or on failure.

Leases only save work: correctness never depends on them (rows and blobs are idempotent), so a
database error while renewing or releasing is logged, never raised.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from overlaybd_provider.engine.dedup.store import DedupError, DedupStore

__all__ = ["LayerLeases", "default_holder"]

log = logging.getLogger(__name__)


def default_holder() -> str:
    """``host:pid:random``: unique per process, readable in the table."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LayerLeases:
    """The leases one conversion holds, on one target registry host and layer format."""

    def __init__(self, dedup: DedupStore, host: str, format_id: str, *, holder: str | None = None,
                 ttl: int = 90, poll: float = 2.0, max_wait: float = 4 * 3600) -> None:
        self.dedup, self.host, self.format_id = dedup, host, format_id
        self.holder = holder or default_holder()
        self.ttl, self.poll, self.max_wait = ttl, poll, max_wait
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire_or_wait(self, chain_id: str, found: Callable[[], bool], *,
                        on_wait: Callable[[str], None] | None = None) -> bool:
        """True when we hold the lease and must build; False when ``found()`` reported the
        layer recorded by another conversion meanwhile (the caller reuses it)."""
        deadline = time.monotonic() + self.max_wait
        waiting = False
        while True:
            if found():
                return False
            holder = self.dedup.try_lease(self.host, chain_id, self.format_id, self.holder, self.ttl)
            if holder == self.holder:
                with self._lock:
                    self._held.add(chain_id)
                self._start_renewer()
                return True
            if not waiting:
                waiting = True
                log.info("layer %s is being built by %s: waiting for its result", chain_id[7:19], holder)
                if on_wait is not None:
                    on_wait(holder)
            if time.monotonic() > deadline:
                log.warning("layer %s: still leased by %s after %.0f s: building it here too",
                            chain_id[7:19], holder, self.max_wait)
                return True
            time.sleep(self.poll * random.uniform(0.75, 1.25))

    def release(self, chain_id: str) -> None:
        with self._lock:
            if chain_id not in self._held:
                return
            self._held.discard(chain_id)
        try:
            self.dedup.release_lease(self.host, chain_id, self.format_id, self.holder)
        except DedupError as exc:
            log.warning("could not release the build lease of %s (it expires by itself): %s", chain_id[7:19], exc)

    def close(self) -> None:
        """Release every lease still held (a failed conversion) and stop renewing."""
        self._stop.set()
        with self._lock:
            held = list(self._held)
        for chain_id in held:
            self.release(chain_id)
        if self._renewer is not None:
            self._renewer.join()

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is not None:
                return
            self._renewer = threading.Thread(target=self._renew, name="obd-lease", daemon=True)
            self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                held = list(self._held)
            for chain_id in held:
                try:
                    self.dedup.try_lease(self.host, chain_id, self.format_id, self.holder, self.ttl)
                except DedupError as exc:
                    log.warning("could not renew the build lease of %s: %s", chain_id[7:19], exc)
