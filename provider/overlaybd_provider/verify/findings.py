"""Differences between a converted image and its source, and filesystem problems, in one list.

Every finding has a category; the summary line counts all of them in :data:`CATEGORIES` order
(``3 differences: 3 mtime, 0 content, ...``). Only the first ``keep`` findings are stored
(counts stay exact), so a badly broken image cannot exhaust memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

CATEGORIES = (
    "mtime", "content", "size", "missing", "extra", "type", "mode", "owner", "xattr", "symlink",
    "hardlink", "device", "filesystem",
)
KEEP_DEFAULT = 100_000


def show_path(path: bytes) -> str:
    """A path for humans and JSON: UTF-8, undecodable bytes as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace") if path else "/"


@dataclass(frozen=True, slots=True)
class Finding:
    category: str
    path: str  # "" for filesystem-wide problems
    text: str  # the listing line
    source: Any = None
    image: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"category": self.category, "path": self.path or None, "text": self.text}
        if self.source is not None or self.image is not None:
            out["source"], out["image"] = self.source, self.image
        return out


class Findings:
    """Counts per category plus the first ``keep`` findings, in the order found."""

    def __init__(self, keep: int = KEEP_DEFAULT) -> None:
        self.counts: Counter[str] = Counter()
        self.items: list[Finding] = []
        self.keep = keep

    def add(self, category: str, path: bytes | str, text: str, source: Any = None, image: Any = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown finding category {category!r}")
        self.counts[category] += 1
        if len(self.items) < self.keep:
            shown = show_path(path) if isinstance(path, bytes) else path
            self.items.append(Finding(category, shown, text, source, image))

    def problem(self, text: str) -> None:
        """A filesystem (consistency) problem."""
        self.add("filesystem", "", text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.items)

    def summary(self) -> str:
        parts = ", ".join(f"{self.counts.get(c, 0)} {c}" for c in CATEGORIES)
        n = self.total
        return f"{n} difference{'' if n == 1 else 's'}: {parts}"
