"""Task-log progress for the operators: one line per layer per stage, in KiB/MiB.

The engine calls ``progress(event)`` for layer events (``downloaded``, ``built``, ``reused``,
``waiting for …``, ``built by an earlier try``) and once after a push. A layer gets one line per
stage: downloads are only counted (they overlap the builds) and reported in the stage's final
line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from overlaybd_provider.engine.report import describe_layer_event, human_bytes, human_seconds

__all__ = ["ProgressLog", "human_bytes", "human_seconds"]


class ProgressLog:
    """Callable progress sink for one stage, logging through ``logger`` (the operator's ``log``)."""

    def __init__(self, logger: Any, stage: str) -> None:
        self.logger = logger
        self.stage = stage
        self.started = time.monotonic()
        self.downloaded = 0
        self.downloads = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "layer":
            if event.get("what") == "downloaded":
                self.downloads += 1
                self.downloaded += int(event.get("bytes_in") or 0)
                return
            where = f"[{event['platform']}] " if event.get("platform") else ""
            self.logger.info("%s: %s%s", self.stage, where, describe_layer_event(dict(event)))
        elif kind != "pushed":  # the push operator writes its own summary line
            self.logger.info("%s: %s", self.stage, dict(event))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fetched(self) -> str:
        """``3 downloads, 12.3 MiB`` (empty when nothing was fetched)."""
        if not self.downloads:
            return ""
        return f"{self.downloads} download(s), {human_bytes(self.downloaded)}"
