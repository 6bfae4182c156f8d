"""All of a conversion in one task: the simplest way to convert one image, and the fastest (the
engine overlaps downloads, builds and pushes, :mod:`overlaybd_provider.engine.convert`).

The task works in a directory of this worker keyed by the task instance: a retry on the same
worker resumes there, a retry elsewhere resumes from what the earlier try pushed and recorded.
The directory is removed when the task succeeds or fails for good (no retry left), and a
directory left by a killed worker process is swept by a later task on that worker.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from overlaybd_provider.operators import settings
from overlaybd_provider.operators.assets import emit_converted, with_converted_outlet
from overlaybd_provider.operators.base import as_bool, describe_options
from overlaybd_provider.operators.failures import TaskError
from overlaybd_provider.operators.links import OverlaybdImageLink, image_link
from overlaybd_provider.operators.progress import ProgressLog
from overlaybd_provider.operators.stages import OverlaybdPullOperator, log_summary
from overlaybd_provider.operators.summary import summarize

#: a task's work directory untouched this long (and not in use) is removed by a later task
STALE_SECONDS = 24 * 3600


def _safe(text: str, limit: int = 60) -> str:
    import re

    return (re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_")[:limit]


class OverlaybdConvertOperator(OverlaybdPullOperator):
    """Convert ``source`` to overlaybd at ``destination`` in one task: pull, build (ext4 + ZFile),
    push and record, with the arguments of :class:`OverlaybdPullOperator`. Runs on the
    ``[overlaybd] queue`` (default ``overlaybd``); ``keep_work_dir`` keeps the work directory for
    inspection. ``verify`` (templated) checks the pushed image against its source before it is
    recorded (``overlaybd verify``): a difference fails the task at once with the summary line."""

    operator_extra_links = (OverlaybdImageLink(),)
    template_fields = (*OverlaybdPullOperator.template_fields, "verify")

    def __init__(self, *, keep_work_dir: bool = False, verify: bool | str = False, **kwargs: Any) -> None:
        kwargs.pop("keep_staging", None)
        kwargs.setdefault("queue", settings.heavy_queue())
        kwargs["outlets"] = with_converted_outlet(kwargs.get("outlets"))  # the image, as an asset event
        super().__init__(**kwargs)
        self.keep_work_dir = keep_work_dir
        self.verify = verify
        self.image_url: str | None = None

    def _work_dir(self, context: Any):
        from overlaybd_provider.engine.transfer.workspace import sweep_scratch

        base = self.work_dir() / "convert"
        base.mkdir(parents=True, exist_ok=True)
        sweep_scratch(base, min_age=STALE_SECONDS)
        ti = context.get("ti") if isinstance(context, dict) else None
        parts = [getattr(ti, "dag_id", None) or "manual", getattr(ti, "run_id", None) or "manual",
                 getattr(ti, "task_id", None) or self.task_id, str(getattr(ti, "map_index", -1))]
        return base / "__".join(_safe(p) for p in parts)

    def _verify(self, report: dict[str, Any]) -> dict[str, Any]:
        """The pushed image (pinned to its digest) against the source; raises on a difference."""
        from overlaybd_provider.oci.reference import parse_reference
        from overlaybd_provider.operators.verify import run_verify, verify_field

        target = str(parse_reference(self.destination).with_digest(str(report["target"]["digest"])))
        return verify_field(run_verify(self, self.source, target, platforms=self.platforms,
                                       src_conn=self.src_registry_conn_id, dst_conn=self.dst_registry_conn_id))

    @staticmethod
    def _retries_left(context: Any) -> bool:
        ti = context.get("ti") if isinstance(context, dict) else None
        try:
            return int(ti.try_number) <= int(ti.max_tries)
        except (AttributeError, TypeError, ValueError):
            return False

    def execute(self, context: Any) -> dict[str, Any]:
        from dataclasses import replace

        from overlaybd_provider.engine.convert import convert_image

        self.label_image(context, self.source)
        options = self.convert_options()
        work = self._work_dir(context)
        cache = self.blob_cache()
        options = replace(options, work_dir=work, reserve=self.keep_work_dir,
                          blob_cache=cache.root if cache else None,
                          blob_cache_max_bytes=cache.max_bytes if cache else 0)
        started = time.monotonic()
        self.log.info("convert %s → %s (%s)", self.source, self.destination, describe_options(options))
        hook = self.dedup_hook(self.dedup_conn_id) if as_bool(self.use_dedup) else None
        conn = hook.get_conn() if hook is not None else None
        try:
            with self.engine_call(f"convert {self.source}"):
                store = hook.open_store(conn, create=True) if hook is not None else None
                if hook is not None:
                    self.log.info("dedup database: %s", hook.describe())
                report = convert_image(
                    self.source, self.destination, options,
                    src_registry=self.registry_options(self.source, self.src_registry_conn_id),
                    dst_registry=self.registry_options(self.destination, self.dst_registry_conn_id),
                    dedup=store, progress=ProgressLog(self.log, "convert"),
                ).to_json()
            seconds = round(time.monotonic() - started, 3)
            summary = summarize(report)
            if as_bool(self.verify):
                summary["verify"] = self._verify(report)
            emit_converted(context, report, self.outlets)
            if hook is not None:
                self.log_conversion(hook, conn, context, summary, seconds)
        except TaskError as exc:
            if not (exc.retryable and self._retries_left(context)) and not self.keep_work_dir:
                shutil.rmtree(work, ignore_errors=True)  # failed for good: nothing will resume here
            raise
        finally:
            if conn is not None:
                conn.close()
            if getattr(self, "killed", False) and not self.keep_work_dir:
                shutil.rmtree(work, ignore_errors=True)  # stopped (marked failed, timed out): clean up
        if not self.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
        self.image_url = image_link(summary.get("target"), summary.get("target_digest"))
        summary.update(seconds=seconds, image=self.source)
        if self.keep_work_dir:
            summary["work_dir"] = str(work)
        log_summary(self.log, summary)
        return summary
