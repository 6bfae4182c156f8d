"""Example downstream DAG: runs when an overlaybd image is ready (start a deploy from here).

Scheduled on the asset alias ``overlaybd_converted``, which every overlaybd conversion (the convert
operator, or the push stage of the nightly DAG) emits its image asset ``oci://REGISTRY/REPO:TAG``
through. Conversions that finish before the scheduler looks are handed to one run together. Each
event's extra says what is ready: ``reference``, ``digest`` (of the overlaybd image),
``source`` / ``source_digest``, ``format``, ``platforms``, ``manifests``, ``options``.

To follow one image only, schedule on its asset instead: ``schedule=[Asset("oci://registry:5000/app:1.2-obd")]``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, task
from overlaybd_provider.operators.assets import converted_alias


@dag(
    dag_id="overlaybd_on_converted",
    schedule=[converted_alias()],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["overlaybd", "example"],
    doc_md=__doc__,
)
def overlaybd_on_converted():
    @task
    def announce(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Log every converted image of this run and return them (a deploy would use the digest)."""
        import logging

        log = logging.getLogger("overlaybd.on_converted")
        ready = []
        for event in (triggering_asset_events or {}).get(converted_alias(), []):
            extra = dict(event.extra or {})
            log.info(
                "overlaybd image ready: %s digest=%s source=%s@%s format=%s platforms=%s (from %s/%s)",
                event.asset.uri,
                extra.get("digest"),
                extra.get("source"),
                extra.get("source_digest"),
                extra.get("format"),
                ",".join(extra.get("platforms") or []),
                event.source_dag_id,
                event.source_run_id,
            )
            ready.append({"uri": event.asset.uri, "source_dag_id": event.source_dag_id,
                          "source_run_id": event.source_run_id, **extra})
        return ready

    announce()


overlaybd_on_converted()
