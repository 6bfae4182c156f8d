"""The inflates run ahead of the builds (``engine.transfer.prefetch``) and their spooled children
(``formats.gzworker`` for TurboOCI layers, ``ext4.layerdecode.start_decode`` for native ones): same
image as the in-process inflate, errors unchanged, bounded children and spool disk, nothing left
behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import random
import subprocess
import tarfile
from concurrent.futures import Future
from pathlib import Path

import pytest
import requests
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.plan.model import LayerPlan
from overlaybd_provider.engine.transfer.prefetch import InflatePrefetch
from overlaybd_provider.engine.transfer.workspace import Workspace
from overlaybd_provider.ext4.tarstream import ForwardReader, open_tar_stream
from overlaybd_provider.formats.gzworker import start_inflate
from overlaybd_provider.oci.store import open_store
from overlaybd_provider.workers import live_children
from support.registry import push_layout

from .imagesrc import OCI_GZIP, OCI_TAR, feature_tars, write_layout

PREFETCH_LOG = "overlaybd_provider.engine.transfer.prefetch"


def _gzworker_children(under: Path | None = None) -> list[str]:
    """Inflate children still running: this process's, or any whose spool is under ``under``."""
    if under is None:
        return [str(p.pid) for p in live_children()]
    proc = subprocess.run(["pgrep", "-f", f"overlaybd_provider.formats.gzworker {under}"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.split()


def _manifest_digest(registry, ref: str) -> str:
    store, reference = open_store(ref, registry.options())
    try:
        return store.get_manifest(reference.target)[2]
    finally:
        store.close()


def _one_member_tar(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("data.bin")
        ti.size = size
        tf.addfile(ti, io.BytesIO(random.Random(11).randbytes(size)))
        ti = tarfile.TarInfo("after")
        ti.size = 6
        tf.addfile(ti, io.BytesIO(b"after\n"))
    return buf.getvalue()


def test_spooled_inflate_skips_file_data_and_frees_what_it_passed(tmp_path: Path, monkeypatch) -> None:
    """A TurboOCI build never reads file data: the reader jumps over it in the spool, and the spool
    keeps (almost) no disk for what was passed; digests and sizes are those of the source."""
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    tar = _one_member_tar(48 << 20)
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(gzip.compress(tar, compresslevel=1, mtime=0))
    job = start_inflate(src, name="layer", hash_output=True, spool_dir=str(tmp_path))
    assert job is not None
    spool_dirs = list(tmp_path.glob("gzworker-*"))
    assert len(spool_dirs) == 1
    reader = ForwardReader(job)
    names = [m.name for m in open_tar_stream(reader)]
    assert names == ["data.bin", "after"]
    spool = spool_dirs[0] / "tar"
    st = os.stat(spool)
    assert st.st_size >= 48 << 20
    assert st.st_blocks * 512 < 8 << 20, st.st_blocks  # the 48 MiB passed are punched out
    while reader.read(1 << 20):
        pass
    assert reader.count == len(tar)
    assert job.content_digest == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert job.digest == "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    assert job.uncompressed_size == len(tar)
    job.close()
    assert not spool_dirs[0].exists()


def _layer(ws: Workspace, index: int, data: bytes) -> LayerPlan:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layer = LayerPlan(index=index, source_digest=digest, source_size=len(data), source_media_type=OCI_GZIP,
                      diff_id="sha256:" + "0" * 64, chain_id=f"sha256:{index:064x}", uuid="", parent_uuid="",
                      kind="turbo")
    path = ws.source_blob(layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return layer


def test_prefetch_starts_in_layer_order_within_its_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    ws = Workspace(tmp_path)
    layers = [_layer(ws, i, gzip.compress(_one_member_tar(1000 + i), mtime=0)) for i in range(3)]
    plain = LayerPlan(index=3, source_digest="sha256:" + "1" * 64, source_size=1, source_media_type=OCI_TAR,
                      diff_id="sha256:" + "2" * 64, chain_id="sha256:" + "3" * 64, uuid="", parent_uuid="",
                      kind="turbo")
    downloads: dict[int, Future[int]] = {i: Future() for i in range(4)}
    downloads[0].set_result(1)
    prefetch = InflatePrefetch(ws, [*layers, plain], downloads, limit=2)
    try:
        assert set(prefetch._jobs) == {0}  # layer 1's source is not here yet
        downloads[2].set_result(1)
        assert set(prefetch._jobs) == {0}  # in layer order: 2 waits for 1
        downloads[1].set_result(1)
        assert set(prefetch._jobs) == {0, 1}  # the limit: 2 alive
        job0 = prefetch.take(layers[0])
        assert job0 is not None and set(prefetch._jobs) == {1}
        reader = ForwardReader(job0)
        assert [m.name for m in open_tar_stream(reader)] == ["data.bin", "after"]
        prefetch.release(layers[0], job0)
        assert job0.closed
        assert set(prefetch._jobs) == {1, 2}  # layer 0's build is over: layer 2 starts
        downloads[3].set_result(1)
        assert 3 not in prefetch._jobs  # a plain tar source has no inflate
        assert prefetch.take(plain) is None
    finally:
        prefetch.close()
    assert prefetch._jobs == {}
    assert not list(ws.root.rglob("gzworker-*"))


def test_a_layer_built_before_its_download_pumped_gets_no_second_inflate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    ws = Workspace(tmp_path)
    layer = _layer(ws, 0, gzip.compress(_one_member_tar(10), mtime=0))
    download: Future[int] = Future()
    prefetch = InflatePrefetch(ws, [layer], {0: download})
    assert prefetch.take(layer) is None  # the build went ahead with its own inflate
    download.set_result(1)
    assert prefetch._jobs == {}
    prefetch.release(layer, None)
    prefetch.close()


def _image(tmp_path: Path, registry, repo: str, *, corrupt: int | None = None) -> str:
    tars = [*feature_tars(), _one_member_tar(5 << 20)]  # the last source is over 4 MiB of gzip
    layout = tmp_path / f"src-{repo.replace('/', '_')}"
    write_layout(layout, "v1", tars, [OCI_GZIP] * len(tars))
    if corrupt is not None:
        _corrupt_layer(layout, corrupt)
    ref = registry.ref(repo, "v1")
    push_layout(layout, ref, registry.options())
    return ref


def _corrupt_layer(layout: Path, index: int) -> None:
    """Flip bytes in the middle of a layer's deflate stream and re-address it (digest and size
    honest, so only the inflate can tell)."""
    index_doc = json.loads((layout / "index.json").read_text())
    manifest_path = layout / "blobs/sha256" / index_doc["manifests"][0]["digest"][7:]
    manifest = json.loads(manifest_path.read_bytes())
    layer = manifest["layers"][index]
    blob = bytearray((layout / "blobs/sha256" / layer["digest"][7:]).read_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0x5A
    digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(bytes(blob))
    layer["digest"], layer["size"] = f"sha256:{digest}", len(blob)
    data = json.dumps(manifest, separators=(",", ":")).encode()
    mdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / mdigest).write_bytes(data)
    index_doc["manifests"][0].update(digest=f"sha256:{mdigest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index_doc))


def _convert(registry, src: str, dst: str) -> dict:
    opts = ConvertOptions(output="turbo-oci", blob_cache_max_bytes=0)
    return convert_image(src, dst, opts, src_registry=registry.options(), dst_registry=registry.options()).to_json()


@pytest.mark.parametrize("forced", [None, "1"])
def test_prefetched_conversion_equals_the_in_process_one(tmp_path: Path, registry, registry_repo, monkeypatch,
                                                         caplog, forced: str | None) -> None:
    """Registry→registry: the layers inflated ahead give the image (manifest digest) of the
    in-process inflate. By default only the source of 4 MiB and more gets a child; forced, every
    gzip layer is inflated ahead of its build."""
    src = _image(tmp_path, registry, registry_repo)
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "0")
    reference = _convert(registry, src, registry.ref(f"{registry_repo}-inproc", "v1"))
    if forced is None:
        monkeypatch.delenv("OVERLAYBD_GZ_WORKER")
    else:
        monkeypatch.setenv("OVERLAYBD_GZ_WORKER", forced)
    caplog.set_level(logging.DEBUG, logger=PREFETCH_LOG)
    dst = registry.ref(f"{registry_repo}-ahead", "v1")
    report = _convert(registry, src, dst)
    started = [r.getMessage() for r in caplog.records if r.name == PREFETCH_LOG and "started ahead" in r.getMessage()]
    if os.cpu_count() == 1 and forced is None:
        assert started == []
    else:
        assert len(started) == (4 if forced else 1), started
    assert report["manifests"][0]["digest"] == reference["manifests"][0]["digest"]
    assert _manifest_digest(registry, dst) == reference["manifests"][0]["digest"]
    assert _gzworker_children() == []


def test_corrupt_prefetched_layer_is_one_line_and_nothing_tagged(tmp_path: Path, registry, registry_repo, cli,
                                                                 monkeypatch) -> None:
    """Layer 2 is inflated ahead while layers 0-1 build; its corrupt deflate data still gives the
    one error line naming that layer, exit 2, no tag, and no child left running."""
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the CLI's work directory, so its children can be found
    src = _image(tmp_path, registry, registry_repo, corrupt=2)
    dst_repo = f"{registry_repo}-bad"
    proc = cli("convert", "--turbo-oci", "--db-url", "none", "--blob-cache", "none", "--plain-http",
               src, registry.ref(dst_repo, "v1"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("overlaybd: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "layer 2" in errors[0] and "corrupt gzip" in errors[0], errors[0]
    assert "/tmp/" not in errors[0]
    r = requests.get(f"{registry.url}/v2/{dst_repo}/manifests/v1", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 404
    assert _gzworker_children(scratch) == []
    assert list(scratch.iterdir()) == []  # the work directory and every spool in it are gone


def test_both_formats_with_inflates_ahead_equal_the_in_process_run(tmp_path: Path, registry, registry_repo,
                                                                   monkeypatch, caplog) -> None:
    """Output ``both``: the one-pass native+TurboOCI builds read the inflates started ahead (the
    native side reads the file data from the spool) and give both images of the in-process run."""
    src = _image(tmp_path, registry, registry_repo)
    digests = {}
    caplog.set_level(logging.DEBUG, logger=PREFETCH_LOG)
    for mode in ("0", "1"):
        monkeypatch.setenv("OVERLAYBD_GZ_WORKER", mode)
        caplog.clear()
        opts = ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t{mode}", "v1"),
                              blob_cache_max_bytes=0)
        report = convert_image(src, registry.ref(f"{registry_repo}-n{mode}", "v1"), opts,
                               src_registry=registry.options(), dst_registry=registry.options()).to_json()
        digests[mode] = (report["target"]["digest"], report["turbo"]["target"]["digest"])
        started = [r for r in caplog.records if r.name == PREFETCH_LOG and "started ahead" in r.getMessage()]
        assert len(started) == (4 if mode == "1" else 0)
    assert digests["0"] == digests["1"]
    assert _gzworker_children() == []


@pytest.mark.parametrize("kind", ["turbo-inflate", "native-decode"])
def test_a_full_spool_disk_is_a_retryable_storage_error(tmp_path: Path, small_fs, monkeypatch, kind: str) -> None:
    """The child's ENOSPC on the spool reaches the build as StorageError (one line, retryable: space
    may be freed), not as a corrupt source; nothing is left on the full disk."""
    from overlaybd_provider.errors import StorageError
    from overlaybd_provider.ext4.layerdecode import start_decode

    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "1")
    full = small_fs("1m")
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(gzip.compress(_one_member_tar(4 << 20), compresslevel=1, mtime=0))
    job = (start_inflate(src, name="layer", hash_output=True, spool_dir=str(full)) if kind == "turbo-inflate"
           else start_decode(src, digest=True, spool_dir=str(full)))
    assert job is not None
    try:
        with pytest.raises(StorageError, match="no space left on device") as info:
            while job.read(1 << 20):
                pass
        assert info.value.retryable
    finally:
        job.close()
    assert list(full.iterdir()) == []


def test_the_images_of_a_run_share_the_slots(tmp_path: Path, monkeypatch) -> None:
    """Two images converted at once (an index): together at most ``limit`` inflates ahead; a slot
    freed by one image's build starts the other image's next inflate."""
    monkeypatch.setenv("OVERLAYBD_GZ_WORKER", "1")
    ws = Workspace(tmp_path)
    a = [_layer(ws, i, gzip.compress(_one_member_tar(100 + i), mtime=0)) for i in range(2)]
    b = [_layer(ws, i, gzip.compress(_one_member_tar(200 + i), mtime=0)) for i in range(2)]
    done: Future[int] = Future()
    done.set_result(1)
    first = InflatePrefetch(ws, a, {0: done, 1: done}, limit=2)
    second = InflatePrefetch(ws, b, {0: done, 1: done}, limit=2)
    try:
        assert set(first._jobs) == {0, 1} and second._jobs == {}
        job = first.take(a[0])
        first.release(a[0], job)
        assert set(second._jobs) == {0}  # the freed slot went to the other image
        first.close()  # a finished image gives back the slot of the inflate no build took
        assert set(second._jobs) == {0, 1}
    finally:
        first.close()
        second.close()
    assert not list(ws.root.rglob("gzworker-*"))


# -- native layers: the gzip/zstd decode started ahead (ext4.layerdecode.start_decode) -------------

def _native_image(tmp_path: Path, registry, repo: str, *, corrupt: int | None = None) -> str:
    from .imagesrc import OCI_ZSTD

    tars = [*feature_tars(), _one_member_tar(5 << 20)]
    layout = tmp_path / f"src-{repo.replace('/', '_')}"
    write_layout(layout, "v1", tars, [OCI_GZIP, OCI_ZSTD, OCI_GZIP, OCI_GZIP])
    if corrupt is not None:
        _corrupt_layer(layout, corrupt)
    ref = registry.ref(repo, "v1")
    push_layout(layout, ref, registry.options())
    return ref


def _convert_native(registry, src: str, dst: str) -> dict:
    opts = ConvertOptions(blob_cache_max_bytes=0)
    return convert_image(src, dst, opts, src_registry=registry.options(), dst_registry=registry.options()).to_json()


def test_native_layers_decoded_ahead_give_the_in_process_image(tmp_path: Path, registry, registry_repo,
                                                                monkeypatch, caplog) -> None:
    """A native conversion decodes every gzip and zstd source ahead of its build (forced here: the
    test layers are small) and writes the image of the in-process decode, byte for byte."""
    src = _native_image(tmp_path, registry, registry_repo)
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "0")
    reference = _convert_native(registry, src, registry.ref(f"{registry_repo}-inproc", "v1"))
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", "1")
    caplog.set_level(logging.DEBUG, logger=PREFETCH_LOG)
    dst = registry.ref(f"{registry_repo}-ahead", "v1")
    report = _convert_native(registry, src, dst)
    started = [r.getMessage() for r in caplog.records if r.name == PREFETCH_LOG and "started ahead" in r.getMessage()]
    assert len(started) == 4, started
    assert report["manifests"][0]["digest"] == reference["manifests"][0]["digest"]
    assert _manifest_digest(registry, dst) == reference["manifests"][0]["digest"]
    assert _gzworker_children() == []
    monkeypatch.setenv("OVERLAYBD_PREFETCH", "0")  # switched off: each build decodes its own source
    caplog.clear()
    report = _convert_native(registry, src, registry.ref(f"{registry_repo}-off", "v1"))
    assert not [r for r in caplog.records if r.name == PREFETCH_LOG and "started ahead" in r.getMessage()]
    assert report["manifests"][0]["digest"] == reference["manifests"][0]["digest"]


@pytest.mark.parametrize("ahead", ["1", "0"])
def test_native_corrupt_layer_decoded_ahead_is_one_line_and_nothing_tagged(tmp_path: Path, registry,
                                                                           registry_repo, cli, monkeypatch,
                                                                           ahead: str) -> None:
    """Layer 2's corrupt deflate data, found by its decode started ahead (or, for comparison, by the
    build's own in-process decode): one error line naming that layer, exit 2, no tag, no child and
    no spool left."""
    monkeypatch.setenv("OVERLAYBD_DECODE_WORKER", ahead)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    src = _native_image(tmp_path, registry, registry_repo, corrupt=2)
    dst_repo = f"{registry_repo}-bad"
    proc = cli("convert", "--db-url", "none", "--blob-cache", "none", "--plain-http", src, registry.ref(dst_repo, "v1"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("overlaybd: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "layer 2" in errors[0] and "corrupt gzip" in errors[0], errors[0]
    r = requests.get(f"{registry.url}/v2/{dst_repo}/manifests/v1", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 404
    check = subprocess.run(["pgrep", "-f", "overlaybd_provider.ext4.layerdecode"], capture_output=True, text=True)
    assert check.stdout.split() == []
    assert list(scratch.iterdir()) == []
