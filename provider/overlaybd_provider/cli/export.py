"""``overlaybd export OUT.raw BLOB [BLOB ...]``: the merged block device of a layer stack."""

from __future__ import annotations

import argparse
import contextlib
import logging

from .atomic import atomic_output

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the merged block device of layers (bottom first) to a sparse raw file",
        description="Stack overlaybd layers (bottom first; tar/ZFile/LSMT in any nesting) and write "
        "the virtual block device to a sparse raw file. Unmapped ranges stay holes.",
    )
    p.add_argument("output", metavar="OUT.raw", help="raw image to write (replaced atomically)")
    p.add_argument("blobs", metavar="BLOB", nargs="+",
                   help="layer files, bottom layer first; a TurboOCIv1 layer is turbo:META_BLOB,SOURCE_BLOB "
                   "(the turboOCIv1.tar.gz and the original layer blob it reads file data from)")
    p.add_argument(
        "--ignore-uuid-chain", "--force", dest="ignore_uuid_chain", action="store_true",
        help="stack layers even if a parent_uuid is not the uuid of the layer below (wrong order, "
        "or an upper layer without its lower)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.formats.errors import StackError
    from overlaybd_provider.formats.export import export_raw
    from overlaybd_provider.formats.stack import LayerStack
    from overlaybd_provider.formats.turbo import open_layer_spec

    with contextlib.ExitStack() as stack:
        layers = [stack.enter_context(open_layer_spec(path)) for path in args.blobs]
        try:
            merged = LayerStack([layer.lsmt for layer in layers], check_chain=not args.ignore_uuid_chain)
        except StackError as exc:
            if args.ignore_uuid_chain:
                raise
            raise StackError(f"{exc} (--force stacks them anyway)") from None
        with atomic_output(args.output) as out:
            stats = export_raw(merged, out)
    log.debug(
        "%s: %d bytes virtual, %d extents, %d mapped bytes", args.output, stats.virtual_size,
        stats.extents, stats.mapped_bytes,
    )
    return 0
