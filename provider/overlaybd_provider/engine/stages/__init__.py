"""The conversion split into stages for orchestrators: pull → build → push → record
(docs/engine-stages.md).

Stages hand over through **small JSON and the destination**, never a shared disk: ``pull``
returns the plan; ``build`` pushes every layer blob it builds straight to the destination
repository (idempotent by digest) and records it in the dedup database, returning the digests;
``push`` writes configs, manifests and the index (the source documents are fetched again by
digest); ``record`` writes the manifest rows. Each stage works in a private scratch directory
removed when it ends, so any stage can run on any worker, and a retry on another machine
resumes from the destination, the dedup database and that machine's blob cache.

Every stage takes the previous stage's result (the *conversion* dict) and returns it extended.
An OCI-layout endpoint is local by nature: its stages must run where the layout is
(:func:`require_local`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.dedup.lease import LayerLeases
from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.options import ConvertOptions, parse_fstype
from overlaybd_provider.engine.pipeline import Pipeline, run_images, run_pairs
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan
from overlaybd_provider.engine.plan.planner import fetch_object, fill_costs, prepare
from overlaybd_provider.engine.report import Progress, build_report
from overlaybd_provider.engine.transfer import publish
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.endpoint import Endpoint, open_endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace, scratch
from overlaybd_provider.oci.options import RegistryOptions

__all__ = ["HANDOVER", "build", "options_from_plan", "pull", "push", "record", "report", "require_local"]

log = logging.getLogger(__name__)

#: ``kind`` of the conversion dict the stages pass on (bumped with the plan format)
HANDOVER = "overlaybd-conversion/2"

#: ``on_layer(image, layer)``: a layer is final (built + pushed + recorded, or reused)
LayerCallback = Callable[[ImagePlan, LayerPlan], None]


def options_from_plan(plan: Plan) -> ConvertOptions:
    o = plan.options
    return ConvertOptions(
        algorithm=o["algorithm"], block_size_kb=o["block_size_kb"], vsize_gb=o["vsize_gb"],
        fstype=parse_fstype(o["fstype"]), oci=o["oci"], referrer=o["referrer"], platforms=tuple(o["platforms"]),
        concurrency_limit=o["concurrency_limit"], reserve=False, no_upload=o["no_upload"],
        blob_cache_max_bytes=0, flatten=bool(o.get("flatten", False)),
        output=o.get("output", "overlaybd"), turbo_destination=o.get("turbo_destination"),
    )


def _plan_of(conversion: Mapping[str, Any]) -> Plan:
    if not isinstance(conversion, Mapping) or conversion.get("kind") != HANDOVER:
        kind = conversion.get("kind") if isinstance(conversion, Mapping) else type(conversion).__name__
        raise StageError(f"not the result of the pull stage of this version ({kind!r}, expected {HANDOVER!r})")
    return Plan.from_json(conversion["plan"])


def _handover(conversion: Mapping[str, Any], plan: Plan, **extra: Any) -> dict[str, Any]:
    return {**conversion, "plan": plan.to_json(), **extra}


def require_local(reference: str, pulled_on: str | None = None) -> None:
    """An ``oci:`` layout must be on this machine: fail with one clear line when it is not."""
    from overlaybd_provider.oci.reference import parse_reference

    ref = parse_reference(reference)
    if not ref.is_layout:
        return
    if not (Path(ref.path) / "oci-layout").is_file():
        where = f" (the pull stage ran on {pulled_on})" if pulled_on else ""
        raise StageError(
            f"{reference}: this OCI layout is not on {socket.gethostname()}{where}. An oci: layout is local to "
            "one machine, so every stage of its conversion must run where it is: use a registry, "
            "OverlaybdConvertOperator (one task), or route the stages to that machine's queue"
        )


def _summary(plan: Plan) -> dict[str, Any]:
    layers = [layer for image in plan.images if not image.cached for layer in image.layers]
    return {
        "platforms": [image.platform for image in plan.images],
        "manifests_cached": sum(1 for image in plan.images if image.cached),
        "layers_total": len(layers),
        "layers_to_build": sum(1 for layer in layers if layer.action == "build"),
        "layers_reused": sum(1 for layer in layers if layer.action == "reuse"),
    }


def pull(src: str, dst: str, *, options: ConvertOptions | None = None,
         src_registry: RegistryOptions | None = None, dst_registry: RegistryOptions | None = None,
         dedup: DedupStore | None = None, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Resolve ``src``, read its manifests and configs, check push access to ``dst``, consult the
    dedup store (manifest cache, layer hits and cross-repository mounts); returns the plan. No
    layer is downloaded here: the build stage fetches what it builds, where it builds it."""
    options = options or ConvertOptions()
    src_ep = open_endpoint(src, src_registry)
    dst_ep = open_endpoint(dst, dst_registry)
    twin_ep = open_endpoint(options.turbo_destination, dst_registry) if options.turbo_destination else None
    try:
        with scratch(work_dir, "overlaybd-pull-") as root:
            plan = prepare(src, dst, Workspace(root), options, src_ep, dst_ep, dedup, twin_ep)
    finally:
        src_ep.close()
        dst_ep.close()
        if twin_ep is not None:
            twin_ep.close()
    fill_costs(plan, dedup)
    _with_twin(plan, lambda twin: fill_costs(twin, dedup))
    return {
        "kind": HANDOVER,
        "plan": plan.to_json(),
        "pulled_on": socket.gethostname(),
        "source": {"reference": src, "digest": plan.source_digest, "media_type": plan.source_media_type,
                   "size": plan.source_size},
        "target": dst,
        **_summary(plan),
    }


def _with_twin(plan: Plan, action: Callable[[Plan], Any]) -> Any:
    """Run ``action`` on the TurboOCI twin plan (output ``both``) and store it back; None without one."""
    twin = plan.twin_plan()
    if twin is None:
        return None
    result = action(twin)
    plan.twin = twin.to_json()
    return result


def _selected(plan: Plan, platform: str | None) -> list[ImagePlan]:
    images = [i for i in plan.images if not i.cached]
    if platform:
        images = [i for i in images if i.platform == platform or i.platform.startswith(platform + "/")]
    return images


def build(conversion: Mapping[str, Any], *, src_registry: RegistryOptions | None = None,
          dst_registry: RegistryOptions | None = None, dedup: DedupStore | None = None,
          cache: BlobCache | None = None, work_dir: str | Path | None = None, platform: str | None = None,
          progress: Progress | None = None, finished: Mapping[str, Mapping[str, Any]] | None = None,
          on_layer: LayerCallback | None = None) -> dict[str, Any]:
    """Build every layer still to build, bottom first, each straight into its layer blob,
    **pushed to the destination** and recorded as soon as it is done (docs/engine-stages.md).

    ``finished``: ``{chain_id: {"digest", "size", ...}}`` of layers an earlier try already built
    and pushed (the orchestrator keeps it, fed by ``on_layer``): kept when their blob is still
    in the destination. ``cache``: this machine's blob cache (source layers and lowers)."""
    plan = _plan_of(conversion)
    require_local(plan.source, conversion.get("pulled_on"))
    require_local(plan.target, conversion.get("pulled_on"))
    options = options_from_plan(plan)
    twin = plan.twin_plan()
    images = _selected(plan, platform)
    src_ep = open_endpoint(plan.source, src_registry)
    dst_ep = open_endpoint(plan.target, dst_registry)
    twin_ep = open_endpoint(twin.target, dst_registry) if twin is not None else None
    held: list[LayerLeases] = []

    def leases_for(p: Plan, ep: Endpoint) -> LayerLeases | None:
        if dedup is None or options.no_upload or not ep.is_registry:
            return None
        held.append(LayerLeases(dedup, ep.host, p.layer_format))
        return held[-1]

    try:
        done = _restore_finished(images, dst_ep, finished or {})
        if twin is not None:
            assert twin_ep is not None
            done |= _restore_finished(_selected(twin, platform), twin_ep, finished or {})
        with scratch(work_dir, "overlaybd-build-") as root:
            ws = Workspace(root)
            pipeline = Pipeline(ws, plan, options, src_ep, dst_ep, dedup, progress, cache,
                                leases_for(plan, dst_ep), on_layer, finished=frozenset(done))
            if twin is not None:
                assert twin_ep is not None
                pipeline.twin = Pipeline(ws, twin, options, src_ep, twin_ep, dedup, progress, cache,
                                         leases_for(twin, twin_ep), on_layer, finished=frozenset(done))
                run_pairs(pipeline, plan, twin, platform)
            else:
                run_images(pipeline, images)
    finally:
        for lease in held:
            lease.close()
        src_ep.close()
        dst_ep.close()
        if twin_ep is not None:
            twin_ep.close()
    fill_costs(plan, dedup)
    built = _built(images)
    if twin is not None:
        fill_costs(twin, dedup)
        built += [{**row, "format": "turbo-oci"} for row in _built(_selected(twin, platform))]
        plan.twin = twin.to_json()
    return _handover(conversion, plan, built=built, **_summary(plan))


def _built(images: list[ImagePlan]) -> list[dict[str, Any]]:
    return [{"platform": image.platform, "index": layer.index, "chain_id": layer.chain_id,
             "digest": layer.digest, "size": layer.size, "dedup": layer.dedup, "bytes_in": layer.bytes_in,
             "seconds": round(layer.seconds, 3), "kind": layer.kind}
            for image in images for layer in image.layers if layer.action == "build" or layer.dedup == "wait"]


def _restore_finished(images: list[ImagePlan], dst: Endpoint,
                      finished: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Layers an earlier try finished whose blob is still in the destination (HEAD)."""
    done: set[str] = set()
    for image in images:
        for layer in image.layers:
            info = finished.get(layer.chain_id)
            if layer.action != "build" or not info:
                continue
            if dst.has_blob(str(info["digest"])):
                layer.digest, layer.size = str(info["digest"]), int(info["size"])
                layer.bytes_in = int(info.get("bytes_in") or 0)
                layer.bytes_out = int(info.get("size") or 0)
                layer.seconds = float(info.get("seconds") or 0.0)
                done.add(layer.chain_id)
            else:
                log.info("layer %s of an earlier try is no longer in %s: building it again",
                         layer.chain_id[7:19], dst.text)
    return done


def _fetch_documents(ws: Workspace, plan: Plan, src: Endpoint) -> None:
    """Source index, manifests and configs, by digest (verified), into the scratch workspace."""
    ws.put_object(plan.source_digest, src.get_manifest(plan.source_digest, plan.source_size))
    for image in plan.images:
        if image.cached:
            continue
        ws.put_object(image.source_digest, src.get_manifest(image.source_digest, image.source_size))
        fetch_object(src, ws, image.config_digest, _config_size(ws, image))


def _config_size(ws: Workspace, image: ImagePlan) -> int:
    from overlaybd_provider.engine.documents import manifests as mf

    return int(mf.parse_manifest(ws.get_object(image.source_digest))["config"]["size"])


def push(conversion: Mapping[str, Any], *, src_registry: RegistryOptions | None = None,
         dst_registry: RegistryOptions | None = None, work_dir: str | Path | None = None,
         progress: Progress | None = None) -> dict[str, Any]:
    """Configs, manifests and the index (rebuilt byte-exact from the source documents, fetched
    again by digest), pushed and the top object tagged. Every layer blob must already be in the
    destination (pushed by the build stage, or reused)."""
    plan = _plan_of(conversion)
    require_local(plan.source, conversion.get("pulled_on"))
    require_local(plan.target, conversion.get("pulled_on"))
    twin = plan.twin_plan()
    missing = [f"{image.label} layer {layer.index}" for p in (plan, twin) if p is not None for image in p.images
               if not image.cached for layer in image.layers if layer.digest is None]
    if missing:
        raise StageError(f"not built yet: {', '.join(missing[:5])}: run the build stage first")
    extra: dict[str, Any] = {}
    src_ep = open_endpoint(plan.source, src_registry)
    try:
        with scratch(work_dir, "overlaybd-push-") as root:
            ws = Workspace(root)
            _fetch_documents(ws, plan, src_ep)
            pushed = _push_one(ws, plan, src_ep, dst_registry)
            if twin is not None:  # output both: the TurboOCI image next to the native one
                extra["turbo_pushed"] = _push_one(ws, twin, src_ep, dst_registry)
                plan.twin = twin.to_json()
    finally:
        src_ep.close()
    if progress is not None:
        progress({"event": "pushed", **pushed})
    return _handover(conversion, plan, pushed=pushed, **extra)


def _push_one(ws: Workspace, plan: Plan, src_ep: Endpoint, dst_registry: RegistryOptions | None) -> dict[str, Any]:
    dst_ep = open_endpoint(plan.target, dst_registry)
    try:
        return publish.publish_all(ws, plan, dst_ep, upload=not plan.options["no_upload"], src=src_ep)
    finally:
        dst_ep.close()


def record(conversion: Mapping[str, Any], *, dedup: DedupStore | None) -> dict[str, Any]:
    """Record the manifests (and, idempotently, the built layers) in the dedup store."""
    plan = _plan_of(conversion)
    pushed = conversion.get("pushed")
    if not pushed:
        raise StageError("nothing pushed yet: run the push stage first")
    layers, manifests = _record_one(plan, pushed, dedup)
    twin = plan.twin_plan()
    if twin is not None and conversion.get("turbo_pushed"):
        more = _record_one(twin, conversion["turbo_pushed"], dedup)
        layers, manifests = layers + more[0], manifests + more[1]
        fill_costs(twin, dedup)
        plan.twin = twin.to_json()
    fill_costs(plan, dedup)
    return _handover(conversion, plan, recorded={"layers_recorded": layers, "manifests_recorded": manifests})


def _record_one(plan: Plan, pushed: Mapping[str, Any], dedup: DedupStore | None) -> tuple[int, int]:
    layers = manifests = 0
    if dedup is not None and pushed.get("uploaded"):
        dst = open_endpoint(plan.target, None, connect=False)
        by_source = {m["source_digest"]: m for m in pushed["manifests"]}
        for image in plan.images:
            if image.cached:
                continue
            for layer in image.layers:
                if layer.digest is not None and layer.size is not None:
                    layers += publish.record_layer(dedup, dst, plan, layer, layer.digest, layer.size)
            m = by_source[image.source_digest]
            manifests += publish.record_image(
                dedup, dst, plan, image, publish.mf.Descriptor(m["media_type"], m["digest"], m["size"])
            )
    return layers, manifests


def report(conversion: Mapping[str, Any], seconds: float = 0.0) -> dict[str, Any]:
    """The conversion report (same schema as ``overlaybd convert --output-json``)."""
    plan = _plan_of(conversion)
    doc = build_report(plan, conversion.get("pushed"), seconds)
    twin = plan.twin_plan()
    if twin is not None:
        doc.turbo = build_report(twin, conversion.get("turbo_pushed"), seconds).to_json()
    return doc.to_json()
