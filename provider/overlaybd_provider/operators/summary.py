"""Turn an engine conversion report into the small XCom summary and the ``overlaybd_conversions`` row.

Layer ``dedup`` values come from the engine report: ``miss`` = built here, ``hit`` = found in the
target repository, ``mount`` = cross-repository mount, ``local`` = finished earlier (this work
directory, or an earlier try), ``wait`` = built meanwhile by a concurrent conversion and reused;
layers of a manifest served whole by the manifest cache are counted as ``cache``. Everything but
``miss`` counts as reused.

**Time saved** is measured, not estimated: the engine records what building each layer took when
it was built (``overlaybd_layer_costs``), and a reuse saves exactly that recorded cost. Layers
built before costs were recorded count as 0 s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from overlaybd_provider.hooks.conversion_log import ConversionRow

REUSED = ("hit", "mount", "local", "wait", "cache")


def _layers(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{**layer, "platform": m.get("platform")} for m in report.get("manifests", [])
            for layer in m.get("layers", [])]


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """Counts, sizes, digests and the saved build time of a report — small enough for XCom."""
    layers = _layers(report)
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
        "source_bytes": sum(int(x.get("source_size") or 0) for x in layers),
        "target_bytes": sum(int(x.get("size") or 0) for x in layers),
        "built_source_bytes": sum(int(x.get("bytes_in") or x.get("source_size") or 0) for x in built),
        "reused_bytes": sum(int(x.get("size") or x.get("source_size") or 0) for x in reused),
        "built_seconds": round(sum(float(x.get("seconds") or 0.0) for x in built), 3),
        "seconds_saved": round(sum(float(x.get("cost") or 0.0) for x in reused), 3),
        "seconds": round(float(report.get("seconds") or 0.0), 3),
        **_flatten(manifests),
        **_format_fields(report),
    }


def _flatten(manifests: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"flatten": {"source_layers", "layers", "source_bytes", "bytes"}}`` summed over the
    flattened platforms (``--flatten``: the layer-count and size change), else nothing."""
    changes = [m["flatten"] for m in manifests if m.get("flatten")]
    if not changes:
        return {}
    return {"flatten": {k: sum(int(c.get(k) or 0) for c in changes)
                        for k in ("source_layers", "layers", "source_bytes", "bytes")}}


def _format_fields(report: Mapping[str, Any]) -> dict[str, Any]:
    """``format`` and, for TurboOCI, the bytes saved (source layers vs the meta blobs); output
    ``both`` adds the TurboOCI image under ``turbo``."""
    out: dict[str, Any] = {"format": report.get("format") or "overlaybd"}
    savings = report.get("savings")
    if savings:
        out.update(meta_bytes=int(savings.get("meta_bytes") or 0), bytes_saved=int(savings.get("bytes_saved") or 0))
    turbo = report.get("turbo")
    if turbo:
        inner = summarize(turbo)
        out["format"] = "both"
        out["turbo"] = {k: inner.get(k) for k in ("target", "target_digest", "format", "layers_built",
                                                  "layers_reused", "source_bytes", "meta_bytes", "bytes_saved")}
    return out


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
        built_source_bytes=int(summary.get("built_source_bytes") or 0),
        built_seconds=float(summary.get("built_seconds") or 0.0),
        seconds=float(seconds if seconds is not None else summary.get("seconds") or 0.0),
        seconds_saved=round(float(saved or 0.0), 3),
        manifest_cached=bool(summary.get("manifests"))
        and summary.get("manifests_cached") == summary.get("manifests"),
        dag_id=dag_id,
        run_id=run_id,
        details={"dedup": dict(summary.get("dedup") or {}),
                 **{k: dict(summary[k]) for k in ("flatten", "verify") if summary.get(k)},
                 **{k: summary[k] for k in ("format", "meta_bytes", "bytes_saved", "turbo") if k in summary}},
        task_id=task_id,
        map_index=map_index,
        try_number=try_number,
    )
