"""OCI image-layout store: reading the upstream hello-world fixture, writing, tagging, atomicity."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import pytest
from overlaybd_provider.oci.copy import copy_image
from overlaybd_provider.oci.errors import DigestMismatchError, LayoutError, NotFoundError
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.mediatypes import MediaType
from overlaybd_provider.oci.store import ImageStore, open_store

DOCKER_LIST = "sha256:726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d"


@pytest.fixture
def hello(fixtures_dir, tmp_path):
    dest = tmp_path / "hello"
    shutil.copytree(fixtures_dir / "hello-world-oci", dest)
    return dest


def test_reads_fixture_tags(hello):
    store = LayoutStore(hello)
    assert isinstance(store, ImageStore)
    desc = store.resolve("docker-list")
    assert (desc.media_type, desc.digest, desc.size) == (MediaType.DOCKER_MANIFEST_LIST, DOCKER_LIST, 2069)
    data, media_type, digest = store.get_manifest("docker-list")
    assert digest == DOCKER_LIST and media_type == MediaType.DOCKER_MANIFEST_LIST
    assert hashlib.sha256(data).hexdigest() == DOCKER_LIST[7:]
    arm = store.resolve("arm64")
    assert str(arm.platform) == "linux/arm64/v8"
    by_digest = store.resolve(arm.digest)
    assert by_digest.digest == arm.digest
    with pytest.raises(NotFoundError, match="nope"):
        store.resolve("nope")
    with pytest.raises(LayoutError, match="name one"):
        store.resolve(None)


def test_open_store_for_layout(hello):
    store, ref = open_store(f"oci:{hello}:amd64")
    assert isinstance(store, LayoutStore) and ref.tag == "amd64"
    desc = store.resolve(ref.target)
    manifest = json.loads(store.get_manifest(desc.digest)[0])
    layer = manifest["layers"][0]
    assert store.has_blob(layer["digest"])
    with store.open_blob(layer["digest"], layer["size"]) as f:
        assert len(f.read()) == layer["size"]


def test_corrupt_blob_is_detected(hello, tmp_path):
    store = LayoutStore(hello)
    manifest = json.loads(store.get_manifest("amd64")[0])
    layer = manifest["layers"][0]
    path = store.blob_path(layer["digest"])
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError) as info:
        store.fetch_blob(layer["digest"], tmp_path / "out", layer["size"])
    assert info.value.want == layer["digest"] and info.value.algorithm == "sha256"
    assert info.value.got != info.value.want
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))
    # a copy that meets the corrupt blob tags nothing at the destination
    dest = LayoutStore(tmp_path / "dest")
    with pytest.raises(DigestMismatchError):
        copy_image(store, dest, "amd64", "copied")
    assert [e.ref_name for e in dest.index_entries()] == []


def test_manifest_tampering_is_detected(hello):
    store = LayoutStore(hello)
    path = store.blob_path(DOCKER_LIST)
    path.write_bytes(path.read_bytes().replace(b"amd64", b"AMD64"))
    with pytest.raises(DigestMismatchError, match="manifest"):
        store.get_manifest("docker-list")


def test_write_copy_and_retag(hello, tmp_path):
    src = LayoutStore(hello)
    dest = LayoutStore(tmp_path / "new")
    report = copy_image(src, dest, "docker-list", "multi")
    assert report.descriptor.digest == DOCKER_LIST
    assert report.manifests == 1 + 9
    assert json.loads((tmp_path / "new" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "new" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["multi"]
    assert index["manifests"][0]["mediaType"] == MediaType.DOCKER_MANIFEST_LIST
    # second copy: everything already there
    again = copy_image(src, dest, "docker-list", "multi")
    assert again.blobs_copied == 0 and again.blobs_skipped > 0
    dest.tag(DOCKER_LIST, "other")
    dest.tag(src.resolve("amd64").digest, "multi")  # moves the tag
    entries = {e.ref_name: e for e in dest.index_entries()}
    assert set(entries) == {"multi", "other"}
    assert entries["multi"].media_type == MediaType.DOCKER_MANIFEST
    assert not list((tmp_path / "new").rglob("*.partial"))


def test_concurrent_tagging_loses_nothing(tmp_path):
    store = LayoutStore(tmp_path / "l")
    data = b'{"schemaVersion":2,"manifests":[]}'
    desc = store.push_manifest(data, MediaType.OCI_INDEX.value)

    def tag(i):
        LayoutStore(tmp_path / "l").tag(desc.digest, f"t{i}")

    threads = [threading.Thread(target=tag, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e.ref_name for e in store.index_entries()) == sorted(f"t{i}" for i in range(16))


def test_push_blob_verifies(tmp_path):
    store = LayoutStore(tmp_path / "l")
    src = tmp_path / "blob"
    src.write_bytes(b"x" * 1000)
    good = "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()
    with pytest.raises(DigestMismatchError, match="size 1000 bytes, expected 999"):
        store.push_blob(src, good, 999)
    with pytest.raises(DigestMismatchError):
        store.push_blob(src, "sha256:" + "0" * 64, 1000)
    assert not store.has_blob(good)
    assert store.push_blob(src, good, 1000) is True
    assert store.push_blob(src, good, 1000) is False
    assert store.blob_path(good).read_bytes() == b"x" * 1000


def test_not_a_layout(tmp_path):
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        LayoutStore(tmp_path).resolve("x")


def test_open_store_default_reference(hello):
    store, _ = open_store(f"oci:{hello}:arm64")
    assert store.resolve().digest == LayoutStore(hello).resolve("arm64").digest
    by_digest, _ = open_store(f"oci:{hello}@{DOCKER_LIST}")
    assert by_digest.resolve().media_type == MediaType.DOCKER_MANIFEST_LIST


def _valid_layout(path) -> dict:
    """What any OCI reader needs: ``oci-layout`` and an ``index.json`` that is an image index."""
    assert json.loads((path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((path / "index.json").read_text())
    assert index["schemaVersion"] == 2 and isinstance(index["manifests"], list)
    assert LayoutStore(path).read_index() == index
    return index


def test_new_layout_has_an_index_before_any_blob(tmp_path):
    store = LayoutStore(tmp_path / "new")
    data = b"blob"
    src = tmp_path / "b"
    src.write_bytes(data)
    store.push_blob(src, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert _valid_layout(tmp_path / "new")["manifests"] == []
    # an older layout without index.json is completed by the next write, tags are never lost
    (tmp_path / "new" / "index.json").unlink()
    store.push_manifest(b"{}", MediaType.OCI_MANIFEST.value, "t1")
    store.push_blob(src, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in _valid_layout(tmp_path / "new")["manifests"]] == ["t1"]


def test_failed_conversion_leaves_a_valid_layout_and_a_retry_succeeds(tmp_path, small_fs):
    """A conversion into a new ``oci:`` directory fails for want of space after the layout was
    created: the directory is still a valid (empty) layout for skopeo and for us, and once
    there is room the same command succeeds."""
    import random
    import subprocess

    from support.imagegen import write_image
    from support.paths import overlaybd_cli, require_tool

    skopeo = require_tool("skopeo")
    src = tmp_path / "src"
    write_image(src, "v1", [{"etc/a": b"a"}, {"data/noise": random.Random(3).randbytes(6 << 20)}])
    disk = small_fs("2m")
    dst = disk / "layout"
    cmd = [*overlaybd_cli(), "convert", f"oci:{src}:v1", f"oci:{dst}:obd", "--oci", "--db-url", "none",
           "--blob-cache", "none", "--work-dir", str(tmp_path / "work")]  # --oci: skopeo skips Docker types
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert failed.returncode == 2 and "no space left on device" in failed.stderr, failed.stderr
    assert _valid_layout(dst)["manifests"] == []
    probe = subprocess.run([skopeo, "inspect", f"oci:{dst}:obd"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "index.json" not in probe.stderr, probe.stderr  # no tag yet, but a layout
    subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)  # room again
    copy = subprocess.run([skopeo, "copy", f"oci:{src}:v1", f"oci:{dst}:plain"], capture_output=True, text=True,
                          check=False)  # skopeo writes into it as into any layout
    assert copy.returncode == 0, copy.stderr
    retry = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert retry.returncode == 0, retry.stderr
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in _valid_layout(dst)["manifests"]]
    assert sorted(names) == ["obd", "plain"]
    inspect = subprocess.run([skopeo, "inspect", f"oci:{dst}:obd"], capture_output=True, text=True, check=False)
    assert inspect.returncode == 0, inspect.stderr
    assert len(json.loads(inspect.stdout)["Layers"]) == 2
