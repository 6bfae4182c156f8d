"""``--flatten``: a ten-layer image (whiteouts, opaque dirs, hard links across layers, xattrs,
devices) converted into one overlaybd layer, judged by ``overlaybd verify`` against the ten
source layers, by upstream's reader (``obd-export``) with ``e2fsck -fn`` and by the independent
tar model; deterministic; dedup rows of flattened and native layers never stand in for each other."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import FLATTEN_MARK, ConvertOptions
from overlaybd_provider.oci.layout import LayoutStore
from overlaybd_provider.oci.store import open_store
from support.flatimage import compress_flags, history, write_ten_layers
from support.fsjudge import assert_e2fsck_clean, assert_trees_equal, expected_tree, read_tree
from support.obdimages import index_layout, layer_blobs, tar_layout, verify_cli
from support.paths import overlaybd_cli
from support.registry import push_layout


@pytest.fixture(scope="module")
def ten(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, str]:
    """(the ten tars, the source layout dir, its ``oci:`` reference with a history)."""
    work = tmp_path_factory.mktemp("ten")
    tars = write_ten_layers(work / "tars")
    src = tar_layout(work / "src", "v1", tars, compress=compress_flags(),
                     config_extra={"history": history(), "created": "2023-11-14T22:13:40Z"})
    return tars, work / "src", src


@pytest.fixture(scope="module")
def obd_export(shared_dir: Path):
    """Upstream's reader (``obd-export RAW LAYER...``); skips when absent or it does not start."""
    exe = shared_dir / "oracle" / "bin" / "obd-export"
    if not exe.is_file():
        pytest.skip("the upstream reader oracle (obd-export) is not available")
    probe = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    if "usage" not in (probe.stdout + probe.stderr).lower():
        pytest.skip(f"obd-export does not start here: {(probe.stderr or probe.stdout)[-300:]}")

    def run(raw: Path, layers: list[Path]) -> None:
        proc = subprocess.run([str(exe), str(raw), *map(str, layers)], capture_output=True, text=True,
                              timeout=900, check=False)
        assert proc.returncode == 0, f"upstream's reader refused the flattened layer:\n{proc.stderr[-3000:]}"

    return run


def _cli_convert(src: str, dst: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*overlaybd_cli(), "convert", src, dst, "--blob-cache", "none", "--output-json",
                           str(report), *extra], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def _documents(ref: str) -> tuple[dict, dict]:
    path, _, tag = ref[4:].rpartition(":")
    store = LayoutStore(Path(path))
    data, _mt, _d = store.get_manifest(store.resolve(tag).digest)
    manifest = json.loads(data)
    with store.open_blob(manifest["config"]["digest"]) as f:
        return manifest, json.loads(f.read())


def test_ten_layers_flattened_into_one_verified_and_read_by_upstream(ten, tmp_path: Path, obd_export) -> None:
    tars, _layout, src = ten
    dst = f"oci:{tmp_path / 'flat'}:v1"
    proc = _cli_convert(src, dst, tmp_path / "report.json", "--flatten")
    report = json.loads((tmp_path / "report.json").read_text())
    manifest, config = _documents(dst)

    # one layer; the config's one diff_id is that layer's digest (as for native layers)
    assert len(manifest["layers"]) == 1
    layer = manifest["layers"][0]
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    assert layer["annotations"]["containerd.io/snapshot/overlaybd/blob-digest"] == layer["digest"]
    # history kept: the first layer entry stays, the nine after it are marked, a last entry says why
    hist = config["history"]
    assert [h["created_by"] for h in hist[:11]] == [e["created_by"] for e in history()]
    assert [bool(h.get("empty_layer")) for h in hist] == [True, False] + [True] * 10
    assert hist[-1]["created_by"] == "overlaybd convert --flatten"
    assert hist[-1]["comment"] == "10 layers flattened into one overlaybd layer"
    assert hist[-1]["created"] == "2023-11-14T22:13:30Z"  # the last entry's time, not now

    # the size and layer-count change, in the report and on stderr
    change = report["manifests"][0]["flatten"]
    assert change["source_layers"] == 10 and change["layers"] == 1
    assert change["bytes"] == layer["size"]
    # the 3 MiB file layer 7 deletes is not stored (blocks freed by a later tar are left out)
    assert layer["size"] < 1 << 20 < change["source_bytes"]
    assert change["source_bytes"] == sum(int(p["size"]) for p in _source_layers(ten[1]))
    assert report["options"]["flatten"] is True
    assert report["manifests"][0]["layers"][0]["chain_id"].startswith("flat:sha256:")
    assert "flattened 10 layers (" in proc.stderr and "into 1 (" in proc.stderr

    # overlaybd verify against the ten source layers: identical
    ver = verify_cli(src, dst)
    assert ver.returncode == 0, ver.stdout + ver.stderr
    assert ver.stdout.startswith("0 differences: the image matches its source ("), ver.stdout

    # upstream's reader opens it; e2fsck -fn is clean; the tree is the OCI model of the ten tars
    raw = tmp_path / "upstream.raw"
    obd_export(raw, layer_blobs(dst))
    assert_e2fsck_clean(raw)
    assert_trees_equal(read_tree(raw), expected_tree(tars))

    # deterministic: a second conversion elsewhere writes the same bytes
    again = f"oci:{tmp_path / 'again'}:v1"
    proc2 = subprocess.run([*overlaybd_cli(), "convert", "--flatten", src, again, "--blob-cache", "none"],
                           capture_output=True, text=True, timeout=600, check=False)
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout.strip() == proc.stdout.strip()
    assert _documents(again)[0] == manifest


def test_every_platform_of_an_index_is_flattened_on_its_own(ten, tmp_path: Path) -> None:
    tars, _layout, _src = ten
    src = index_layout(tmp_path / "src", "v1", {"linux/amd64": tars, "linux/arm64": tars[:4]})
    dst = f"oci:{tmp_path / 'dst'}:v1"
    _cli_convert(src, dst, tmp_path / "report.json", "--flatten")
    report = json.loads((tmp_path / "report.json").read_text())
    changes = {m["platform"]: (m["flatten"]["source_layers"], m["flatten"]["layers"]) for m in report["manifests"]}
    assert changes == {"linux/amd64": (10, 1), "linux/arm64": (4, 1)}
    layers = {m["platform"]: m["layers"][0]["digest"] for m in report["manifests"]}
    assert layers["linux/amd64"] != layers["linux/arm64"]  # different chains, different trees
    ver = verify_cli(src, dst)
    assert ver.returncode == 0, ver.stdout + ver.stderr


def _source_layers(layout: Path) -> list[dict]:
    store = LayoutStore(layout)
    data, _mt, _d = store.get_manifest(store.resolve("v1").digest)
    return json.loads(data)["layers"]


def test_a_lying_diff_id_fails_the_flattened_build(ten, tmp_path: Path) -> None:
    """Every source layer is still checked against its diff_id (here layer 4 of 10 lies)."""
    tars, _layout, _src = ten
    src = tar_layout(tmp_path / "src", "v1", tars, compress=compress_flags())
    # swap layer 4's blob for another layer's content while its config keeps the old diff_id
    store = LayoutStore(tmp_path / "src")
    data, _mt, _d = store.get_manifest(store.resolve("v1").digest)
    manifest = json.loads(data)
    other = manifest["layers"][4]
    manifest["layers"][3] = dict(other)
    store.push_manifest(json.dumps(manifest, sort_keys=True).encode(), manifest["mediaType"], "bad")
    proc = subprocess.run([*overlaybd_cli(), "convert", "--flatten", src.rsplit(":", 1)[0] + ":bad",
                           f"oci:{tmp_path / 'dst'}:v1", "--blob-cache", "none"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode != 0
    assert "source layer 4: content sha256:" in proc.stderr
    assert "does not match the config's diff_id" in proc.stderr
    assert json.loads((tmp_path / "dst" / "index.json").read_text())["manifests"] == []  # nothing published


def _convert(registry, src: str, dst: str, dedup, **opts) -> dict:
    return convert_image(src, dst, ConvertOptions(blob_cache_max_bytes=0, **opts), src_registry=registry.options(),
                         dst_registry=registry.options(), dedup=dedup).to_json()


def _manifest(registry, ref: str) -> dict:
    store, reference = open_store(ref, registry.options())
    try:
        data, _, _digest = store.get_manifest(reference.target)
        return json.loads(data)
    finally:
        store.close()


@pytest.fixture
def maria(mariadb_clean):
    store = open_dedup(mariadb_clean.url)
    yield store
    store.close()


def test_flattened_rows_reused_and_never_confused_with_native(ten, registry, registry_repo, maria,
                                                              mariadb_clean) -> None:
    _tars, layout, _src = ten
    src = registry.ref(f"{registry_repo}/src", "v1")
    push_layout(layout, src, registry.options())
    ref = lambda name: registry.ref(f"{registry_repo}/{name}", "v1")  # noqa: E731

    # native first (repo nat): ten rows; then a flatten into the same repo must not take the native top layer
    native = _convert(registry, src, ref("nat"), maria)
    assert [la["dedup"] for la in native["manifests"][0]["layers"]] == ["miss"] * 10
    flat_same = _convert(registry, src, ref("nat"), maria, flatten=True)
    (flat_layer,) = flat_same["manifests"][0]["layers"]
    assert flat_layer["dedup"] == "miss"
    assert flat_layer["digest"] != native["manifests"][0]["layers"][-1]["digest"]
    assert len(_manifest(registry, ref("nat"))["layers"]) == 1

    # a second flatten conversion into another repository reuses the flattened row (mounted)
    flat_other = _convert(registry, src, ref("flat-b"), maria, flatten=True)
    (reused,) = flat_other["manifests"][0]["layers"]
    assert reused["dedup"] == "mount" and reused["digest"] == flat_layer["digest"]
    assert flat_other["target"]["digest"] == flat_same["target"]["digest"]

    # ... and a native conversion there never takes the flattened row: every layer its own
    native_b = _convert(registry, src, ref("flat-b"), maria)
    assert native_b["manifests"][0]["cached"]  # the native manifest row, cross-repository
    assert native_b["target"]["digest"] == native["target"]["digest"] != flat_same["target"]["digest"]
    layers_b = [la["digest"] for la in _manifest(registry, ref("flat-b"))["layers"]]
    assert layers_b == [la["digest"] for la in native["manifests"][0]["layers"]]
    assert flat_layer["digest"] not in layers_b
    # with the manifest rows gone, layer by layer: native rows only (mounted), never the flattened one
    mariadb_clean.query("DELETE FROM overlaybd_manifests")
    native_c = _convert(registry, src, ref("nat-c"), maria)
    assert [la["dedup"] for la in native_c["manifests"][0]["layers"]] == ["mount"] * 10
    assert [la["digest"] for la in native_c["manifests"][0]["layers"]] == layers_b
    flat_c = _convert(registry, src, ref("flat-c"), maria, flatten=True)
    assert [(la["dedup"], la["digest"]) for la in flat_c["manifests"][0]["layers"]] == [("mount", flat_layer["digest"])]

    # the rows: flattened ones under flat:<top chain id>, with a format id that says flattened
    top_chain = native["manifests"][0]["layers"][-1]["chain_id"]
    rows = mariadb_clean.query("SELECT repo, chain_id, data_digest FROM overlaybd_layers WHERE chain_id LIKE 'flat:%%'")
    assert sorted(r[0] for r in rows) == [f"{registry_repo}/{n}" for n in ("flat-b", "flat-c", "nat")]
    assert {r[1] for r in rows} == {"flat:" + top_chain} and {r[2] for r in rows} == {flat_layer["digest"]}
    formats = mariadb_clean.query("SELECT DISTINCT format_id FROM overlaybd_layer_formats WHERE chain_id LIKE 'flat:%%'")
    assert len(formats) == 1 and formats[0][0].endswith("/" + FLATTEN_MARK)
    native_formats = mariadb_clean.query(
        "SELECT DISTINCT format_id FROM overlaybd_layer_formats WHERE chain_id NOT LIKE 'flat:%%'")
    assert len(native_formats) == 1 and FLATTEN_MARK not in native_formats[0][0]
