"""End-to-end conversions against a real registry and a real MariaDB (dedup), judged by e2fsck,
debugfs and skopeo."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.oci.store import open_store
from support.fsjudge import assert_e2fsck_clean, export_stack
from support.imagegen import write_image
from support.paths import overlaybd_cli, require_tool
from support.registry import push_layout

BASE = {"etc/os-release": b"NAME=test\n", "bin/tool": bytes(range(256)) * 4096, "usr/share/doc/a": b"doc" * 999}
MID = {"etc/app.conf": b"x=1\n", "usr/lib/libfoo.so": hashlib.sha256(b"foo").digest() * 30000}
TOP_A = {"app/main": b"print('A')\n"}
TOP_B = {"app/main": b"print('B')\n", "app/extra": b"more"}


def make_source(tmp_path: Path, registry, repo: str, layers: list[dict[str, bytes]], *, tag: str = "v1") -> str:
    layout = tmp_path / f"layout-{repo.replace('/', '_')}-{tag}"
    write_image(layout, tag, layers)
    ref = registry.ref(repo, tag)
    push_layout(layout, ref, registry.options())
    return ref


def manifest_of(registry, ref: str) -> tuple[dict, str]:
    store, reference = open_store(ref, registry.options())
    try:
        data, _, digest = store.get_manifest(reference.target)
        return json.loads(data), digest
    finally:
        store.close()


def fetch_layers(registry, ref: str, manifest: dict, dest: Path) -> list[Path]:
    store, _ = open_store(ref, registry.options())
    paths = []
    try:
        for i, layer in enumerate(manifest["layers"]):
            path = dest / f"layer{i}.blob"
            store.fetch_blob(layer["digest"], path, layer["size"])
            paths.append(path)
    finally:
        store.close()
    return paths


def judge(registry, ref: str, tmp_path: Path) -> Path:
    """Export the converted stack and check it with ``e2fsck -fn``; returns the raw image."""
    manifest, _ = manifest_of(registry, ref)
    blobs = fetch_layers(registry, ref, manifest, tmp_path)
    raw = export_stack(blobs, tmp_path / "stack.raw")
    assert_e2fsck_clean(raw)
    return raw


def debugfs_cat(raw: Path, path: str) -> bytes:
    return subprocess.run([require_tool("debugfs"), "-R", f"cat {path}", str(raw)], check=True,
                          capture_output=True).stdout


def convert(registry, src: str, dst: str, dedup=None, **opts) -> dict:
    report = convert_image(src, dst, ConvertOptions(**opts), src_registry=registry.options(),
                           dst_registry=registry.options(), dedup=dedup)
    return report.to_json()


@pytest.fixture
def maria(mariadb_clean):
    store = open_dedup(mariadb_clean.url)
    yield store
    store.close()


def test_three_layers_then_shared_base_is_mounted(registry, registry_repo, tmp_path, maria, mariadb_clean):
    src_a = make_source(tmp_path, registry, f"{registry_repo}/src-a", [BASE, MID, TOP_A])
    src_b = make_source(tmp_path, registry, f"{registry_repo}/src-b", [BASE, MID, TOP_B])
    dst_a, dst_b = registry.ref(f"{registry_repo}/obd-a", "v1"), registry.ref(f"{registry_repo}/obd-b", "v1")

    rep_a = convert(registry, src_a, dst_a, maria)
    layers_a = rep_a["manifests"][0]["layers"]
    assert [layer["dedup"] for layer in layers_a] == ["miss"] * 3
    manifest, digest = manifest_of(registry, dst_a)
    assert digest == rep_a["target"]["digest"]
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in layers_a]
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar"
        assert layer["annotations"] == {
            "containerd.io/snapshot/overlaybd/blob-digest": layer["digest"],
            "containerd.io/snapshot/overlaybd/blob-size": str(layer["size"]),
            "containerd.io/snapshot/overlaybd/version": "0.1.0",
        }
    rows = mariadb_clean.query("SELECT repo, chain_id, data_digest FROM overlaybd_layers ORDER BY chain_id")
    assert {(r[1], r[2]) for r in rows} == {(layer["chain_id"], layer["digest"]) for layer in layers_a}
    raw = judge(registry, dst_a, tmp_path)
    assert debugfs_cat(raw, "/app/main") == TOP_A["app/main"]
    assert debugfs_cat(raw, "/usr/lib/libfoo.so") == MID["usr/lib/libfoo.so"]

    rep_b = convert(registry, src_b, dst_b, maria)
    layers_b = rep_b["manifests"][0]["layers"]
    assert [layer["dedup"] for layer in layers_b] == ["mount", "mount", "miss"]
    assert [layer["digest"] for layer in layers_b[:2]] == [layer["digest"] for layer in layers_a[:2]]
    assert layers_b[2]["digest"] != layers_a[2]["digest"]
    assert layers_b[0]["bytes_out"] == 0  # not rebuilt
    (tmp_path / "b").mkdir()
    raw_b = judge(registry, dst_b, tmp_path / "b")
    assert debugfs_cat(raw_b, "/app/extra") == b"more"

    # the same conversion with no dedup at all gives the same digest (reproducible)
    rep_b2 = convert(registry, src_b, registry.ref(f"{registry_repo}/obd-b2", "v1"), None)
    assert rep_b2["target"]["digest"] == rep_b["target"]["digest"]
    assert [layer["dedup"] for layer in rep_b2["manifests"][0]["layers"]] == ["miss"] * 3

    # stale row: the blob is gone from the registry -> row deleted, layer rebuilt, recorded again
    top_digest = layers_b[2]["digest"]
    store, ref = open_store(dst_b, registry.options())
    store.client.delete_blob(ref.repository, top_digest)
    store.close()
    maria.delete_manifest(registry.host, ref.repository, rep_b["manifests"][0]["source_digest"],
                          "application/vnd.docker.distribution.manifest.v2+json", rep_b["target"]["digest"])
    rep_b3 = convert(registry, src_b, dst_b, maria)
    assert [layer["dedup"] for layer in rep_b3["manifests"][0]["layers"]] == ["hit", "hit", "miss"]
    assert rep_b3["target"]["digest"] == rep_b["target"]["digest"]
    assert mariadb_clean.query("SELECT data_digest FROM overlaybd_layers WHERE repo=%s AND chain_id=%s",
                               (ref.repository, layers_b[2]["chain_id"])) == [(top_digest,)]

    # manifest cache: same repo -> no layer work; other repo -> mounted manifest
    again = convert(registry, src_a, dst_a, maria)
    assert again["manifests"][0]["cached"] and again["target"]["digest"] == rep_a["target"]["digest"]
    other = convert(registry, src_a, registry.ref(f"{registry_repo}/obd-a2", "v2"), maria)
    assert other["manifests"][0]["cached"] and other["target"]["digest"] == rep_a["target"]["digest"]
    assert manifest_of(registry, registry.ref(f"{registry_repo}/obd-a2", "v2"))[1] == rep_a["target"]["digest"]


def test_oci_referrer_and_skopeo(registry, registry_repo, tmp_path):
    skopeo = require_tool("skopeo")
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, TOP_A])
    _, src_digest = manifest_of(registry, src)
    for flags, name in (({"fstype": "ext4;discard;-N 4096"}, "docker"), ({"oci": True, "referrer": True}, "oci")):
        dst = registry.ref(f"{registry_repo}/{name}", "v1")
        convert(registry, src, dst, None, **flags)
        manifest, _ = manifest_of(registry, dst)
        if name == "oci":
            assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
            assert manifest["artifactType"] == "application/vnd.containerd.overlaybd.native.v1+json"
            assert manifest["subject"]["digest"] == src_digest
            assert all(layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar" for layer in manifest["layers"])
            assert "containerd.io/snapshot/overlaybd/blob-fs-type" not in manifest["layers"][0]["annotations"]
        else:  # mount options -> blob-fs-type annotation; mkfs -N honoured
            assert {layer["annotations"]["containerd.io/snapshot/overlaybd/blob-fs-type"]
                    for layer in manifest["layers"]} == {"ext4;discard;-N 4096"}
            raw = judge(registry, dst, tmp_path)
            head = subprocess.run([require_tool("dumpe2fs"), "-h", str(raw)], capture_output=True, text=True).stdout
            inodes = int(next(line.split(":")[1] for line in head.splitlines() if line.startswith("Inode count")))
            assert 4096 <= inodes <= 8192  # rounded up to whole inode-table blocks per group (default: 4M)
        out = subprocess.run([skopeo, "inspect", "--tls-verify=false", f"docker://{dst}"], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Layers"] == [layer["digest"] for layer in manifest["layers"]]
        copy = subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{dst}",
                               f"oci:{tmp_path / ('copy-' + name)}:x"], capture_output=True, text=True)
        assert copy.returncode == 0, copy.stderr


def test_hello_world_manifest_list(registry, registry_repo, tmp_path, fixtures_dir):
    layout = tmp_path / "hello"
    shutil.copytree(fixtures_dir / "hello-world-oci", layout)
    for p in layout.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    layout.chmod(0o755)
    dst = registry.ref(f"{registry_repo}/hello", "latest")
    report = convert(registry, f"oci:{layout}:docker-list", dst, None)
    index, digest = manifest_of(registry, dst)
    assert digest == report["target"]["digest"]
    src_index = json.loads((layout / "blobs/sha256/726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d").read_bytes())
    assert index["mediaType"] == src_index["mediaType"]
    assert [m["platform"] for m in index["manifests"]] == [m["platform"] for m in src_index["manifests"]]
    assert all(m["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json" for m in index["manifests"])
    amd64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    ours, _ = manifest_of(registry, registry.ref(f"{registry_repo}/hello", "x").replace(":x", "@" + amd64["digest"]))
    upstream = json.loads((layout / "blobs/sha256/42caa56a19e082b872d43f645bb392e25c9e78bce429755bd709fac598265f88").read_bytes())

    def shape(doc):
        if isinstance(doc, dict):
            return {k: ("*" if k in ("digest", "size", "containerd.io/snapshot/overlaybd/blob-digest",
                                     "containerd.io/snapshot/overlaybd/blob-size") else shape(v))
                    for k, v in doc.items()}
        if isinstance(doc, list):
            return [shape(v) for v in doc]
        return doc.replace("vnd.oci.image.manifest.v1", "vnd.docker.distribution.manifest.v2").replace(
            "vnd.oci.image.config.v1", "vnd.docker.container.image.v1").replace(
            "vnd.oci.image.layer.v1.tar", "vnd.docker.image.rootfs.diff.tar") if isinstance(doc, str) else doc

    assert shape(ours) == shape(upstream)
    assert list(ours) == list(upstream) and list(ours["layers"][0]) == list(upstream["layers"][0])
    amd64_dir = tmp_path / "amd64"
    amd64_dir.mkdir()
    blobs = fetch_layers(registry, dst, ours, amd64_dir)
    raw = export_stack(blobs, amd64_dir / "stack.raw")
    assert_e2fsck_clean(raw)
    with gzip.open(layout / "blobs/sha256/719385e32844401d57ecfd3eacab360bf551a1491c05b85806ed8f1b08d792f6") as f:
        import tarfile

        with tarfile.open(fileobj=f) as tf:
            hello = tf.extractfile("hello").read()
    assert debugfs_cat(raw, "/hello") == hello

    # --platform filter (os/arch matches every variant), OCI index
    sub = convert(registry, f"oci:{layout}:docker-list", registry.ref(f"{registry_repo}/hello-arm", "v1"), None,
                  platforms=("linux/arm64,linux/arm",), oci=True)
    assert [m["platform"] for m in sub["manifests"]] == ["linux/arm/v5", "linux/arm/v7", "linux/arm64/v8"]
    sub_index, _ = manifest_of(registry, registry.ref(f"{registry_repo}/hello-arm", "v1"))
    assert sub_index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"].get("variant") for m in sub_index["manifests"]] == ["v5", "v7", "v8"]


def test_cli_output_json_and_sqlite_default(registry, registry_repo, tmp_path):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, TOP_B])
    dst = registry.ref(f"{registry_repo}/obd", "v1")
    env = {**os.environ, "OVERLAYBD_DEDUP_DB": str(tmp_path / "dedup.db")}
    out_json = tmp_path / "report.json"
    cmd = [*overlaybd_cli(), "convert", src, dst, "--plain-http", "--output-json", str(out_json), "--oci"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    assert proc.stdout.strip() == report["target"]["digest"]
    assert report["target"]["media_type"] == "application/vnd.oci.image.manifest.v1+json"
    assert report["options"]["oci"] is True
    layers = report["manifests"][0]["layers"]
    assert [layer["index"] for layer in layers] == [0, 1]
    assert all(layer["dedup"] == "miss" and layer["bytes_in"] > 0 and layer["bytes_out"] > 0 for layer in layers)
    assert "layer 2/2" in proc.stderr and "B/s)" in proc.stderr and ": built " in proc.stderr
    import sqlite3

    rows = sqlite3.connect(tmp_path / "dedup.db").execute("SELECT chain_id, data_digest FROM overlaybd_layers").fetchall()
    assert sorted(rows) == sorted((layer["chain_id"], layer["digest"]) for layer in layers)
    # obdconv alias, second run: manifest cache hit
    again = subprocess.run([*overlaybd_cli(), "convert", src, dst, "--plain-http", "--oci", "--output-json",
                            str(out_json)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(out_json.read_text())["manifests"][0]["cached"] is True
    bad = subprocess.run([*overlaybd_cli(), "convert", src, dst, "--plain-http", "--fstype", "xfs"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "overlaybd: error: --fstype 'xfs' is not supported" in bad.stderr


def _cli(src: str, dst: str, db_url: str, *extra: str) -> list[str]:
    return [*overlaybd_cli(), "convert", src, dst, "--plain-http", "--db-url", db_url, *extra]


def test_concurrent_conversions_both_succeed(registry, registry_repo, tmp_path, mariadb_clean):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, MID, TOP_A])
    dst = registry.ref(f"{registry_repo}/obd", "v1")
    procs = [subprocess.Popen(_cli(src, dst, mariadb_clean.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    assert manifest_of(registry, dst)[1] == outs[0][0].strip()


def test_kill_9_then_rerun_completes(registry, registry_repo, tmp_path, mariadb_clean):
    big = {f"data/f{i}": hashlib.sha256(str(i).encode()).digest() * 65536 for i in range(3)}
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, big, MID, TOP_A])
    dst = registry.ref(f"{registry_repo}/obd", "v1")
    proc = subprocess.Popen(_cli(src, dst, mariadb_clean.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # the child creates the tables itself: they may not exist yet
            if mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layer_formats")[0][0] >= 1:
                break
        except Exception as exc:  # "table does not exist" until the child creates it
            if "doesn't exist" not in str(exc):
                raise
        time.sleep(0.01)
    assert proc.poll() is None, "conversion finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_manifests") == [(0,)]  # killed mid-way
    out_json = tmp_path / "r.json"
    rerun = subprocess.run(_cli(src, dst, mariadb_clean.url, "--output-json", str(out_json)), capture_output=True,
                           text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(out_json.read_text())
    assert report["manifests"][0]["layers"][0]["dedup"] == "hit"  # pushed+recorded work reused
    direct = convert(registry, src, registry.ref(f"{registry_repo}/fresh", "v1"), None)
    assert report["target"]["digest"] == direct["target"]["digest"]
    assert manifest_of(registry, dst)[1] == direct["target"]["digest"]


def test_no_upload_and_dump(registry, registry_repo, tmp_path):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [TOP_A])
    dst = registry.ref(f"{registry_repo}/never", "v1")
    report = convert_image(src, dst, ConvertOptions(no_upload=True, dump_manifest=True),
                           src_registry=registry.options(), dst_registry=registry.options())
    digest = report.target["digest"]
    assert json.loads(report.documents[digest])["schemaVersion"] == 2
    store, _ = open_store(dst, registry.options())
    try:
        assert not store.has_blob(report.manifests[0].layers[0].digest)
    finally:
        store.close()
