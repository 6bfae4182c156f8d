"""OCI layouts of source tars and of converted layer blobs, and deliberately wrong images.

    src = tar_layout(tmp / "src", "v1", [layer1_tar, layer2_tar_gz])     # "oci:DIR:v1" (gzip'd unless already)
    dst = convert(src, f"oci:{tmp / 'dst'}:v1")                          # `overlaybd convert`, dedup off
    up  = blob_layout(tmp / "up", "v1", [blob1, blob2])                  # an image of given layer blobs
    bad = replace_layer(dst, 1, other_blob, "swapped")                   # manifest + config rewritten
    blob = patched_layer(blobs, out, {block: data})                      # top layer + changed blocks
    proc = verify_cli(src, dst, "--json")                                # `overlaybd verify ...`

Layouts are written with our ``LayoutStore`` (digests verified); converted layers get the
overlaybd annotations upstream's converter writes, so the images look like real ones.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from overlaybd_provider.formats.blob import open_layer, write_layer_blob
from overlaybd_provider.formats.lsmt import LSMTWriter
from overlaybd_provider.formats.source import FileRange
from overlaybd_provider.formats.stack import LayerStack
from overlaybd_provider.oci.layout import LayoutStore

from support.paths import overlaybd_cli

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OBD_LAYER = "application/vnd.oci.image.layer.v1.tar"
BLOCK = 4096


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _put(store: LayoutStore, path: Path) -> tuple[str, int]:
    digest, size = _sha256_file(path)
    store.push_blob(path, digest, size)
    return digest, size


def _put_bytes(store: LayoutStore, data: bytes, work: Path) -> tuple[str, int]:
    tmp = work / ".put"
    tmp.write_bytes(data)
    try:
        return _put(store, tmp)
    finally:
        tmp.unlink()


def _image(store: LayoutStore, tag: str, layers: list[dict], diff_ids: list[str], work: Path,
           config_extra: Mapping | None = None) -> str:
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}, **(config_extra or {})}
    cdigest, csize = _put_bytes(store, json.dumps(config, sort_keys=True).encode(), work)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize}, "layers": layers}
    store.push_manifest(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST, tag)
    return f"oci:{store.path}:{tag}"


def tar_layout(layout: Path, tag: str, tars: Sequence[Path], *, compress: bool | Sequence[bool] = True,
               config_extra: Mapping | None = None) -> str:
    """A source image of layer tars: plain tars are gzip'd (mtime 0) where ``compress`` says so
    (one flag for all, or one per layer); .gz / .zst files are used as they are. ``config_extra``:
    more config fields (``history``, ``created``)."""
    store = LayoutStore(layout)
    work = Path(tempfile.mkdtemp(prefix="obdimages-"))
    try:
        layers, diff_ids = [], []
        flags = [compress] * len(tars) if isinstance(compress, bool) else list(compress)
        for tar, gz in zip(tars, flags, strict=True):
            tar = Path(tar)
            with tar.open("rb") as f:
                magic = f.read(4)
            if magic[:2] == b"\x1f\x8b" or magic == b"\x28\xb5\x2f\xfd":
                kind = "gzip" if magic[:2] == b"\x1f\x8b" else "zstd"
                blob = tar
                diff_ids.append(_uncompressed_digest(tar, kind))
            else:
                diff_ids.append(_sha256_file(tar)[0])
                if gz:
                    blob = work / (tar.name + ".gz")
                    with tar.open("rb") as src, blob.open("wb") as raw, \
                            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
                        shutil.copyfileobj(src, gz, 1 << 20)
                    kind = "gzip"
                else:
                    blob, kind = tar, "none"
            digest, size = _put(store, blob)
            media = OBD_LAYER + ("" if kind == "none" else f"+{kind}")
            layers.append({"mediaType": media, "digest": digest, "size": size})
        return _image(store, tag, layers, diff_ids, work, config_extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def index_layout(layout: Path, tag: str, images: Mapping[str, Sequence[Path]]) -> str:
    """A multi-platform source image: one manifest of gzip'd tars per ``os/arch``, in an index."""
    store = LayoutStore(layout)
    children = []
    for platform, tars in images.items():
        os_name, arch = platform.split("/")[:2]
        ref = tar_layout(layout, f".{os_name}-{arch}", tars)
        desc = store.resolve(ref.rsplit(":", 1)[1])
        children.append({"mediaType": OCI_MANIFEST, "digest": desc.digest, "size": desc.size,
                         "platform": {"os": os_name, "architecture": arch}})
        data, _mt, _d = store.get_manifest(desc.digest)
        manifest = json.loads(data)
        with store.open_blob(manifest["config"]["digest"]) as f:
            config = json.loads(f.read())
        config["architecture"] = arch
        work = Path(tempfile.mkdtemp(prefix="obdimages-"))
        try:
            ref = _image(store, f".{os_name}-{arch}", manifest["layers"], config["rootfs"]["diff_ids"], work,
                         {k: v for k, v in config.items() if k != "rootfs"})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        desc = store.resolve(ref.rsplit(":", 1)[1])
        children[-1].update(digest=desc.digest, size=desc.size)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children}
    store.push_manifest(json.dumps(index, sort_keys=True).encode(), index["mediaType"], tag)
    return f"oci:{layout}:{tag}"


def _uncompressed_digest(path: Path, kind: str) -> str:
    h = hashlib.sha256()
    with path.open("rb") as raw:
        if kind == "gzip":
            src = gzip.GzipFile(fileobj=raw)
        else:
            import zstandard

            src = zstandard.ZstdDecompressor().stream_reader(raw)
        while chunk := src.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def blob_layout(layout: Path, tag: str, blobs: Sequence[Path], *,
                descriptors: Sequence[Mapping] | None = None) -> str:
    """An overlaybd image of converted layer blobs (bottom first), e.g. upstream's own output;
    ``descriptors`` replace the generated layer descriptors' mediaType/annotations (TurboOCI)."""
    store = LayoutStore(layout)
    work = Path(tempfile.mkdtemp(prefix="obdimages-"))
    try:
        layers = []
        for i, blob in enumerate(blobs):
            digest, size = _put(store, Path(blob))
            layer = _obd_layer(digest, size)
            if descriptors is not None:
                layer.update({k: descriptors[i][k] for k in ("mediaType", "annotations") if k in descriptors[i]})
            layers.append(layer)
        return _image(store, tag, layers, [d["digest"] for d in layers], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _obd_layer(digest: str, size: int) -> dict:
    return {"mediaType": OBD_LAYER, "digest": digest, "size": size, "annotations": {
        "containerd.io/snapshot/overlaybd/blob-digest": digest,
        "containerd.io/snapshot/overlaybd/blob-size": str(size),
        "containerd.io/snapshot/overlaybd/version": "0.1.0"}}


def _split(ref: str) -> tuple[Path, str]:
    assert ref.startswith("oci:"), ref
    path, _, tag = ref[4:].rpartition(":")
    return Path(path), tag


def layer_blobs(ref: str) -> list[Path]:
    """The layer blob files of an ``oci:DIR:TAG`` image, bottom first."""
    layout, tag = _split(ref)
    store = LayoutStore(layout)
    data, _mt, _d = store.get_manifest(store.resolve(tag).digest)
    return [store.blob_path(d["digest"]) for d in json.loads(data)["layers"]]


def replace_layer(ref: str, index: int, blob: Path, new_tag: str) -> str:
    """The same image with layer ``index`` swapped for ``blob`` (manifest and config rewritten)."""
    layout, tag = _split(ref)
    store = LayoutStore(layout)
    data, _mt, _d = store.get_manifest(store.resolve(tag).digest)
    manifest = json.loads(data)
    with store.open_blob(manifest["config"]["digest"]) as f:
        config = json.loads(f.read())
    work = Path(tempfile.mkdtemp(prefix="obdimages-"))
    try:
        digest, size = _put(store, Path(blob))
        layers = list(manifest["layers"])
        layers[index] = _obd_layer(digest, size)
        config["rootfs"]["diff_ids"][index] = digest
        extra = {k: v for k, v in config.items() if k != "rootfs"}
        return _image(store, new_tag, layers, config["rootfs"]["diff_ids"], work, extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def edit_config(ref: str, new_tag: str, edit) -> str:
    """The same image with its config changed by ``edit(config_dict)`` (e.g. a wrong diff_id)."""
    layout, tag = _split(ref)
    store = LayoutStore(layout)
    data, _mt, _d = store.get_manifest(store.resolve(tag).digest)
    manifest = json.loads(data)
    with store.open_blob(manifest["config"]["digest"]) as f:
        config = json.loads(f.read())
    edit(config)
    work = Path(tempfile.mkdtemp(prefix="obdimages-"))
    try:
        extra = {k: v for k, v in config.items() if k != "rootfs"}
        return _image(store, new_tag, manifest["layers"], config["rootfs"]["diff_ids"], work, extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert(src: str, dst: str, *extra: str, timeout: float = 900) -> str:
    cmd = [*overlaybd_cli(), "convert", src, dst, "--db-url", "none", "--blob-cache", "none", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dst


def verify_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*overlaybd_cli(), "verify", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def patched_layer(blobs: Sequence[Path], out: Path, patches: Mapping[int, bytes]) -> Path:
    """The top layer of ``blobs`` rewritten with the 4 KiB blocks in ``patches`` replaced (blocks
    it does not store are added): a damaged upper layer that still opens like a real one."""
    work = out.parent
    lsmt_path = work / (out.name + ".lsmt")
    with open_layer(blobs[-1]) as top:
        reader = top.lsmt
        alone = LayerStack([reader], check_chain=False)
        pieces: list[tuple[int, int, bool]] = []  # (byte offset, length, zeroed) in LBA order
        cuts = sorted(b * BLOCK for b in patches)
        for ext in alone.mapped_extents():
            pos, end = ext.offset, ext.offset + ext.length
            for c in cuts:
                if pos <= c < end:
                    if c > pos:
                        pieces.append((pos, c - pos, ext.zeroed))
                    pos = c + BLOCK
            if pos < end:
                pieces.append((pos, end - pos, ext.zeroed))
        pieces.extend((b * BLOCK, BLOCK, False) for b in patches)
        pieces.sort()
        with lsmt_path.open("wb") as f:
            w = LSMTWriter(f, virtual_size=reader.virtual_size, uuid=reader.uuid, parent_uuid=reader.parent_uuid)
            for off, length, zeroed in pieces:
                if off % BLOCK == 0 and length == BLOCK and off // BLOCK in patches:
                    w.add_data(off // 512, patches[off // BLOCK])
                elif zeroed:
                    w.add_zero(off // 512, length // 512)
                else:
                    for k in range(0, length, 1 << 20):
                        n = min(1 << 20, length - k)
                        w.add_data((off + k) // 512, alone.read(off + k, n))
            w.close()
    with lsmt_path.open("rb") as src, out.open("w+b") as f:
        write_layer_blob(f, FileRange(src))
    lsmt_path.unlink()
    return out


def read_block(blobs: Sequence[Path], block: int) -> bytes:
    """One 4 KiB block of the merged stack of ``blobs`` (to patch it)."""
    files = [open_layer(b) for b in blobs]
    try:
        return LayerStack([f.lsmt for f in files], check_chain=False).read(block * BLOCK, BLOCK)
    finally:
        for f in files:
            f.close()
