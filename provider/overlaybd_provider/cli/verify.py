"""``overlaybd verify SRC DST``: prove that a converted overlaybd image holds its source's files.

Exit status 0 when the image's filesystem is consistent and its tree equals the OCI semantics
of the source layers, 1 with a summary line and the first differences otherwise, 2 on errors
(one line). ``--json`` prints the full report. docs/verify.md explains the checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from overlaybd_provider.cli.registry_args import add_registry_arguments

    p = subparsers.add_parser(
        "verify",
        help="check a converted overlaybd image against its source image",
        description="Open the overlaybd image DST with our reader, check its ext4 (structural checks, and "
        "e2fsck -fn when installed) and compare its tree with the OCI layer semantics of SRC: paths, types, "
        "modes, owners, sizes, content sha256, symlinks, hard links, xattrs, devices, mtimes. Exit 0 when "
        "identical, 1 with the differences, 2 on errors.",
    )
    p.add_argument("source", metavar="SRC", help="source image (NAME[:TAG|@DIGEST] or oci:DIR[:TAG])")
    p.add_argument("target", metavar="DST", help="converted overlaybd image (NAME[:TAG|@DIGEST] or oci:DIR[:TAG])")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="verify only these platforms of an index (repeatable or comma list; default all)")
    p.add_argument("--fsck", choices=("auto", "always", "never"), default="auto",
                   help="run e2fsck -fn on a metadata-only export: when installed (auto, default), "
                   "always (error if missing) or never; the structural checks always run")
    p.add_argument("--sample", type=_fraction, default=1.0, metavar="FRACTION",
                   help="hash the content of this fraction of the files, chosen by a hash of the path "
                   "(reproducible; default 1: every file)")
    p.add_argument("--max-diffs", type=int, default=20, metavar="N",
                   help="differences listed after the summary line (default 20)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="where downloaded layers and the e2fsck export go (default: the temp directory)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_registry_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.cli.registry_args import registry_options_from_args
    from overlaybd_provider.verify import VerifyOptions, verify_image

    platforms = tuple(p.strip() for item in args.platform for p in item.split(",") if p.strip())
    options = VerifyOptions(platforms=platforms, fsck=args.fsck, sample=args.sample, work_dir=args.work_dir)
    registry = registry_options_from_args(args)
    report = verify_image(args.source, args.target, options, src_registry=registry, dst_registry=registry)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        for line in report.lines(args.max_diffs):
            print(line)
    return report.exit_code
