"""All stages of a conversion in one task: the simplest way to convert one image.

Runs pull → build → compress → push → record in a local staging directory keyed by the task
instance (so a retry resumes there: the engine stages skip finished work). The last finished
stage is kept in ``context["task_state_store"]`` (Airflow 3.3) so the log of a retry says where it
resumes. Returns the same small summary as :class:`OverlaybdRecordOperator`.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk.exceptions import AirflowException

from overlaybd_provider.operators.assets import emit_converted, with_converted_outlet
from overlaybd_provider.operators.base import describe_options
from overlaybd_provider.operators.links import OverlaybdImageLink, image_link
from overlaybd_provider.operators.progress import ProgressLog
from overlaybd_provider.operators.stages import OverlaybdPullOperator, engine_stages, log_summary
from overlaybd_provider.operators.staging import StagingArea, is_object_storage, safe_component
from overlaybd_provider.operators.summary import plan_layers, summarize


class OverlaybdConvertOperator(OverlaybdPullOperator):
    """Convert ``source`` to overlaybd at ``destination`` in one task (arguments as the pull
    operator's; ``keep_staging`` keeps the staging directory for inspection)."""

    operator_extra_links = (OverlaybdImageLink(),)

    def __init__(self, *, keep_staging: bool = False, **kwargs: Any) -> None:
        kwargs["outlets"] = with_converted_outlet(kwargs.get("outlets"))
        super().__init__(**kwargs)
        self.keep_staging = keep_staging
        self.image_url: str | None = None

    def _area(self, context: Any) -> StagingArea:
        if self.staging:
            if is_object_storage(str(self.staging)):
                raise AirflowException(
                    f"{self.task_id}: staging must be a local directory (one task, one machine)"
                )
            return StagingArea(str(self.staging))
        base = self.staging_base
        if base and is_object_storage(str(base)):
            base = None  # one task, one machine: a local directory is enough
        return StagingArea.for_task(base, self.conversion_key(context, safe_component(self.source)))

    def execute(self, context: Any) -> dict[str, Any]:
        self.label_image(context, self.source)
        options = self.convert_options()
        area = self._area(context)
        workdir = area.local_dir()
        workdir.mkdir(parents=True, exist_ok=True)
        state = context.get("task_state_store") if isinstance(context, dict) else None
        done = state.get("stage") if state is not None else None
        if done:
            self.log.info("retry: the previous try finished stage %r; resuming in %s", done, workdir)
        started = time.monotonic()
        stages = engine_stages()
        src_registry = self.registry_options(self.src_registry_conn_id)
        dst_registry = self.registry_options(self.dst_registry_conn_id)
        hook = self.dedup_hook(self.dedup_conn_id) if self.use_dedup else None
        conn = hook.get_conn() if hook is not None else None
        try:
            store = hook.open_store(conn, create=True) if hook is not None else None
            if hook is not None:
                self.log.info("dedup database: %s", hook.describe())

            def mark(stage: str) -> None:
                if state is not None:
                    state.set("stage", stage)

            self.log.info(
                "convert %s → %s (%s) in %s",
                self.source,
                self.destination,
                describe_options(options),
                workdir,
            )
            with self.engine_errors(f"convert {self.source}"):
                plan = stages.pull(
                    self.source,
                    self.destination,
                    workdir,
                    options=options,
                    src_registry=src_registry,
                    dst_registry=dst_registry,
                    dedup=store,
                    progress=ProgressLog(self.log, "pull"),
                )
                self.log.info(
                    "plan: %d layer(s), %d to build, %d reused, %d manifest(s) cached",
                    plan.get("layers_total", 0),
                    plan.get("layers_to_build", 0),
                    plan.get("layers_reused", 0),
                    plan.get("manifests_cached", 0),
                )
                mark("pull")
                built = stages.build(workdir, progress=ProgressLog(self.log, "build"))
                self.log.info("build: %d layer(s) built, %d skipped", len(built["built"]), built["skipped"])
                mark("build")
                compressed = stages.compress(workdir, progress=ProgressLog(self.log, "compress"))
                self.log.info(
                    "compress: %d blob(s), %d done before", len(compressed["layers"]), compressed["skipped"]
                )
                mark("compress")
                pushed = stages.push(
                    workdir, dst_registry=dst_registry, progress=ProgressLog(self.log, "push")
                )
                self.image_url = image_link(
                    pushed.get("target"), pushed.get("digest"), plain_http=dst_registry.plain_http
                )
                mark("push")
                recorded = stages.record(workdir, dedup=store) if store is not None else {}
                summary = summarize(stages.report(workdir), plan_layers(workdir))
                emit_converted(context, stages.report(workdir), self.outlets)
            if hook is not None:
                row = self.log_conversion(hook, conn, context, summary, time.monotonic() - started)
                summary["seconds_saved"] = row.seconds_saved
            mark("record")
        finally:
            if conn is not None:
                conn.close()
        summary.update(recorded, seconds=round(time.monotonic() - started, 3), image=self.source)
        if self.keep_staging:
            summary["staging"] = area.location
        else:
            stages.cleanup(workdir)
        log_summary(self.log, summary)
        return summary
