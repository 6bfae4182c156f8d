"""Issue #14, the engine part: ``overlaybd convert --turbo-oci`` registry→registry (and to an OCI
layout) on a real registry and MariaDB, judged by upstream's reader, e2fsck and the OCI model of
the source layers; dedup through the same tables; bad input refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.formats.turbo import ANN_TARGET_DIGEST, ANN_VERSION, TURBO_VERSION
from overlaybd_provider.oci.store import open_store
from support.fsjudge import assert_e2fsck_clean, assert_trees_equal, expected_tree, export_stack, read_tree
from support.registry import push_layout

from .conftest import assert_user_error
from .imagesrc import OCI_GZIP, OCI_TAR, OCI_ZSTD, feature_tars, write_layout


def one_error_line(proc, *needles: str) -> str:
    """Exit 2 and exactly one ``overlaybd: error:`` line (progress lines may precede it), no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("overlaybd: error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]

TURBO_ARTIFACT = "application/vnd.containerd.overlaybd.turbo.v1+json"


def _tars(tmp_path: Path) -> list[bytes]:
    return feature_tars()


def publish(tmp_path: Path, registry, repo: str, tars: list[bytes], media_types: list[str], tag="v1") -> str:
    layout = tmp_path / f"src-{repo.replace('/', '_')}"
    write_layout(layout, tag, tars, media_types)
    ref = registry.ref(repo, tag)
    push_layout(layout, ref, registry.options())
    return ref


def run(registry, src: str, dst: str, dedup=None, **opts) -> dict:
    opts.setdefault("output", "turbo-oci")
    opts.setdefault("blob_cache_max_bytes", 0)  # every run downloads: nothing shared through a cache
    return convert_image(src, dst, ConvertOptions(**opts), src_registry=registry.options(),
                         dst_registry=registry.options(), dedup=dedup).to_json()


def documents(registry, ref: str) -> tuple[dict, dict]:
    store, reference = open_store(ref, registry.options())
    try:
        data, _, digest = store.get_manifest(reference.target)
        manifest = json.loads(data)
        manifest["_digest"] = digest
        cfg = manifest["config"]
        with store.open_blob(cfg["digest"], cfg["size"]) as f:
            config = json.loads(f.read())
        return manifest, config
    finally:
        store.close()


def fetch_stack(registry, ref: str, manifest: dict, dest: Path, prefix: str = "turbo-blob:") -> list[str]:
    """Layer specs of the converted image, bottom first, every blob read from the *destination*
    repository (the source layers must be there too)."""
    store, _ = open_store(ref, registry.options())
    specs = []
    try:
        for i, layer in enumerate(manifest["layers"]):
            blob = dest / f"layer{i}.blob"
            store.fetch_blob(layer["digest"], blob, layer["size"])
            target = (layer.get("annotations") or {}).get(ANN_TARGET_DIGEST)
            if target is None:
                specs.append(str(blob))
                continue
            source = dest / f"source{i}.blob"
            store.fetch_blob(target, source)
            specs.append(f"{prefix}{blob},{source}")
    finally:
        store.close()
    return specs


def tar_files(tmp_path: Path, tars: list[bytes]) -> list[Path]:
    paths = []
    for i, tar in enumerate(tars):
        p = tmp_path / f"model{i}.tar"
        p.write_bytes(tar)
        paths.append(p)
    return paths


@pytest.fixture
def maria(mariadb_clean):
    store = open_dedup(mariadb_clean.url)
    yield store
    store.close()


def test_registry_to_registry_turbo_oci_judged_by_upstream_and_deduplicated(
        registry, registry_repo, tmp_path, maria, mariadb_clean, obd_export):
    # the image: whiteouts, opaque dirs, hard links across layers, xattrs, PAX nanosecond
    # mtimes, a 20 000-entry directory and a 150 MiB file
    tars = feature_tars(wide=20_000, kept=150 << 20)
    src = publish(tmp_path, registry, registry_repo, tars, [OCI_GZIP, OCI_GZIP, OCI_TAR])
    dst = registry.ref(f"{registry_repo}-turbo", "v1")
    report = run(registry, src, dst, dedup=maria, oci=True)
    assert report["format"] == "turbo-oci"
    layers = report["manifests"][0]["layers"]
    assert [layer["kind"] for layer in layers] == ["turbo"] * 3
    assert [layer["dedup"] for layer in layers] == ["miss"] * 3
    assert report["savings"]["meta_bytes"] < report["savings"]["source_bytes"]

    manifest, config = documents(registry, dst)
    src_manifest, _ = documents(registry, src)
    for ours, theirs in zip(manifest["layers"], src_manifest["layers"], strict=True):
        ann = ours["annotations"]
        assert ours["mediaType"] == OCI_GZIP
        assert ann[ANN_VERSION] == TURBO_VERSION
        assert ann[ANN_TARGET_DIGEST] == theirs["digest"]
        assert ann["containerd.io/snapshot/overlaybd/turbo-oci/target-media-type"] == theirs["mediaType"]
    # the config's diff_ids are the uncompressed meta tars (upstream's UploadImage)
    import gzip
    import hashlib

    specs = fetch_stack(registry, dst, manifest, tmp_path)
    metas = [Path(s.split(":", 1)[1].split(",")[0]) for s in specs]
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(gzip.decompress(m.read_bytes())).hexdigest() for m in metas]

    raw = tmp_path / "upstream.raw"
    obd_export(raw, specs)  # upstream's reader opens our stack with sources read from DST
    assert_e2fsck_clean(raw)
    expected = expected_tree(tar_files(tmp_path, tars))
    assert "/usr/bin/tool2" in expected and "/var/cache/a" not in expected and "/var/cache/c" in expected
    assert expected["/srv/large.bin"].size == 150 << 20
    assert sum(1 for path in expected if path.startswith("/wide/")) == 20_000 - 1  # one whited out
    assert_trees_equal(read_tree(raw), expected)
    ours = export_stack([s.replace("turbo-blob:", "turbo:") for s in specs], tmp_path / "ours.raw")
    assert_trees_equal(read_tree(ours), expected)  # our own reader agrees

    # same digests on every run (dedup off: everything rebuilt)
    again = run(registry, src, registry.ref(f"{registry_repo}-again", "v1"), oci=True)
    assert again["target"]["digest"] == report["target"]["digest"]
    assert [layer["digest"] for layer in again["manifests"][0]["layers"]] == [layer["digest"] for layer in layers]

    # rows in the same tables, told apart from native ones by the format id
    formats = {row[0] for row in mariadb_clean.query("SELECT format_id FROM overlaybd_layer_formats")}
    assert formats and all("-turbo" in f for f in formats), formats
    assert len(mariadb_clean.query("SELECT * FROM overlaybd_layers")) == 3

    # another repository: every layer reused from the DB, and its source layers are readable there
    mariadb_clean.query("DELETE FROM overlaybd_manifests")  # force the per-layer path
    other = registry.ref(f"{registry_repo}-other", "v1")
    third = run(registry, src, other, dedup=maria, oci=True)
    assert [layer["dedup"] for layer in third["manifests"][0]["layers"]] == ["mount"] * 3
    assert third["target"]["digest"] == report["target"]["digest"]
    m3, _ = documents(registry, other)
    (tmp_path / "other").mkdir()
    assert len(fetch_stack(registry, other, m3, tmp_path / "other")) == 3  # sources fetched from -other

    # a native conversion of the same source into the same repository is not served by turbo rows
    native = convert_image(src, registry.ref(f"{registry_repo}-turbo", "native"),
                           ConvertOptions(oci=True, blob_cache_max_bytes=0),
                           src_registry=registry.options(), dst_registry=registry.options(),
                           dedup=maria).to_json()
    assert [layer["dedup"] for layer in native["manifests"][0]["layers"]] == ["miss"] * 3


def test_referrer_and_layout_destination_holds_the_source_layers(registry, registry_repo, tmp_path, obd_export):
    tars = _tars(tmp_path)
    src = publish(tmp_path, registry, registry_repo, tars, [OCI_GZIP, OCI_TAR, OCI_GZIP])
    layout = tmp_path / "out"
    report = run(registry, src, f"oci:{layout}:turbo", referrer=True)
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == report["target"]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / report["target"]["digest"][7:]).read_bytes())
    assert manifest["artifactType"] == TURBO_ARTIFACT
    src_manifest, _ = documents(registry, src)
    assert manifest["subject"]["digest"] == src_manifest["_digest"]
    specs = []
    for layer, source in zip(manifest["layers"], src_manifest["layers"], strict=True):
        path = layout / "blobs/sha256" / source["digest"][7:]
        assert path.is_file(), "the original layer must be in the layout"
        specs.append(f"turbo-blob:{layout / 'blobs/sha256' / layer['digest'][7:]},{path}")
    raw = tmp_path / "layout.raw"
    obd_export(raw, specs)
    assert_e2fsck_clean(raw)
    assert_trees_equal(read_tree(raw), expected_tree(tar_files(tmp_path, tars)))


def test_zstd_layer_gets_a_native_layer_in_the_same_image(registry, registry_repo, tmp_path, obd_export):
    tars = _tars(tmp_path)
    src = publish(tmp_path, registry, registry_repo, tars, [OCI_GZIP, OCI_ZSTD, OCI_GZIP])
    dst = registry.ref(f"{registry_repo}-turbo", "v1")
    report = run(registry, src, dst)
    assert [layer["kind"] for layer in report["manifests"][0]["layers"]] == ["turbo", "overlaybd", "turbo"]
    manifest, config = documents(registry, dst)
    middle = manifest["layers"][1]
    assert ANN_TARGET_DIGEST not in middle["annotations"]
    assert middle["annotations"][ANN_VERSION] == "0.1.0"
    assert config["rootfs"]["diff_ids"][1] == middle["digest"]
    specs = fetch_stack(registry, dst, manifest, tmp_path)
    raw = tmp_path / "mixed.raw"
    obd_export(raw, specs)
    assert_e2fsck_clean(raw)
    assert_trees_equal(read_tree(raw), expected_tree(tar_files(tmp_path, tars)))


def _tag_missing(registry, repo: str, tag: str) -> bool:
    r = requests.get(f"{registry.url}/v2/{repo}/manifests/{tag}", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return r.status_code == 404


def test_erofs_with_turbo_oci_is_refused(cli, tmp_path):
    proc = cli("convert", "--turbo-oci", "--fstype", "erofs", "oci:/nonexistent:v1", f"oci:{tmp_path}/o:v1")
    assert_user_error(proc, "--fstype erofs with --turbo-oci is not supported yet")
    proc = cli("convert", "--turbo-oci-destination", f"oci:{tmp_path}/t:v1", "--fstype", "erofs",
               "oci:/nonexistent:v1", f"oci:{tmp_path}/o:v1")
    assert_user_error(proc, "--fstype erofs with --turbo-oci is not supported yet")
    assert not (tmp_path / "o").exists()


def test_flatten_with_turbo_oci_is_refused(cli, tmp_path):
    """A TurboOCIv1 layer indexes the data of one source layer: there is nothing to flatten into."""
    for flags in (["--turbo-oci"], ["--turbo-oci-destination", f"oci:{tmp_path}/t:v1"]):
        proc = cli("convert", "--flatten", *flags, "oci:/nonexistent:v1", f"oci:{tmp_path}/o:v1")
        assert_user_error(proc, "--flatten cannot be combined with --turbo-oci or --turbo-oci-destination")
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def test_corrupt_gzip_source_is_one_line_and_nothing_tagged(cli, registry, registry_repo, tmp_path):
    tars = _tars(tmp_path)
    layout = tmp_path / "bad"
    write_layout(layout, "v1", tars, [OCI_GZIP, OCI_GZIP, OCI_TAR])
    # corrupt the middle of layer 1's deflate stream, then re-address it (digest and size honest)
    manifest_path = _only_manifest(layout)
    manifest = json.loads(manifest_path.read_bytes())
    layer = manifest["layers"][1]
    blob = bytearray((layout / "blobs/sha256" / layer["digest"][7:]).read_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0x5A
    _replace_blob(layout, 1, bytes(blob))
    src = registry.ref(registry_repo, "v1")
    push_layout(layout, src, registry.options())
    dst_repo = f"{registry_repo}-turbo"
    proc = cli("convert", "--turbo-oci", "--db-url", "none", "--blob-cache", "none", "--plain-http",
               src, registry.ref(dst_repo, "v1"))
    line = one_error_line(proc, "layer 1", "corrupt gzip")
    assert "/tmp/" not in line
    assert _tag_missing(registry, dst_repo, "v1")


def test_target_digest_mismatch_is_one_line_and_nothing_written(cli, tmp_path):
    """An OCI-layout source whose layer file no longer has the digest its manifest names."""
    tars = _tars(tmp_path)
    layout = tmp_path / "lying"
    write_layout(layout, "v1", tars, [OCI_GZIP, OCI_GZIP, OCI_TAR])
    manifest = json.loads(_only_manifest(layout).read_bytes())
    victim = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    data = bytearray(victim.read_bytes())
    data[-9] ^= 1  # the gzip trailer's CRC: still a gzip, other bytes
    victim.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = cli("convert", "--turbo-oci", "--db-url", "none", "--blob-cache", "none", f"oci:{layout}:v1",
               f"oci:{out}:v1")
    one_error_line(proc, manifest["layers"][0]["digest"])
    assert not (out / "index.json").exists() or json.loads((out / "index.json").read_text())["manifests"] == []


def _only_manifest(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    return layout / "blobs/sha256" / index["manifests"][0]["digest"][7:]


def _replace_blob(layout: Path, i: int, blob: bytes) -> None:
    """Swap layer ``i`` of the only image for ``blob`` (new digest and size in the manifest)."""
    import hashlib

    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    manifest = json.loads(_only_manifest(layout).read_bytes())
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    (layout / "blobs/sha256" / digest[7:]).write_bytes(blob)
    manifest["layers"][i].update(digest=digest, size=len(blob))
    data = json.dumps(manifest, separators=(",", ":")).encode()
    mdigest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / mdigest[7:]).write_bytes(data)
    index["manifests"][0].update(digest=mdigest, size=len(data))
    index_path.write_text(json.dumps(index))


def test_both_formats_from_one_pass_equal_the_single_format_runs(registry, registry_repo, tmp_path, maria):
    """``--turbo-oci-destination``: one download and one parse per layer, and the same native and
    TurboOCI digests as a native-only and a TurboOCI-only run (dedup off for those)."""
    tars = _tars(tmp_path)
    src = publish(tmp_path, registry, registry_repo, tars, [OCI_GZIP, OCI_TAR, OCI_ZSTD])
    native_only = run(registry, src, registry.ref(f"{registry_repo}-n1", "v1"), output="overlaybd")
    turbo_only = run(registry, src, registry.ref(f"{registry_repo}-t1", "v1"))
    events: list[dict] = []
    report = convert_image(src, registry.ref(f"{registry_repo}-n2", "v1"),
                           ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t2", "v1"),
                                          blob_cache_max_bytes=0),
                           src_registry=registry.options(), dst_registry=registry.options(), dedup=maria,
                           progress=events.append).to_json()
    assert report["target"]["digest"] == native_only["target"]["digest"]
    assert report["turbo"]["target"]["digest"] == turbo_only["target"]["digest"]
    assert report["format"] == "overlaybd" and report["turbo"]["format"] == "turbo-oci"
    assert [layer["kind"] for layer in report["turbo"]["manifests"][0]["layers"]] == ["turbo", "turbo", "overlaybd"]
    downloads = [e for e in events if e.get("what") == "downloaded"]
    assert len(downloads) == 3, downloads  # each source layer downloaded once for both images
    one_pass = [e["index"] for e in events if "one pass" in str(e.get("what"))]
    assert sorted(one_pass) == [0, 0, 1, 1]  # gzip and tar layers: one parse for both (zstd: native twice)
    manifest, _ = documents(registry, registry.ref(f"{registry_repo}-t2", "v1"))
    assert len(fetch_stack(registry, registry.ref(f"{registry_repo}-t2", "v1"), manifest, tmp_path)) == 3
    # again with the DB: everything reused, same digests
    again = convert_image(src, registry.ref(f"{registry_repo}-n2", "v1"),
                          ConvertOptions(output="both", turbo_destination=registry.ref(f"{registry_repo}-t2", "v1"),
                                          blob_cache_max_bytes=0),
                          src_registry=registry.options(), dst_registry=registry.options(), dedup=maria).to_json()
    assert again["turbo"]["target"]["digest"] == turbo_only["target"]["digest"]
    assert again["manifests"][0]["cached"] and again["turbo"]["manifests"][0]["cached"]


def test_cli_turbo_oci_and_both(cli, registry, registry_repo, tmp_path):
    src = publish(tmp_path, registry, registry_repo, _tars(tmp_path), [OCI_GZIP, OCI_GZIP, OCI_TAR])
    out = tmp_path / "report.json"
    proc = cli("convert", "--turbo-oci", "--plain-http", "--db-url", "none", "--blob-cache", "none",
               "--output-json", out, src, registry.ref(f"{registry_repo}-cli", "turbo"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["format"] == "turbo-oci" and proc.stdout.split() == [report["target"]["digest"]]
    proc = cli("convert", "--turbo-oci-destination", registry.ref(f"{registry_repo}-cli", "turbo2"), "--plain-http",
               "--db-url", "none", "--blob-cache", "none", "--output-json", out, src,
               registry.ref(f"{registry_repo}-cli", "native"))
    assert proc.returncode == 0, proc.stderr
    both = json.loads(out.read_text())
    assert proc.stdout.split() == [both["target"]["digest"], both["turbo"]["target"]["digest"]]
    assert both["turbo"]["target"]["digest"] == report["target"]["digest"]
    proc = cli("convert", "--turbo-oci", "--turbo-oci-destination", "x/y:z", src, "x/y:w")
    assert_user_error(proc, "use one of them")


def test_multi_arch_index_and_platform_filter(registry, registry_repo, tmp_path, obd_export):
    """An index of two platforms becomes an index of two TurboOCI manifests (``--oci``), each
    readable by upstream; ``--platform`` keeps one."""
    from overlaybd_provider.oci.layout import LayoutStore

    layout = tmp_path / "multi"
    tars = _tars(tmp_path)
    amd = write_layout(layout, "amd", tars, [OCI_GZIP, OCI_GZIP, OCI_TAR], arch="amd64")
    arm = write_layout(layout, "arm", tars[:2], [OCI_GZIP, OCI_TAR], arch="arm64")
    store = LayoutStore(layout)
    children = []
    for digest, arch in ((amd, "amd64"), (arm, "arm64")):
        data = (layout / "blobs/sha256" / digest[7:]).read_bytes()
        children.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                         "size": len(data), "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": children}, separators=(",", ":")).encode()
    store.push_manifest(index, "application/vnd.oci.image.index.v1+json", "multi")
    src = registry.ref(registry_repo, "multi")
    push_layout(layout, src, registry.options(), src_ref="multi")
    dst = registry.ref(f"{registry_repo}-turbo", "multi")
    report = run(registry, src, dst, oci=True)
    assert [m["platform"] for m in report["manifests"]] == ["linux/amd64", "linux/arm64"]
    assert all(layer["kind"] == "turbo" for m in report["manifests"] for layer in m["layers"])
    r = requests.get(f"{registry.url}/v2/{registry_repo}-turbo/manifests/multi", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    top = r.json()
    assert [c["platform"]["architecture"] for c in top["manifests"]] == ["amd64", "arm64"]
    arm_ref = f"{registry.host}/{registry_repo}-turbo@{top['manifests'][1]['digest']}"
    manifest, _ = documents(registry, arm_ref)
    (tmp_path / "arm").mkdir()
    specs = fetch_stack(registry, arm_ref, manifest, tmp_path / "arm")
    raw = tmp_path / "arm.raw"
    obd_export(raw, specs)
    assert_e2fsck_clean(raw)
    assert_trees_equal(read_tree(raw), expected_tree(tar_files(tmp_path, tars[:2])))
    one = run(registry, src, registry.ref(f"{registry_repo}-arm", "v1"), oci=True, platforms=("linux/arm64",))
    assert [m["platform"] for m in one["manifests"]] == ["linux/arm64"]
    assert one["manifests"][0]["digest"] == top["manifests"][1]["digest"]


def test_another_registry_gets_copies_of_the_source_layers(registry, auth_registry, registry_repo, tmp_path,
                                                           obd_export):
    """DST on another registry (with credentials): no mount is possible, the source layers are
    copied there, and the image reads from DST alone."""
    tars = _tars(tmp_path)
    src = publish(tmp_path, registry, registry_repo, tars, [OCI_GZIP, OCI_GZIP, OCI_TAR])
    dst = auth_registry.ref(f"{registry_repo}-copy", "v1")
    report = convert_image(src, dst, ConvertOptions(output="turbo-oci", blob_cache_max_bytes=0),
                           src_registry=registry.options(), dst_registry=auth_registry.options()).to_json()
    assert report["format"] == "turbo-oci"
    manifest, _ = documents(auth_registry, dst)
    specs = fetch_stack(auth_registry, dst, manifest, tmp_path)  # every blob, sources too, from DST
    raw = tmp_path / "copy.raw"
    obd_export(raw, specs)
    assert_e2fsck_clean(raw)
    assert_trees_equal(read_tree(raw), expected_tree(tar_files(tmp_path, tars)))


def test_a_lying_diff_id_is_refused_and_nothing_is_recorded(registry, registry_repo, tmp_path, maria,
                                                             mariadb_clean):
    """The config claims another diff_id for layer 1: the TurboOCI build checks the content as the
    native build does, fails naming the layer, and no row (layer or manifest) is written."""
    import hashlib

    from overlaybd_provider.ext4.errors import DiffIdMismatchError

    tars = _tars(tmp_path)
    layout = tmp_path / "lying-config"
    write_layout(layout, "v1", tars, [OCI_GZIP, OCI_GZIP, OCI_TAR],
                 diff_id_lies={1: "sha256:" + hashlib.sha256(b"not this layer").hexdigest()})
    src = registry.ref(registry_repo, "v1")
    push_layout(layout, src, registry.options())
    with pytest.raises(DiffIdMismatchError, match="layer 1"):
        run(registry, src, registry.ref(f"{registry_repo}-turbo", "v1"), dedup=maria)
    recorded = mariadb_clean.query("SELECT chain_id FROM overlaybd_layers")
    assert len(recorded) <= 1  # layer 0 may be recorded (verified), never layer 1 or above
    assert not mariadb_clean.query("SELECT * FROM overlaybd_manifests")
    assert _tag_missing(registry, f"{registry_repo}-turbo", "v1")
