"""Failed (and retrying) conversions into ``overlaybd_conversions``, from task callbacks.

``record_failure`` is meant for ``on_failure_callback`` / ``on_retry_callback`` (ready-made:
``on_conversion_failure`` / ``on_conversion_retry``): it takes the task context, finds the image
and the task instance in it, and writes the row of that conversion with its one-line error. It never raises (a callback that raises only hides the real
error) and logs one warning when the row cannot be written.

The row key is the one successful conversions use (:func:`conversion_run_key`), so a failure
that a retry or re-run then fixes leaves one succeeded row, not a stale failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import closing
from datetime import datetime, timezone
from typing import Any

from overlaybd_provider.hooks.conversion_log import (
    FAILED,
    STATUSES,
    UP_FOR_RETRY,
    ConversionLog,
    ConversionRow,
)
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook

log = logging.getLogger(__name__)

MAX_ERROR = 1000


def task_fields(context: Mapping[str, Any] | None) -> dict[str, Any]:
    """``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number`` of the context's task
    instance (empty values outside a task)."""
    ti = (context or {}).get("ti")
    map_index = getattr(ti, "map_index", -1)
    try_number = getattr(ti, "try_number", 0)
    return {
        "dag_id": str(getattr(ti, "dag_id", "") or ""),
        "run_id": str(getattr(ti, "run_id", "") or ""),
        "task_id": str(getattr(ti, "task_id", "") or ""),
        "map_index": map_index if isinstance(map_index, int) else -1,
        "try_number": try_number if isinstance(try_number, int) else 0,
    }


def _unit(context: Mapping[str, Any]) -> str:
    """The conversion inside its DAG run: the (mapped) task group of the stage operators, or the
    task itself. Every stage of one image shares it, so they share one row."""
    task = context.get("task")
    group = getattr(getattr(task, "task_group", None), "group_id", None)
    if group:
        return str(group)
    ti = context.get("ti")
    return str(getattr(ti, "task_id", "") or getattr(task, "task_id", "") or "")


def conversion_run_key(context: Mapping[str, Any] | None, fallback: str) -> str:
    """``dag|run|conversion|map index``; ``manual|<fallback>`` outside a task."""
    ti = (context or {}).get("ti")
    if ti is None:
        return f"manual|{fallback}"
    return f"{ti.dag_id}|{ti.run_id}|{_unit(context)}|{getattr(ti, 'map_index', -1)}"


def one_line(error: Any, limit: int = MAX_ERROR) -> str:
    """The first non-empty line of ``error`` (an exception or text), whitespace collapsed."""
    text = str(error) if not isinstance(error, BaseException) else (str(error) or type(error).__name__)
    for line in text.splitlines():
        if line.strip():
            text = " ".join(line.split())
            break
    else:
        text = ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rendered(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and "{{" not in value:
        return value.strip()
    return None


def image_of(context: Mapping[str, Any]) -> tuple[str, str]:
    """(source, destination) of the failed conversion: the task's rendered fields, else the
    conversion dict it was handed (stage operators), else the DAG run's params."""
    task = context.get("task")
    staging = getattr(task, "conversion", None) or getattr(task, "staging", None)
    staging = staging if isinstance(staging, Mapping) else {}
    params = context.get("params") or {}
    source = (
        _rendered(getattr(task, "source", None))
        or _rendered(staging.get("image"))
        or _rendered(staging.get("source"))
        or _rendered(params.get("source") if isinstance(params, Mapping) else None)
    )
    destination = (
        _rendered(getattr(task, "destination", None))
        or _rendered(staging.get("destination"))
        or _rendered(staging.get("target"))
        or _rendered(params.get("destination") if isinstance(params, Mapping) else None)
    )
    return source or "", destination or ""


def failure_row(
    context: Mapping[str, Any],
    error_line: Any,
    *,
    status: str = FAILED,
    source: str | None = None,
    destination: str | None = None,
    recorded_at: str | None = None,
) -> ConversionRow:
    """The row of a failed / retrying conversion (no digests, sizes or layer counts)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    found_source, found_destination = image_of(context)
    source = source or found_source
    destination = destination or found_destination
    return ConversionRow(
        run_key=conversion_run_key(context, f"{source}->{destination}"),
        source=source,
        target=destination,
        source_digest="",
        target_digest="",
        recorded_at=recorded_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status=status,
        error=one_line(error_line),
        **task_fields(context),
    )


def record_failure(
    target: Any,
    context: Mapping[str, Any],
    error_line: Any,
    *,
    status: str = FAILED,
    source: str | None = None,
    destination: str | None = None,
) -> bool:
    """Record a failed conversion (``status="up_for_retry"`` from ``on_retry_callback``).

    ``target`` is an ``OverlaybdDedupHook``, a DB-API connection (left open), a dedup
    connection id, or None (the default dedup database). ``error_line`` is the exception or its
    message: its first line is stored. Returns whether the row was written; never raises."""
    try:
        row = failure_row(context, error_line, status=status, source=source, destination=destination)
        if hasattr(target, "cursor"):
            return _write(target, row)
        hook = target if hasattr(target, "get_conn") else OverlaybdDedupHook(target or None)
        with closing(hook.get_conn()) as conn:
            return _write(conn, row)
    except Exception as exc:
        log.warning(
            "could not record the %s conversion in overlaybd_conversions: %s: %s",
            status,
            type(exc).__name__,
            one_line(exc, 300),
        )
        return False


def _write(conn: Any, row: ConversionRow) -> bool:
    logbook = ConversionLog(conn)
    logbook.create_table()
    return logbook.record(row)


def _dedup_conn_id(context: Mapping[str, Any]) -> str | None:
    """The conversion's dedup connection: the task's (rendered) field, else the run's param."""
    task = context.get("task")
    conn_id = _rendered(getattr(task, "dedup_conn_id", None))
    conversion = getattr(task, "conversion", None)
    if conn_id is None and isinstance(conversion, Mapping):
        conn_id = _rendered((conversion.get("connections") or {}).get("dedup_conn_id"))
    if conn_id is None:
        params = context.get("params") or {}
        conn_id = _rendered(params.get("dedup_conn_id") if isinstance(params, Mapping) else None)
    return conn_id


def on_conversion_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` of the overlaybd operators: records the failed conversion."""
    record_failure(_dedup_conn_id(context), context, context.get("exception") or "task failed")


def on_conversion_retry(context: Mapping[str, Any]) -> None:
    """``on_retry_callback`` of the overlaybd operators: records the conversion as retrying."""
    record_failure(
        _dedup_conn_id(context), context, context.get("exception") or "task failed", status=UP_FOR_RETRY
    )
