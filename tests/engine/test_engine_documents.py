"""Options, chain ids, Go JSON marshalling and converted documents against upstream's bytes."""

from __future__ import annotations

import hashlib
import json

import pytest
from overlaybd_provider.engine.documents import gotypes
from overlaybd_provider.engine.documents import manifests as mf
from overlaybd_provider.engine.documents.jsonenc import GoStruct, go_marshal
from overlaybd_provider.engine.options import ConvertOptions, OptionsError, parse_fstype, parse_platforms
from overlaybd_provider.engine.plan.chain import chain_ids, uuid_from_chain_id

HW_LAYER = "sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d"


def blob(fixtures_dir, digest: str) -> bytes:
    return (fixtures_dir / "hello-world-oci" / "blobs" / "sha256" / digest.split(":")[-1]).read_bytes()


def test_chain_ids_and_uuids():
    a, b = "sha256:" + "7af54f0e0391d18cd3f9d7b2018ba1133ea4faca80bf166a0de4efa4f523b5b7", (
        "sha256:995315c292ffa60ab10c8479be899ff5cba21e918202f2e69028089449086e97"
    )
    # upstream-2layer/layers.txt
    assert chain_ids([a, b]) == [a, "sha256:da1d10a5ea6035cdd18ced792945e392a1d38bebedcf15c435fa79e825700259"]
    assert uuid_from_chain_id(chain_ids([a, b])[1]) == "da1d10a5-ea60-35cd-d18c-ed792945e392"
    assert uuid_from_chain_id("sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1") == (
        "01bb4fce-3eb1-b56b-05ad-f99504dafd31"
    )


def test_fstype_parsing():
    assert parse_fstype("ext4").annotation is None
    f = parse_fstype("ext4;discard,noatime;-N 5000 -m0 -i 8192")
    assert f.mount_options == "discard,noatime"
    assert f.mkfs_kwargs() == {"inodes_count": 5000, "reserved_percent": 0, "inode_ratio": 8192}
    assert f.annotation == "ext4;discard,noatime;-N 5000 -m0 -i 8192"
    assert parse_fstype("ext4;;").mkfs_options == ()
    with pytest.raises(OptionsError, match="'xfs' is not supported"):
        parse_fstype("xfs")
    with pytest.raises(OptionsError, match="'-O' is not supported"):
        parse_fstype("ext4;;-O ^has_journal")
    with pytest.raises(OptionsError, match="needs a value"):
        parse_fstype("ext4;;-N")
    with pytest.raises(OptionsError, match="out of range"):
        parse_fstype("ext4;;-m 90")


def test_options_bundle():
    o = ConvertOptions(referrer=True, platforms=("linux/arm64,linux/amd64", "linux/amd64"))
    assert o.oci is True
    assert o.platforms == ("linux/amd64", "linux/arm64")
    assert o.layer_format_id() != ConvertOptions(algorithm="zstd").layer_format_id()
    assert o.layer_format_id() == ConvertOptions().layer_format_id()  # referrer changes manifests only
    assert o.manifest_format_id() != ConvertOptions().manifest_format_id()
    for bad in ({"algorithm": "gzip"}, {"block_size_kb": 3}, {"vsize_gb": 0}, {"concurrency_limit": 0}):
        with pytest.raises(OptionsError):
            ConvertOptions(**bad)
    with pytest.raises(OptionsError):
        parse_platforms(["linux"])


def test_go_marshal_rules():
    doc = GoStruct([("b", "<a&b>\u2028\x01\b\f\n\"\\é"), ("a", {"z": 1, "a": [True, None], "é": {}})])
    assert go_marshal(doc) == (
        b'{"b":"\\u003ca\\u0026b\\u003e\\u2028\\u0001\\b\\f\\n\\"\\\\\xc3\xa9",'
        b'"a":{"a":[true,null],"z":1,"\xc3\xa9":{}}}'
    )


def test_go_unmarshal_semantics():
    image = gotypes.unmarshal(gotypes.IMAGE, b'{"Architecture":"arm64","os":"linux","OS":"x","created":'
                              b'"2023-01-02T03:04:05.100000000+00:00","config":{"Env":["A"]},'
                              b'"config":{"Cmd":["b"]},"extra":1,"rootfs":{"type":"layers","diff_ids":null}}', "t")
    assert image["architecture"] == "arm64"
    assert image["os"] == "x"  # later duplicate (case-insensitive) wins
    assert image["created"] == "2023-01-02T03:04:05.1Z"
    assert image["config"]["Env"] == ["A"] and image["config"]["Cmd"] == ["b"]  # struct merge
    out = go_marshal(gotypes.to_go(gotypes.IMAGE, image))
    assert out == (b'{"created":"2023-01-02T03:04:05.1Z","architecture":"arm64","os":"x",'
                   b'"config":{"Env":["A"],"Cmd":["b"]},"rootfs":{"type":"layers","diff_ids":null}}')
    assert gotypes.normalize_time("2020-01-01T00:00:00.000+08:00", "t") == "2020-01-01T00:00:00+08:00"
    with pytest.raises(gotypes.GoDecodeError):
        gotypes.unmarshal(gotypes.MANIFEST, b'{"schemaVersion":"2"}', "m")
    with pytest.raises(gotypes.GoDecodeError):
        gotypes.unmarshal(gotypes.IMAGE, b'{"created":"yesterday"}', "c")


def test_config_and_manifest_match_upstream_bytes(fixtures_dir):
    """hello-world amd64: our config and manifest for upstream's layer are upstream's bytes."""
    index = json.loads((fixtures_dir / "hello-world-oci" / "index.json").read_text())
    refs = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in index["manifests"]}
    source = blob(fixtures_dir, refs["amd64"]["digest"])
    expected = blob(fixtures_dir, refs["amd64-converted"]["digest"])
    src_manifest = json.loads(source)
    config = mf.build_config(blob(fixtures_dir, src_manifest["config"]["digest"]), [HW_LAYER])
    exp_manifest = json.loads(expected)
    assert config == blob(fixtures_dir, exp_manifest["config"]["digest"])
    layer = mf.layer_descriptor(HW_LAYER, 642560, oci=True)
    manifest = mf.build_manifest(source, mf.Descriptor.of(mf.media_types(True)["config"], config), [layer],
                                 oci=True)
    assert manifest == expected
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == refs["amd64-converted"]["digest"]


def test_index_and_referrer(fixtures_dir):
    index = json.loads((fixtures_dir / "hello-world-oci" / "index.json").read_text())
    lst = next(m for m in index["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == "docker-list")
    data = blob(fixtures_dir, lst["digest"])
    parsed = mf.parse_index(data)
    children = mf.select_children(parsed, ("linux/arm",))
    assert [mf.platform_string(c) for _, c in children] == ["linux/arm/v5", "linux/arm/v7"]
    new = mf.Descriptor(mf.OCI_MANIFEST, "sha256:" + "e" * 64, 9)
    out = json.loads(mf.build_index(data, {i: new for i, _ in children}, oci=True,
                                    subject=mf.Descriptor(lst["mediaType"], lst["digest"], lst["size"])))
    assert out["mediaType"] == mf.OCI_INDEX
    assert out["artifactType"] == mf.ARTIFACT_TYPE
    assert out["subject"] == {"mediaType": lst["mediaType"], "digest": lst["digest"], "size": lst["size"]}
    assert [m["platform"]["variant"] for m in out["manifests"]] == ["v5", "v7"]
    assert all(m["digest"] == new.digest and m["mediaType"] == mf.OCI_MANIFEST for m in out["manifests"])
    # docker list kept as such without --oci
    assert json.loads(mf.build_index(data, {0: new}, oci=False))["mediaType"] == mf.DOCKER_LIST


def test_attestations_dropped(caplog):
    data = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + "2" * 64, "size": 1,
         "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}).encode()
    assert [i for i, _ in mf.select_children(mf.parse_index(data))] == [0]
    assert "attestation" in caplog.text
