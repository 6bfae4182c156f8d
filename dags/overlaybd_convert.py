"""Convert one image to overlaybd, on demand: Trigger DAG → fill the form → run.

No schedule. The form (DAG params) carries the source and destination references, platforms,
overlaybd options and the connection ids; the whole conversion runs in one task (retries resume
in the same staging directory). Parsing this file does nothing but build the DAG object.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag
from overlaybd_provider.operators import OverlaybdConvertOperator

PARAMS = {
    "source": Param(
        "",
        type="string",
        minLength=1,
        title="Source image",
        description="registry/repo:tag, registry/repo@sha256:..., or oci:/path/to/layout[:tag]",
    ),
    "destination": Param(
        "",
        type="string",
        minLength=1,
        title="Destination image",
        description="Where the overlaybd image goes (same forms as the source).",
    ),
    "platforms": Param(
        [],
        type="array",
        items={"type": "string", "pattern": "^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"},
        title="Platforms",
        description="os/arch[/variant], one per line; empty = every platform of the source.",
    ),
    "algorithm": Param("lz4", type="string", enum=["lz4", "zstd"], title="Compression"),
    "block_size_kb": Param(4, type="integer", enum=[4, 8, 16, 32], title="ZFile block size (KiB)"),
    "vsize_gb": Param(64, type="integer", minimum=1, maximum=16384, title="Virtual disk size (GiB)"),
    "oci": Param(
        False, type="boolean", title="OCI media types", description="Emit OCI instead of Docker media types."
    ),
    "referrer": Param(
        False,
        type="boolean",
        title="Referrer",
        description="Attach the result as a referrer of the source (implies OCI).",
    ),
    "src_registry_conn_id": Param(
        "",
        type=["string", "null"],
        title="Source registry connection",
        description="oci_registry connection id; empty = anonymous.",
    ),
    "dst_registry_conn_id": Param(
        "",
        type=["string", "null"],
        title="Destination registry connection",
        description="oci_registry connection id; empty = anonymous.",
    ),
    "dedup_conn_id": Param(
        "overlaybd_dedup",
        type="string",
        title="Dedup database connection",
        description="mysql or sqlite connection id; when 'overlaybd_dedup' is not defined an embedded SQLite is used.",
    ),
}


@dag(
    dag_id="overlaybd_convert",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    render_template_as_native_obj=True,
    params=PARAMS,
    tags=["overlaybd"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
)
def overlaybd_convert():
    OverlaybdConvertOperator(
        task_id="convert",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        platforms="{{ params.platforms }}",
        algorithm="{{ params.algorithm }}",
        block_size_kb="{{ params.block_size_kb }}",
        vsize_gb="{{ params.vsize_gb }}",
        oci="{{ params.oci }}",
        referrer="{{ params.referrer }}",
        src_registry_conn_id="{{ params.src_registry_conn_id }}",
        dst_registry_conn_id="{{ params.dst_registry_conn_id }}",
        dedup_conn_id="{{ params.dedup_conn_id }}",
    )


overlaybd_convert()
