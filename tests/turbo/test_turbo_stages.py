"""TurboOCI through the stage API (what the Airflow stage operators run): pull → build → push →
record hand over through JSON and the registry; output ``both`` gives the digests of the
one-process conversion; a source layer gone between build and push fails the push cleanly."""

from __future__ import annotations

import json

import pytest
import requests
from overlaybd_provider.engine import stages
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.turbo.documents import SourceLayerMissing

from .imagesrc import OCI_GZIP, OCI_TAR, OCI_ZSTD, feature_tars
from .test_turbo_engine import publish


def _stages(registry, src: str, dst: str, options: ConvertOptions, dedup=None) -> dict:
    reg = {"src_registry": registry.options(), "dst_registry": registry.options()}
    conv = stages.pull(src, dst, options=options, dedup=dedup, **reg)
    conv = json.loads(json.dumps(conv))  # XCom: JSON only
    conv = stages.build(conv, dedup=dedup, **reg)
    conv = stages.push(json.loads(json.dumps(conv)), **reg)
    return stages.record(conv, dedup=dedup)


def test_both_through_the_stages_equals_one_process(registry, registry_repo, tmp_path, mariadb_clean):
    src = publish(tmp_path, registry, registry_repo, feature_tars(), [OCI_GZIP, OCI_ZSTD, OCI_TAR])
    opts = {"blob_cache_max_bytes": 0}
    one = convert_image(src, registry.ref(f"{registry_repo}-n1", "v1"),
                        ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t1", "v1"),
                                       **opts),
                        src_registry=registry.options(), dst_registry=registry.options()).to_json()
    store = open_dedup(mariadb_clean.url)
    try:
        conv = _stages(registry, src, registry.ref(f"{registry_repo}-n2", "v1"),
                       ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t2", "v1"),
                                      **opts), dedup=store)
        report = stages.report(conv)
        assert report["target"]["digest"] == one["target"]["digest"]
        assert report["turbo"]["target"]["digest"] == one["turbo"]["target"]["digest"]
        assert conv["recorded"] == {"layers_recorded": 6, "manifests_recorded": 2}
        kinds = sorted((b.get("format", "overlaybd"), b["kind"]) for b in conv["built"])
        assert kinds == [("overlaybd", "overlaybd")] * 3 + [("turbo-oci", "overlaybd"), ("turbo-oci", "turbo"),
                                                            ("turbo-oci", "turbo")]
        # a second run of the stages: both manifests from the cache
        again = _stages(registry, src, registry.ref(f"{registry_repo}-n2", "v1"),
                        ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t2", "v1"),
                                       **opts), dedup=store)
        assert again["manifests_cached"] == 1
        assert stages.report(again)["turbo"]["manifests"][0]["cached"]
    finally:
        store.close()


def test_a_source_layer_gone_between_build_and_push_fails_the_push_and_tags_nothing(
        registry, registry_repo, tmp_path):
    src = publish(tmp_path, registry, registry_repo, feature_tars(), [OCI_GZIP, OCI_GZIP, OCI_TAR])
    dst_repo = f"{registry_repo}-turbo"
    reg = {"src_registry": registry.options(), "dst_registry": registry.options()}
    conv = stages.pull(src, registry.ref(dst_repo, "v1"), options=ConvertOptions(output="turbo-oci"), **reg)
    conv = stages.build(conv, **reg)
    gone = conv["plan"]["images"][0]["layers"][1]["source_digest"]
    r = requests.delete(f"{registry.url}/v2/{registry_repo}/blobs/{gone}", timeout=10)
    assert r.status_code == 202, r.text
    with pytest.raises(SourceLayerMissing) as err:
        stages.push(conv, **reg)
    text = str(err.value)
    assert "\n" not in text and gone in text and "layer 1" in text
    r = requests.get(f"{registry.url}/v2/{dst_repo}/manifests/v1", timeout=10,
                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status_code == 404  # nothing tagged
