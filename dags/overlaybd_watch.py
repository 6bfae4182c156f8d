"""Convert new tags of registries that send no notifications: tag watchers in the triggerer.

The watch list is read when this file is parsed (watchers are part of the DAG), so it travels
with the DAGs rather than living in a Variable (no metadata-DB read on every parse): the
environment variable ``OVERLAYBD_WATCH`` (YAML or JSON text), else the file ``OVERLAYBD_WATCH_FILE``,
else ``dags/overlaybd_watch.yaml``::

    watches:
      - repository: registry.example.com/team/app
        registry_conn_id: registry_prod
        tags: ["v*"]            # optional globs; exclude_tags too
        poll_interval: 60       # seconds (±20 % jitter; back-off on errors)

Every watched repository is an asset ``oci://REGISTRY/REPO`` with an ``AssetWatcher`` running
:class:`~overlaybd_provider.triggers.tag_watch.OciTagWatchTrigger`. When a tag appears or moves,
this DAG runs: the push rules (Variable ``overlaybd_push_rules``, as for webhooks) decide what is
converted and where, and each conversion is an ``overlaybd_convert`` run with the same
deterministic run id a webhook would use (so nothing is converted twice).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetAny, AssetWatcher, Variable, dag, task
from overlaybd_provider.asset_uri import image_uri
from overlaybd_provider.events.watch import parse_watches
from overlaybd_provider.triggers.tag_watch import OciTagWatchTrigger

WATCH_FILE = Path(__file__).with_name("overlaybd_watch.yaml")


def _watch_list() -> list[dict[str, Any]]:
    text = os.environ.get("OVERLAYBD_WATCH")
    path = Path(os.environ.get("OVERLAYBD_WATCH_FILE") or WATCH_FILE)
    if text is None and path.exists():
        text = path.read_text()
    return parse_watches(text)


def _asset(watch: dict[str, Any]) -> Asset:
    repository = str(watch["repository"])
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", repository)
    trigger = OciTagWatchTrigger(
        repository=repository,
        registry_conn_id=watch.get("registry_conn_id"),
        tags=watch.get("tags"),
        exclude_tags=watch.get("exclude_tags"),
        poll_interval=float(watch.get("poll_interval", 60)),
        max_backoff=float(watch.get("max_backoff", 900)),
        initial=str(watch.get("initial", "baseline")),
        max_tags=int(watch.get("max_tags", 500)),
    )
    uri = image_uri(repository, tag=False)
    return Asset(name=f"overlaybd_watch:{repository}", uri=uri, watchers=[AssetWatcher(name=f"overlaybd_watch_{slug}", trigger=trigger)])


ASSETS = [_asset(w) for w in _watch_list()]
SCHEDULE = None if not ASSETS else ASSETS if len(ASSETS) == 1 else AssetAny(*ASSETS)


@dag(
    dag_id="overlaybd_watch",
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["overlaybd"],
    doc_md=__doc__,
)
def overlaybd_watch():
    @task
    def plan(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """The conversions the new or moved tags call for (rules, loop and manifest checks)."""
        from airflow.sdk.configuration import conf
        from overlaybd_provider.events.intake import check_manifest
        from overlaybd_provider.events.rules import parse_rules
        from overlaybd_provider.events.watch import plan_watch, watch_payloads

        name = conf.get("overlaybd", "push_rules_variable", fallback=None) or "overlaybd_push_rules"
        rules = parse_rules(Variable.get(name, default=None))
        return plan_watch(watch_payloads(triggering_asset_events), rules, inspect=check_manifest)

    TriggerDagRunOperator.partial(
        task_id="convert",
        logical_date=None,  # like webhook runs: identified by the run id, not a date
        skip_when_already_exists=True,
        wait_for_completion=False,
        map_index_template="{{ task.trigger_run_id }}",
    ).expand_kwargs(plan())


overlaybd_watch()
