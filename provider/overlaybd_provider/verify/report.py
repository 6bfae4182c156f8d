"""The result of ``overlaybd verify``: per platform, findings, what was checked and how.

``lines()`` is what the CLI prints (a summary line, then the first differences, one per line);
``to_dict()`` the full JSON report (``--json``); ``summary()`` a small JSON-able dict for an
Airflow XCom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.verify.e2fsck import FsckResult
from overlaybd_provider.verify.findings import CATEGORIES, Findings


@dataclass
class PlatformReport:
    platform: str
    source_digest: str
    image_digest: str
    findings: Findings
    layers: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    structural: dict[str, Any] = field(default_factory=dict)
    e2fsck: FsckResult | None = None
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return self.findings.total

    def summary_line(self) -> str:
        if self.findings.total:
            return self.findings.summary()
        checks = ["structural checks passed"]
        if self.e2fsck is not None and self.e2fsck.ran:
            checks.append("e2fsck clean")
        mb = self.stats.get("bytes_hashed", 0) / 1e6
        return (f"0 differences: the image matches its source ({self.stats.get('paths', 0)} paths, "
                f"{mb:.1f} MB of content hashed; {', '.join(checks)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform or None,
            "source_digest": self.source_digest,
            "image_digest": self.image_digest,
            "layers": self.layers,
            "identical": self.findings.total == 0,
            "summary": self.summary_line(),
            "counts": {c: self.findings.counts.get(c, 0) for c in CATEGORIES},
            "differences": [f.to_dict() for f in self.findings.items],
            "differences_truncated": self.findings.truncated,
            "stats": self.stats,
            "structural": self.structural,
            "e2fsck": self.e2fsck.to_dict() if self.e2fsck is not None else None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class VerifyReport:
    source: str
    destination: str
    platforms: list[PlatformReport]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return all(p.findings.total == 0 for p in self.platforms)

    @property
    def exit_code(self) -> int:
        return 0 if self.identical else 1

    @property
    def differences(self) -> int:
        return sum(p.findings.total for p in self.platforms)

    def summary_line(self) -> str:
        """One line for the whole image (the first failing platform's, prefixed, if several)."""
        many = len(self.platforms) > 1
        bad = [p for p in self.platforms if p.findings.total] or self.platforms[:1]
        p = bad[0]
        return f"{p.platform}: {p.summary_line()}" if many else p.summary_line()

    def lines(self, max_diffs: int = 20) -> list[str]:
        many = len(self.platforms) > 1
        out: list[str] = []
        for p in self.platforms:
            prefix = f"{p.platform}: " if many else ""
            out.append(prefix + p.summary_line())
            shown = p.findings.items[:max(0, max_diffs)]
            out.extend(prefix + f.text for f in shown)
            more = p.findings.total - len(shown)
            if shown and more > 0:
                out.append(f"{prefix}... and {more} more (--max-diffs N, or --json for all)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "identical": self.identical,
                "differences": self.differences, "options": self.options,
                "platforms": [p.to_dict() for p in self.platforms]}

    def summary(self) -> dict[str, Any]:
        """Small: counts and the summary line per platform (for XCom)."""
        return {
            "source": self.source, "destination": self.destination, "identical": self.identical,
            "differences": self.differences, "summary": self.summary_line(),
            "platforms": [{"platform": p.platform or None, "image_digest": p.image_digest,
                           "differences": p.findings.total,
                           "counts": {c: n for c, n in p.findings.counts.items() if n},
                           "paths": p.stats.get("paths", 0), "bytes_hashed": p.stats.get("bytes_hashed", 0),
                           "e2fsck": None if p.e2fsck is None else p.e2fsck.ran,
                           "seconds": round(p.seconds, 3)} for p in self.platforms],
        }
