"""One result row per measured case and the table both benchmark scripts print."""

from __future__ import annotations

from dataclasses import dataclass, field

MB = 1_000_000
COLUMNS = ("case", "algo", "bs", "runs", "seconds", "cpu s", "MB/s", "files/s", "peak RSS MB", "out MB", "out/tar",
           "proxy s", "ours/proxy", "cpu ratio", "targets")


@dataclass
class Row:
    case: str
    algo: str = "-"
    bs: str = "-"
    runs: int = 0
    seconds: float | None = None
    tar_bytes: int = 0
    entries: int = 0
    max_rss_mb: float | None = None
    out_bytes: int | None = None
    proxy_seconds: float | None = None
    cpu_seconds: float | None = None
    proxy_cpu_seconds: float | None = None
    #: (description, passed) pairs printed in the last column
    checks: list[tuple[str, bool]] = field(default_factory=list)
    note: str = ""

    @property
    def mb_per_s(self) -> float | None:
        return self.tar_bytes / MB / self.seconds if self.seconds and self.tar_bytes else None

    @property
    def files_per_s(self) -> float | None:
        return self.entries / self.seconds if self.seconds and self.entries else None

    @property
    def out_ratio(self) -> float | None:
        return self.out_bytes / self.tar_bytes if self.out_bytes and self.tar_bytes else None

    @property
    def proxy_ratio(self) -> float | None:
        return self.seconds / self.proxy_seconds if self.seconds and self.proxy_seconds else None

    @property
    def cpu_ratio(self) -> float | None:
        """ours/proxy on CPU seconds: the comparison that survives a loaded machine."""
        if self.cpu_seconds and self.proxy_cpu_seconds:
            return self.cpu_seconds / self.proxy_cpu_seconds
        return None

    def check(self, text: str, passed: bool) -> None:
        self.checks.append((text, passed))

    def cells(self) -> list[str]:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        targets = "; ".join(f"{'ok' if ok else 'MISS'} {text}" for text, ok in self.checks)
        if self.note:
            targets = f"{targets}; {self.note}" if targets else self.note
        return [self.case, self.algo, self.bs, str(self.runs or "-"), fmt(self.seconds, ".2f"),
                fmt(self.cpu_seconds, ".2f"), fmt(self.mb_per_s, ".1f"), fmt(self.files_per_s, ".0f"), fmt(self.max_rss_mb, ".0f"),
                fmt(None if self.out_bytes is None else self.out_bytes / MB, ".1f"), fmt(self.out_ratio, ".3f"),
                fmt(self.proxy_seconds, ".2f"), fmt(self.proxy_ratio, ".2f"), fmt(self.cpu_ratio, ".2f"), targets]


def format_table(rows: list[Row]) -> str:
    """A plain-text table (fixed-width columns; the last column left unpadded)."""
    body = [list(COLUMNS)] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in body) for i in range(len(COLUMNS) - 1)]
    lines = []
    for i, cells in enumerate(body):
        line = "  ".join(c.rjust(w) if j > 0 else c.ljust(w) for j, (c, w) in enumerate(zip(cells[:-1], widths, strict=True)))
        lines.append(f"{line}  {cells[-1]}".rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
