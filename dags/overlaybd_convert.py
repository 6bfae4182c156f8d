"""Convert one image to overlaybd, on demand: Trigger DAG → fill the form → run.

No schedule. The form (DAG params) carries the source and destination references, platforms,
overlaybd options and the connection ids; the whole conversion runs in one task (``convert``, on
the ``[overlaybd] queue``): pull, build each new layer onto ext4 and compress it, push, record.
``flatten`` makes one layer per platform; ``verify`` (off by default here, on in overlaybd_nightly)
checks the pushed image against its source before it is recorded and fails at once on a difference.

On call: a failure after one try is permanent (the log's last line says why: auth refused, image
not found, a corrupt or lying source, invalid options); fix the input and trigger again.
Transient failures (registry down, database connection lost) are retried and resume where the
earlier try stopped. Parsing this file does nothing but build the DAG object.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag
from overlaybd_provider.operators import OverlaybdConvertOperator

# Trigger-form sections; the format params (format, turbo_destination, flatten, verify) go in FORMAT.
IMAGE, FORMAT, CONNECTIONS = "Image", "Output format", "Connections"
PLATFORMS = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm64/v8",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
]
# Connection ids are free text with the usual ids proposed: a list of the defined connections
# would need a metadata-DB query at parse time, which the DAG processor does not allow (and it
# would go stale between parses). A wrong id fails the task at once with a one-line error.
CONNECTIONS_MD = "[Admin → Connections](connections)"

PARAMS = {
    "source": Param(
        "",
        type="string",
        minLength=1,
        title="Source image",
        description="registry/repo:tag, registry/repo@sha256:..., or oci:/path/to/layout[:tag]",
        section=IMAGE,
    ),
    "destination": Param(
        "",
        type="string",
        minLength=1,
        title="Destination image",
        description="Where the overlaybd image goes (same forms as the source).",
        section=IMAGE,
    ),
    "platforms": Param(
        [],
        type=["array", "null"],
        items={"type": "string", "pattern": "^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"},
        examples=PLATFORMS,
        title="Platforms",
        description="Platforms of a multi-platform source to convert; none selected = all of them. "
        "Over the REST API any os/arch[/variant] is accepted.",
        section=IMAGE,
    ),
    "algorithm": Param(
        "lz4",
        type="string",
        enum=["lz4", "zstd"],
        values_display={"lz4": "LZ4 (fastest to read)", "zstd": "Zstandard (smaller blobs)"},
        title="Compression",
        description="How ZFile compresses each block: LZ4 reads fastest, Zstandard makes smaller layers.",
        section=FORMAT,
    ),
    "block_size_kb": Param(
        4,
        type="integer",
        enum=[4, 8, 16, 32],
        values_display={"4": "4 KiB (default)", "8": "8 KiB", "16": "16 KiB", "32": "32 KiB"},
        title="ZFile block size",
        description="Compression unit. Larger blocks compress better but every random read "
        "decompresses a whole block; 4 KiB matches the ext4 block size.",
        section=FORMAT,
    ),
    "vsize_gb": Param(
        64,
        type="integer",
        minimum=1,
        maximum=16383,
        title="Virtual disk size (GiB)",
        description="Size of the block device the container sees (sparse: costs nothing until "
        "written). Must hold the image plus what containers write; upstream's default is 64.",
        section=FORMAT,
    ),
    "oci": Param(
        False,
        type="boolean",
        title="OCI media types",
        description="Emit OCI instead of Docker media types.",
        section=FORMAT,
    ),
    "referrer": Param(
        False,
        type="boolean",
        title="Referrer",
        description="Attach the result as a referrer of the source (implies OCI).",
        section=FORMAT,
    ),
    "flatten": Param(
        False,
        type="boolean",
        title="Flatten",
        description="All layers of each platform in one overlaybd layer: faster container start for images "
        "with many layers (the config's history is kept, marked).",
        section=FORMAT,
    ),
    "verify": Param(
        False,
        type="boolean",
        title="Verify",
        description="After the push, check the image against its source (overlaybd verify: e2fsck and "
        "every file's content); a difference fails the task at once. Off by default here (it reads the "
        "whole image again); on by default in overlaybd_nightly.",
        section=FORMAT,
    ),
    "format": Param(
        "overlaybd",
        type="string",
        enum=["overlaybd", "turbo-oci", "both"],
        values_display={"overlaybd": "overlaybd (native)", "turbo-oci": "TurboOCIv1 (meta layers over the original)",
                        "both": "both (native at Destination, TurboOCIv1 at TurboOCI destination)"},
        title="Output format",
        description="TurboOCIv1 keeps the original layers (mounted or copied into the destination) and adds "
        "small ext4 meta layers: lazy loading without storing the image twice. zstd layers get a native layer.",
        section=FORMAT,
    ),
    "turbo_destination": Param(
        "",
        type=["string", "null"],
        title="TurboOCI destination",
        description="With format both: where the TurboOCIv1 image goes (the native one goes to Destination).",
        section=FORMAT,
    ),
    "src_registry_conn_id": Param(
        "",
        type=["string", "null"],
        examples=["oci_registry_default"],
        title="Source registry connection",
        description_md="An `oci_registry` connection id from " + CONNECTIONS_MD + "; empty = anonymous.",
        section=CONNECTIONS,
    ),
    "dst_registry_conn_id": Param(
        "",
        type=["string", "null"],
        examples=["oci_registry_default"],
        title="Destination registry connection",
        description_md="An `oci_registry` connection id from " + CONNECTIONS_MD + "; empty = anonymous.",
        section=CONNECTIONS,
    ),
    "dedup_conn_id": Param(
        "overlaybd_dedup",
        type=["string", "null"],
        examples=["overlaybd_dedup"],
        title="Dedup database connection",
        description_md="A `mysql` or `sqlite` connection id from " + CONNECTIONS_MD + ". When "
        "`overlaybd_dedup` is not defined, an embedded SQLite database is used.",
        section=CONNECTIONS,
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
        flatten="{{ params.flatten }}",
        verify="{{ params.verify }}",
        format="{{ params.format }}",
        turbo_destination="{{ params.turbo_destination }}",
        src_registry_conn_id="{{ params.src_registry_conn_id }}",
        dst_registry_conn_id="{{ params.dst_registry_conn_id }}",
        dedup_conn_id="{{ params.dedup_conn_id }}",
    )


overlaybd_convert()
