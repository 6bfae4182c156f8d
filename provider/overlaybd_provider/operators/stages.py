"""One operator per engine stage: pull → build → compress → push → record.

Each ``execute`` is one call of :mod:`overlaybd_provider.engine.stages` inside the conversion's
staging area (synchronised with object storage when the area is remote). The engine stages are
idempotent — a retry finishes only the pending work — so the operators are retry-safe as they are.
XCom carries small dicts (digests, counts, sizes, the staging location), never blobs; chain the
stages with ``staging=<previous>.output``.
"""

from __future__ import annotations

from typing import Any

from overlaybd_provider.operators.assets import emit_converted, with_converted_outlet
from overlaybd_provider.operators.base import (
    OPTION_FIELDS,
    OverlaybdBaseOperator,
    as_platforms,
    describe_options,
)
from overlaybd_provider.operators.links import OverlaybdImageLink, image_link
from overlaybd_provider.operators.progress import ProgressLog, rate
from overlaybd_provider.operators.staging import StagingArea, safe_component
from overlaybd_provider.operators.summary import plan_layers, summarize


def engine_stages():
    """The engine's stage module, imported when a task runs (never at DAG parse time)."""
    from overlaybd_provider.engine import stages

    return stages


class OverlaybdPullOperator(OverlaybdBaseOperator):
    """Resolve ``source``, consult the dedup cache, download what must be built; writes the plan.

    :param source: image to convert (``registry/repo:tag``, ``@digest``, or ``oci:PATH[:TAG]``)
    :param destination: where the overlaybd image goes (same forms)
    :param platforms: ``os/arch[/variant]`` list or comma string; empty = all platforms
    :param staging_base: local directory or object-storage URL (default ``[overlaybd] staging_base``)
    :param staging: explicit staging location (overrides ``staging_base``)
    """

    template_fields = (
        "source",
        "destination",
        "platforms",
        "staging_base",
        "staging",
        *OPTION_FIELDS,
        "src_registry_conn_id",
        "dst_registry_conn_id",
        "dedup_conn_id",
    )

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        platforms: list[str] | str | None = None,
        algorithm: str = "lz4",
        block_size_kb: int | str = 4,
        vsize_gb: int | str = 64,
        fstype: str = "ext4",
        oci: bool = False,
        referrer: bool = False,
        staging_base: str | None = None,
        staging: str | None = None,
        src_registry_conn_id: str | None = None,
        dst_registry_conn_id: str | None = None,
        dedup_conn_id: str | None = None,
        use_dedup: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.platforms = platforms
        self.algorithm = algorithm
        self.block_size_kb = block_size_kb
        self.vsize_gb = vsize_gb
        self.fstype = fstype
        self.oci = oci
        self.referrer = referrer
        self.staging_base = staging_base
        self.staging = staging
        self.src_registry_conn_id = src_registry_conn_id
        self.dst_registry_conn_id = dst_registry_conn_id
        self.dedup_conn_id = dedup_conn_id
        self.use_dedup = use_dedup

    def convert_options(self):
        from overlaybd_provider.engine.options import ConvertOptions

        with self.engine_errors("conversion options"):
            return ConvertOptions(
                algorithm=str(self.algorithm),
                block_size_kb=int(self.block_size_kb),
                vsize_gb=int(self.vsize_gb),
                fstype=str(self.fstype or "ext4"),
                oci=bool(self.oci),
                referrer=bool(self.referrer),
                platforms=tuple(as_platforms(self.platforms)),
            )

    def execute(self, context: Any) -> dict[str, Any]:
        self.label_image(context, self.source)
        options = self.convert_options()
        area = (
            StagingArea(str(self.staging))
            if self.staging
            else StagingArea.for_task(
                self.staging_base, self.conversion_key(context, safe_component(self.source))
            )
        )
        progress = ProgressLog(self.log, "pull")
        self.log.info(
            "pull %s → %s (%s) staging %s",
            self.source,
            self.destination,
            describe_options(options),
            area.location,
        )
        with (
            area.stage() as workdir,
            self.dedup_store(self.dedup_conn_id, enabled=self.use_dedup) as store,
            self.engine_errors(f"pull {self.source}"),
        ):
            result = engine_stages().pull(
                self.source,
                self.destination,
                workdir,
                options=options,
                src_registry=self.registry_options(self.src_registry_conn_id),
                dst_registry=self.registry_options(self.dst_registry_conn_id),
                dedup=store,
                progress=progress,
            )
        self.log.info(
            "pull done: %d layer(s), %d to build, %d reused, %d manifest(s) cached, %s",
            result.get("layers_total", 0),
            result.get("layers_to_build", 0),
            result.get("layers_reused", 0),
            result.get("manifests_cached", 0),
            rate(result.get("bytes_downloaded", 0), progress.elapsed()),
        )
        out = {k: v for k, v in result.items() if k not in {"staging_dir", "plan"}}
        return {
            **out,
            "staging": area.location,
            "image": self.source,
            "elapsed": round(progress.elapsed(), 3),
        }


class _StagingStage(OverlaybdBaseOperator):
    """A stage that only needs the staging area (and maybe one platform)."""

    template_fields = ("staging", "platform")

    def __init__(self, *, staging: Any, platform: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staging = staging
        self.platform = platform

    def _image(self) -> str | None:
        return self.staging.get("image") if isinstance(self.staging, dict) else None

    def _elapsed(self, progress: ProgressLog) -> float:
        """Wall time of the conversion so far: earlier stages' (carried in XCom) plus this one."""
        before = self.staging.get("elapsed", 0.0) if isinstance(self.staging, dict) else 0.0
        return round(float(before or 0.0) + progress.elapsed(), 3)


class Ext4LayerBuildOperator(_StagingStage):
    """Apply each layer to be built onto its lower stack, straight into its compressed layer blob."""

    def execute(self, context: Any) -> dict[str, Any]:
        image = self._image()
        self.label_image(context, image)
        area = self.area_for(self.staging)
        progress = ProgressLog(self.log, "build")
        with area.stage() as workdir, self.engine_errors("build"):
            result = engine_stages().build(workdir, platform=self.platform or None, progress=progress)
        built = result.get("built", [])
        total = sum(int(b.get("size") or 0) for b in built)
        self.log.info(
            "build done: %d layer(s) built, %d skipped, %s",
            len(built),
            result.get("skipped", 0),
            rate(total, progress.elapsed()),
        )
        return {
            "staging": area.location,
            "image": image,
            "layers_built": len(built),
            "skipped": result.get("skipped", 0),
            "bytes": total,
            "seconds": round(sum(float(b.get("seconds") or 0) for b in built), 3),
            "elapsed": self._elapsed(progress),
        }


class ZFileCompressOperator(_StagingStage):
    """The layer blobs with their digests; a raw LSMT left by an earlier version is compressed first."""

    def execute(self, context: Any) -> dict[str, Any]:
        image = self._image()
        self.label_image(context, image)
        area = self.area_for(self.staging)
        progress = ProgressLog(self.log, "compress")
        with area.stage() as workdir, self.engine_errors("compress"):
            result = engine_stages().compress(workdir, platform=self.platform or None, progress=progress)
        layers = result.get("layers", [])
        total = sum(int(x.get("size") or 0) for x in layers)
        self.log.info(
            "compress done: %d blob(s), %d skipped, %s",
            len(layers),
            result.get("skipped", 0),
            rate(total, progress.elapsed()),
        )
        return {
            "staging": area.location,
            "image": image,
            "layers": [
                {"chain_id": x.get("chain_id"), "digest": x.get("digest"), "size": x.get("size")}
                for x in layers
            ],
            "skipped": result.get("skipped", 0),
            "bytes": total,
            "elapsed": self._elapsed(progress),
        }


class OverlaybdPushOperator(_StagingStage):
    """Push missing layer blobs, configs, manifests (and index) and tag the target."""

    template_fields = ("staging", "dst_registry_conn_id")
    operator_extra_links = (OverlaybdImageLink(),)

    def __init__(self, *, staging: Any, dst_registry_conn_id: str | None = None, **kwargs: Any) -> None:
        kwargs["outlets"] = with_converted_outlet(kwargs.get("outlets"))
        super().__init__(staging=staging, **kwargs)
        self.dst_registry_conn_id = dst_registry_conn_id
        self.image_url: str | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        image = self._image()
        self.label_image(context, image)
        area = self.area_for(self.staging)
        progress = ProgressLog(self.log, "push")
        registry = self.registry_options(self.dst_registry_conn_id)
        with area.stage() as workdir, self.engine_errors("push"):
            result = engine_stages().push(workdir, dst_registry=registry, progress=progress)
            emit_converted(context, engine_stages().report(workdir), self.outlets)
        self.log.info(
            "push done: %s@%s — %d blob(s) pushed (%s), %d already there",
            result.get("target"),
            result.get("digest"),
            result.get("blobs_pushed", 0),
            rate(result.get("bytes_pushed", 0), progress.elapsed()),
            result.get("blobs_existing", 0),
        )
        self.image_url = image_link(
            result.get("target"), result.get("digest"), plain_http=registry.plain_http
        )
        return {**result, "staging": area.location, "image": image, "elapsed": self._elapsed(progress)}


class OverlaybdRecordOperator(_StagingStage):
    """Record pushed layers and manifests in the dedup DB and the conversion in
    ``overlaybd_conversions``; returns the dedup summary; removes the staging area."""

    template_fields = ("staging", "dedup_conn_id")

    def __init__(
        self, *, staging: Any, dedup_conn_id: str | None = None, cleanup: bool = True, **kwargs: Any
    ):
        super().__init__(staging=staging, **kwargs)
        self.dedup_conn_id = dedup_conn_id
        self.cleanup = cleanup

    def execute(self, context: Any) -> dict[str, Any]:
        image = self._image()
        self.label_image(context, image)
        area = self.area_for(self.staging)
        state = context.get("task_state_store") if isinstance(context, dict) else None
        if state is not None and state.get("summary") and not area.exists():
            # A rerun after the staging area was removed: the work is recorded already.
            self.log.info("record: already recorded by an earlier try, staging area gone")
            return state.get("summary")
        hook = self.dedup_hook(self.dedup_conn_id)
        progress = ProgressLog(self.log, "record")
        with area.stage() as workdir, self.engine_errors("record"):
            conn = hook.get_conn()
            try:
                recorded = engine_stages().record(workdir, dedup=hook.open_store(conn, create=True))
                summary = summarize(engine_stages().report(workdir), plan_layers(workdir))
                row = self.log_conversion(hook, conn, context, summary, self._elapsed(progress))
            finally:
                conn.close()
        summary.update(
            recorded, seconds=row.seconds, seconds_saved=row.seconds_saved, staging=area.location, image=image
        )
        log_summary(self.log, summary)
        if state is not None:
            state.set("summary", summary)
        if self.cleanup:
            with self.engine_errors("cleanup"):
                engine_stages().cleanup(area.local_dir())
            area.cleanup()
        return summary


def log_summary(log: Any, summary: dict[str, Any]) -> None:
    log.info(
        "converted %s (%s) → %s@%s: %d layer(s), %d reused (%s), %d built; %.1f MB source → %.1f MB "
        "overlaybd; dedup saved %.1f MB and ~%.1f s",
        summary.get("source"),
        summary.get("source_digest"),
        summary.get("target"),
        summary.get("target_digest"),
        summary.get("layers_total", 0),
        summary.get("layers_reused", 0),
        ", ".join(f"{k}={v}" for k, v in (summary.get("dedup") or {}).items()),
        summary.get("layers_built", 0),
        summary.get("source_bytes", 0) / 1e6,
        summary.get("target_bytes", 0) / 1e6,
        summary.get("reused_bytes", 0) / 1e6,
        summary.get("seconds_saved", 0.0),
    )
