"""Dedup store on real MariaDB and on SQLite: schema, lookups, format markers, races."""

from __future__ import annotations

import threading

import pytest
from overlaybd_provider.engine import dedup

H, FMT, OTHER_FMT = "reg.example:5000", "obdpy1/lz4/4k", "obdpy0/old"
C1 = "sha256:" + "1" * 64
D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


@pytest.fixture(params=["mariadb", "sqlite"])
def store(request, tmp_path):
    if request.param == "mariadb":
        db = request.getfixturevalue("mariadb_clean")
        s = dedup.open_dedup(db.url)
    else:
        s = dedup.open_dedup(f"sqlite:///{tmp_path / 'd.db'}")
    yield s
    s.close()


def test_upstream_schema_on_mariadb(mariadb):
    s = dedup.open_dedup(dbstr=mariadb.dbstr)
    s.create_tables()  # idempotent
    s.close()
    cols = mariadb.query(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema=%s AND table_name='overlaybd_layers' ORDER BY ordinal_position",
        (mariadb.database,),
    )
    assert [c[0] for c in cols] == ["host", "repo", "chain_id", "data_digest", "data_size"]
    assert [c[1] for c in cols] == ["varchar"] * 4 + ["bigint"]
    assert {c[2] for c in cols} == {"NO"}
    keys = mariadb.query(
        "SELECT index_name, column_name FROM information_schema.statistics WHERE table_schema=%s "
        "AND table_name='overlaybd_manifests' ORDER BY index_name, seq_in_index",
        (mariadb.database,),
    )
    by_index: dict[str, list[str]] = {}
    for name, column in keys:
        by_index.setdefault(name, []).append(column)
    assert by_index == {
        "PRIMARY": ["host", "repo", "src_digest", "mediatype"],
        "index_registry_src_digest": ["host", "src_digest"],
    }


def test_layer_lookup_same_repo_then_others(store):
    assert store.find_layer(H, "a/one", C1, FMT) is None
    store.record_layer(H, "a/one", C1, D1, 123, FMT)
    store.record_layer(H, "a/one", C1, D1, 123, FMT)  # idempotent, no duplicate-key failure
    assert store.find_layer(H, "a/one", C1, FMT) == dedup.Row("a/one", D1, 123)
    assert store.find_layer(H, "a/two", C1, FMT) is None
    assert store.find_layer_elsewhere(H, "a/two", C1, FMT) == [dedup.Row("a/one", D1, 123)]
    assert store.find_layer_elsewhere(H, "a/one", C1, FMT) == []
    assert store.find_layer_elsewhere("other.host", "a/two", C1, FMT) == []


def test_rows_of_other_formats_are_never_reused(store):
    store.record_layer(H, "a/one", C1, D1, 1, OTHER_FMT)
    assert store.find_layer(H, "a/one", C1, FMT) is None
    assert store.find_layer_elsewhere(H, "a/two", C1, FMT) == []
    # an upstream row (no marker at all) is not reused either
    store._run(store.dialect.insert("overlaybd_layers", ("host", "repo", "chain_id", "data_digest",
                                                         "data_size")), (H, "up/stream", C1, D2, 9))
    assert store.find_layer_elsewhere(H, "a/two", C1, FMT) == []


def test_stale_delete_names_the_digest(store):
    store.record_layer(H, "r", C1, D1, 1, FMT)
    store.delete_layer(H, "r", C1, D2)  # a different digest: the row stays
    assert store.find_layer(H, "r", C1, FMT) is not None
    store.delete_layer(H, "r", C1, D1)
    assert store.find_layer(H, "r", C1, FMT) is None
    store.record_layer(H, "r", C1, D2, 2, FMT)
    assert store.find_layer(H, "r", C1, FMT) == dedup.Row("r", D2, 2)


def test_manifest_cache(store):
    mt = "application/vnd.docker.distribution.manifest.v2+json"
    store.record_manifest(H, "r1", D1, mt, D2, 700, FMT)
    store.record_manifest(H, "r1", D1, mt, D2, 700, FMT)
    assert store.find_manifest(H, "r1", D1, mt, FMT) == dedup.Row("r1", D2, 700)
    assert store.find_manifest(H, "r1", D1, "application/vnd.oci.image.manifest.v1+json", FMT) is None
    assert store.find_manifest(H, "r1", D1, mt, OTHER_FMT) is None
    assert store.find_manifest_elsewhere(H, "r2", D1, mt, FMT) == [dedup.Row("r1", D2, 700)]
    store.delete_manifest(H, "r1", D1, mt, D2)
    assert store.find_manifest(H, "r1", D1, mt, FMT) is None


def test_concurrent_recording_mariadb(mariadb_clean):
    """Many connections inserting the same rows at once: no duplicate-key failure, one row."""
    errors: list[BaseException] = []

    def work() -> None:
        s = dedup.open_dedup(mariadb_clean.url)
        try:
            for _ in range(20):
                s.record_layer(H, "race", C1, D1, 5, FMT)
                s.record_manifest(H, "race", D1, "m", D2, 5, FMT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layers WHERE repo='race'") == [(1,)]


def test_open_dedup_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERLAYBD_DEDUP_DB", str(tmp_path / "x" / "default.db"))
    s = dedup.open_dedup()
    assert s.describe() == f"sqlite:///{tmp_path / 'x' / 'default.db'}"
    s.close()
    assert (tmp_path / "x" / "default.db").exists()
    assert dedup.parse_dbstr("u:p@tcp(db.local:3307)/obd") == dedup.MySqlParams("db.local", 3307, "u", "p", "obd")
    assert dedup.parse_dbstr("u@/obd").user == "u"
    for bad in ("nonsense", "u:p@tcp(h:x)/db", "u:p@udp(h:1)/db"):
        with pytest.raises(dedup.DedupError):
            dedup.parse_dbstr(bad)
    with pytest.raises(dedup.DedupError, match="scheme"):
        dedup.open_dedup("postgres://x/y")
    with pytest.raises(dedup.DedupError, match="cannot connect") as info:
        dedup.open_dedup("mysql://root:secret@127.0.0.1:1/db")  # refused
    assert "secret" not in str(info.value)
