"""Registry client against a real docker-registry: resolve, manifests, blobs, uploads, mounts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.copy import copy_image
from overlaybd_provider.oci.errors import DigestMismatchError, NotFoundError, RegistryError
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.mediatypes import MediaType
from overlaybd_provider.oci.store import RemoteStore, open_store
from support.imagegen import write_image
from support.registry import push_layout


@pytest.fixture
def hello(fixtures_dir, tmp_path):
    dest = tmp_path / "hello"
    shutil.copytree(fixtures_dir / "hello-world-oci", dest)
    return dest


def _blob(tmp_path, size, name="blob"):
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest(), data


@pytest.mark.parametrize(
    ("tag", "media_type"),
    [
        ("amd64-converted", MediaType.OCI_MANIFEST),
        ("amd64", MediaType.DOCKER_MANIFEST),
        ("docker-list", MediaType.DOCKER_MANIFEST_LIST),
    ],
)
def test_resolve_each_media_type(registry, registry_repo, hello, tag, media_type):
    src = LayoutStore(hello)
    want = src.resolve(tag)
    report = push_layout(hello, registry.ref(registry_repo, tag), registry.options(), tag)
    assert report.descriptor.digest == want.digest
    store, ref = open_store(registry.ref(registry_repo, tag), registry.options())
    desc = store.resolve(ref.target)
    assert (desc.media_type, desc.digest, desc.size) == (media_type, want.digest, want.size)
    assert store.resolve(want.digest).digest == want.digest
    data, got_type, digest = store.get_manifest(want.digest)
    assert (got_type, digest) == (media_type, want.digest)
    assert data == src.get_manifest(tag)[0]


def test_oci_index_round_trip(registry, registry_repo, tmp_path):
    layout = tmp_path / "img"
    amd = write_image(layout, "amd", [{"f": b"amd"}])
    arm = write_image(layout, "arm", [{"f": b"arm"}], arch="arm64")
    index = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX.value, "manifests": [
        {**amd.to_dict(), "platform": {"architecture": "amd64", "os": "linux"}},
        {**arm.to_dict(), "platform": {"architecture": "arm64", "os": "linux"}},
    ]}
    data = json.dumps(index, separators=(",", ":")).encode()
    top = LayoutStore(layout).push_manifest(data, MediaType.OCI_INDEX.value, "multi")
    push_layout(layout, registry.ref(registry_repo, "multi"), registry.options(), "multi")
    store, _ = open_store(registry.ref(registry_repo, "multi"), registry.options())
    desc = store.resolve("multi")
    assert (desc.media_type, desc.digest) == (MediaType.OCI_INDEX, top.digest)
    # children were pushed by digest, only the index is tagged
    assert store.resolve(arm.digest).media_type == MediaType.OCI_MANIFEST
    assert store.client.list_tags(store.repository) == ["multi"]
    # and back into a fresh layout
    back = LayoutStore(tmp_path / "back")
    copy_image(store, back, "multi", "again")
    assert back.resolve("again").digest == top.digest


def test_blob_push_fetch_open_exists(registry, registry_repo, tmp_path):
    client = RegistryClient(registry.host, registry.options(chunk_size=64 << 10))
    store = RemoteStore(client, registry_repo)
    small, small_digest, small_data = _blob(tmp_path, 1000, "small")
    big, big_digest, big_data = _blob(tmp_path, 300_001, "big")  # 5 PATCH chunks
    assert not store.has_blob(small_digest)
    assert store.push_blob(small, small_digest, 1000) is True
    assert store.push_blob(small, small_digest, 1000) is False  # HEAD says it exists
    assert store.push_blob(big, big_digest, 300_001) is True
    assert client.blob_size(registry_repo, big_digest) == 300_001
    out = tmp_path / "out" / "big"
    assert store.fetch_blob(big_digest, out, 300_001) == 300_001
    assert out.read_bytes() == big_data
    with store.open_blob(small_digest, 1000) as f:
        assert f.read() == small_data
    with pytest.raises(DigestMismatchError, match="expected 999"):
        store.fetch_blob(small_digest, tmp_path / "bad", 999)
    assert not (tmp_path / "bad").exists()
    client.delete_blob(registry_repo, small_digest)
    assert not store.has_blob(small_digest)
    with pytest.raises(NotFoundError):
        store.fetch_blob(small_digest, tmp_path / "gone")


def test_push_wrong_digest_is_refused_before_commit(registry, registry_repo, tmp_path):
    client = RegistryClient(registry.host, registry.options(chunk_size=64 << 10))
    for size in (1000, 200_000):
        path, digest, _ = _blob(tmp_path, size)
        wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
        with pytest.raises(DigestMismatchError) as info:
            client.push_blob(registry_repo, path, wrong, size)
        assert info.value.want == wrong and info.value.got == digest
        assert not client.blob_exists(registry_repo, wrong)
        assert not client.blob_exists(registry_repo, digest)
        with pytest.raises(DigestMismatchError, match="size"):
            client.push_blob(registry_repo, path, digest, size + 1)


def test_unverified_push_of_a_wrong_digest_is_refused_by_the_registry(registry, registry_repo, tmp_path):
    """``verify=False`` (a layer we just sealed: its digest computed while writing it) skips our
    second hash, not the registry's: a file that changed since is refused, nothing committed."""
    client = RegistryClient(registry.host, registry.options(chunk_size=64 << 10))
    for size in (1000, 200_000):  # one PUT, chunked PATCHes
        path, digest, _ = _blob(tmp_path, size)
        wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
        with pytest.raises(RegistryError) as refused:
            client.push_blob(registry_repo, path, wrong, size, verify=False)
        assert refused.value.status == 400 and "DIGEST_INVALID" in str(refused.value)
        assert not client.blob_exists(registry_repo, wrong)
        assert not client.blob_exists(registry_repo, digest)
        assert client.push_blob(registry_repo, path, digest, size, verify=False) is True
        assert client.blob_exists(registry_repo, digest)


def test_cross_repo_mount_and_cross_registry_copy(registry, auth_registry, registry_repo, tmp_path):
    path, digest, data = _blob(tmp_path, 5000)
    src = RemoteStore(RegistryClient(registry.host, registry.options()), registry_repo + "-src")
    src.push_blob(path, digest, 5000)
    same = RemoteStore(RegistryClient(registry.host, registry.options()), registry_repo + "-dst")
    assert same.mount_blob(digest, 5000, src) is True  # mounted, nothing uploaded
    assert same.has_blob(digest)
    other = RemoteStore(RegistryClient(auth_registry.host, auth_registry.options()), registry_repo)
    assert other.mount_blob(digest, 5000, src) is False  # streamed across registries
    out = tmp_path / "o"
    other.fetch_blob(digest, out, 5000)
    assert out.read_bytes() == data
    assert other.mount_blob(digest, 5000, src) is True  # now present
    # a mount the registry declines (unknown source) falls back to upload
    path2, digest2, _ = _blob(tmp_path, 100, "b2")
    LayoutStore(tmp_path / "lay").push_blob(path2, digest2, 100)
    assert same.client.mount_blob(same.repository, digest2, "test/nothing-here") is False
    assert same.mount_blob(digest2, 100, LayoutStore(tmp_path / "lay")) is False
    assert same.has_blob(digest2)


def test_push_manifest_by_digest_tag_and_delete(registry, registry_repo, tmp_path):
    layout = tmp_path / "img"
    desc = write_image(layout, "v1", [{"x": b"1"}], docker=True)
    push_layout(layout, registry.ref(registry_repo, "v1"), registry.options(), "v1")
    store, _ = open_store(registry.ref(registry_repo, "v1"), registry.options())
    store.tag(desc.digest, "v2")
    assert store.client.list_tags(registry_repo) == ["v1", "v2"]
    data, media_type, _ = store.get_manifest("v2")
    assert media_type == MediaType.DOCKER_MANIFEST
    by_digest = store.push_manifest(data, media_type)
    assert by_digest.digest == desc.digest
    store.client.delete_manifest(registry_repo, desc.digest)
    with pytest.raises(NotFoundError, match="not found"):
        store.resolve("v1")
    with pytest.raises(DigestMismatchError):
        store.client.push_manifest(registry_repo, data + b" ", media_type, desc.digest)


def test_manifest_digest_verified_on_get(registry, registry_repo, tmp_path):
    layout = tmp_path / "img"
    desc = write_image(layout, "v1", [{"x": b"1"}])
    push_layout(layout, registry.ref(registry_repo, "v1"), registry.options(), "v1")
    client = RegistryClient(registry.host, registry.options())
    data, _, digest = client.get_manifest(registry_repo, "v1")
    assert digest == desc.digest and hashlib.sha256(data).hexdigest() == desc.digest[7:]
    with pytest.raises(NotFoundError) as info:
        client.get_manifest(registry_repo, "sha256:" + "0" * 64)
    assert info.value.status == 404 and "MANIFEST_UNKNOWN" in info.value.codes
    assert "MANIFEST_UNKNOWN" in str(info.value)


def test_download_to_a_full_disk_names_the_destination(registry, registry_repo, tmp_path, small_fs):
    from overlaybd_provider.errors import StorageError

    data = os.urandom(3 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client = RegistryClient(registry.host, registry.options())
    client.push_blob(registry_repo, src, digest, len(data))
    full = small_fs("1m")
    dest = full / "layer.tar.gz"
    with pytest.raises(StorageError) as info:
        client.fetch_blob(registry_repo, digest, dest, len(data))
    assert str(info.value) == f"no space left on device writing {dest}" and info.value.path == str(dest)
    assert list(full.iterdir()) == []  # the temporary file is gone
    with pytest.raises(StorageError, match=r"^no space left on device writing .*/blobs/sha256/"):
        LayoutStore(full / "layout").push_blob(src, digest, len(data))
