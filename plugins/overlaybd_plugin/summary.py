"""What the overlaybd page shows: conversions grouped per image plus dedup-database totals.

Pure functions over :class:`~overlaybd_provider.hooks.conversion_log.ConversionRow` and a DB-API
connection, so they are tested without a web server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.hooks.conversion_log import ConversionLog, ConversionRow

# Upstream's dedup tables (accelerated-container-image's convertor schema).
LAYERS_TABLE = "overlaybd_layers"
MANIFESTS_TABLE = "overlaybd_manifests"


@dataclass
class ImageSummary:
    source: str
    conversions: list[ConversionRow] = field(default_factory=list)

    @property
    def latest(self) -> ConversionRow:
        return self.conversions[0]

    @property
    def layers_reused(self) -> int:
        return sum(r.layers_reused for r in self.conversions)

    @property
    def layers_built(self) -> int:
        return sum(r.layers_built for r in self.conversions)

    @property
    def bytes_saved(self) -> int:
        return sum(r.reused_bytes for r in self.conversions)

    @property
    def seconds_saved(self) -> float:
        return sum(r.seconds_saved for r in self.conversions)


@dataclass
class PageData:
    images: list[ImageSummary]
    dedup_layers: int = 0
    dedup_layer_bytes: int = 0
    dedup_manifests: int = 0
    database: str = ""

    @property
    def conversions(self) -> int:
        return sum(len(i.conversions) for i in self.images)

    @property
    def layers_reused(self) -> int:
        return sum(i.layers_reused for i in self.images)

    @property
    def layers_built(self) -> int:
        return sum(i.layers_built for i in self.images)

    @property
    def bytes_saved(self) -> int:
        return sum(i.bytes_saved for i in self.images)

    @property
    def seconds_saved(self) -> float:
        return sum(i.seconds_saved for i in self.images)

    @property
    def reuse_ratio(self) -> float:
        total = self.layers_reused + self.layers_built
        return self.layers_reused / total if total else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "totals": {
                "images": len(self.images),
                "conversions": self.conversions,
                "layers_reused": self.layers_reused,
                "layers_built": self.layers_built,
                "bytes_saved": self.bytes_saved,
                "seconds_saved": round(self.seconds_saved, 3),
                "dedup_layers": self.dedup_layers,
                "dedup_layer_bytes": self.dedup_layer_bytes,
                "dedup_manifests": self.dedup_manifests,
            },
            "images": [
                {
                    "source": img.source,
                    "conversions": [
                        {k: v for k, v in vars(r).items() if k != "details"} for r in img.conversions
                    ],
                }
                for img in self.images
            ],
        }


def group_by_image(rows: list[ConversionRow], *, per_image: int = 10) -> list[ImageSummary]:
    """Newest conversion first inside each image; images ordered by their newest conversion."""
    groups: dict[str, ImageSummary] = {}
    for row in rows:
        summary = groups.setdefault(row.source, ImageSummary(row.source))
        if len(summary.conversions) < per_image:
            summary.conversions.append(row)
    return sorted(groups.values(), key=lambda s: (s.latest.recorded_at, s.source), reverse=True)


def _scalar(conn: Any, sql: str) -> tuple[int, int]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


def _has_table(conn: Any, logbook: ConversionLog, table: str) -> bool:
    cur = conn.cursor()
    try:
        if logbook.dialect == "sqlite":
            cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        else:
            cur.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            )
        return cur.fetchone() is not None
    finally:
        cur.close()


def load_page_data(
    conn: Any, *, source: str | None = None, limit: int = 500, per_image: int = 10
) -> PageData:
    """Read the conversions log and dedup totals over ``conn`` (tables may not exist yet)."""
    logbook = ConversionLog(conn)
    rows = logbook.recent(limit=limit, source=source) if logbook.table_exists() else []
    data = PageData(images=group_by_image(rows, per_image=per_image))
    if _has_table(conn, logbook, LAYERS_TABLE):
        data.dedup_layers, data.dedup_layer_bytes = _scalar(
            conn, f"SELECT COUNT(*), COALESCE(SUM(data_size), 0) FROM {LAYERS_TABLE}"
        )
    if _has_table(conn, logbook, MANIFESTS_TABLE):
        data.dedup_manifests, _ = _scalar(conn, f"SELECT COUNT(*), 0 FROM {MANIFESTS_TABLE}")
    return data


def filter_rows(data: PageData, allowed_dag_ids: set[str]) -> PageData:
    """Drop conversions recorded by DAGs the user may not read (rows without a DAG stay)."""
    images = []
    for img in data.images:
        kept = [r for r in img.conversions if not r.dag_id or r.dag_id in allowed_dag_ids]
        if kept:
            images.append(ImageSummary(img.source, kept))
    data.images = images
    return data


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def short_digest(digest: str, n: int = 12) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:n]}" if hexpart else digest[:n]
