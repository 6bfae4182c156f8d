"""The ``[overlaybd]`` settings the operators read on the worker (provider config, see
get_provider_info): where a task works, this worker's blob cache, the queue of the heavy stages.

Each worker has its own work directory and blob cache under its own ``AIRFLOW_HOME``: nothing is
shared between workers (stages hand over through XCom and the destination registry).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_QUEUE = "overlaybd"
DEFAULT_CACHE_GB = 20


def conf_get(key: str) -> str | None:
    """``[overlaybd] key`` (environment ``AIRFLOW__OVERLAYBD__KEY`` included), None when unset."""
    try:
        from airflow.sdk.configuration import conf

        value = conf.get("overlaybd", key, fallback=None)
    except Exception:
        value = os.environ.get(f"AIRFLOW__OVERLAYBD__{key.upper()}")
    return value or None


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path("~/airflow").expanduser())


def work_dir() -> Path:
    """``[overlaybd] work_dir``, else ``$AIRFLOW_HOME/overlaybd/work``: per-task scratch space."""
    return Path(conf_get("work_dir") or airflow_home() / "overlaybd" / "work").expanduser()


def blob_cache():
    """This worker's blob cache (``[overlaybd] blob_cache``, default ``$AIRFLOW_HOME/overlaybd/blobs``,
    bounded by ``blob_cache_size_gb``, 0 disables it)."""
    from overlaybd_provider.engine.transfer.blobcache import BlobCache

    size = conf_get("blob_cache_size_gb")
    gigabytes = float(size) if size else DEFAULT_CACHE_GB
    if gigabytes <= 0:
        return None
    root = Path(conf_get("blob_cache") or airflow_home() / "overlaybd" / "blobs").expanduser()
    return BlobCache(root, int(gigabytes * (1 << 30)))


def heavy_queue() -> str:
    """Queue of the heavy stages (build, the one-task convert): ``[overlaybd] queue``, default
    ``overlaybd``, so a site can give conversion its own Celery workers (``default`` keeps them
    with everything else). Read when the DAG is parsed: a config read, no I/O."""
    return conf_get("queue") or DEFAULT_QUEUE
