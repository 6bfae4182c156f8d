"""Small OCI images for the main job and the Airflow tests, written as OCI image layouts.

``copy_platform`` takes one image out of a multi-image layout (the upstream hello-world
fixture); ``make_image`` builds an image on the spot from in-memory layers (deterministic: fixed
mtimes, sorted entries, gzip without timestamps), so images sharing a base layer share its digest.

    python scripts/demo_image.py copy FIXTURE_LAYOUT TAG OUT_LAYOUT
    python scripts/demo_image.py make OUT_LAYOUT [TAG]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MTIME = 1_700_000_000


def _put_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _index(layout: Path) -> dict:
    path = layout / "index.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"schemaVersion": 2, "manifests": []}


def _add_to_index(layout: Path, entry: dict, tag: str) -> None:
    index = _index(layout)
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    index["manifests"].append({**entry, "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def layer_tar(files: Mapping[str, bytes | None]) -> bytes:
    """An uncompressed layer tar: ``path → content`` (``None`` = directory), parents added."""
    names: dict[str, bytes | None] = {}
    for path, content in files.items():
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            names.setdefault("/".join(parts[:i]), None)
        names[path.strip("/")] = content
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            content = names[name]
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_image(
    layout: Path, tag: str, layers: list[Mapping[str, bytes | None]], *, arch: str = "amd64"
) -> str:
    """Write a single-platform image into ``layout`` under ``tag``; returns the manifest digest."""
    layout = Path(layout)
    descs, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=6, mtime=0)
        descs.append({"mediaType": OCI_LAYER_GZIP, **_put_blob(layout, gz)})
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"demo layer {i}"} for i in range(len(layers))],
    }
    config_desc = {"mediaType": OCI_CONFIG, **_put_blob(layout, json.dumps(config, sort_keys=True).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": descs}
    desc = {"mediaType": OCI_MANIFEST, **_put_blob(layout, json.dumps(manifest, sort_keys=True).encode())}
    _add_to_index(layout, {**desc, "platform": {"architecture": arch, "os": "linux"}}, tag)
    return desc["digest"]


def make_index(layout: Path, tag: str, images: Mapping[str, list[Mapping[str, bytes | None]]]) -> str:
    """A multi-platform image: ``{arch: layers}`` as one OCI index tagged ``tag``; returns its digest."""
    layout = Path(layout)
    entries = []
    for arch, layers in sorted(images.items()):
        digest = make_image(layout, f"{tag}-{arch}", layers, arch=arch)
        size = (layout / "blobs" / "sha256" / digest[7:]).stat().st_size
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                        "platform": {"architecture": arch, "os": "linux"}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    desc = {"mediaType": OCI_INDEX, **_put_blob(layout, json.dumps(index, sort_keys=True).encode())}
    _add_to_index(layout, desc, tag)
    return desc["digest"]


def demo_layers(name: str, *, base: str = "demo", base_kib: int = 256) -> list[dict[str, bytes | None]]:
    """A base layer (the same bytes for every image with the same ``base``) plus a layer of the
    image's own."""
    block = hashlib.sha256(f"overlaybd {base} base".encode()).digest() * 32  # 1 KiB, deterministic
    base = {
        "etc/os-release": b'NAME="overlaybd demo"\nID=demo\n',
        "usr/share/demo/blob.bin": block * base_kib,
        "usr/share/demo/empty": b"",
        "var/tmp": None,
    }
    own = {f"app/{name}/README": f"{name}\n".encode(), f"app/{name}/data.txt": (name.encode() + b"\n") * 2048}
    return [base, own]


def copy_platform(fixture: Path, tag: str, out: Path) -> str:
    """Copy the image tagged ``tag`` (manifest, config, layers) to a new single-image layout."""
    fixture, out = Path(fixture), Path(out)
    entry = next(
        m
        for m in _index(fixture)["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blobs = fixture / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"][7:]).read_text())
    (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for desc in [entry, manifest["config"], *manifest["layers"]]:
        shutil.copyfile(blobs / desc["digest"][7:], out / "blobs" / "sha256" / desc["digest"][7:])
    clean = {k: v for k, v in entry.items() if k != "annotations"}
    _add_to_index(out, clean, "latest")
    return entry["digest"]


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "copy":
        print(copy_platform(Path(argv[1]), argv[2], Path(argv[3])))
        return 0
    if len(argv) >= 2 and argv[0] == "make":
        print(make_image(Path(argv[1]), argv[2] if len(argv) > 2 else "latest", demo_layers("hello")))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
