"""The local blob cache (engine/blobcache.py) and the overlapped layer upload (engine/convert.py),
against a real registry behind the fault proxy (its request log shows what was downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.engine.transfer.workspace import file_digest
from overlaybd_provider.oci.errors import NotFoundError, RegistryError
from overlaybd_provider.oci.store import open_store
from test_engine_convert import BASE, MID, TOP_A, TOP_B, judge, make_source, manifest_of

TOP_C = {"app/main": b"print('C')\n", "app/c": b"c" * 5000}


def _blob_gets(proxy, digests) -> list[str]:
    return [d for d in digests for method, path in proxy.seen if method == "GET" and path.endswith(f"/blobs/{d}")]


def _convert(registry, src: str, dst: str, dedup, cache: Path, **opts) -> dict:
    options = ConvertOptions(blob_cache=cache, **opts)
    return convert_image(src, dst, options, src_registry=registry.options(), dst_registry=registry.options(),
                         dedup=dedup).to_json()


def test_cache_hit_avoids_download_and_corrupt_entry_is_refetched(registry, fault_proxy, registry_repo, tmp_path):
    srcs = [make_source(tmp_path, registry, f"{registry_repo}/src-{n}", [BASE, MID, top])
            for n, top in (("a", TOP_A), ("b", TOP_B), ("c", TOP_C))]
    srcs = [s.replace(registry.host, fault_proxy.host, 1) for s in srcs]
    dst = f"{fault_proxy.host}/{registry_repo}/obd"
    cache = tmp_path / "blob-cache"
    dedup = open_dedup(f"sqlite:///{tmp_path / 'dedup.sqlite'}")
    try:
        first = _convert(registry, srcs[0], f"{dst}:a", dedup, cache)
        lowers = [layer["digest"] for layer in first["manifests"][0]["layers"][:2]]
        assert {d for _, _, d in BlobCache(cache).entries()} >= set(lowers)  # built blobs were added

        fault_proxy.clear()
        second = _convert(registry, srcs[1], f"{dst}:b", dedup, cache)
        assert [layer["dedup"] for layer in second["manifests"][0]["layers"]] == ["hit", "hit", "miss"]
        assert _blob_gets(fault_proxy, lowers) == []  # the reused lowers came from the cache
        judge(registry, f"{registry.host}/{registry_repo}/obd:b", tmp_path / "judge-b")

        # Same-size in-place damage of a cache entry: detected, dropped, downloaded again (verified).
        entry = cache / "sha256" / lowers[0].split(":", 1)[1]
        with open(entry, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 16)
        fault_proxy.clear()
        third = _convert(registry, srcs[2], f"{dst}:c", dedup, cache)
        assert third["manifests"][0]["layers"][0]["dedup"] == "hit"
        assert _blob_gets(fault_proxy, lowers) == [lowers[0]]
        assert file_digest(entry)[0] == lowers[0]  # re-added from the verified download
        raw = judge(registry, f"{registry.host}/{registry_repo}/obd:c", tmp_path / "judge-c")
        assert raw.stat().st_size > 0
    finally:
        dedup.close()


def test_blob_cache_lru_bound(tmp_path):
    cache = BlobCache(tmp_path / "c", max_bytes=2500)
    blobs = []
    for i in range(3):
        path = tmp_path / f"b{i}"
        path.write_bytes(bytes([i]) * 1000)
        blobs.append((path, *file_digest(path)))
    cache.put(*blobs[0])
    cache.put(*blobs[1])
    os.utime(cache.root / "sha256" / f"{blobs[0][1][7:]}.json", (1, 1))
    os.utime(cache.root / "sha256" / f"{blobs[1][1][7:]}.json", (2, 2))
    assert cache.get(blobs[0][1], 1000, tmp_path / "out0")  # touches entry 0: entry 1 is now the oldest
    cache.put(*blobs[2])
    assert {d for _, _, d in cache.entries()} == {blobs[0][1], blobs[2][1]}
    assert (tmp_path / "out0").read_bytes() == blobs[0][0].read_bytes()
    assert not cache.get(blobs[1][1], 1000, tmp_path / "out1")
    assert not cache.get(blobs[2][1], 999, tmp_path / "out2")  # wrong size: refused (and dropped)
    assert not (tmp_path / "out2").exists()


def test_upload_failure_fails_cleanly_then_rerun_finishes(registry, fault_proxy, registry_repo, tmp_path,
                                                          mariadb_clean):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, MID, TOP_A])
    dst = f"{fault_proxy.host}/{registry_repo}/obd:v1"
    dedup = open_dedup(mariadb_clean.url)
    work = tmp_path / "work"
    try:
        # Every upload after the push-access probe's and the first layer's fails (not retryable):
        # layer 1's push fails while layer 2 is being built on the main thread.
        fault_proxy.inject("status", 1000, status=400, method="POST", path=r"/blobs/uploads/", skip=2)
        with pytest.raises(RegistryError, match="400"):
            _convert(registry, src, dst, dedup, tmp_path / "cache", work_dir=work)
        assert fault_proxy.faults[0].fired >= 1
        assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layers") == [(1,)]  # recorded after push only
        assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_manifests") == [(0,)]
        store, _ = open_store(f"{registry.host}/{registry_repo}/obd:v1", registry.options())
        try:
            with pytest.raises(NotFoundError):  # nothing tagged
                store.resolve()
        finally:
            store.close()

        fault_proxy.clear()
        again = _convert(registry, src, dst, dedup, tmp_path / "cache", work_dir=work)
        dedups = [layer["dedup"] for layer in again["manifests"][0]["layers"]]
        assert dedups[:2] == ["hit", "local"]  # pushed+recorded; built but not pushed (kept in the work dir)
        assert dedups[2] in ("local", "miss")  # built during the failed push, unless it failed first
        fresh = _convert(registry, src, registry.ref(f"{registry_repo}/fresh", "v1"), None, tmp_path / "cache2")
        assert again["target"]["digest"] == fresh["target"]["digest"]
        assert manifest_of(registry, f"{registry.host}/{registry_repo}/obd:v1")[1] == fresh["target"]["digest"]
    finally:
        dedup.close()


def test_first_layer_is_built_while_a_later_download_is_still_running(registry, fault_proxy, registry_repo,
                                                                       tmp_path):
    """Downloads start together, but a layer is built as soon as its own (and its lowers')
    downloads are done: a slow top-layer download no longer holds back the base layer."""
    src = make_source(tmp_path, registry, f"{registry_repo}/src-slow", [BASE, MID, TOP_A])
    manifest, _ = manifest_of(registry, src)
    top = manifest["layers"][-1]["digest"]
    fault_proxy.inject("delay", 1, method="GET", path=f"/blobs/{top}$", delay=2.0)
    events: list[tuple[int, str]] = []
    convert_image(src.replace(registry.host, fault_proxy.host, 1), f"{fault_proxy.host}/{registry_repo}/obd:slow",
                  ConvertOptions(blob_cache=None), src_registry=registry.options(), dst_registry=registry.options(),
                  progress=lambda e: events.append((e["index"], e["what"])) if e.get("event") == "layer" else None)
    assert events.index((0, "built")) < events.index((2, "downloaded")) < events.index((2, "built"))
    judge(registry, f"{registry.host}/{registry_repo}/obd:slow", tmp_path / "judge-slow")
