"""The stage API (pull → build → push → record) hands over through JSON and the destination
registry only: every stage here runs with its own work directory and blob cache, as on separate
workers sharing no disk, against a real registry and a real MariaDB."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from overlaybd_provider.engine import stages
from overlaybd_provider.engine.convert import convert_image
from overlaybd_provider.engine.dedup import open_dedup
from overlaybd_provider.engine.errors import StageError
from overlaybd_provider.engine.options import ConvertOptions
from overlaybd_provider.engine.transfer.blobcache import BlobCache
from overlaybd_provider.oci.store import open_store
from test_engine_convert import BASE, MID, TOP_A, judge, make_source


def xcom(doc: dict) -> dict:
    """What the next task gets: the JSON round trip of the previous task's result."""
    return json.loads(json.dumps(doc))


class Worker:
    """One machine: its own scratch base and blob cache, nothing shared with another Worker."""

    def __init__(self, root: Path, name: str) -> None:
        self.work = root / name / "work"
        self.cache = BlobCache(root / name / "cache")
        self.events: list[dict] = []

    def progress(self, event: dict) -> None:
        self.events.append(event)

    def said(self, what: str) -> list[int]:
        return [e["index"] for e in self.events if e.get("event") == "layer" and e.get("what") == what]


def has_blob(registry, ref: str, digest: str) -> bool:
    store, _ = open_store(ref, registry.options())
    try:
        return store.has_blob(digest)
    finally:
        store.close()


def test_stages_on_three_workers_match_convert_image(registry, registry_repo, tmp_path, mariadb_clean):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, MID, TOP_A])
    direct = convert_image(src, registry.ref(f"{registry_repo}/direct", "v1"), ConvertOptions(),
                           src_registry=registry.options(), dst_registry=registry.options()).to_json()
    dedup = open_dedup(mariadb_clean.url)
    dst = registry.ref(f"{registry_repo}/staged", "v1")
    a, b, c = (Worker(tmp_path, n) for n in "abc")
    opts = {"src_registry": registry.options(), "dst_registry": registry.options()}
    try:
        pulled = xcom(stages.pull(src, dst, options=ConvertOptions(), dedup=dedup, work_dir=a.work, **opts))
        assert pulled["layers_to_build"] == 3 and pulled["platforms"] == ["linux/amd64"]
        assert not list(a.work.iterdir())  # scratch removed

        built = xcom(stages.build(pulled, dedup=dedup, cache=b.cache, work_dir=b.work, progress=b.progress,
                                  **opts))
        digests = [layer["digest"] for layer in direct["manifests"][0]["layers"]]
        assert [x["digest"] for x in built["built"]] == digests
        assert all(has_blob(registry, dst, d) for d in digests)  # pushed by the build stage itself
        assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layers") == [(3,)]  # recorded after push
        assert mariadb_clean.query("SELECT COUNT(*) FROM overlaybd_layer_costs") == [(3,)]
        assert b.said("built") == [0, 1, 2]
        assert not list(b.work.iterdir())

        pushed = xcom(stages.push(built, work_dir=c.work, **opts))
        assert pushed["pushed"]["digest"] == direct["target"]["digest"]
        assert pushed["pushed"]["blobs_pushed"] == 1  # the config; layers were already there
        recorded = xcom(stages.record(pushed, dedup=dedup))
        assert recorded["recorded"] == {"layers_recorded": 3, "manifests_recorded": 1}
        rep = stages.report(recorded)
        assert rep["target"]["digest"] == direct["target"]["digest"]
        assert [la["dedup"] for la in rep["manifests"][0]["layers"]] == ["miss"] * 3
        judge(registry, dst, tmp_path / "judge")

        # a second conversion of the same image into another repository: the manifest cache, with
        # the recorded build cost of its layers as what it saved
        again = stages.pull(src, registry.ref(f"{registry_repo}/again", "v1"), dedup=dedup, **opts)
        image = again["plan"]["images"][0]
        assert image["cached"] and all(layer["cost"] > 0 for layer in image["layers"])
        cost = sum(x["seconds"] for x in built["built"])
        assert sum(layer["cost"] for layer in image["layers"]) == pytest.approx(cost, abs=0.01)
    finally:
        dedup.close()


def test_a_retry_on_another_worker_takes_its_lowers_from_the_registry(registry, registry_repo, tmp_path):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, MID, TOP_A])
    dst = registry.ref(f"{registry_repo}/obd", "v1")
    opts = {"src_registry": registry.options(), "dst_registry": registry.options()}
    pulled = xcom(stages.pull(src, dst, **opts))
    a, b = Worker(tmp_path, "a"), Worker(tmp_path, "b")
    finished: dict[str, dict] = {}

    class Killed(Exception):
        pass

    def note(image, layer) -> None:
        finished[layer.chain_id] = {"digest": layer.digest, "size": layer.size, "seconds": layer.seconds}
        if len(finished) == 1:
            raise Killed  # worker a dies after its first layer was pushed

    with pytest.raises(Killed):
        stages.build(pulled, cache=a.cache, work_dir=a.work, progress=a.progress, on_layer=note, **opts)
    assert len(finished) == 1
    built = xcom(stages.build(pulled, cache=b.cache, work_dir=b.work, progress=b.progress, finished=finished,
                              **opts))
    assert b.said("built by an earlier try") == [0]
    assert sorted(b.said("downloaded")) == [0, 1, 2]  # layer 0 (a lower of layer 1) from the registry
    assert b.said("built") == [1, 2]
    pushed = stages.push(built, work_dir=b.work, **opts)
    direct = convert_image(src, registry.ref(f"{registry_repo}/direct", "v1"), ConvertOptions(),
                           src_registry=registry.options(), dst_registry=registry.options())
    assert pushed["pushed"]["digest"] == direct.target["digest"]


def test_concurrent_conversions_of_one_new_image_build_each_layer_once(registry, registry_repo, tmp_path,
                                                                       mariadb_clean):
    """Two runs pulled before either built anything (both plan every layer): the build lease makes
    one build each layer while the other waits for it and reuses it."""
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, MID, TOP_A])
    dst = registry.ref(f"{registry_repo}/obd", "v1")
    opts = {"src_registry": registry.options(), "dst_registry": registry.options()}
    stores = [open_dedup(mariadb_clean.url) for _ in range(2)]
    workers = [Worker(tmp_path, n) for n in "ab"]
    try:
        pulls = [xcom(stages.pull(src, dst, dedup=store, **opts)) for store in stores]
        assert [p["layers_to_build"] for p in pulls] == [3, 3]
        results: list[dict | BaseException] = [{}, {}]

        def run(i: int) -> None:
            try:
                results[i] = stages.build(pulls[i], dedup=stores[i], cache=workers[i].cache,
                                          work_dir=workers[i].work, progress=workers[i].progress, **opts)
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert all(isinstance(r, dict) for r in results), results
        built = sorted(i for w in workers for i in w.said("built"))
        assert built == [0, 1, 2]  # each layer once, over both runs
        waited = [x for r in results for x in r["built"] if x["dedup"] == "wait"]
        assert len(waited) == 3
        digests = {stages.push(xcom(r), **opts)["pushed"]["digest"] for r in results}
        assert len(digests) == 1
    finally:
        for store in stores:
            store.close()


def test_stage_order_errors_and_a_layout_that_is_not_here(registry, registry_repo, tmp_path):
    src = make_source(tmp_path, registry, f"{registry_repo}/src", [BASE, TOP_A])
    with pytest.raises(StageError, match="not the result of the pull stage"):
        stages.build({"staging": "/somewhere"})
    out = tmp_path / "out"
    dst = f"oci:{out}:conv"
    pulled = xcom(stages.pull(src, dst, src_registry=registry.options()))
    with pytest.raises(StageError, match="run the build stage first"):
        stages.push(pulled, src_registry=registry.options())
    with pytest.raises(StageError, match="run the push stage first"):
        stages.record(pulled, dedup=None)

    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)  # the layout is on "another machine"
    with pytest.raises(StageError, match=r"this OCI layout is not on .*every stage of its conversion must run"):
        stages.build(pulled, src_registry=registry.options())
    shutil.move(moved, out)

    built = xcom(stages.build(pulled, src_registry=registry.options(), work_dir=tmp_path / "w"))
    pushed = stages.push(built, src_registry=registry.options())
    direct = convert_image(src, registry.ref(f"{registry_repo}/direct", "v1"), ConvertOptions(),
                           src_registry=registry.options(), dst_registry=registry.options())
    assert pushed["pushed"]["digest"] == direct.target["digest"]
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [pushed["pushed"]["digest"]]
