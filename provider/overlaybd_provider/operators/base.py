"""What every overlaybd operator shares: options validated when the DAG is parsed, connections
(named, or found by registry host), the dedup store, the worker-local work directory and blob
cache, one-line errors that fail at once unless a retry can help, and ``on_kill``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from overlaybd_provider.hooks.conversion_failure import (
    conversion_run_key,
    on_conversion_failure,
    on_conversion_retry,
    task_fields,
)
from overlaybd_provider.hooks.dedup import OverlaybdDedupHook
from overlaybd_provider.hooks.registry import hook_for_reference
from overlaybd_provider.malloc import keep_large_buffers
from overlaybd_provider.operators import settings
from overlaybd_provider.operators.failures import OverlaybdRetryPolicy, engine_errors
from overlaybd_provider.operators.summary import conversion_row

OPTION_FIELDS = ("algorithm", "block_size_kb", "vsize_gb", "fstype", "oci", "referrer", "flatten")
#: output format (``overlaybd`` | ``turbo-oci`` | ``both``) and, for ``both``, where the TurboOCI image goes
TURBO_FIELDS = ("format", "turbo_destination")
CONNECTION_FIELDS = ("src_registry_conn_id", "dst_registry_conn_id", "dedup_conn_id")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def is_known(value: Any) -> bool:
    """A value already final when the DAG is parsed (not a template, XCom or mapped argument)."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return not is_template(value)
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) and not is_template(v) for v in value)
    return False


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


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


_BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "on", "off", ""}


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def convert_options(*, algorithm: Any, block_size_kb: Any, vsize_gb: Any, fstype: Any, oci: Any, referrer: Any,
                    platforms: Any = None, flatten: Any = False, format: Any = None,
                    turbo_destination: Any = None):
    """``ConvertOptions`` from operator arguments (strings from templates included); raises the
    engine's ``OptionsError`` naming the argument (``block_size_kb``), not the CLI flag."""
    from overlaybd_provider.engine.options import ConvertOptions, OptionsError

    if isinstance(flatten, str) and flatten.strip().lower() not in _BOOL_WORDS:
        raise OptionsError(f"flatten {flatten!r}: expected true or false")
    try:
        return ConvertOptions(
            algorithm=str(algorithm), block_size_kb=int(block_size_kb), vsize_gb=int(vsize_gb),
            fstype=str(fstype or "ext4"), oci=as_bool(oci), referrer=as_bool(referrer),
            platforms=tuple(as_platforms(platforms)), flatten=as_bool(flatten), output=str(format or "overlaybd"),
            turbo_destination=None if _blank(turbo_destination) else str(turbo_destination),
        )
    except (TypeError, ValueError) as exc:
        raise OptionsError(f"invalid conversion option: {exc}") from None


class OverlaybdBaseOperator(BaseOperator):
    """Shared plumbing; subclasses implement ``execute`` as one engine call plus bookkeeping."""

    ui_color = "#e7f0fd"
    ui_fgcolor = "#1d2430"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("retry_policy", OverlaybdRetryPolicy())
        # the Task Instance Details of every stage explain it to the on-call reader
        kwargs.setdefault("doc_md", inspect.cleandoc(type(self).__doc__ or ""))
        # failed and retrying conversions appear on the overlaybd page with their error line
        kwargs.setdefault("on_failure_callback", on_conversion_failure)
        kwargs.setdefault("on_retry_callback", on_conversion_retry)
        super().__init__(**kwargs)

    # -- validation at parse time ----------------------------------------------------------------
    def validate_options(self) -> None:
        """Check the conversion options now (DAG parse time) unless some come from templates: a DAG
        author sees ``block_size_kb=3`` fail when the DAG is loaded, not at 2 a.m."""
        from overlaybd_provider.engine.options import OptionsError
        from overlaybd_provider.errors import message_for

        values = {name: getattr(self, name) for name in (*OPTION_FIELDS, *TURBO_FIELDS, "platforms")
                  if hasattr(self, name)}
        if not all(is_known(v) for v in values.values()):
            return  # decided at run time (templates, mapped arguments): execute() validates then
        try:
            convert_options(**values)
        except OptionsError as exc:
            raise ValueError(f"{self.task_id}: {message_for(exc, 'airflow')}") from None

    # -- connections ------------------------------------------------------------------------------
    def registry_options(self, reference: str, conn_id: str | None):
        """``RegistryOptions`` for ``reference``: the named ``oci_registry`` connection, else the one
        named after its registry host (``oci_registry_<host>``), else anonymous."""
        from overlaybd_provider.oci.options import RegistryOptions

        hook = hook_for_reference(reference, None if _blank(conn_id) else str(conn_id))
        return hook.registry_options if hook is not None else RegistryOptions()

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

    # -- running the engine -----------------------------------------------------------------------
    @contextlib.contextmanager
    def engine_call(self, what: str) -> Iterator[None]:
        """Every engine call runs in here: a failure is one line, permanent ones are not retried
        (operators/failures.py); the task process's allocator is tuned for the engine."""
        keep_large_buffers()
        with engine_errors(self.log, what):
            yield

    @staticmethod
    def work_dir():
        return settings.work_dir()

    @staticmethod
    def blob_cache():
        return settings.blob_cache()

    def on_kill(self) -> None:
        """The task was stopped (marked failed, timed out): stop the compressor and decoder
        processes now; the scratch directory goes with them (removed by the unwinding task, or
        swept by the next task on this worker)."""
        from overlaybd_provider.workers import live_children

        self.killed = True  # the unwinding execute() removes its work directory
        for proc in live_children():
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(proc.pid, signal.SIGKILL)
        self.log.info("on_kill: stopped %s", self.task_id)

    # -- bookkeeping ------------------------------------------------------------------------------
    @staticmethod
    def run_key(context: Mapping[str, Any], fallback: str) -> str:
        """The conversion's row key, shared with failure rows (``record_failure``)."""
        return conversion_run_key(context, fallback)

    def log_conversion(self, hook: OverlaybdDedupHook, conn: Any, context: Mapping[str, Any], summary: dict,
                       seconds: float) -> Any:
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

    @staticmethod
    def label_image(context: Any, image: str | None) -> None:
        """Expose the image to ``map_index_template="{{ image }}"`` (rendered after execute)."""
        if image and isinstance(context, dict):
            context["image"] = image


def describe_options(options: Any) -> str:
    """``lz4 4K vsize 64G ext4`` (+ ``oci``/``referrer``) for log lines."""
    text = f"{options.algorithm} {options.block_size_kb}K vsize {options.vsize_gb}G {options.fstype.text}"
    if getattr(options, "output", "overlaybd") != "overlaybd":
        text += f" format {options.output}" + (f" → {options.turbo_destination}" if options.turbo_destination else "")
    return text + "".join(f" {flag}" for flag in ("oci", "referrer", "flatten") if getattr(options, flag, False))
