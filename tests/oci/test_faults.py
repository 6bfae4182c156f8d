"""Retries and integrity through a fault-injecting proxy in front of the real registry."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from overlaybd_provider.oci.client import RegistryClient
from overlaybd_provider.oci.copy import copy_image
from overlaybd_provider.oci.errors import DigestMismatchError, NotFoundError, RegistryUnavailableError
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.retry import RetryState
from overlaybd_provider.oci.store import RemoteStore
from support.imagegen import write_image
from support.registry import push_layout


@pytest.fixture
def image(registry, registry_repo, tmp_path):
    """An image in the real registry and a client that reaches it through the proxy."""
    layout = tmp_path / "src"
    desc = write_image(layout, "v1", [{"a": os.urandom(40_000)}, {"b": b"second layer"}])
    push_layout(layout, registry.ref(registry_repo, "v1"), registry.options(), "v1")
    return desc


def _client(registry, proxy, **kw):
    return RegistryClient(proxy.host, registry.options(**kw))


def test_5xx_then_success(registry, fault_proxy, registry_repo, image):
    fault_proxy.inject("status", 2, method="GET", path="/manifests/", status=500)
    fault_proxy.inject("status", 1, method="HEAD", path="/manifests/", status=503)
    client = _client(registry, fault_proxy)
    assert client.resolve(registry_repo, "v1").digest == image.digest
    assert client.get_manifest(registry_repo, "v1")[2] == image.digest
    assert [f.fired for f in fault_proxy.faults] == [2, 1]


def test_429_honours_retry_after(registry, fault_proxy, registry_repo, image):
    fault_proxy.inject("status", 1, method="HEAD", status=429, retry_after="1")
    client = _client(registry, fault_proxy, retry_backoff=0.0)
    t0 = time.monotonic()
    assert client.resolve(registry_repo, "v1").digest == image.digest
    assert time.monotonic() - t0 >= 0.95


def test_connection_resets_then_success(registry, fault_proxy, registry_repo, image, tmp_path):
    fault_proxy.inject("reset", 2, method="HEAD")
    fault_proxy.inject("reset", 1, method="GET", path="/blobs/")
    client = _client(registry, fault_proxy)
    assert client.resolve(registry_repo, "v1").digest == image.digest
    store = RemoteStore(client, registry_repo)
    back = LayoutStore(tmp_path / "back")
    copy_image(store, back, "v1", "v1")
    assert back.resolve("v1").digest == image.digest


def test_cut_download_resumes_with_range(registry, fault_proxy, registry_repo, image, tmp_path):
    client = _client(registry, fault_proxy)
    manifest = client.get_manifest(registry_repo, "v1")[0]
    layer = json.loads(manifest)["layers"][0]
    fault_proxy.clear()
    fault_proxy.inject("cut", 1, method="GET", path="/blobs/sha256")
    out = tmp_path / "layer"
    assert client.fetch_blob(registry_repo, layer["digest"], out, layer["size"]) == layer["size"]
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == layer["digest"]
    blob_gets = [p for m, p in fault_proxy.seen if m == "GET" and "/blobs/" in p]
    assert len(blob_gets) == 2


def test_upload_survives_patch_and_put_failures(registry, fault_proxy, registry_repo, tmp_path):
    client = _client(registry, fault_proxy, chunk_size=32 << 10)
    data = os.urandom(150_000)
    path = tmp_path / "big"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fault_proxy.inject("status", 1, method="POST", status=502)
    fault_proxy.inject("status", 2, method="PATCH", status=500)
    fault_proxy.inject("reset", 1, method="PATCH")
    fault_proxy.inject("status", 1, method="PUT", status=503)
    assert client.push_blob(registry_repo, path, digest, len(data)) is True
    assert all(f.count == 0 for f in fault_proxy.faults)
    direct = RegistryClient(registry.host, registry.options())
    out = tmp_path / "out"
    direct.fetch_blob(registry_repo, digest, out, len(data))
    assert out.read_bytes() == data
    small = tmp_path / "small"
    small.write_bytes(b"monolithic")
    fault_proxy.inject("reset", 1, method="PUT")
    assert client.push_blob(registry_repo, small, "sha256:" + hashlib.sha256(b"monolithic").hexdigest(), 10)


def test_retry_budget_exhausted_is_a_clear_error(registry, fault_proxy, registry_repo, image):
    fault_proxy.inject("status", 100, method="HEAD", status=503)
    client = _client(registry, fault_proxy, max_retries=2)
    with pytest.raises(RegistryUnavailableError) as info:
        client.resolve(registry_repo, "v1")
    message = str(info.value)
    assert "gave up after 3 attempt(s)" in message and "503" in message
    assert info.value.status == 503 and info.value.method == "HEAD"
    fault_proxy.clear()
    fault_proxy.inject("reset", 100)
    with pytest.raises(RegistryUnavailableError, match=r"gave up after 3 attempt\(s\).*Connection"):
        client.resolve(registry_repo, "v1")
    # time budget: a long Retry-After beyond the budget stops at once
    fault_proxy.clear()
    fault_proxy.inject("status", 100, status=429, retry_after="30")
    quick = _client(registry, fault_proxy, max_retries=10, retry_budget=2.0)
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="429"):
        quick.resolve(registry_repo, "v1")
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("kind", ["corrupt", "truncate"])
def test_bad_blob_bytes_fail_and_tag_nothing(registry, fault_proxy, registry_repo, image, tmp_path, kind):
    client = _client(registry, fault_proxy)
    store = RemoteStore(client, registry_repo)
    fault_proxy.inject(kind, 100, method="GET", path="/blobs/sha256")
    dest = LayoutStore(tmp_path / "dest")
    with pytest.raises(DigestMismatchError) as info:
        copy_image(store, dest, "v1", "copied")
    assert info.value.algorithm == "sha256" and info.value.got != info.value.want
    assert not (tmp_path / "dest" / "index.json").exists() or dest.index_entries() == []
    assert not list((tmp_path / "dest").rglob("*.partial"))
    # and registry to registry: the destination tag never appears
    other = RemoteStore(RegistryClient(registry.host, registry.options()), registry_repo + "-copy")
    with pytest.raises(DigestMismatchError):
        copy_image(store, other, "v1", "copied")
    try:
        tags = other.client.list_tags(other.repository)
    except NotFoundError:
        tags = []
    assert tags == []


def test_slow_answer_times_out_and_is_retried(registry, fault_proxy, registry_repo, image):
    fault_proxy.inject("delay", 1, method="HEAD", delay=3.0)
    client = _client(registry, fault_proxy, timeout=0.5)
    t0 = time.monotonic()
    assert client.resolve(registry_repo, "v1").digest == image.digest
    assert time.monotonic() - t0 < 2.5
    assert [m for m, _ in fault_proxy.seen].count("HEAD") == 2


@pytest.mark.parametrize("limit", [1, 3])
def test_per_registry_concurrency_limit(registry, fault_proxy, registry_repo, image, limit):
    fault_proxy.hold = 0.1
    clients = [_client(registry, fault_proxy, concurrency=limit) for _ in range(2)]  # limit is per registry
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda i: clients[i % 2].resolve(registry_repo, "v1").digest, range(8)))
    assert digests == [image.digest] * 8
    assert fault_proxy.max_inflight == limit


def test_retry_budget_is_restored_by_new_progress_only():
    """A long transfer gets its attempts back when it confirms bytes it never had; a restart that
    only re-covers old ground (distribution discards an upload after a lost answer) does not."""
    state = RetryState(max_retries=2, budget=60.0, backoff=0.0, max_delay=0.0)
    assert state.wait() and state.wait() and state.attempts == 2
    state.progress(16 << 20)
    assert state.attempts == 0 and state.wait() and state.wait()
    state.progress(8 << 20)  # behind the furthest point: nothing restored
    assert not state.wait()


def test_registry_failing_every_second_request(registry, fault_proxy, registry_repo, image, tmp_path):
    """Every 2nd request answers 503: each retry must be able to land on a good one. Pull
    (resolve, manifests, blobs), monolithic and chunked pushes, and a manifest push all pass."""
    fault_proxy.inject("status", 100_000, every=2, status=503)
    client = _client(registry, fault_proxy, retry_backoff=0.01, retry_max_delay=0.05, chunk_size=32 << 10)
    store = RemoteStore(client, registry_repo)
    back = LayoutStore(tmp_path / "back")
    copy_image(store, back, "v1", "v1")  # pull
    assert back.resolve("v1").digest == image.digest
    for n, size in enumerate((150_000, 5_000)):  # POST + 5 PATCHes + PUT / one PUT
        data = os.urandom(size)
        path = tmp_path / f"blob{n}"
        path.write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert client.push_blob(registry_repo + "-push", path, digest, size) is True
        out = tmp_path / f"back{n}"
        RegistryClient(registry.host, registry.options()).fetch_blob(registry_repo + "-push", digest, out, size)
        assert out.read_bytes() == data
    copy_image(back, RemoteStore(client, registry_repo + "-copy"), "v1", "copied")  # push a whole image
    direct = RegistryClient(registry.host, registry.options())
    assert direct.resolve(registry_repo + "-copy", "copied").digest == image.digest
    assert fault_proxy.faults[0].fired > 10


def test_conversion_through_a_registry_failing_every_second_request(registry, fault_proxy, registry_repo, image,
                                                                     tmp_path):
    from overlaybd_provider.engine.convert import convert_image
    from overlaybd_provider.engine.options import ConvertOptions

    fault_proxy.inject("status", 100_000, every=2, status=503)
    options = registry.options(retry_backoff=0.01, retry_max_delay=0.05)
    report = convert_image(f"{fault_proxy.host}/{registry_repo}:v1", f"{fault_proxy.host}/{registry_repo}-obd:v1",
                           ConvertOptions(work_dir=tmp_path / "work", blob_cache=None), src_registry=options,
                           dst_registry=options)
    direct = RegistryClient(registry.host, registry.options())
    assert direct.resolve(registry_repo + "-obd", "v1").digest == report.target["digest"]
    assert fault_proxy.faults[0].fired > 10
