"""``overlaybd convert SRC DST`` (alias ``obdconv``): convert an image to overlaybd.

Flags follow upstream's userspace ``convertor`` (image.md §1) plus registry transport flags
shared with every sub-command (``cli.registry_args``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from overlaybd_provider.engine.options import (
    ALGORITHMS,
    ConvertOptions,
    OptionsError,
    check_turbo_fstype,
    parse_fstype,
)

if TYPE_CHECKING:
    from overlaybd_provider.engine.report import ConvertReport

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from overlaybd_provider.cli.registry_args import add_registry_arguments

    p = subparsers.add_parser(
        "convert",
        help="convert an OCI/Docker image to overlaybd and push it",
        description="Convert SRC (registry reference or oci:DIR[:TAG]) into an overlaybd image at DST. "
        "Multi-platform sources become an index of converted manifests.",
    )
    p.add_argument("source", metavar="SRC", help="source image (NAME[:TAG|@DIGEST] or oci:DIR[:TAG])")
    p.add_argument("target", metavar="DST", help="target image (NAME[:TAG] or oci:DIR[:TAG])")
    fmt = p.add_argument_group("layer format")
    fmt.add_argument("--algorithm", choices=ALGORITHMS, default="lz4", help="ZFile compression (default lz4)")
    fmt.add_argument("--bs", type=int, default=4, metavar="KB",
                     help="ZFile block size in KiB: 4, 8, 16 or 32 (default 4)")
    fmt.add_argument("--vsize", type=int, default=64, metavar="GB", help="virtual block device size (default 64)")
    fmt.add_argument("--fstype", default="ext4", metavar="TYPE[;MOUNT_OPTS[;MKFS_OPTS]]",
                     help="filesystem (ext4 only); mkfs options -N, -i, -m are supported")
    fmt.add_argument("--turbo-oci", action="store_true",
                     help="write a TurboOCIv1 image at DST: per layer an ext4 meta blob whose file data is read "
                     "from the original (gzip or tar) layer, which is mounted or copied into DST (a zstd "
                     "layer gets a native overlaybd layer)")
    fmt.add_argument("--turbo-oci-destination", metavar="DST2",
                     help="also write the TurboOCIv1 image at DST2, next to the native one at DST, from one "
                     "download and one tar parse per layer")
    img = p.add_argument_group("image")
    img.add_argument("--oci", action="store_true", help="OCI media types instead of Docker's")
    img.add_argument("--referrer", action="store_true",
                     help="add subject and artifactType pointing at the source (implies --oci)")
    img.add_argument("--flatten", action="store_true",
                     help="all layers of each platform in one overlaybd layer (faster start for many layers)")
    img.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                     help="convert only these platforms of an index (repeatable or comma list; default all)")
    db = p.add_argument_group("dedup database")
    db.add_argument("--dbstr", "--db-str", dest="dbstr", metavar="DSN",
                    help="MySQL dedup database, go-sql-driver form user:password@tcp(host:port)/db")
    db.add_argument("--db-url", metavar="URL",
                    help="dedup database mysql://user:pw@host:port/db or sqlite:///PATH; 'none' disables "
                    "(default: SQLite at $OVERLAYBD_DEDUP_DB or ~/.local/share/overlaybd/dedup.db)")
    run_group = p.add_argument_group("run")
    run_group.add_argument("--concurrency-limit", type=int, default=4, metavar="N",
                           help="platforms converted in parallel (default 4)")
    run_group.add_argument("--work-dir", type=Path, metavar="DIR",
                           help="working directory (kept state makes an interrupted run resumable)")
    run_group.add_argument("--blob-cache", metavar="DIR|none",
                           help="local cache of converted blobs, so reused lowers built or fetched on this "
                           "machine are not downloaded again (default $XDG_CACHE_HOME/overlaybd/blobs)")
    run_group.add_argument("--blob-cache-size", type=float, default=20.0, metavar="GB",
                           help="blob cache bound, least recently used entries evicted (default 20)")
    run_group.add_argument("--reserve", action="store_true", help="keep the working files")
    run_group.add_argument("--no-upload", action="store_true", help="convert but push nothing")
    run_group.add_argument("--dump-manifest", action="store_true",
                           help="print the converted index/manifests/configs JSON on stdout")
    run_group.add_argument("--output-json", type=Path, metavar="FILE", help="write the conversion report here")
    run_group.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_registry_arguments(p)
    p.set_defaults(func=run)


def _output(args: argparse.Namespace) -> str:
    if args.turbo_oci and args.turbo_oci_destination:
        raise OptionsError("--turbo-oci writes only TurboOCI at DST; --turbo-oci-destination DST2 writes native at DST "
                           "and TurboOCI at DST2: use one of them")
    return "both" if args.turbo_oci_destination else "turbo-oci" if args.turbo_oci else "overlaybd"


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    output = _output(args)
    check_turbo_fstype(args.fstype, output)
    return ConvertOptions(
        output=output, turbo_destination=args.turbo_oci_destination,
        algorithm=args.algorithm, block_size_kb=args.bs, vsize_gb=args.vsize, fstype=parse_fstype(args.fstype),
        oci=args.oci, referrer=args.referrer, platforms=tuple(args.platform),
        concurrency_limit=args.concurrency_limit, work_dir=args.work_dir, reserve=args.reserve,
        no_upload=args.no_upload, dump_manifest=args.dump_manifest, output_json=args.output_json,
        blob_cache=None if args.blob_cache in (None, "none") else Path(args.blob_cache),
        blob_cache_max_bytes=0 if args.blob_cache == "none" else int(args.blob_cache_size * (1 << 30)),
        flatten=args.flatten,
    )


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.cli.registry_args import registry_options_from_args
    from overlaybd_provider.engine.convert import convert_image
    from overlaybd_provider.engine.dedup import open_dedup

    options = options_from_args(args)
    registry = registry_options_from_args(args)
    dedup = None
    if (args.db_url or "").lower() != "none" and not options.no_upload:
        dedup = open_dedup(args.db_url, dbstr=args.dbstr)
        log.debug("dedup database: %s", dedup.describe())
    try:
        report = convert_image(args.source, args.target, options, src_registry=registry,
                               dst_registry=registry, dedup=dedup)
    finally:
        if dedup is not None:
            dedup.close()
    if options.output_json is not None:
        from overlaybd_provider.cli.atomic import atomic_output

        with atomic_output(options.output_json) as f:
            f.write(report.dumps().encode())
    if options.dump_manifest:
        for digest, text in report.documents.items():
            sys.stdout.write(json.dumps({"digest": digest, "document": json.loads(text)}) + "\n")
    _log_flatten(report)
    print(report.target["digest"])
    if report.turbo is not None:
        print(report.turbo["target"]["digest"])
    return 0


def _log_flatten(report: ConvertReport) -> None:
    """One stderr line per flattened platform: the layer-count and size change."""
    from overlaybd_provider.engine.report import describe_flatten

    for manifest in report.manifests:
        if manifest.flatten:
            log.info("[%s] %s", manifest.platform or "image", describe_flatten(manifest.flatten))
