"""One operator per stage: pull → build → push → record (docs/engine-stages.md).

The stages hand over through XCom (the *conversion* dict: plan, digests, results; tens of KiB at
most) and the destination registry: the build stage pushes every layer blob it builds, so push,
record — and a retry of any stage — can run on any worker. Nothing is kept on a worker's disk
between tasks but its blob cache. Chain them with ``conversion=<previous>.output``; connection ids
travel in the conversion dict, so later stages need none unless they override them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowException

from overlaybd_provider.operators import settings
from overlaybd_provider.operators.assets import emit_converted, with_converted_outlet
from overlaybd_provider.operators.base import (
    CONNECTION_FIELDS,
    OPTION_FIELDS,
    TURBO_FIELDS,
    OverlaybdBaseOperator,
    _blank,
    as_bool,
    convert_options,
    describe_options,
)
from overlaybd_provider.operators.links import OverlaybdImageLink, image_link
from overlaybd_provider.operators.progress import ProgressLog, human_bytes, human_seconds
from overlaybd_provider.operators.summary import summarize


def engine_stages():
    """The engine's stage module, imported when a task runs (never at DAG parse time)."""
    from overlaybd_provider.engine import stages

    return stages


class OverlaybdPullOperator(OverlaybdBaseOperator):
    """**Pull**: resolve ``source``, read its manifests and configs, check that ``destination``
    accepts our pushes, and ask the dedup database what is already converted (whole manifests,
    layers in the same repository, layers to mount from another one). Downloads nothing: the
    build stage fetches what it builds. Returns the conversion plan for the next stages.

    :param source: image to convert (``registry/repo:tag``, ``@digest``, or ``oci:PATH[:TAG]``)
    :param destination: where the overlaybd image goes (same forms)
    :param platforms: ``os/arch[/variant]`` list or comma string; empty = all platforms
    :param src_registry_conn_id / dst_registry_conn_id: ``oci_registry`` connections; empty = the
        connection named after the registry host (``oci_registry_<host>``) if there is one, else
        anonymous
    :param dedup_conn_id: dedup database (mysql or sqlite connection; default ``overlaybd_dedup``,
        else an embedded SQLite file)
    :param flatten: all layers of each platform in one overlaybd layer (``convert --flatten``);
        travels to the later stages in the plan
    :param format: ``overlaybd`` (native), ``turbo-oci`` (TurboOCIv1: meta layers over the original
        layers, which are mounted or copied into ``destination``) or ``both`` (native at
        ``destination`` and TurboOCIv1 at ``turbo_destination``, from one pass per layer)
    """

    template_fields = ("source", "destination", "platforms", *OPTION_FIELDS, *CONNECTION_FIELDS, "use_dedup",
                       *TURBO_FIELDS)

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
        oci: bool | str = False,
        referrer: bool | str = False,
        src_registry_conn_id: str | None = None,
        dst_registry_conn_id: str | None = None,
        dedup_conn_id: str | None = None,
        use_dedup: bool | str = True,
        flatten: bool | str = False,
        format: str | None = "overlaybd",
        turbo_destination: str | None = None,
        **kwargs: Any,
    ) -> None:
        for legacy in ("staging_base", "staging"):
            if kwargs.pop(legacy, None) is not None:
                warnings.warn(f"{legacy} is ignored: stages hand over through XCom and the destination registry",
                              DeprecationWarning, stacklevel=2)
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
        self.src_registry_conn_id = src_registry_conn_id
        self.dst_registry_conn_id = dst_registry_conn_id
        self.dedup_conn_id = dedup_conn_id
        self.use_dedup = use_dedup
        self.flatten = flatten
        self.format = format
        self.turbo_destination = turbo_destination
        self.validate_options()

    def convert_options(self):
        with self.engine_call("conversion options"):
            return convert_options(algorithm=self.algorithm, block_size_kb=self.block_size_kb,
                                   vsize_gb=self.vsize_gb, fstype=self.fstype, oci=self.oci,
                                   referrer=self.referrer, platforms=self.platforms, flatten=self.flatten,
                                   format=self.format, turbo_destination=self.turbo_destination)

    def connections(self) -> dict[str, Any]:
        return {"src_registry_conn_id": self.src_registry_conn_id or None,
                "dst_registry_conn_id": self.dst_registry_conn_id or None,
                "dedup_conn_id": self.dedup_conn_id or None, "use_dedup": as_bool(self.use_dedup)}

    def execute(self, context: Any) -> dict[str, Any]:
        self.label_image(context, self.source)
        options = self.convert_options()
        started = time.monotonic()
        self.log.info("pull %s → %s (%s)", self.source, self.destination, describe_options(options))
        with (self.dedup_store(self.dedup_conn_id, enabled=as_bool(self.use_dedup)) as store,
              self.engine_call(f"pull {self.source}")):
            result = engine_stages().pull(
                self.source, self.destination, options=options,
                src_registry=self.registry_options(self.source, self.src_registry_conn_id),
                dst_registry=self.registry_options(self.destination, self.dst_registry_conn_id),
                dedup=store, work_dir=self.work_dir(),
            )
        self.log.info("pull: %s", describe_plan(result))
        return {**result, "image": self.source, "connections": self.connections(),
                "elapsed": round(time.monotonic() - started, 3)}


def describe_plan(result: Mapping[str, Any]) -> str:
    """``linux/amd64: 3 layer(s), 2 to build, 1 reused; 0 of 1 manifest(s) from the cache``."""
    manifests = len(result.get("platforms") or [])
    return (f"{', '.join(result.get('platforms') or [])}: {result.get('layers_total', 0)} layer(s), "
            f"{result.get('layers_to_build', 0)} to build, {result.get('layers_reused', 0)} reused; "
            f"{result.get('manifests_cached', 0)} of {manifests} manifest(s) from the cache")


class _Stage(OverlaybdBaseOperator):
    """A stage after pull: takes the previous stage's result (``conversion``)."""

    template_fields = ("conversion", "platform", *CONNECTION_FIELDS)

    def __init__(self, *, conversion: Any = None, platform: str | None = None,
                 src_registry_conn_id: str | None = None, dst_registry_conn_id: str | None = None,
                 dedup_conn_id: str | None = None, **kwargs: Any) -> None:
        legacy = kwargs.pop("staging", None)
        if conversion is None and legacy is not None:
            warnings.warn("staging= is now conversion=", DeprecationWarning, stacklevel=2)
            conversion = legacy
        super().__init__(**kwargs)
        self.conversion = conversion
        self.platform = platform
        self.src_registry_conn_id = src_registry_conn_id
        self.dst_registry_conn_id = dst_registry_conn_id
        self.dedup_conn_id = dedup_conn_id

    def conversion_of(self) -> dict[str, Any]:
        if not isinstance(self.conversion, Mapping) or "plan" not in self.conversion:
            raise AirflowException(
                f"{self.task_id}: conversion must be the previous stage's result (conversion=<pull>.output), "
                f"got {type(self.conversion).__name__}"
            )
        return dict(self.conversion)

    def _conn(self, name: str) -> Any:
        mine = getattr(self, name, None)
        if not _blank(mine):
            return mine
        return (self.conversion_of().get("connections") or {}).get(name)

    def _registries(self, conversion: Mapping[str, Any]) -> dict[str, Any]:
        plan = conversion["plan"]
        return {"src_registry": self.registry_options(plan["source"], self._conn("src_registry_conn_id")),
                "dst_registry": self.registry_options(plan["target"], self._conn("dst_registry_conn_id"))}

    def _use_dedup(self) -> bool:
        return as_bool((self.conversion_of().get("connections") or {}).get("use_dedup", True))

    def _elapsed(self, started: float) -> float:
        """Wall time of the conversion so far: earlier stages' (carried in XCom) plus this one."""
        before = float(self.conversion_of().get("elapsed") or 0.0)
        return round(before + time.monotonic() - started, 3)


class Ext4LayerBuildOperator(_Stage):
    """**Build**: apply each layer tar onto its lower layers in a userspace ext4 writer, straight
    into the compressed overlaybd layer blob (ZFile), check its content against the config's
    diff_id, **push the blob to the destination** and record it in the dedup database. Lowers come
    from this worker's blob cache or the destination. A layer another run is building right now
    is waited for and reused, not built twice. Runs on the ``[overlaybd] queue`` (default
    ``overlaybd``). A retry (on any worker) keeps the layers an earlier try pushed.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("queue", settings.heavy_queue())
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        conversion = self.conversion_of()
        self.label_image(context, conversion.get("image"))
        state = context.get("task_state_store") if isinstance(context, dict) else None
        finished: dict[str, Any] = dict((state.get("layers") if state is not None else None) or {})
        if finished:
            self.log.info("build: an earlier try finished %d layer(s); keeping those still in the registry",
                          len(finished))

        def on_layer(image: Any, layer: Any) -> None:
            if layer.action == "build" and layer.digest and layer.chain_id not in finished:
                finished[layer.chain_id] = {"digest": layer.digest, "size": layer.size,
                                            "bytes_in": layer.bytes_in, "seconds": round(layer.seconds, 3)}
                if state is not None:
                    state.set("layers", finished)

        progress = ProgressLog(self.log, "build")
        started = time.monotonic()
        with (self.dedup_store(self._conn("dedup_conn_id"), enabled=self._use_dedup()) as store,
              self.engine_call("build")):
            result = engine_stages().build(
                conversion, dedup=store, cache=self.blob_cache(), work_dir=self.work_dir(),
                platform=self.platform or None, progress=progress, finished=finished, on_layer=on_layer,
                **self._registries(conversion),
            )
        built = [b for b in result.get("built", []) if b.get("dedup") != "wait"]
        waited = len(result.get("built", [])) - len(built)
        source = sum(int(b.get("bytes_in") or 0) for b in built)
        output = sum(int(b.get("size") or 0) for b in built)
        fetched = progress.fetched()
        self.log.info(
            "build: %d layer(s) built, %s source → %s overlaybd in %s%s%s",
            len(built), human_bytes(source), human_bytes(output), human_seconds(time.monotonic() - started),
            f"; {waited} built meanwhile by a concurrent run and reused" if waited else "",
            f"; fetched {fetched}" if fetched else "",
        )
        return {**result, "elapsed": self._elapsed(started)}


class ZFileCompressOperator(_Stage):
    """**Compress** (kept for DAGs written for 0.1): the build stage now writes each layer straight
    into its compressed blob and pushes it, so this only checks that every layer has its blob and
    passes the conversion on. Drop it from your DAG."""

    def __init__(self, **kwargs: Any) -> None:
        warnings.warn("ZFileCompressOperator is no longer needed: the build stage compresses and pushes",
                      DeprecationWarning, stacklevel=2)
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        conversion = self.conversion_of()
        self.label_image(context, conversion.get("image"))
        layers = [la for image in conversion["plan"]["images"] if not image.get("cached") for la in image["layers"]]
        missing = [la["index"] for la in layers if not la.get("digest")]
        if missing:
            raise AirflowException(f"compress: layer(s) {missing} have no blob: the build stage must run first")
        self.log.info("compress: nothing to do, the build stage wrote %d compressed blob(s)", len(layers))
        return conversion


class OverlaybdPushOperator(_Stage):
    """**Push**: write each image's converted config and manifest (rebuilt byte-exact from the
    source documents, fetched again by digest), the index of a multi-platform image, and tag the
    top object. Every layer blob is already in the destination (pushed by build)."""

    operator_extra_links = (OverlaybdImageLink(),)

    def __init__(self, **kwargs: Any) -> None:
        kwargs["outlets"] = with_converted_outlet(kwargs.get("outlets"))  # the image, as an asset event
        super().__init__(**kwargs)
        self.image_url: str | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        conversion = self.conversion_of()
        self.label_image(context, conversion.get("image"))
        started = time.monotonic()
        with self.engine_call("push"):
            result = engine_stages().push(conversion, work_dir=self.work_dir(), **self._registries(conversion))
        pushed = result["pushed"]
        self.log.info("push: %s@%s (%d manifest(s)): %d blob(s) uploaded (%s), %d already there",
                      pushed.get("target"), pushed.get("digest"), len(pushed.get("manifests") or []),
                      pushed.get("blobs_pushed", 0), human_bytes(pushed.get("bytes_pushed", 0)),
                      pushed.get("blobs_existing", 0))
        self.image_url = image_link(pushed.get("target"), pushed.get("digest"))
        emit_converted(context, engine_stages().report(result), self.outlets)
        return {**result, "elapsed": self._elapsed(started)}


class OverlaybdRecordOperator(_Stage):
    """**Record**: the converted manifests into the dedup database (layers were recorded by build)
    and the conversion into ``overlaybd_conversions`` (the overlaybd page). Returns the summary."""

    def execute(self, context: Any) -> dict[str, Any]:
        conversion = self.conversion_of()
        self.label_image(context, conversion.get("image"))
        started = time.monotonic()
        hook = self.dedup_hook(self._conn("dedup_conn_id")) if self._use_dedup() else None
        conn = hook.get_conn() if hook is not None else None
        try:
            with self.engine_call("record"):
                store = hook.open_store(conn, create=True) if hook is not None else None
                result = engine_stages().record(conversion, dedup=store)
                seconds = self._elapsed(started)
                summary = summarize(engine_stages().report(result, seconds))
            if conversion.get("verified"):  # the optional verify stage ran (operators/verify.py)
                from overlaybd_provider.operators.verify import verify_field

                summary["verify"] = verify_field(conversion["verified"])
            if hook is not None:
                self.log_conversion(hook, conn, context, summary, seconds)
        finally:
            if conn is not None:
                conn.close()
        summary.update(result["recorded"], seconds=seconds, image=conversion.get("image"))
        log_summary(self.log, summary)
        return summary


def log_summary(log: Any, summary: Mapping[str, Any]) -> None:
    """The conversion at a glance, one line."""
    dedup = summary.get("dedup") or {}
    reused = ", ".join(f"{n} {kind}" for kind, n in dedup.items() if kind != "miss")
    if summary.get("manifests_cached") and summary.get("manifests_cached") == summary.get("manifests"):
        what = "served from the manifest cache"
    else:
        what = (f"{summary.get('layers_total', 0)} layer(s): {summary.get('layers_built', 0)} built, "
                f"{summary.get('layers_reused', 0)} reused{f' ({reused})' if reused else ''}; "
                f"{human_bytes(summary.get('source_bytes', 0))} source → "
                f"{human_bytes(summary.get('target_bytes', 0))} overlaybd")
    saved = float(summary.get("seconds_saved") or 0.0)
    log.info(
        "converted %s → %s@%s: %s; %s%s",
        summary.get("source"), summary.get("target"), str(summary.get("target_digest"))[:19], what,
        human_seconds(float(summary.get("seconds") or 0.0)),
        f"; reuse avoided {human_seconds(saved)} of recorded build time" if saved else "",
    )
    flat = summary.get("flatten")
    if flat:
        log.info("flattened %s source layer(s) (%s) into %s (%s)", flat["source_layers"],
                 human_bytes(flat["source_bytes"]), flat["layers"], human_bytes(flat["bytes"]))
