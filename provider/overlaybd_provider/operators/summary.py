"""Turn an engine conversion report into the small XCom summary and the ``overlaybd_conversions`` row.

Layer ``dedup`` values come from the engine report: ``miss`` = built here, ``hit`` = found in the
target repository, ``mount`` = cross-repository mount, ``local`` = shared with another platform of
the same image; layers of a manifest served whole by the manifest cache (the report lists none)
are added from the plan as ``cache``. Everything but ``miss`` counts as reused; their saved bytes
are the converted blob sizes when known, else the source layer sizes. Time saved is not estimated:
it is the recorded build cost of the reused layers (``summary["seconds_saved"]``, or the
``seconds_saved`` argument of :func:`conversion_row`), 0 when unknown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from overlaybd_provider.hooks.conversion_log import ConversionRow

REUSED = ("hit", "mount", "local", "cache")


def plan_layers(staging_dir: Any) -> list[dict[str, Any]]:
    """Every planned layer with its source size, from the staging plan; the layers of manifests
    served by the manifest cache (which the report leaves out) are marked ``cached``."""
    from overlaybd_provider.engine.workspace import Workspace

    plan = Workspace(staging_dir).load_plan()
    return [
        {
            "platform": image.platform,
            "chain_id": layer.chain_id,
            "source_size": layer.source_size,
            "cached": bool(image.cached),
        }
        for image in plan.images
        for layer in image.layers
    ]


def _layers(report: Mapping[str, Any], planned: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    sizes = {(p["platform"], p["chain_id"]): int(p["source_size"]) for p in planned}
    layers = [
        {
            **layer,
            "platform": m.get("platform"),
            "source_size": sizes.get((m.get("platform"), layer.get("chain_id")), 0),
        }
        for m in report.get("manifests", [])
        for layer in m.get("layers", [])
    ]
    layers += [
        {"dedup": "cache", "source_size": int(p["source_size"]), **p} for p in planned if p.get("cached")
    ]
    return layers


def summarize(report: Mapping[str, Any], planned: list[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Counts, sizes and digests of a report (plus the plan's layers) — small enough for XCom."""
    layers = _layers(report, list(planned))
    kinds = Counter(str(layer.get("dedup", "miss")) for layer in layers)
    built = [layer for layer in layers if layer.get("dedup", "miss") not in REUSED]
    reused = [layer for layer in layers if layer.get("dedup") in REUSED]
    manifests = report.get("manifests", [])
    source, target = report.get("source", {}), report.get("target", {})
    return {
        "source": source.get("reference"),
        "source_digest": source.get("digest"),
        "target": target.get("reference"),
        "target_digest": target.get("digest"),
        "platforms": sorted({m.get("platform") for m in manifests if m.get("platform")}),
        "manifests": len(manifests),
        "manifests_cached": sum(1 for m in manifests if m.get("cached")),
        "layers_total": len(layers),
        "layers_built": len(built),
        "layers_reused": len(reused),
        "dedup": dict(sorted(kinds.items())),
        "source_bytes": sum(x["source_size"] for x in layers),
        "target_bytes": sum(int(x.get("size") or 0) for x in layers),
        "reused_bytes": sum(int(x.get("size") or x["source_size"]) for x in reused),
        "reused_source_bytes": sum(x["source_size"] for x in reused),
        "built_bytes_in": sum(x["source_size"] for x in built),
        "built_seconds": round(sum(float(x.get("seconds") or 0.0) for x in built), 3),
        "seconds": round(float(report.get("seconds") or 0.0), 3),
    }


def conversion_row(
    summary: Mapping[str, Any],
    *,
    run_key: str,
    recorded_at: str,
    dag_id: str = "",
    run_id: str = "",
    seconds: float | None = None,
    seconds_saved: float | None = None,
    task_id: str = "",
    map_index: int = -1,
    try_number: int = 0,
) -> ConversionRow:
    """The succeeded row; ``seconds_saved`` defaults to ``summary["seconds_saved"]`` (the recorded
    build cost of the reused layers)."""
    saved = seconds_saved if seconds_saved is not None else summary.get("seconds_saved")
    return ConversionRow(
        run_key=run_key,
        source=str(summary.get("source") or ""),
        target=str(summary.get("target") or ""),
        source_digest=str(summary.get("source_digest") or ""),
        target_digest=str(summary.get("target_digest") or ""),
        recorded_at=recorded_at,
        platforms=",".join(summary.get("platforms") or []),
        layers_total=int(summary.get("layers_total") or 0),
        layers_reused=int(summary.get("layers_reused") or 0),
        layers_built=int(summary.get("layers_built") or 0),
        source_bytes=int(summary.get("source_bytes") or 0),
        target_bytes=int(summary.get("target_bytes") or 0),
        reused_bytes=int(summary.get("reused_bytes") or 0),
        built_source_bytes=int(summary.get("built_bytes_in") or 0),
        built_seconds=float(summary.get("built_seconds") or 0.0),
        seconds=float(seconds if seconds is not None else summary.get("seconds") or 0.0),
        seconds_saved=round(float(saved or 0.0), 3),
        manifest_cached=bool(summary.get("manifests"))
        and summary.get("manifests_cached") == summary.get("manifests"),
        dag_id=dag_id,
        run_id=run_id,
        details={"dedup": dict(summary.get("dedup") or {})},
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
    )
