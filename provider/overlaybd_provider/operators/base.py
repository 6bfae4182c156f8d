"""What every overlaybd operator shares: options → ``ConvertOptions``, connections → registry
options and dedup store, the staging area of the conversion, and engine errors → Airflow errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.hooks.conversion_failure import conversion_run_key, task_fields
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook
from overlaybd_provider.hooks.registry import OciRegistryHook
from overlaybd_provider.malloc import keep_large_buffers
from overlaybd_provider.operators.staging import StagingArea, staging_key
from overlaybd_provider.operators.summary import conversion_row

OPTION_FIELDS = ("algorithm", "block_size_kb", "vsize_gb", "fstype", "oci", "referrer")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def as_platforms(value: Any) -> list[str]:
    """Platforms from a list, a comma/space/newline separated string, or nothing."""
    if _blank(value):
        return []
    if isinstance(value, str):
        items = value.replace("\n", ",").replace(" ", ",").split(",")
    elif isinstance(value, Sequence):
        items = [str(v) for v in value]
    else:
        raise AirflowException(f"platforms must be a list or a comma-separated string, got {value!r}")
    return sorted({i.strip() for i in items if i.strip()})


def staging_location(staging: Any) -> str | None:
    """``staging`` may be a location string or the previous stage's result dict (``op.output``)."""
    if _blank(staging):
        return None
    if isinstance(staging, Mapping):
        if "staging" not in staging:
            raise AirflowException(
                f"staging: the previous stage's result has no 'staging' key: {sorted(staging)}"
            )
        return str(staging["staging"])
    return str(staging)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class OverlaybdBaseOperator(BaseOperator):
    """Shared plumbing; subclasses implement ``execute`` as one engine call plus bookkeeping."""

    ui_color = "#e7f0fd"
    ui_fgcolor = "#1d2430"

    # -- connections --------------------------------------------------------------------------
    @staticmethod
    def registry_options(conn_id: str | None):
        """``RegistryOptions`` of an ``oci_registry`` connection; defaults (anonymous) without one."""
        if _blank(conn_id):
            from overlaybd_provider.oci.options import RegistryOptions

            return RegistryOptions()
        return OciRegistryHook(oci_registry_conn_id=conn_id).registry_options

    @staticmethod
    def dedup_hook(conn_id: str | None) -> OverlaybdDedupHook:
        return OverlaybdDedupHook(None if _blank(conn_id) else conn_id)

    @contextlib.contextmanager
    def dedup_store(self, conn_id: str | None, *, enabled: bool = True) -> Iterator[Any]:
        """The engine dedup store for the duration of a stage (tables created if missing)."""
        if not enabled:
            yield None
            return
        hook = self.dedup_hook(conn_id)
        self.log.info("dedup database: %s", hook.describe())
        conn = hook.get_conn()
        try:
            yield hook.open_store(conn, create=True)
        finally:
            conn.close()

    # -- staging ------------------------------------------------------------------------------
    @staticmethod
    def conversion_key(context: Mapping[str, Any], label: str) -> str:
        """``dag/run/label[-map index]``: the same for every stage of one (mapped) conversion."""
        ti = context.get("ti")
        dag_id = getattr(ti, "dag_id", None) or "manual"
        run_id = getattr(ti, "run_id", None) or "manual"
        map_index = getattr(ti, "map_index", -1)
        if isinstance(map_index, int) and map_index >= 0:
            label = f"{map_index}-{label}"
        return staging_key(dag_id, run_id, label)

    @staticmethod
    def run_key(context: Mapping[str, Any], fallback: str) -> str:
        """The conversion's row key, shared with failure rows (``record_failure``)."""
        return conversion_run_key(context, fallback)

    def log_conversion(
        self, hook: OverlaybdDedupHook, conn: Any, context: Mapping[str, Any], summary: dict, seconds: float
    ) -> Any:
        """Writes (or updates) this task's row of the ``overlaybd_conversions`` table behind the UI page
        and returns it; keyed by the task instance, so a retry updates its own row."""
        logbook = hook.conversion_log(conn, create=True)
        row = conversion_row(
            summary,
            run_key=self.run_key(context, f"{summary['target']}@{summary['target_digest']}"),
            recorded_at=utc_now_iso(),
            seconds=seconds,
            **task_fields(context),
        )
        logbook.record(row)
        return row

    def area_for(self, staging: Any) -> StagingArea:
        location = staging_location(staging)
        if location is None:
            raise AirflowException(f"{self.task_id}: no staging location (pass staging=<pull task>.output)")
        return StagingArea(location)

    # -- errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def engine_errors(self, what: str) -> Iterator[None]:
        """Engine errors are user-facing one-liners: keep the message, drop the engine traceback.
        Every engine call runs in here, so it also tunes the task process's allocator for it."""
        keep_large_buffers()
        try:
            yield
        except OverlaybdError as exc:
            raise AirflowException(f"{what}: {exc}") from exc

    @staticmethod
    def label_image(context: Any, image: str | None) -> None:
        """Expose the image to ``map_index_template="{{ image }}"`` (rendered after execute)."""
        if image and isinstance(context, dict):
            context["image"] = image


def describe_options(options: Any) -> str:
    """``lz4 4K vsize 64G ext4`` (+ ``oci``/``referrer``) for log lines."""
    text = f"{options.algorithm} {options.block_size_kb}K vsize {options.vsize_gb}G {options.fstype.text}"
    return text + "".join(f" {flag}" for flag in ("oci", "referrer") if getattr(options, flag))
