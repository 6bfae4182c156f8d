"""Build the conversion plan: which manifests, which layers, their chain ids, and what the dedup
store lets us reuse (image.md §3, §5, §6)."""

from __future__ import annotations

import logging

from overlaybd_provider.engine.dedup import DedupStore
from overlaybd_provider.engine.documents import manifests as mf
from overlaybd_provider.engine.errors import EngineError
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.chain import chain_ids, uuid_from_chain_id
from overlaybd_provider.engine.plan.flatten import flat_layer
from overlaybd_provider.engine.plan.model import ImagePlan, LayerPlan, Plan
from overlaybd_provider.engine.transfer.endpoint import Endpoint
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.oci.errors import NotFoundError

__all__ = ["fetch_object", "fill_costs", "lookup_layer", "make_plan", "prepare", "resolve_dedup"]

log = logging.getLogger(__name__)

_MANIFEST_TYPES = (mf.DOCKER_MANIFEST, mf.OCI_MANIFEST)


def _options_doc(options: ConvertOptions) -> dict:
    return {
        "algorithm": options.algorithm,
        "block_size_kb": options.block_size_kb,
        "vsize_gb": options.vsize_gb,
        "fstype": options.fstype.text,
        "oci": options.oci,
        "referrer": options.referrer,
        "platforms": list(options.platforms),
        "concurrency_limit": options.concurrency_limit,
        "reserve": options.reserve,
        "no_upload": options.no_upload,
        "flatten": options.flatten,
        "output": options.output,
        "turbo_destination": options.turbo_destination,
    }


def _config_platform(config: dict) -> str:
    text = f"{config['os']}/{config['architecture']}"
    return f"{text}/{config['variant']}" if config.get("variant") else text


def fetch_object(src: Endpoint, ws: Workspace, digest: str, size: int) -> None:
    """A blob document (a config) into the workspace objects, by digest (verified by the store)."""
    path = ws.object_path(digest)
    if path.exists():
        return
    tmp = ws.root / "objects" / f".{digest[7:]}.fetch"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    src.fetch_blob(digest, size, tmp)
    tmp.replace(path)


def _plan_image(
    src: Endpoint, ws: Workspace, *, platform: str, child: int | None, media_type: str, digest: str, size: int,
    flatten: bool = False,
) -> ImagePlan:
    if media_type not in _MANIFEST_TYPES:
        raise EngineError(f"{src.text}: manifest {digest} has media type {media_type!r}: not convertible")
    data = src.get_manifest(digest, size)
    ws.put_object(digest, data)
    manifest = mf.parse_manifest(data)
    cfg = manifest["config"]
    fetch_object(src, ws, cfg["digest"], cfg["size"])
    config = mf.parse_config(ws.get_object(cfg["digest"]))
    layers = manifest["layers"] or []
    diff_ids = config["rootfs"]["diff_ids"] or []
    if len(diff_ids) != len(layers):
        raise EngineError(
            f"{src.text}: manifest {digest} has {len(layers)} layers but its config lists {len(diff_ids)} diff_ids"
        )
    chains = chain_ids(diff_ids)
    plan = ImagePlan(
        platform=platform or _config_platform(config), child=child, source_digest=digest,
        source_media_type=media_type, source_size=len(data), config_digest=cfg["digest"],
    )
    for i, (layer, diff_id, chain) in enumerate(zip(layers, diff_ids, chains, strict=True)):
        plan.layers.append(
            LayerPlan(
                index=i, source_digest=layer["digest"], source_size=layer["size"],
                source_media_type=layer["mediaType"], diff_id=diff_id, chain_id=chain,
                uuid=uuid_from_chain_id(chain), parent_uuid=uuid_from_chain_id(chains[i - 1]) if i else "",
            )
        )
    if flatten and plan.layers:
        plan.layers = [flat_layer(plan.layers)]
    return plan


def make_plan(src: Endpoint, dst_text: str, options: ConvertOptions, ws: Workspace, *, turbo: bool = False) -> Plan:
    """Resolve the source and read every manifest/config to convert into the workspace.
    ``turbo``: the plan of the TurboOCIv1 image (its own layer keys and format ids)."""
    media_type, digest, size = src.resolve()
    top = src.get_manifest(digest, size)
    ws.put_object(digest, top)
    plan = Plan(
        source=src.text, target=dst_text, source_digest=digest, source_media_type=media_type,
        source_size=size, is_index=mf.is_index_media_type(media_type), options=_options_doc(options),
        layer_format=options.layer_format_id(), manifest_format=options.manifest_format_id(),
    )
    if plan.is_index:
        index = mf.parse_index(top)
        children = mf.select_children(index, options.platforms)
        if not children:
            raise EngineError(f"{src.text}: no manifest matches --platform {','.join(options.platforms)}")
        for i, child in children:
            plan.images.append(
                _plan_image(src, ws, platform=mf.platform_string(child), child=i,
                            media_type=child["mediaType"], digest=child["digest"], size=child["size"],
                            flatten=options.flatten)
            )
    else:
        image = _plan_image(src, ws, platform="", child=None, media_type=media_type, digest=digest, size=size,
                            flatten=options.flatten)
        if options.platforms and not any(
            image.platform == p or image.platform.startswith(p + "/") for p in options.platforms
        ):
            raise EngineError(f"{src.text}: image platform {image.platform} does not match --platform")
        plan.images.append(image)
    if turbo:
        from overlaybd_provider.engine.turbo.keys import as_turbo_layers

        plan.output = "turbo-oci"
        plan.layer_format = options.turbo_layer_format_id()
        plan.manifest_format = options.manifest_format_id(plan.layer_format)
        for image in plan.images:
            as_turbo_layers(image.layers)
    return plan


def resolve_dedup(plan: Plan, dst: Endpoint, dedup: DedupStore, oci: bool) -> None:
    """Manifest cache first, then per layer: same repo (verified), other repos (mounted)."""
    host, repo = dst.host, dst.repo
    out_type = mf.media_types(oci)["manifest"]
    for image in plan.images:
        image.cached = _manifest_cache(image, dst, dedup, host, repo, out_type, plan.manifest_format)
        if image.cached:
            log.info("[%s] manifest cache hit: %s (%s)", image.label, image.cached["digest"], image.cached["how"])
            continue
        for layer in image.layers:
            lookup_layer(layer, dst, dedup, host, repo, plan.layer_format_of(layer))


def lookup_layer(layer: LayerPlan, dst: Endpoint, dedup: DedupStore, host: str, repo: str, fmt: str) -> bool:
    """Turn ``layer`` into a reuse when the dedup store has it (True). A row is reused only when
    its blob is really there (HEAD) or mountable; rows whose blob is gone are deleted (as
    upstream does), so a garbage-collected blob never sticks."""
    row = dedup.find_layer(host, repo, layer.chain_id, fmt)
    if row is not None:
        if dst.has_blob(row.digest):
            layer.action, layer.dedup, layer.digest, layer.size = "reuse", "hit", row.digest, row.size
            return True
        log.info("dedup row for %s points at missing blob %s: deleted", layer.chain_id, row.digest)
        dedup.delete_layer(host, repo, layer.chain_id, row.digest)
    for row in dedup.find_layer_elsewhere(host, repo, layer.chain_id, fmt):
        if dst.mount_blob(row.digest, row.size, row.repo):
            dedup.record_layer(host, repo, layer.chain_id, row.digest, row.size, fmt)
            layer.action, layer.dedup, layer.digest, layer.size = "reuse", "mount", row.digest, row.size
            return True
        log.info("dedup row %s/%s for %s points at a blob that cannot be had: deleted", host, row.repo,
                 layer.chain_id)
        dedup.delete_layer(host, row.repo, layer.chain_id, row.digest)
    return False


def _missing_blob(dst: Endpoint, data: bytes, from_repo: str | None, image: ImagePlan | None = None) -> str | None:
    """The first blob of manifest ``data`` that is neither in ``dst`` nor mountable from
    ``from_repo``; None when every blob is there (a manifest row is only as good as its blobs).
    The source layers TurboOCI layers read from (``target-digest``) count too."""
    from overlaybd_provider.formats.turbo import ANN_TARGET_DIGEST

    manifest = mf.parse_manifest(data)
    blobs = [manifest["config"], *(manifest["layers"] or [])]
    sizes = {layer.source_digest: layer.source_size for layer in image.layers} if image is not None else {}
    for layer in manifest["layers"] or []:
        target = (layer.get("annotations") or {}).get(ANN_TARGET_DIGEST)
        if target:
            blobs.append({"digest": target, "size": sizes.get(target, 0)})
    for blob in blobs:
        if dst.has_blob(blob["digest"]):
            continue
        if from_repo is not None and dst.mount_blob(blob["digest"], blob["size"], from_repo):
            continue
        return blob["digest"]
    return None


def _manifest_cache(
    image: ImagePlan, dst: Endpoint, dedup: DedupStore, host: str, repo: str, out_type: str, fmt: str
) -> dict | None:
    row = dedup.find_manifest(host, repo, image.source_digest, out_type, fmt)
    if row is not None:
        try:
            data = dst.get_manifest(row.digest)
            missing = _missing_blob(dst, data, None, image)
        except NotFoundError:
            missing = row.digest
        if missing is None:
            return {"digest": row.digest, "size": row.size, "repo": repo, "how": "same-repo"}
        log.info("manifest cache row %s/%s@%s is stale (%s is missing): deleted, converting again",
                 host, repo, row.digest, missing)
        dedup.delete_manifest(host, repo, image.source_digest, out_type, row.digest)
    for row in dedup.find_manifest_elsewhere(host, repo, image.source_digest, out_type, fmt):
        other = dst.sibling(row.repo)
        try:
            data = other.get_manifest(row.digest)
        except NotFoundError as exc:
            log.info("manifest cache row %s/%s@%s is stale (%s): deleted", host, row.repo, row.digest, exc)
            dedup.delete_manifest(host, row.repo, image.source_digest, out_type, row.digest)
            continue
        finally:
            other.close()
        missing = _missing_blob(dst, data, row.repo, image)
        if missing is not None:
            log.info("manifest cache row %s/%s@%s is stale (%s cannot be had): deleted", host, row.repo,
                     row.digest, missing)
            dedup.delete_manifest(host, row.repo, image.source_digest, out_type, row.digest)
            continue
        dst.push_manifest(data, out_type, None)
        dedup.record_manifest(host, repo, image.source_digest, out_type, row.digest, len(data), fmt)
        return {"digest": row.digest, "size": len(data), "repo": row.repo, "how": "cross-repo"}
    return None


def fill_costs(plan: Plan, dedup: DedupStore | None) -> None:
    """Set ``cost`` of every reused layer (and of every layer of a manifest-cache hit) to the build
    time recorded when it was converted: what this reuse saved, measured, not estimated."""
    if dedup is None:
        return
    reused = [layer for image in plan.images for layer in image.layers
              if image.cached or layer.action == "reuse" or layer.dedup not in ("miss",)]
    if not reused:
        return
    costs = dedup.layer_costs([layer.chain_id for layer in reused], plan.layer_format)
    for layer in reused:
        layer.cost = round(costs.get(layer.chain_id, 0.0), 3)


def prepare(src: str, dst: str, ws: Workspace, options: ConvertOptions, src_ep: Endpoint, dst_ep: Endpoint,
            dedup: DedupStore | None, twin_ep: Endpoint | None = None) -> Plan:
    """Plan + push-access check + dedup decisions, saved to plan.json (``convert_image`` and the
    pull stage). Output ``both``: the TurboOCIv1 plan for ``twin_ep`` rides along as ``twin``."""
    ws.root.mkdir(parents=True, exist_ok=True)
    plan = make_plan(src_ep, dst, options, ws, turbo=options.output == "turbo-oci")
    _decide(plan, ws, options, dst_ep, dedup)
    if options.output == "both":
        assert twin_ep is not None and options.turbo_destination
        twin = make_plan(src_ep, options.turbo_destination, options, ws, turbo=True)
        _decide(twin, ws, options, twin_ep, dedup)
        plan.twin = twin.to_json()
    ws.save_plan(plan)
    return plan


def _decide(plan: Plan, ws: Workspace, options: ConvertOptions, dst_ep: Endpoint, dedup: DedupStore | None) -> None:
    if not options.no_upload:
        dst_ep.check_push()  # an unreachable or refusing target fails before downloads and builds
    if dedup is not None and not options.no_upload and dst_ep.is_registry:
        resolve_dedup(plan, dst_ep, dedup, options.oci)
    for image in plan.images:
        for layer in image.layers:
            if layer.action == "build" and ws.blob_info(layer) is not None:
                layer.dedup = "local"  # finished by an earlier run in this work directory
