"""Hardening of the engine against lying sources, stale dedup rows, refusing targets and
least-privilege databases (issue #11), on a real registry and a real MariaDB."""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import pytest
import requests
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import DedupError, open_dedup
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.errors import OverlaybdError
from overlaybd_provider.oci.errors import AuthError
from support.imagegen import tar_layer, write_image
from support.registry import push_layout
from test_engine_convert import debugfs_cat, judge, manifest_of

BASE = {"bin/sh": b"#!real shell\n" * 100, "etc/os-release": b"NAME=victim-base\n"}
EVIL = {"bin/sh": b"#!attacker shell\n" * 100, "etc/os-release": b"NAME=victim-base\n"}
APP = {"app/main": b"print('app')\n"}


def diff_id(files: dict[str, bytes]) -> str:
    return "sha256:" + hashlib.sha256(gzip.decompress(tar_layer(files))).hexdigest()


def publish(tmp_path: Path, registry, repo: str, layers, **kwargs) -> str:
    layout = tmp_path / f"src-{repo.replace('/', '_')}"
    write_image(layout, "v1", layers, **kwargs)
    ref = registry.ref(repo, "v1")
    push_layout(layout, ref, registry.options())
    return ref


def run(registry, src: str, dst: str, dedup=None, progress=None, **opts):
    return convert_image(src, dst, ConvertOptions(**opts), src_registry=registry.options(),
                         dst_registry=registry.options(), dedup=dedup, progress=progress)


@pytest.fixture
def maria_store(mariadb_clean):
    store = open_dedup(mariadb_clean.url)
    yield store
    store.close()


def test_a_lying_diff_id_is_refused_and_cannot_poison_another_repository(
        registry, registry_repo, tmp_path, maria_store, mariadb_clean):
    """An attacker's image claims the victim base layer's diff_id with other content: its
    conversion fails naming both digests, records nothing, and the victim's later conversion on
    the same host builds its own /bin/sh instead of mounting the attacker's."""
    attacker = publish(tmp_path, registry, f"{registry_repo}-attacker", [EVIL, APP],
                       claim_diff_ids={0: diff_id(BASE)})
    with pytest.raises(OverlaybdError) as err:
        run(registry, attacker, registry.ref(f"{registry_repo}-attacker", "obd"), dedup=maria_store)
    message = str(err.value)
    assert f"layer 0: content {diff_id(EVIL)} does not match the config's diff_id {diff_id(BASE)}" in message
    assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layers") == [(0,)]

    victim = publish(tmp_path, registry, f"{registry_repo}-victim", [BASE, APP])
    report = run(registry, victim, registry.ref(f"{registry_repo}-victim", "obd"), dedup=maria_store)
    assert [layer.dedup for layer in report.manifests[0].layers] == ["miss", "miss"]
    raw = judge(registry, registry.ref(f"{registry_repo}-victim", "obd"), tmp_path)
    assert debugfs_cat(raw, "/bin/sh") == BASE["bin/sh"]


def test_rows_of_an_earlier_unverified_format_are_not_reused(registry, registry_repo, tmp_path, maria_store,
                                                            mariadb_clean):
    """Rows written before content verification existed (format 1) may be poisoned: never reused."""
    src = publish(tmp_path, registry, registry_repo, [BASE])
    dst = registry.ref(f"{registry_repo}-out", "a")
    run(registry, src, dst, dedup=maria_store)
    mariadb_clean.query("UPDATE overlaybd_layer_formats SET format_id = REPLACE(format_id, 'obdpy2/', 'obdpy1/')")
    mariadb_clean.query("DELETE FROM overlaybd_manifests")
    report = run(registry, src, registry.ref(f"{registry_repo}-out", "b"), dedup=maria_store)
    assert report.manifests[0].layers[0].dedup == "miss"


def _delete_blob(registry, repo: str, digest: str) -> None:
    r = requests.delete(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=10)
    assert r.status_code == 202, r.text


def test_stale_manifest_cache_row_is_dropped_and_the_layer_rebuilt(registry, registry_repo, tmp_path,
                                                                   maria_store, mariadb_clean):
    src = publish(tmp_path, registry, registry_repo, [BASE, APP])
    out_repo = f"{registry_repo}-out"
    first = run(registry, src, registry.ref(out_repo, "a"), dedup=maria_store)
    manifest, _ = manifest_of(registry, registry.ref(out_repo, "a"))
    _delete_blob(registry, out_repo, manifest["layers"][1]["digest"])

    again = run(registry, src, registry.ref(out_repo, "b"), dedup=maria_store)
    assert not again.manifests[0].cached
    assert [layer.dedup for layer in again.manifests[0].layers] == ["hit", "miss"]
    assert again.target["digest"] == first.target["digest"]  # same bytes, rebuilt
    judge(registry, registry.ref(out_repo, "b"), tmp_path / "b")

    # a row of another repository whose blob is gone is dropped too, and the image converted
    other = f"{registry_repo}-other"
    _delete_blob(registry, out_repo, manifest["layers"][0]["digest"])
    third = run(registry, src, registry.ref(other, "c"), dedup=maria_store)
    assert third.target["digest"] == first.target["digest"]
    assert [layer.dedup for layer in third.manifests[0].layers] == ["miss", "mount"]
    rows = mariadb_clean.query("SELECT repo FROM overlaybd_layers WHERE data_digest = %s",
                               (manifest["layers"][0]["digest"],))
    assert (out_repo,) not in rows
    judge(registry, registry.ref(other, "c"), tmp_path / "c")


def test_a_failed_conversion_leaves_no_temporary_work_directory(registry, registry_repo, tmp_path, monkeypatch):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    attacker = publish(tmp_path, registry, registry_repo, [EVIL], claim_diff_ids={0: diff_id(BASE)})
    with pytest.raises(OverlaybdError):
        run(registry, attacker, registry.ref(f"{registry_repo}-out", "x"), dedup=None)
    assert not [p for p in os.listdir(tmp) if p.startswith("overlaybd-convert-")]


def test_a_refusing_destination_fails_before_any_download_or_build(registry, auth_registry, registry_repo,
                                                                    tmp_path):
    src = publish(tmp_path, registry, registry_repo, [BASE, APP])
    events: list[dict] = []
    bad = auth_registry.options(password="wrong-password")
    with pytest.raises(AuthError):
        convert_image(src, auth_registry.ref(registry_repo, "obd"), ConvertOptions(),
                      src_registry=registry.options(), dst_registry=bad, progress=events.append)
    assert events == []


@pytest.fixture
def least_privilege_user(mariadb_clean):
    """A user with SELECT/INSERT/UPDATE/DELETE only on the session database (docs/dedup.md)."""
    name, password = f"obdlp{os.getpid()}", "lp-Pa55word"
    db = mariadb_clean.database
    mariadb_clean.query(f"CREATE USER IF NOT EXISTS '{name}'@'%%' IDENTIFIED BY '{password}'")
    mariadb_clean.query(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.* TO '{name}'@'%%'")
    url = f"mysql://{name}:{password}@{mariadb_clean.host}:{mariadb_clean.port}/{db}"
    yield url
    mariadb_clean.query(f"DROP USER IF EXISTS '{name}'@'%%'")


def test_least_privilege_user_converts_once_the_schema_exists(registry, registry_repo, tmp_path, mariadb_clean,
                                                              least_privilege_user):
    open_dedup(mariadb_clean.url).close()  # the administrator creates the schema
    store = open_dedup(least_privilege_user)
    try:
        src = publish(tmp_path, registry, registry_repo, [BASE])
        run(registry, src, registry.ref(f"{registry_repo}-out", "a"), dedup=store)
        again = run(registry, src, registry.ref(f"{registry_repo}-out", "b"), dedup=store)
        assert again.manifests[0].cached
    finally:
        store.close()


def test_least_privilege_user_without_schema_gets_one_line(mariadb_clean, least_privilege_user):
    mariadb_clean.query("DROP TABLE IF EXISTS overlaybd_manifest_formats")
    try:
        with pytest.raises(DedupError) as err:
            open_dedup(least_privilege_user)
        text = str(err.value)
        assert "\n" not in text
        assert "overlaybd_manifest_formats" in text and "grant CREATE" in text
        assert not err.value.retryable
    finally:
        open_dedup(mariadb_clean.url).close()
