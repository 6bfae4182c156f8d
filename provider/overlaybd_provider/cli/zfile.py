"""``overlaybd zfile SRC DST``: (re)compress a layer into a tar-wrapped ZFile blob, or with
``--decompress`` write the plain sealed LSMT. SRC may be in any nesting."""

from __future__ import annotations

import argparse
import json

from overlaybd_provider.errors import OverlaybdError

from .atomic import atomic_output

_COPY = 4 << 20
_ALGORITHMS = ("lz4", "zstd")  # formats.zfile_header.ALGORITHMS, not imported: keeps start-up cheap


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zfile",
        help="compress a layer into a tar-wrapped ZFile blob (or --decompress to a plain LSMT)",
        description="Read a layer (tar/ZFile/LSMT) and write it as overlaybd-commit -z -t would, "
        "or with --decompress as a bare sealed LSMT file.",
    )
    p.add_argument("src", metavar="SRC", help="input layer")
    p.add_argument("dst", metavar="DST", help="output file (replaced atomically)")
    p.add_argument("--decompress", "-x", action="store_true", help="write the plain LSMT instead")
    p.add_argument("--algorithm", choices=_ALGORITHMS, default="lz4", help="compressor (default lz4)")
    p.add_argument(
        "--bs", type=int, default=4, metavar="KB",
        help="block size in KiB: 4, 8, 16 or 32 (default 4)",
    )
    p.add_argument("--level", type=int, default=None, help="zstd level (default 3, like upstream)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.formats.blob import LayerBlobWriter, open_layer

    if args.level is not None and (args.algorithm != "zstd" or not 1 <= args.level <= 22):
        raise OverlaybdError(f"--level {args.level}: only zstd levels 1..22 are supported")
    if not args.decompress:
        from overlaybd_provider.engine.options import check_block_size

        check_block_size(args.bs)
    with open_layer(args.src) as layer, atomic_output(args.dst) as out:
        source = layer.lsmt.source
        if args.decompress:
            for pos in range(0, source.size, _COPY):
                out.write(source.read(pos, min(_COPY, source.size - pos)))
            print(json.dumps({"nesting": ["lsmt"], "size": source.size}))
            return 0
        with LayerBlobWriter(
            out, algorithm=args.algorithm, block_size=args.bs * 1024, level=args.level, name=args.dst
        ) as writer:
            for pos in range(0, source.size, _COPY):
                writer.write(source.read(pos, min(_COPY, source.size - pos)))
            info = writer.close()
    print(json.dumps({"digest": info.digest, "size": info.size, "zfile_size": info.zfile.size}))
    return 0
