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
                   help="lower layer (blob, ZFile or LSMT); repeat, bottom first")
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


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.engine.options import check_block_size
    from overlaybd_provider.ext4.apply import apply_layer

    if not args.raw:
        check_block_size(args.bs)
    res = apply_layer(args.lower, args.layer, args.output, vsize_gb=args.vsize, algorithm=args.algorithm,
                      block_size_kb=args.bs, raw=args.raw, uuid=args.uuid, parent_uuid=args.parent_uuid,
                      mkfs_options=args.mkfs_options)
    if args.json:
        print(json.dumps(res.__dict__, sort_keys=True))
    else:
        print(f"{args.output}: {res.digest} {res.size} bytes, {res.blocks_written} blocks, "
              f"{res.entries} entries ({res.files} files), {res.tar_bytes} tar bytes, {res.seconds:.2f}s")
    return 0
