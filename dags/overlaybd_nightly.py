"""Convert a list of images to overlaybd every day, one mapped task group per image.

**The list** comes from the Airflow Variable ``overlaybd_images`` (YAML or JSON) or, when it is not
set, from ``overlaybd_images.yaml`` beside this file; it is read by the first task, never at parse
time. An entry may name its own registry connections and format options; without a connection,
the one named after the registry host (``oci_registry_<host>``) is used if it exists.

**Each image** runs four stages, which may land on different workers (they share no disk):

1. ``pull`` — resolves the source, checks the destination accepts our pushes, asks the dedup
   database what is already converted. Fails at once on a missing image or refused credentials.
2. ``build`` — the heavy stage (queue ``[overlaybd] queue``, default ``overlaybd``): applies each
   new layer onto ext4, compresses it, checks it against the image config, pushes the blob and
   records it. Concurrent runs never build the same layer twice. A retry keeps what was pushed.
3. ``push`` — writes configs, manifests, the index, and the tag.
4. ``verify`` — (param ``verify``, on by default) checks the pushed image against its source with
   ``overlaybd verify``; a difference fails the task at once, not retried, with the summary line,
   and the image is not recorded. Off: the conversion passes straight on.
5. ``record`` — writes the manifests into the dedup database and the conversion onto the overlaybd
   page (Browse → overlaybd).

On call: a task that failed after one try has a permanent error (its log says which: auth, not
found, a corrupt source...): fix the input and clear the task. Transient errors (registry down,
database connection lost) retry with backoff. Images converted before come from the manifest
cache, so reruns and backfills over them finish in seconds.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, Variable, dag, get_current_context, task, task_group
from overlaybd_provider.operators import (
    Ext4LayerBuildOperator,
    OverlaybdPullOperator,
    OverlaybdPushOperator,
    OverlaybdRecordOperator,
    OverlaybdVerifyStageOperator,
)

IMAGES_FILE = Path(__file__).with_name("overlaybd_images.yaml")
POOL = os.environ.get("OVERLAYBD_POOL", "default_pool")
HEAVY = {"pool": POOL, "max_active_tis_per_dagrun": int(os.environ.get("OVERLAYBD_MAX_PARALLEL", "2"))}
LABEL = {"map_index_template": "{{ image }}"}
RUN_PARAMS = ("algorithm", "block_size_kb", "vsize_gb", "oci", "src_registry_conn_id", "dst_registry_conn_id",
              "flatten", "format")


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
        "algorithm": Param("lz4", type="string", enum=["lz4", "zstd"], title="Compression",
                           description="ZFile compression of the layer blobs (entries may override it)."),
        "block_size_kb": Param(4, type="integer", enum=[4, 8, 16, 32], title="ZFile block size (KiB)",
                               description="Larger blocks compress better, smaller ones read faster."),
        "vsize_gb": Param(64, type="integer", minimum=1, maximum=16383, title="Virtual disk size (GiB)",
                          description="Size of the ext4 filesystem of new base layers."),
        "oci": Param(False, type="boolean", title="OCI media types",
                     description="Emit OCI instead of Docker media types."),
        "format": Param("overlaybd", type="string", enum=["overlaybd", "turbo-oci", "both"], title="Output format",
                        description="overlaybd (native), turbo-oci (TurboOCIv1 meta layers over the original "
                        "layers) or both (an entry then names its turbo_destination); entries may override it."),
        "src_registry_conn_id": Param("", type=["string", "null"], title="Source registry connection",
                                      description="Default oci_registry connection for sources; empty = "
                                      "oci_registry_<host> if defined, else anonymous."),
        "dst_registry_conn_id": Param("", type=["string", "null"], title="Destination registry connection",
                                      description="Default oci_registry connection for destinations."),
        "dedup_conn_id": Param("overlaybd_dedup", type="string", title="Dedup database connection",
                               description="mysql or sqlite connection; embedded SQLite when undefined."),
        "flatten": Param(False, type="boolean", title="Flatten",
                         description="All layers of each platform in one overlaybd layer (entries may override it)."),
        "verify": Param(True, type="boolean", title="Verify",
                        description="Check each pushed image against its source before it is recorded; a "
                        "difference fails that image's verify task at once."),
    },
)
def overlaybd_nightly():
    @task
    def list_images() -> list[dict]:
        from overlaybd_provider.operators.image_list import parse_image_list

        params = get_current_context()["params"]
        defaults = {k: params.get(k) for k in RUN_PARAMS}
        text = Variable.get("overlaybd_images", default=None)
        if text:
            return parse_image_list(text, origin="Variable overlaybd_images", defaults=defaults)
        return parse_image_list(IMAGES_FILE.read_text(), origin=str(IMAGES_FILE), defaults=defaults)

    @task_group(group_id="convert")
    def convert(source: str, destination: str, platforms: list[str], src_registry_conn_id: str | None,
                dst_registry_conn_id: str | None, algorithm: str, block_size_kb: int, vsize_gb: int,
                fstype: str | None, oci: bool, flatten: bool = False, format: str | None = None,
                turbo_destination: str | None = None):
        pull = OverlaybdPullOperator(
            task_id="pull",
            source=source,
            destination=destination,
            platforms=platforms,
            algorithm=algorithm,
            block_size_kb=block_size_kb,
            vsize_gb=vsize_gb,
            fstype=fstype,
            oci=oci,
            flatten=flatten,
            format=format,
            turbo_destination=turbo_destination,
            src_registry_conn_id=src_registry_conn_id,
            dst_registry_conn_id=dst_registry_conn_id,
            dedup_conn_id="{{ params.dedup_conn_id }}",
            **LABEL,
        )
        build = Ext4LayerBuildOperator(task_id="build", conversion=pull.output, **HEAVY, **LABEL)
        push = OverlaybdPushOperator(task_id="push", conversion=build.output, **LABEL)
        verify = OverlaybdVerifyStageOperator(task_id="verify", conversion=push.output, enabled="{{ params.verify }}",
                                              **LABEL)
        OverlaybdRecordOperator(task_id="record", conversion=verify.output, **LABEL)

    convert.expand_kwargs(list_images())


overlaybd_nightly()
