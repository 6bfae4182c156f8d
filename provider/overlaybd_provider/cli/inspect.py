"""``overlaybd inspect BLOB [--json]``: the structure of one layer file, wrapper by wrapper.

A BLOB argument that is not an existing file is handed to the OCI inspector
(``overlaybd_provider.oci.inspect``), which resolves image references.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import Any

from overlaybd_provider.errors import OverlaybdError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show the tar/ZFile/LSMT structure of a layer file (or inspect an image reference)",
        description="Print the nesting, tar payload, ZFile header/trailer and LSMT fields of a layer "
        "blob. An argument that is not a file is treated as an image reference.",
    )
    p.add_argument("blob", metavar="BLOB",
                   help="layer file (tar, ZFile or LSMT), a TurboOCIv1 meta blob, turbo:META_BLOB,SOURCE_BLOB "
                   "or an image reference")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    try:
        registry_args = importlib.import_module("overlaybd_provider.cli.registry_args")
    except ModuleNotFoundError as exc:
        if exc.name != "overlaybd_provider.cli.registry_args":
            raise
    else:
        registry_args.add_registry_arguments(p)
    p.set_defaults(func=run)


def describe(path: str) -> dict[str, Any]:
    from overlaybd_provider.formats.blob import open_layer

    """Everything ``inspect`` prints, as a JSON-able dict."""
    with open_layer(path) as layer:
        info: dict[str, Any] = {"file": layer.name, "size": layer.size, "nesting": layer.nesting}
        if layer.tar is not None:
            info["tar"] = {
                "member": layer.tar.member_name, "pax": layer.tar.pax,
                "payload_offset": layer.tar.offset, "payload_size": layer.tar.size,
            }
        z = layer.zfile
        if z is not None:
            info["zfile"] = {
                "algorithm": z.algorithm, "block_size": z.block_size, "index_size": z.index_size,
                "original_file_size": z.size, "verify": z.verify,
                "header": z.header.as_dict(), "trailer": z.load_trailer().as_dict(),
            }
        r = layer.lsmt
        info["lsmt"] = {
            "uuid": r.uuid, "parent_uuid": r.parent_uuid, "virtual_size": r.virtual_size,
            "entries": r.entry_count, "zeroed_entries": r.zeroed_count,
            "mapped_bytes": r.mapped_sectors * 512,
            "header": r.header.as_dict(), "trailer": r.trailer.as_dict(),
        }
        return info


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _print_text(info: dict[str, Any], indent: str = "") -> None:
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_text(value, indent + "  ")
        elif isinstance(value, list):
            print(f"{indent}{key}: {' > '.join(map(str, value))}")
        else:
            print(f"{indent}{key}: {value}")


def run(args: argparse.Namespace) -> int:
    from overlaybd_provider.formats.turbo import is_turbo_spec

    if is_turbo_spec(args.blob):
        from overlaybd_provider.formats.turbo import open_layer_spec

        with open_layer_spec(args.blob) as layer:
            info = layer.describe()
    elif os.path.isfile(args.blob) and _is_gzip(args.blob):
        from overlaybd_provider.formats.turbo import describe_meta_blob

        info = describe_meta_blob(args.blob)
    elif not os.path.isfile(args.blob):
        try:
            oci_inspect = importlib.import_module("overlaybd_provider.oci.inspect")
        except ModuleNotFoundError as exc:
            if exc.name != "overlaybd_provider.oci.inspect":
                raise
            raise OverlaybdError(f"{args.blob}: no such file") from None
        return int(oci_inspect.inspect_reference(args) or 0)
    else:
        info = describe(args.blob)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info)
    return 0
