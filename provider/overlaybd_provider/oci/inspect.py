"""``overlaybd inspect REF``: what a registry or OCI-layout reference points at.

The formats side (``cli/inspect.py``) handles files and delegates anything else here. Output is
deterministic: fields in a fixed order, entries in manifest order.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from overlaybd_provider.oci.descriptor import Descriptor
from overlaybd_provider.oci.errors import OciError
from overlaybd_provider.oci.mediatypes import is_image_manifest, is_index
from overlaybd_provider.oci.options import RegistryOptions, options_from_args
from overlaybd_provider.oci.store import ImageStore, open_store

MAX_CONFIG_SIZE = 4 << 20
_REFERENCE_ATTRS = ("reference", "blob", "ref", "target", "image", "path", "file")


def inspect_reference(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print a summary of ``args.reference`` (text, or JSON with ``args.json``); returns 0."""
    text = next((str(getattr(args, a)) for a in _REFERENCE_ATTRS if getattr(args, a, None)), None)
    if not text:
        raise OciError("inspect: no image reference given")
    options = options_from_args(args) if hasattr(args, "plain_http") else RegistryOptions()
    summary = describe_reference(text, options)
    out = out or sys.stdout
    if getattr(args, "json", False):
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        out.write(format_summary(summary))
    return 0


def describe_reference(text: str, options: RegistryOptions | None = None) -> dict[str, Any]:
    """The summary ``inspect`` prints, as a JSON-able dict."""
    store, ref = open_store(text, options)
    try:
        top = store.resolve(ref.target)
        data, media_type, digest = store.get_manifest(top.digest)
        doc = json.loads(data)
        summary: dict[str, Any] = {"reference": str(ref), "mediaType": media_type, "digest": digest, "size": len(data)}
        if is_index(media_type):
            summary["manifests"] = [_child(Descriptor.from_dict(m)) for m in doc.get("manifests") or []]
        elif is_image_manifest(media_type):
            config = Descriptor.from_dict(doc["config"])
            layers = [Descriptor.from_dict(layer) for layer in doc.get("layers") or []]
            summary["config"] = _config(store, config)
            summary["layers"] = [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                 **({"annotations": dict(d.annotations)} if d.annotations else {})}
                for d in layers
            ]
            summary["totalLayerSize"] = sum(d.size for d in layers)
        return summary
    finally:
        store.close()


def _child(desc: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.platform is not None:
        out["platform"] = str(desc.platform)
    if desc.annotations:
        out["annotations"] = dict(desc.annotations)
    return out


def _config(store: ImageStore, desc: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.size > MAX_CONFIG_SIZE:
        return out
    with store.open_blob(desc.digest, desc.size) as reader:
        raw = reader.read()
    try:
        doc = json.loads(raw)
    except ValueError:
        return out
    for key in ("architecture", "os", "variant", "created"):
        if doc.get(key):
            out[key] = doc[key]
    cfg = doc.get("config") or {}
    for key in ("Entrypoint", "Cmd", "WorkingDir", "User"):
        if cfg.get(key):
            out[key[0].lower() + key[1:]] = cfg[key]
    out["diffIds"] = len((doc.get("rootfs") or {}).get("diff_ids") or [])
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"Reference:  {summary['reference']}",
        f"Media type: {summary['mediaType']}",
        f"Digest:     {summary['digest']}",
        f"Size:       {summary['size']}",
    ]
    if "manifests" in summary:
        lines.append(f"Manifests:  {len(summary['manifests'])}")
        for m in summary["manifests"]:
            lines.append(f"  {m.get('platform', '-'):<20} {m['digest']} {m['size']:>8}  {m['mediaType']}")
    if "config" in summary:
        c = summary["config"]
        platform = "/".join(str(c[k]) for k in ("os", "architecture", "variant") if c.get(k))
        lines.append(f"Config:     {c['digest']} {c['size']} bytes {platform} created {c.get('created', '-')}")
        lines.append(f"Layers:     {len(summary['layers'])} ({summary['totalLayerSize']} bytes)")
        for layer in summary["layers"]:
            lines.append(f"  {layer['digest']} {layer['size']:>12}  {layer['mediaType']}")
    return "\n".join(lines) + "\n"
