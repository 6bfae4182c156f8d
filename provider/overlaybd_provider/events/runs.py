"""Create a DAG run from inside the Airflow API server (the plugin's process).

Uses ``airflow.api.common.trigger_dag.trigger_dag`` — the function Airflow's own CLI
(``airflow dags trigger``) goes through: it loads the latest serialized DAG from the metadata DB,
validates the conf against the DAG's params and inserts a queued run in one transaction, with the
API server's own database session. No HTTP round trip to ourselves and no service credentials to
store; the webhook token is the only secret. A run id that exists already (a repeated or
concurrent notification: the unique ``(dag_id, run_id)`` constraint decides) is reported as
``exists``, which callers treat as success.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

CREATED = "created"
EXISTS = "exists"
TRIGGERED_BY_USER = "overlaybd-webhook"


class RunRejected(Exception):
    """Airflow refused the run (unknown or broken DAG, conf the DAG's params reject)."""


def create_run(dag_id: str, run_id: str, conf: dict[str, Any], note: str | None = None) -> str:
    """Queue ``dag_id`` run ``run_id`` with ``conf``: ``"created"`` or ``"exists"``."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagNotFound, DagRunAlreadyExists
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy.exc import IntegrityError

    try:
        trigger_dag(
            dag_id,
            run_id=run_id,
            conf=conf,
            logical_date=None,
            triggered_by=DagRunTriggeredByType.REST_API,
            triggering_user_name=TRIGGERED_BY_USER,
            note=note,
        )
    except DagRunAlreadyExists:
        return EXISTS
    except IntegrityError:  # lost a race with another worker inserting the same run id
        return EXISTS
    except DagNotFound as exc:
        raise RunRejected(f"DAG {dag_id!r} not found (not parsed yet?): {exc}") from None
    except ValueError as exc:  # ParamValidationError is one
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunRejected(f"DAG {dag_id!r} rejected the conf: {first}") from None
    return CREATED


def run_exists(dag_id: str, run_id: str) -> bool:
    from airflow.models import DagRun

    return DagRun.find_duplicate(dag_id=dag_id, run_id=run_id) is not None
