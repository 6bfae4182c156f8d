"""What the overlaybd page shows: conversions grouped per image, recent failures, dedup totals.

Pure functions over :class:`~overlaybd_provider.hooks.conversion_log.ConversionRow` and a DB-API
connection, so they are tested without a web server. Savings (layers, bytes, build time avoided)
count succeeded conversions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from overlaybd_provider.hooks.conversion_log import (
    FAILED,
    SUCCESS,
    UP_FOR_RETRY,
    ConversionLog,
    ConversionRow,
)

from overlaybd_plugin.urls import dag_run_url, task_instance_url

# Upstream's dedup tables (accelerated-container-image's convertor schema).
LAYERS_TABLE = "overlaybd_layers"
MANIFESTS_TABLE = "overlaybd_manifests"
FAILING = (FAILED, UP_FOR_RETRY)


def _ok(rows: list[ConversionRow]) -> list[ConversionRow]:
    return [r for r in rows if r.succeeded]


@dataclass
class ImageSummary:
    source: str
    conversions: list[ConversionRow] = field(default_factory=list)

    @property
    def latest(self) -> ConversionRow:
        return self.conversions[0]

    @property
    def layers_reused(self) -> int:
        return sum(r.layers_reused for r in _ok(self.conversions))

    @property
    def layers_built(self) -> int:
        return sum(r.layers_built for r in _ok(self.conversions))

    @property
    def bytes_saved(self) -> int:
        return sum(r.reused_bytes for r in _ok(self.conversions))

    @property
    def seconds_saved(self) -> float:
        return sum(r.seconds_saved for r in _ok(self.conversions))

    @property
    def failed(self) -> int:
        return sum(1 for r in self.conversions if r.status == FAILED)


@dataclass
class PageData:
    images: list[ImageSummary]
    failures: list[ConversionRow] = field(default_factory=list)
    dedup_layers: int = 0
    dedup_layer_bytes: int = 0
    dedup_manifests: int = 0
    database: str = ""

    def _rows(self) -> list[ConversionRow]:
        return [r for i in self.images for r in i.conversions]

    @property
    def conversions(self) -> int:
        return len(self._rows())

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self._rows() if r.status == SUCCESS)

    @property
    def failed(self) -> int:
        return sum(1 for r in self._rows() if r.status == FAILED)

    @property
    def retrying(self) -> int:
        return sum(1 for r in self._rows() if r.status == UP_FOR_RETRY)

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
                "succeeded": self.succeeded,
                "failed": self.failed,
                "retrying": self.retrying,
                "layers_reused": self.layers_reused,
                "layers_built": self.layers_built,
                "bytes_saved": self.bytes_saved,
                "seconds_saved": round(self.seconds_saved, 3),
                "dedup_layers": self.dedup_layers,
                "dedup_layer_bytes": self.dedup_layer_bytes,
                "dedup_manifests": self.dedup_manifests,
            },
            "failures": [row_json(r) for r in self.failures],
            "images": [
                {
                    "source": img.source,
                    "layers_reused": img.layers_reused,
                    "layers_built": img.layers_built,
                    "bytes_saved": img.bytes_saved,
                    "seconds_saved": round(img.seconds_saved, 3),
                    "failed": img.failed,
                    "conversions": [row_json(r) for r in img.conversions],
                }
                for img in self.images
            ],
        }


def task_of(row: ConversionRow) -> tuple[str, int]:
    """(task id, map index) of a row; rows written before those columns existed carry them in
    their ``run_key`` (``dag|run|task|map index``)."""
    if row.task_id:
        return row.task_id, row.map_index
    parts = row.run_key.split("|")
    if len(parts) == 4 and parts[0] == row.dag_id and parts[1] == row.run_id:
        try:
            return parts[2], int(parts[3])
        except ValueError:
            return parts[2], -1
    return "", -1


def row_json(row: ConversionRow) -> dict[str, Any]:
    """A row for the JSON API, with the Airflow UI pages of its run and task instance (paths
    relative to the UI's base URL)."""
    task_id, map_index = task_of(row)
    data = {k: v for k, v in vars(row).items() if k != "details"}
    data.update(task_id=task_id, map_index=map_index)
    details = row.details or {}
    # the verify stage's result and the --flatten layer-count change (None when not run / native)
    data.update(verify=details.get("verify"), flatten=details.get("flatten"))
    # the output format and, for TurboOCI, what it saves: source layers vs the meta blobs
    turbo = details.get("turbo") or {}
    data["format"] = details.get("format") or "overlaybd"
    data["bytes_saved"] = details.get("bytes_saved", turbo.get("bytes_saved"))
    data["meta_bytes"] = details.get("meta_bytes", turbo.get("meta_bytes"))
    data["turbo_target"] = turbo.get("target")
    data["links"] = {
        "dag_run": dag_run_url(row.dag_id, row.run_id),
        "task_instance": task_instance_url(row.dag_id, row.run_id, task_id, map_index, row.try_number),
    }
    return data


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
    conn: Any,
    *,
    source: str | None = None,
    status: str | None = None,
    limit: int = 500,
    per_image: int = 10,
    failures: int = 20,
) -> PageData:
    """Read the conversions log and dedup totals over ``conn`` (tables may not exist yet)."""
    logbook = ConversionLog(conn)
    rows = logbook.recent(limit=limit, source=source, status=status) if logbook.table_exists() else []
    data = PageData(
        images=group_by_image(rows, per_image=per_image),
        failures=[r for r in rows if r.status in FAILING][:failures],
    )
    if _has_table(conn, logbook, LAYERS_TABLE):
        data.dedup_layers, data.dedup_layer_bytes = _scalar(
            conn, f"SELECT COUNT(*), COALESCE(SUM(data_size), 0) FROM {LAYERS_TABLE}"
        )
    if _has_table(conn, logbook, MANIFESTS_TABLE):
        data.dedup_manifests, _ = _scalar(conn, f"SELECT COUNT(*), 0 FROM {MANIFESTS_TABLE}")
    return data


def filter_rows(data: PageData, allowed_dag_ids: set[str]) -> PageData:
    """Drop conversions recorded by DAGs the user may not read (rows without a DAG stay)."""

    def allowed(row: ConversionRow) -> bool:
        return not row.dag_id or row.dag_id in allowed_dag_ids

    images = []
    for img in data.images:
        kept = [r for r in img.conversions if allowed(r)]
        if kept:
            images.append(ImageSummary(img.source, kept))
    data.images = images
    data.failures = [r for r in data.failures if allowed(r)]
    return data


def dag_ids(data: PageData) -> set[str]:
    return {r.dag_id for r in [*data.failures, *(r for i in data.images for r in i.conversions)] if r.dag_id}
