"""Convert a list of images to overlaybd every day, one mapped task group per image.

The list comes from the Airflow Variable ``overlaybd_images`` (YAML or JSON) or, when it is not
set, from ``overlaybd_images.yaml`` beside this file; it is read by the first task, never at parse
time. Each image runs pull → build → compress → push → record; build and compress are the heavy
stages and are limited per run (``max_active_tis_per_dagrun``) and can be put in a pool
(``OVERLAYBD_POOL``). Images converted before are found in the dedup manifest cache, so reruns and
backfills over them finish in seconds.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, Variable, dag, task, task_group
from overlaybd_provider.operators import (
    Ext4LayerBuildOperator,
    OverlaybdPullOperator,
    OverlaybdPushOperator,
    OverlaybdRecordOperator,
    ZFileCompressOperator,
)

IMAGES_FILE = Path(__file__).with_name("overlaybd_images.yaml")
POOL = os.environ.get("OVERLAYBD_POOL", "default_pool")
HEAVY = {"pool": POOL, "max_active_tis_per_dagrun": int(os.environ.get("OVERLAYBD_MAX_PARALLEL", "2"))}
LABEL = {"map_index_template": "{{ image }}"}


@dag(
    dag_id="overlaybd_nightly",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=8,
    render_template_as_native_obj=True,
    tags=["overlaybd"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0},
    params={
        "algorithm": Param("lz4", type="string", enum=["lz4", "zstd"]),
        "block_size_kb": Param(4, type="integer", enum=[4, 8, 16, 32, 64]),
        "vsize_gb": Param(64, type="integer", minimum=1, maximum=16384),
        "oci": Param(False, type="boolean"),
        "src_registry_conn_id": Param("", type=["string", "null"]),
        "dst_registry_conn_id": Param("", type=["string", "null"]),
        "dedup_conn_id": Param("overlaybd_dedup", type="string"),
    },
)
def overlaybd_nightly():
    @task
    def list_images() -> list[dict]:
        from overlaybd_provider.operators.image_list import parse_image_list

        text = Variable.get("overlaybd_images", default=None)
        if text:
            return parse_image_list(text, origin="Variable overlaybd_images")
        return parse_image_list(IMAGES_FILE.read_text(), origin=str(IMAGES_FILE))

    @task_group(group_id="convert")
    def convert(source: str, destination: str, platforms: list[str]):
        pull = OverlaybdPullOperator(
            task_id="pull",
            source=source,
            destination=destination,
            platforms=platforms,
            algorithm="{{ params.algorithm }}",
            block_size_kb="{{ params.block_size_kb }}",
            vsize_gb="{{ params.vsize_gb }}",
            oci="{{ params.oci }}",
            src_registry_conn_id="{{ params.src_registry_conn_id }}",
            dst_registry_conn_id="{{ params.dst_registry_conn_id }}",
            dedup_conn_id="{{ params.dedup_conn_id }}",
            **LABEL,
        )
        build = Ext4LayerBuildOperator(task_id="build", staging=pull.output, **HEAVY, **LABEL)
        compress = ZFileCompressOperator(task_id="compress", staging=build.output, **HEAVY, **LABEL)
        push = OverlaybdPushOperator(
            task_id="push",
            staging=compress.output,
            dst_registry_conn_id="{{ params.dst_registry_conn_id }}",
            **LABEL,
        )
        OverlaybdRecordOperator(
            task_id="record", staging=push.output, dedup_conn_id="{{ params.dedup_conn_id }}", **LABEL
        )

    convert.expand_kwargs(list_images())


overlaybd_nightly()
