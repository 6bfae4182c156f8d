"""``overlaybd apply-layer [--lower BLOB ...] LAYER.tar OUT.blob``: one OCI layer -> one overlaybd layer."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "apply-layer",
        help="apply an OCI layer tar (plain/gzip/zstd) onto lower layers and write the new layer",
        description="Build the overlaybd layer holding exactly the blocks an OCI layer tar changes in "
        "the ext4 filesystem of the lower layers (none: format a new filesystem first). Output is "
        "a tar-wrapped ZFile blob like overlaybd-commit -z -t, or a sealed LSMT with --raw.",
    )
    p.add_argument("layer", metavar="LAYER.tar", help="OCI layer tar (plain, gzip or zstd)")
    p.add_argument("output", metavar="OUT.blob", help="layer file to write (replaced atomically)")
    p.add_argument("--lower", action="append", default=[], metavar="BLOB",
                   help="lower layer (blob, ZFile or LSMT, or turbo:META_BLOB,SOURCE_BLOB for a TurboOCIv1 "
                   "layer); repeat, bottom first")
    p.add_argument("--turbo-oci", action="store_true",
                   help="write a TurboOCIv1 meta layer (turboOCIv1.tar.gz): ext4 metadata only, file data "
                   "read from LAYER (a gzip or plain tar blob, kept as it is in the registry)")
    p.add_argument("--fstype", choices=("ext4", "erofs"), default="ext4", help="filesystem (ext4)")
    p.add_argument("--source-media-type", metavar="TYPE",
                   help="with --turbo-oci: media type of LAYER in its manifest (for the target-media-type "
                   "annotation; Docker types stay Docker)")
    p.add_argument("--expected-digest", metavar="sha256:HEX",
                   help="with --turbo-oci: fail unless LAYER has this digest")
    p.add_argument("--diff-id", metavar="sha256:HEX",
                   help="fail unless the uncompressed tar has this digest (the image config's diff_id)")
    p.add_argument("--vsize", type=int, default=64, metavar="GB",
                   help="virtual device size in GiB when formatting (default 64)")
    p.add_argument("--algorithm", choices=("lz4", "zstd"), default="lz4", help="ZFile compression")
    p.add_argument("--bs", type=int, default=4, metavar="KB",
                   help="ZFile block size in KiB: 4, 8, 16 or 32 (default 4)")
    p.add_argument("--raw", action="store_true", help="write the sealed LSMT without ZFile/tar")
    p.add_argument("--uuid", help="LSMT uuid of the new layer")
    p.add_argument("--parent-uuid", help="LSMT parent uuid")
    p.add_argument("--mkfs-options", metavar="OPTS",
                   help="mkfs knobs for the bottom layer: '-i RATIO -N INODES -m PERCENT'")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p.set_defaults(func=run)


def _run_turbo(args: argparse.Namespace) -> int:
    from overlaybd_provider.ext4.turbo import apply_turbo_layer

    res = apply_turbo_layer(args.lower, args.layer, args.output, source_media_type=args.source_media_type,
                            expected_digest=args.expected_digest, diff_id=args.diff_id, vsize_gb=args.vsize,
                            fstype=args.fstype,
                            uuid=args.uuid, parent_uuid=args.parent_uuid, mkfs_options=args.mkfs_options)
    if args.json:
        print(json.dumps(res.as_dict(), sort_keys=True))
        return 0
    gz = f", gzip index {res.gzip_spans} spans ({res.gzip_index_size} bytes)" if res.source_kind == "gzip" else ""
    print(f"{args.output}: {res.digest} {res.size} bytes, diff_id {res.diff_id}, {res.entries} entries "
          f"({res.files} files), fs meta {res.fs_meta_size} bytes{gz}, {res.seconds:.2f}s")
    for key, value in res.annotations.items():
        print(f"  {key}: {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.engine.options import check_block_size
    from overlaybd_provider.ext4.apply import apply_layer

    if args.turbo_oci:
        return _run_turbo(args)
    if args.fstype != "ext4":
        from overlaybd_provider.errors import OverlaybdError

        raise OverlaybdError(f"apply-layer writes ext4 layers; --fstype {args.fstype} is not supported")

    if not args.raw:
        check_block_size(args.bs)
    res = apply_layer(args.lower, args.layer, args.output, vsize_gb=args.vsize, algorithm=args.algorithm,
                      block_size_kb=args.bs, raw=args.raw, uuid=args.uuid, parent_uuid=args.parent_uuid,
                      mkfs_options=args.mkfs_options, diff_id=args.diff_id)
    if args.json:
        print(json.dumps(res.__dict__, sort_keys=True))
    else:
        print(f"{args.output}: {res.digest} {res.size} bytes, {res.blocks_written} blocks, "
              f"{res.entries} entries ({res.files} files), {res.tar_bytes} tar bytes, {res.seconds:.2f}s")
    return 0
