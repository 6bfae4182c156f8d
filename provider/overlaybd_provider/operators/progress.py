"""Task-log progress for the stage operators: layer i/n, MB, MB/s, running totals.

The engine calls ``progress(event)`` with ``{"event": "layer", "platform", "index", "count",
"what", "bytes_in", "bytes_out", "seconds", "dedup", "chain_id"}`` per finished layer and
``{"event": "pushed", ...}`` after a push; each becomes one line in the Airflow task log, with the
stage's running byte total and throughput so a long conversion shows how far it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

MB = 1_000_000


def rate(nbytes: float, seconds: float) -> str:
    """``"12.3 MB in 0.80 s (15.4 MB/s)"``."""
    speed = nbytes / MB / seconds if seconds > 0 else 0.0
    return f"{nbytes / MB:.1f} MB in {seconds:.2f} s ({speed:.1f} MB/s)"


class ProgressLog:
    """Callable progress sink for one stage, logging through ``logger`` (the operator's ``log``)."""

    def __init__(self, logger: Any, stage: str) -> None:
        self.logger = logger
        self.stage = stage
        self.started = time.monotonic()
        self.layers = 0
        self.total_bytes = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "layer":
            self.layers += 1
            nbytes = int(event.get("bytes_in") or 0)
            self.total_bytes += nbytes
            where = f" {event['platform']}" if event.get("platform") else ""
            index, count = int(event.get("index", 0)) + 1, event.get("count", "?")
            self.logger.info(
                "%s: layer %d/%s%s %s %s: %s; stage total %s",
                self.stage,
                index,
                count,
                where,
                str(event.get("chain_id", ""))[7:19],
                event.get("what", ""),
                rate(nbytes, float(event.get("seconds") or 0.0)),
                rate(self.total_bytes, self.elapsed()),
            )
        elif kind == "pushed":
            self.logger.info(
                "%s: %s@%s, %d blob(s) pushed, %d already present",
                self.stage,
                event.get("target"),
                event.get("digest"),
                event.get("blobs_pushed", 0),
                event.get("blobs_existing", 0),
            )
        else:
            self.logger.info("%s: %s", self.stage, dict(event))

    def elapsed(self) -> float:
        return time.monotonic() - self.started
