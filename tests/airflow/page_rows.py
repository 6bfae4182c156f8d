"""Conversion rows for the overlaybd page tests: successes (one served by the manifest cache), a
failure with its error line, a retrying conversion, and a row of a DAG the viewer may not read."""

from __future__ import annotations

from overlaybd_provider.hooks.conversion_log import ConversionRow
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook

D = "sha256:"


def _digest(ch: str) -> str:
    return D + ch * 64


def seed_rows(hook: OverlaybdDedupHook) -> list[ConversionRow]:
    """Four images: alpine converted twice (the second served by the manifest cache), debian
    converted then retrying, redis failed, and a secret-app row of a DAG the viewer may not read."""
    rows = [
        ConversionRow(
            # written before task_id/map_index/try_number existed: the page reads them from run_key
            run_key="overlaybd_nightly|scheduled__2026-11-25T00:00:00+00:00|convert.record|0",
            source="registry:5000/library/alpine:3.20",
            target="registry:5000/overlaybd/alpine:3.20",
            source_digest=_digest("a"),
            target_digest=_digest("b"),
            recorded_at="2026-11-25T02:00:11+00:00",
            platforms="linux/amd64,linux/arm64",
            layers_total=2,
            layers_built=2,
            source_bytes=7_340_032,
            target_bytes=9_961_472,
            built_source_bytes=7_340_032,
            built_seconds=3.5,
            seconds=6.2,
            dag_id="overlaybd_nightly",
            run_id="scheduled__2026-11-25T00:00:00+00:00",
        ),
        ConversionRow(
            run_key="overlaybd_nightly|scheduled__2026-11-26T00:00:00+00:00|convert|0",
            source="registry:5000/library/alpine:3.20",
            target="registry:5000/overlaybd/alpine:3.20",
            source_digest=_digest("a"),
            target_digest=_digest("b"),
            recorded_at="2026-11-26T02:00:03+00:00",
            platforms="linux/amd64,linux/arm64",
            layers_total=2,
            layers_reused=2,
            source_bytes=7_340_032,
            target_bytes=9_961_472,
            reused_bytes=9_961_472,
            seconds=0.8,
            seconds_saved=3.5,
            manifest_cached=True,
            dag_id="overlaybd_nightly",
            run_id="scheduled__2026-11-26T00:00:00+00:00",
            task_id="convert.record",
            map_index=0,
            try_number=1,
        ),
        ConversionRow(
            run_key="overlaybd_convert|manual__2026-11-26T09:14:40+00:00|convert|-1",
            source="registry:5000/library/debian:bookworm-slim",
            target="registry:5000/overlaybd/debian:bookworm-slim",
            source_digest=_digest("c"),
            target_digest=_digest("d"),
            recorded_at="2026-11-26T09:14:55+00:00",
            platforms="linux/amd64",
            layers_total=3,
            layers_reused=1,
            layers_built=2,
            source_bytes=31_457_280,
            target_bytes=52_428_800,
            reused_bytes=29_360_128,
            built_source_bytes=3_145_728,
            built_seconds=1.9,
            seconds=4.4,
            seconds_saved=16.7,
            dag_id="overlaybd_convert",
            run_id="manual__2026-11-26T09:14:40+00:00",
            task_id="convert",
            try_number=1,
        ),
        ConversionRow(
            run_key="overlaybd_nightly|scheduled__2026-11-26T00:00:00+00:00|convert|1",
            source="registry:5000/library/redis:7.4",
            target="registry:5000/overlaybd/redis:7.4",
            source_digest="",
            target_digest="",
            recorded_at="2026-11-26T02:01:40+00:00",
            status="failed",
            error="pull registry:5000/library/redis:7.4: layer sha256:9f1e… is 31457280 bytes, "
            "the manifest says 31457281",
            dag_id="overlaybd_nightly",
            run_id="scheduled__2026-11-26T00:00:00+00:00",
            task_id="convert.pull",
            map_index=1,
            try_number=3,
        ),
        ConversionRow(
            run_key="overlaybd_convert|manual__2026-11-26T11:01:00+00:00|convert|-1",
            source="registry:5000/library/debian:bookworm-slim",
            target="registry:5000/overlaybd/debian:bookworm-slim",
            source_digest="",
            target_digest="",
            recorded_at="2026-11-26T11:02:09+00:00",
            status="up_for_retry",
            error="push registry:5000/overlaybd/debian:bookworm-slim: 503 Service Unavailable",
            dag_id="overlaybd_convert",
            run_id="manual__2026-11-26T11:01:00+00:00",
            task_id="convert",
            try_number=1,
        ),
        ConversionRow(
            run_key="secret_dag|manual|convert|-1",
            source="registry:5000/internal/secret-app:1",
            target="registry:5000/overlaybd/secret-app:1",
            source_digest=_digest("e"),
            target_digest=_digest("f"),
            recorded_at="2026-11-26T10:00:00+00:00",
            dag_id="secret_dag",
        ),
    ]
    conn = hook.get_conn()
    try:
        store = hook.open_store(conn, create=True)
        store.record_layer(
            "registry:5000", "overlaybd/alpine", _digest("1"), _digest("2"), 4_980_736, "lz4-4k-v64-ext4"
        )
        store.record_layer(
            "registry:5000", "overlaybd/alpine", _digest("3"), _digest("4"), 4_980_736, "lz4-4k-v64-ext4"
        )
        logbook = hook.conversion_log(conn, create=True)
        for row in rows:
            logbook.record(row)
    finally:
        conn.close()
    return rows
